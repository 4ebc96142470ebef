"""`radfusion demo`: the whole job end to end on built-in defaults.

synth -> train (fusion + image-only + genomics-only) -> evaluate -> export ->
BentoML server on loopback answering real requests -> archive scoring -> summary.

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
from radfusion.genomics import load_genomics_table, row_as_mapping

PROJECT_ROOT = Path(__file__).resolve().parent.parent
CONFIGS = PROJECT_ROOT / "configs"
MODELS = {
    "fusion": [],
    "image_only": [CONFIGS / "experiment" / "image_only.yaml"],
    "genomics_only": [CONFIGS / "experiment" / "genomics_only.yaml"],
}
SERVICE_REQUESTS = 48
SERVICE_CLIENTS = 8


def _radfusion(*args: str | Path) -> None:
    command = [sys.executable, "-m", "radfusion.cli", *map(str, args)]
    print(f"\n$ radfusion {' '.join(map(str, args))}", flush=True)
    subprocess.run(command, check=True, cwd=PROJECT_ROOT)


def _stage(name: str, timings: dict, fn, *args):
    start = time.perf_counter()
    result = fn(*args)
    timings[name] = round(time.perf_counter() - start, 1)
    return result


def run_demo(out: Path, patients: int = 800, epochs: int = 30, seed: int = 0) -> dict:
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("BENTOML_HOME", str(PROJECT_ROOT / ".bentoml"))
    os.environ.setdefault("BENTOML_DO_NOT_TRACK", "True")
    cohort = out / "cohort"
    timings: dict[str, float] = {}

    _stage("synth", timings, _radfusion, "synth", "--patients", patients, "--seed", seed, "--out", cohort)
    for name, extra in MODELS.items():
        configs = [CONFIGS / "trainer" / "cpu.yaml", CONFIGS / "data" / "synthetic.yaml", CONFIGS / "model" / "fusion_cpu.yaml", *extra]
        args = [a for c in configs for a in ("--config", c)]
        _stage(
            f"train_{name}",
            timings,
            _radfusion,
            "train",
            *args,
            "--data.cohort_dir", cohort,
            "--trainer.max_epochs", epochs,
            "--trainer.default_root_dir", out / name,
        )
    checkpoints = [f"{name}={out / name / 'checkpoints' / 'best.ckpt'}" for name in MODELS]
    _stage("evaluate", timings, _radfusion, "evaluate", *[a for c in checkpoints for a in ("--checkpoint", c)], "--out", out)
    model = out / "model.onnx"
    _stage("export", timings, _radfusion, "export", "--checkpoint", out / "fusion" / "checkpoints" / "best.ckpt", "--out", model)
    service = _stage("serve", timings, exercise_service, model, cohort)
    scores = out / "scores.parquet"
    _stage(
        "score", timings, _radfusion,
        "score", "--archive", cohort / "dicom", "--genomics", cohort / "genomics.parquet", "--model", model, "--out", scores,
    )

    # The evidence report (genes, saliency, risk groups, calibration, checks against the truth).
    _stage("report", timings, _radfusion, "report", "--run", out)

    metrics = json.loads((out / "metrics.json").read_text())
    export_report = json.loads(model.with_suffix(".export.json").read_text())
    scored = pd.read_parquet(scores)
    summary = {
        "auroc": {name: metrics[name]["auroc"] for name in MODELS},
        "auroc_fusion_by_presence": {
            k.removeprefix("auroc_"): v for k, v in metrics["fusion"].items() if k.startswith("auroc_")
        },
        "n_test": metrics["fusion"]["n_observed"],
        "onnx_max_abs_diff": export_report["onnx_max_abs_diff"],
        "model_version": export_report["version"],
        "bento_model": export_report["bento_tag"],
        **service,
        "studies_scored": int(scored["error"].isna().sum()),
        "studies_failed": int(scored["error"].notna().sum()),
        "report": str(out / "report" / "report.html"),
        "seconds": timings,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print_summary(summary, out)
    return summary


def _zip_study(root: Path, files: list[str]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for f in files:
            zf.write(root / f, arcname=Path(f).name)
    return buffer.getvalue()


def exercise_service(model: Path, cohort: Path) -> dict:
    """Start the real server, send studies from several concurrent clients, stop it.
    Server answers are checked against the same model run in-process."""
    import httpx

    from radfusion.predictor import Predictor
    from serving.launch import running_server

    import secrets

    token = secrets.token_urlsafe(24)
    headers = {"Authorization": f"Bearer {token}"}
    studies = index_studies(cohort / "dicom").head(SERVICE_REQUESTS)
    genomics = load_genomics_table(cohort / "genomics.parquet")
    predictor = Predictor.load(model, device="cpu")
    root = cohort / "dicom"

    def request(url: str, row) -> tuple[bool, float]:
        genes = row_as_mapping(genomics, row.patient_id)
        data = {"genomics": json.dumps(genes)} if genes is not None else {}
        response = httpx.post(
            f"{url}/predict",
            files={"study": ("study.zip", _zip_study(root, row.files), "application/zip")},
            data=data,
            headers=headers,
            timeout=120,
        )
        if response.status_code != 200:
            return False, float("nan")
        got = response.json()["probabilities"]
        expected = predictor.predict([predictor.prepare([root / f for f in row.files], genes)])[0]["probabilities"]
        return True, max(abs(got[k] - expected[k]) for k in expected)

    with running_server(model, env={"RADFUSION_API_TOKENS": token}) as url:
        with ThreadPoolExecutor(SERVICE_CLIENTS) as pool:
            results = list(pool.map(lambda row: request(url, row), studies.itertuples()))
        garbage = {"study": ("x.zip", b"not a zip or dicom", "application/zip")}
        bad = httpx.post(f"{url}/predict", files=garbage, headers=headers, timeout=60)
        anonymous = httpx.post(f"{url}/predict", files=garbage, timeout=60)
    ok = [r for r in results if r[0]]
    return {
        "service_requests_sent": len(results),
        "service_requests_ok": len(ok),
        "service_max_abs_diff_vs_inprocess": max((d for _, d in ok), default=float("nan")),
        "service_bad_input_status": bad.status_code,
        "service_no_token_status": anonymous.status_code,
    }


def print_summary(summary: dict, out: Path) -> None:
    auroc = summary["auroc"]
    print("\n== radfusion demo ==")
    print(f"held-out AUROC (n={summary['n_test']}): fusion {auroc['fusion']:.3f} | image only {auroc['image_only']:.3f} | genomics only {auroc['genomics_only']:.3f}")
    print(f"ONNX parity max |diff|: {summary['onnx_max_abs_diff']:.2e}   model {summary['bento_model']}")
    print(
        f"service: {summary['service_requests_ok']}/{summary['service_requests_sent']} requests ok; "
        f"bad input -> HTTP {summary['service_bad_input_status']}; no token -> HTTP {summary['service_no_token_status']}"
    )
    print(f"archive: {summary['studies_scored']} studies scored, {summary['studies_failed']} failed")
    print(f"seconds per stage: {summary['seconds']}")
    print(f"summary: {out / 'summary.json'}")
