"""`radfusion demo`: the whole job end to end on built-in defaults.

synth -> cohort manifest report -> train (the cross-attention fusion model and its
image-only and genomics-only baselines, all treatment-aware; with --full also the other
three fusion strategies and a survival fusion model with the same two baselines) ->
evaluate (model x modality-pattern table) -> export (calibrated) -> BentoML server on
loopback answering real requests, with explanations and treatment rankings -> archive
scoring -> evidence report -> summary, with the demo's checks (DEMO_CHECKS).

Each stage runs as the same `radfusion` subcommand a user would type, in its own
process, so the demo exercises exactly the commands the README documents (and the
serving stages never load torch)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd

from radfusion.cohort import index_studies
from radfusion.errors import UserError
from radfusion.genomics import load_genomics_table, row_as_mapping

PROJECT_ROOT = Path(__file__).resolve().parents[2]
CONFIGS = PROJECT_ROOT / "configs"
EXPERIMENT = CONFIGS / "experiment"
# Every model gets the clinical covariates (treatment, age, sex, site), so all can be
# asked "what if" for another treatment and the comparison is like for like. "fusion"
# is the model that is exported and served: cross-attention, the strategy that did best
# on this cohort when the strategies were compared (see docs/demo.md).
MODELS: dict[str, list] = {
    "fusion": [EXPERIMENT / "fusion_cross_attention.yaml"],
    "image_only": [EXPERIMENT / "image_only.yaml", "--model.network.modalities", "[image, clinical]"],
    "genomics_only": [EXPERIMENT / "genomics_only.yaml", "--model.network.modalities", "[genomics, clinical]"],
}
# With --full: the other fusion strategies, for the strategy comparison.
FULL_MODELS: dict[str, list] = {
    "late": [],
    "gated": [EXPERIMENT / "fusion_gated.yaml"],
    "kronecker": [EXPERIMENT / "fusion_kronecker.yaml"],
}
# Survival (Cox partial likelihood, trained settings in configs/experiment/survival_cox.yaml):
# the fusion model and the same two unimodal baselines, so the table has c-index rows
# beside the AUROC rows. Evaluated only (export, serving and the report use "fusion"); --full only.
SURVIVAL = EXPERIMENT / "survival_cox.yaml"
SURVIVAL_MODELS: dict[str, list] = {
    "survival_fusion": [SURVIVAL],
    "survival_image_only": [
        EXPERIMENT / "image_only.yaml",
        SURVIVAL,
        "--model.network.modalities",
        "[image, clinical]",
        "--model.model_name",
        "radfusion-survival-image-only",
    ],
    "survival_genomics_only": [
        EXPERIMENT / "genomics_only.yaml",
        SURVIVAL,
        "--model.network.modalities",
        "[genomics, clinical]",
        "--model.model_name",
        "radfusion-survival-genomics-only",
    ],
}
SERVICE_REQUESTS = 48
SERVICE_CLIENTS = 8
EXPLAINED_REQUESTS = 3
# The cohort's geometry (configs/experiment/demo.yaml has its model grid): 48 pixels of
# ~6 mm (a 288 mm field of view), the cohort the demo's figures were measured on.
SYNTH_GEOMETRY = ("--slices", 16, "--size", 48, "--pixel-spacing", 6)
# What the demo promises; a run that misses one exits 1 (summary.json says which).
MIN_FUSION_AUROC = 0.80
MIN_FUSION_LEAD = 0.05  # over each unimodal baseline
MAX_ONNX_DIFF = 1e-4
# Below this many held-out patients an AUROC's standard error is near 0.05 or more:
# the summary says so beside the figures.
FEW_TEST_PATIENTS = 100


def _radfusion(*args: str | Path) -> None:
    """One stage, as the user would type it; a stage that fails ends the demo with one
    line naming it (the stage's own message is just above)."""
    command = [sys.executable, "-m", "radfusion.cli", *map(str, args)]
    print(f"\n$ radfusion {' '.join(map(str, args))}", flush=True)
    if subprocess.run(command, cwd=PROJECT_ROOT).returncode != 0:
        raise UserError(f"the stage `radfusion {args[0]}` failed", "its message is above; rerun that stage to debug it")


def _stage(name: str, timings: dict, fn, *args):
    start = time.perf_counter()
    result = fn(*args)
    timings[name] = round(time.perf_counter() - start, 1)
    return result


def _train_args(extra: list) -> list:
    base = [
        CONFIGS / "trainer" / "cpu.yaml",
        CONFIGS / "data" / "synthetic.yaml",
        CONFIGS / "model" / "fusion_cpu.yaml",
        EXPERIMENT / "treatment.yaml",
        EXPERIMENT / "demo.yaml",
    ]
    configs = [a for c in base for a in ("--config", c)]
    for item in extra:  # config files, then plain overrides
        configs += ["--config", item] if isinstance(item, Path) else [item]
    return configs


def run_demo(out: Path, patients: int = 800, epochs: int = 20, seed: int = 0, full: bool = False) -> dict:
    """The demo; ``full``: all nine models (four fusion strategies, two unimodal
    baselines, three survival models), not only the exported one and its baselines."""
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("BENTOML_HOME", str(PROJECT_ROOT / ".bentoml"))
    os.environ.setdefault("BENTOML_DO_NOT_TRACK", "True")
    cohort = out / "cohort"
    timings: dict[str, float] = {}

    _stage(
        "synth", timings, _radfusion, "synth", "--patients", patients, "--seed", seed, *SYNTH_GEOMETRY, "--out", cohort
    )
    omics = cohort / "omics"
    _stage(
        "cohort_build",
        timings,
        _radfusion,
        "cohort",
        "build",
        "--dicom",
        cohort / "dicom",
        "--clinical",
        cohort / "clinical.csv",
        "--sample-map",
        omics / "sample_map.csv",
        "--expression",
        omics / "expression.tsv",
        "--expression-scale",
        "log",
        "--maf",
        omics / "mutations.maf",
        "--cnv",
        omics / "copy_number.seg",
        "--genes",
        omics / "genes.bed",
        "--out",
        out / "manifest",
    )
    classifiers = {**MODELS, **FULL_MODELS} if full else dict(MODELS)
    trained = {**classifiers, **SURVIVAL_MODELS} if full else classifiers
    for name, extra in trained.items():
        _stage(
            f"train_{name}",
            timings,
            _radfusion,
            "train",
            *_train_args(extra),
            "--data.cohort_dir",
            cohort,
            "--trainer.max_epochs",
            epochs,
            "--trainer.default_root_dir",
            out / name,
        )
    checkpoints = [f"{name}={out / name / 'checkpoints' / 'best.ckpt'}" for name in trained]
    _stage(
        "evaluate",
        timings,
        _radfusion,
        "evaluate",
        *[a for c in checkpoints for a in ("--checkpoint", c)],
        "--out",
        out,
    )
    model = out / "model.onnx"
    _stage(
        "export",
        timings,
        _radfusion,
        "export",
        "--checkpoint",
        out / "fusion" / "checkpoints" / "best.ckpt",
        "--out",
        model,
        "--tune-runtime",  # served and scored on this machine
    )
    service = _stage("serve", timings, exercise_service, model, cohort)
    scores = out / "scores.parquet"
    _stage(
        "score",
        timings,
        _radfusion,
        "score",
        "--archive",
        cohort / "dicom",
        "--genomics",
        cohort / "genomics.parquet",
        "--clinical",
        cohort / "clinical.csv",
        "--model",
        model,
        "--out",
        scores,
        "--fresh",  # a demo run before this one left its scores, of its own model
    )

    # The evidence report (genes, saliency, risk groups, calibration, checks against the truth),
    # and the scoring run's predictions and failures (scores.html, scores.png).
    _stage("report", timings, _radfusion, "report", "--run", out, "--scores", scores)

    metrics = json.loads((out / "metrics.json").read_text())
    export_report = json.loads(model.with_suffix(".export.json").read_text())
    scored = pd.read_parquet(scores)
    manifest = json.loads((out / "manifest" / "report.json").read_text())
    evidence = json.loads((out / "report" / "evidence.json").read_text())
    # The models compared (radfusion evaluate), the scoring run, each model's training curves.
    figures = [out / "evaluation.png", out / "scores.png", *(out / name / "training_curves.png" for name in trained)]
    summary = {
        "cohort_modality_patterns": manifest["modality_patterns"],
        "cohort_genomics_missing_share": manifest["genomics_missing"]["share"],
        "auroc": {name: metrics[name]["auroc"] for name in classifiers},
        "auroc_fusion_by_presence": {
            k.removeprefix("auroc_"): v for k, v in metrics["fusion"].items() if k.startswith("auroc_")
        },
        "n_test": metrics["fusion"]["n_observed"],
        **(survival_summary(metrics) if full else {}),
        "onnx_max_abs_diff": export_report["onnx_max_abs_diff"],
        # The prediction sets' coverage on the test split (calibrated on the validation split).
        "conformal_test": (export_report.get("conformal") or {}).get("test"),
        "model_version": export_report["version"],
        "bento_model": export_report["bento_tag"],
        **service,
        "studies_scored": int(scored["error"].isna().sum()),
        "studies_failed": int(scored["error"].notna().sum()),
        "report": str(out / "report" / "report.html"),
        "figures": [str(p) for p in figures if p.is_file()],
        "evidence_checks": {c["name"]: c.get("measured") for c in evidence["checks"]},
        "seconds": timings,
    }
    summary["checks"] = demo_checks(summary)
    summary["warnings"] = small_sample_warnings(summary)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print_summary(summary, out)
    return summary


def survival_summary(metrics: dict) -> dict:
    """The survival models' held-out c-index, and the fusion model's per presence pattern.
    Their split is stratified by the event, so their test set is not the AUROC one."""
    fusion = metrics["survival_fusion"]
    return {
        "cindex": {name: metrics[name]["cindex"] for name in SURVIVAL_MODELS},
        "cindex_survival_fusion_by_presence": {
            k.removeprefix("cindex_"): v for k, v in fusion.items() if k.startswith("cindex_")
        },
        "n_test_survival": fusion["n_observed"],
    }


def demo_checks(summary: dict) -> dict[str, bool | None]:
    """What the demo promises, each True or False: the fusion model's AUROC and its
    lead over each unimodal baseline (None, not assessed, with fewer than
    FEW_TEST_PATIENTS held-out patients: noise cannot fail a run), ONNX parity, every
    service request answered as the in-process model answers it, explanations and
    treatment rankings given, bad input and a missing token refused, every study of
    the archive scored."""
    auroc = summary["auroc"]
    baselines = [name for name in ("image_only", "genomics_only") if name in auroc]
    assessed = summary["n_test"] >= FEW_TEST_PATIENTS
    checks: dict[str, bool | None] = {
        f"fusion AUROC >= {MIN_FUSION_AUROC}": auroc["fusion"] >= MIN_FUSION_AUROC if assessed else None
    }
    for name in baselines:
        lead = auroc["fusion"] >= auroc[name] + MIN_FUSION_LEAD
        checks[f"fusion AUROC >= {name} + {MIN_FUSION_LEAD}"] = lead if assessed else None
    checks[f"ONNX parity <= {MAX_ONNX_DIFF:g}"] = summary["onnx_max_abs_diff"] <= MAX_ONNX_DIFF
    checks["service: every request answered, as in-process"] = (
        summary["service_requests_ok"] == summary["service_requests_sent"]
        and summary["service_max_abs_diff_vs_inprocess"] <= MAX_ONNX_DIFF
    )
    checks["service: explanations and treatment rankings"] = summary[
        "service_explained_ok"
    ] == EXPLAINED_REQUESTS and all(r["available"] for r in summary["service_treatment_rankings"])
    checks["service: bad input refused (4xx), no token 401"] = (
        400 <= summary["service_bad_input_status"] < 500 and summary["service_no_token_status"] == 401
    )
    checks["scorer: every study scored"] = summary["studies_failed"] == 0 and summary["studies_scored"] > 0
    return checks


def small_sample_warnings(summary: dict) -> list[str]:
    """What the figures cannot say at this cohort size."""
    n = summary["n_test"]
    if n >= FEW_TEST_PATIENTS:
        return []
    return [
        f"only {n} held-out patients: an AUROC's standard error is 0.05 or more at this size, so "
        "differences between models and the evidence checks are mostly noise; use --patients 800 or more"
    ]


def _zip_study(root: Path, files: list[str]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for f in files:
            zf.write(root / f, arcname=Path(f).name)
    return buffer.getvalue()


def exercise_service(model: Path, cohort: Path) -> dict:
    """Start the real server, send studies from several concurrent clients, stop it.
    Server answers are checked against the same model run in-process."""
    import secrets

    import httpx

    from radfusion.predictor import Predictor
    from radfusion.serving.http.launch import running_server

    token = secrets.token_urlsafe(24)
    headers = {"Authorization": f"Bearer {token}"}
    studies = index_studies(cohort / "dicom").head(SERVICE_REQUESTS)
    genomics = load_genomics_table(cohort / "genomics.parquet")
    clinical = pd.read_csv(cohort / "clinical.csv", dtype={"patient_id": str}).set_index("patient_id")
    covariates = [c for c in ("treatment", "age", "sex", "site") if c in clinical.columns]
    predictor = Predictor.load(model, device="cpu")
    root = cohort / "dicom"

    def request(url: str, row, evidence: bool = False) -> tuple[bool, float, dict]:
        genes = row_as_mapping(genomics, row.patient_id)
        covs = {c: _plain(clinical.loc[row.patient_id, c]) for c in covariates}
        data = {"clinical": json.dumps(covs)}
        if genes is not None:
            data["genomics"] = json.dumps(genes)
        if evidence:
            data |= {"explain": "true", "rank_treatments": "true"}
        response = httpx.post(
            f"{url}/predict",
            files={"study": ("study.zip", _zip_study(root, row.files), "application/zip")},
            data=data,
            headers=headers,
            timeout=300,
        )
        if response.status_code != 200:
            return False, float("nan"), {}
        body = response.json()
        got = body["probabilities"]
        case = predictor.prepare([root / f for f in row.files], genes, covs)
        expected = predictor.predict([case])[0]["probabilities"]
        return True, max(abs(got[k] - expected[k]) for k in expected), body

    with running_server(model, env={"RADFUSION_API_TOKENS": token}) as url:
        with ThreadPoolExecutor(SERVICE_CLIENTS) as pool:
            results = list(pool.map(lambda row: request(url, row), studies.itertuples()))
        # Evidence for a few patients: top genes, saliency peak, treatment ranking.
        explained = [request(url, row, evidence=True) for row in studies.head(EXPLAINED_REQUESTS).itertuples()]
        garbage = {"study": ("x.zip", b"not a zip or dicom", "application/zip")}
        bad = httpx.post(f"{url}/predict", files=garbage, headers=headers, timeout=60)
        anonymous = httpx.post(f"{url}/predict", files=garbage, timeout=60)
    ok = [r for r in results if r[0]]
    evidence = [body for good, _, body in explained if good]
    return {
        "service_requests_sent": len(results),
        "service_requests_ok": len(ok),
        "service_max_abs_diff_vs_inprocess": max((d for _, d, _ in ok), default=float("nan")),
        "service_explained_ok": sum("explanation" in b for b in evidence),
        "service_treatment_rankings": [_ranking_summary(b) for b in evidence],
        "service_bad_input_status": bad.status_code,
        "service_no_token_status": anonymous.status_code,
    }


def _plain(value):
    """numpy scalars from pandas -> JSON-ready Python values."""
    return value.item() if hasattr(value, "item") else value


def _ranking_summary(body: dict) -> dict:
    ranking = body.get("treatment_ranking", {})
    return {"recommended": ranking.get("recommended"), "available": ranking.get("available", "recommended" in ranking)}


def print_summary(summary: dict, out: Path) -> None:
    auroc = summary["auroc"]
    print("\n== radfusion demo ==")
    print(f"cohort: {summary['cohort_genomics_missing_share']:.1%} of patients with a study have no genomics")
    print(f"held-out AUROC (n={summary['n_test']}): " + " | ".join(f"{k} {v:.3f}" for k, v in auroc.items()))
    print(f"fusion model by presence pattern: {summary['auroc_fusion_by_presence']}")
    if "cindex" in summary:
        print(
            f"held-out survival c-index (n={summary['n_test_survival']}): "
            + " | ".join(f"{k.removeprefix('survival_')} {v:.3f}" for k, v in summary["cindex"].items())
        )
        print(f"survival fusion model by presence pattern: {summary['cindex_survival_fusion_by_presence']}")
    print(f"ONNX parity max |diff|: {summary['onnx_max_abs_diff']:.2e}   model {summary['bento_model']}")
    print(
        f"service: {summary['service_requests_ok']}/{summary['service_requests_sent']} requests ok; "
        f"{summary['service_explained_ok']} explained; "
        f"bad input -> HTTP {summary['service_bad_input_status']}; "
        f"no token -> HTTP {summary['service_no_token_status']}"
    )
    print(f"archive: {summary['studies_scored']} studies scored, {summary['studies_failed']} failed")
    print(f"evidence checks against the truth: {summary['evidence_checks']}")
    print(f"report: {summary['report']}")
    print(f"figures: {', '.join(summary.get('figures', []))}")
    print(f"seconds per stage: {summary['seconds']}")
    verdict = {True: "ok", False: "NOT MET", None: "not assessed (too few patients)"}
    print("checks: " + " | ".join(f"{name}: {verdict[ok]}" for name, ok in summary["checks"].items()))
    for warning in summary["warnings"]:
        print(f"warning: {warning}")
    print(f"summary: {out / 'summary.json'}")
