"""Build the evidence report for a run folder.

A run folder is what `radfusion demo` (or a user) leaves: a checkpoint at
``fusion/checkpoints/best.ckpt`` or ``checkpoints/best.ckpt``, optionally the
evaluation's ``metrics.json`` (the fusion-strategy table, with the classical
baselines beside the deep models) and a cross-validation's ``cv.json`` (``cv.json``
or ``cv/cv.json`` in the run folder, or passed as ``cv``). The model is calibrated
as `radfusion export` calibrates it (the same fit on the same splits, so the same
temperature as an exported model's contract). The cohort, and its truth file if it
is synthetic, come from the checkpoint's own data module."""

from __future__ import annotations

import datetime as dt
import json
import logging
from pathlib import Path

import pandas as pd

from radfusion.training import curves
from radfusion.training.evidence.run import Evidence, run_evidence, write_summary
from radfusion.training.evidence.saliency import overlay_png
from radfusion.training.evidence.truth import load_truth, patients_by_id
from radfusion.training.report import figures
from radfusion.training.report.baselines import baselines_section, find_cv, load_json
from radfusion.training.report.html import checks_table, esc, fmt, img, page, table

log = logging.getLogger(__name__)

CHECKPOINT_CANDIDATES = ("fusion/checkpoints/best.ckpt", "checkpoints/best.ckpt")
OVERLAYS = 4


def find_checkpoint(run_dir: Path) -> Path:
    for candidate in CHECKPOINT_CANDIDATES:
        if (run_dir / candidate).is_file():
            return run_dir / candidate
    raise FileNotFoundError(f"no checkpoint in the run folder (looked for {', '.join(CHECKPOINT_CANDIDATES)})")


def build_report(
    run_dir: Path,
    out: Path | None = None,
    checkpoint: Path | None = None,
    saliency_cases: int | None = 40,
    cv: Path | None = None,
) -> Path:
    """Run every analysis and write ``report.html`` (and ``evidence.json``) under ``out``
    (default ``<run>/report``). ``cv``: a `radfusion cv` cv.json (or its folder) whose
    table the report shows. Returns the HTML path."""
    from radfusion.training.checkpoints import load_datamodule, load_module

    run_dir = Path(run_dir)
    checkpoint = Path(checkpoint) if checkpoint else find_checkpoint(run_dir)
    out = Path(out) if out else run_dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    cv = find_cv(run_dir, cv)  # a wrong --cv path fails before minutes of analyses
    module, dm = load_module(checkpoint), load_datamodule(checkpoint)
    evidence = run_evidence(module, dm, saliency_cases=saliency_cases)
    return render_report(evidence, module, dm, run_dir, checkpoint, out, cv)


def render_report(
    evidence: Evidence, module, dm, run_dir: Path, checkpoint: Path, out: Path, cv: Path | None = None
) -> Path:
    """Write ``report.html`` and ``evidence.json`` for analyses already run."""
    out.mkdir(parents=True, exist_ok=True)
    write_summary(evidence, out / "evidence.json")
    title = f"radfusion evidence report: {module.model_name}"
    html = page(title, sections(evidence, module, dm, run_dir, checkpoint, find_cv(run_dir, cv)))
    path = out / "report.html"
    path.write_text(html, encoding="utf-8")
    log.info("report written with %d checks", len(evidence.checks))
    return path


def sections(
    ev: Evidence, module, dm, run_dir: Path, checkpoint: Path, cv: Path | None = None
) -> list[tuple[str, str]]:
    out = [("Model and data", _overview(ev, module, dm, checkpoint))]
    training = _training(run_dir, checkpoint, getattr(module.task, "monitor", None))
    if training:
        out.append(("Training", training))
    if ev.checks:
        out.append(
            (
                "Checked against the truth",
                checks_table(ev.checks)
                + "<p class=note>The synthetic cohort's truth file knows the driver genes, each lesion, each "
                "patient's best treatment and the outcome model; each line is also a test.</p>",
            )
        )
    out.append(("Discrimination", _discrimination(ev, run_dir)))
    baselines = baselines_section(load_json(run_dir / "metrics.json"), load_json(cv))
    if baselines:
        out.append(("Classical baselines", baselines))
    if ev.calibration is not None:
        out.append(("Calibration", _calibration(ev)))
    if ev.survival_calibration is not None:
        out.append(("Calibration of the survival curves", _survival_calibration(ev.survival_calibration)))
    if ev.subgroups is not None:
        out.append(("Subgroups", _subgroups(ev)))
    if ev.gene_ranking is not None:
        out.append(("Biomarkers (genes)", _genes(ev)))
    if ev.saliencies:
        out.append(("Image saliency", _saliency(ev, dm)))
    if ev.risk is not None:
        out.append(("Stratification", _stratification(ev)))
    if ev.treatments is not None:
        out.append(("Treatment ranking", _treatment(ev)))
    if ev.notes:
        out.append(("Notes", "".join(f"<p class=note>{esc(n)}</p>" for n in ev.notes)))
    return out


def _overview(ev: Evidence, module, dm, checkpoint: Path) -> str:
    rows = {
        "checkpoint": checkpoint.parent.parent.name + "/" + checkpoint.name,
        "modalities": ", ".join(module.network_config.modalities),
        "target": dm.hparams.target,
        "held-out patients (test split)": len(ev.cases),
        "temperature": f"{ev.temperature:.3f}",
        "written": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }
    return table(pd.DataFrame({"": list(rows), "value": [str(v) for v in rows.values()]}))


def _training(run_dir: Path, checkpoint: Path, monitor: str | None) -> str:
    """The training curves of the checkpoint's run (its folder: the one above
    checkpoints/), else of the run folder; empty when neither has metrics.csv."""
    for folder in dict.fromkeys((checkpoint.parent.parent, run_dir)):
        found = curves.load(folder)
        if not found.empty:
            return img(figures.training_curves(found), "training curves") + (
                f"<p>{esc(curves.summary(found, monitor))}</p><p class=note>Per epoch, from the CSV logger's "
                "metrics.csv; a resumed run's versions are stitched, each later one replacing the earlier from "
                "its first epoch on (dotted line).</p>"
            )
    return ""


def _discrimination(ev: Evidence, run_dir: Path) -> str:
    html = img(figures.roc_pr(ev.probability, ev.label), "ROC and precision-recall curves")
    metrics = run_dir / "metrics.json"
    if metrics.is_file():
        results = json.loads(metrics.read_text())
        rows = []
        for name, r in results.items():
            row = {"model": name, "kind": r.get("kind", "deep"), "modalities": "+".join(r.get("modalities", []))}
            row.update({k: v for k, v in r.items() if isinstance(v, (int, float)) and not isinstance(v, bool)})
            rows.append(row)
        html += "<h3>Fusion strategies and baselines (test split, radfusion evaluate)</h3>" + table(pd.DataFrame(rows))
        html += img(figures.evaluation(results), "evaluation table as a plot")
        html += "<p class=note>Deep models against the classical baselines: see Classical baselines.</p>"
    else:
        html += "<p class=note>No metrics.json in the run folder: run radfusion evaluate for the strategy table.</p>"
    return html


def _calibration(ev: Evidence) -> str:
    c = ev.calibration
    return (
        img(figures.reliability(c), "reliability diagram")
        + f"<p>ECE ({c['n_bins']} bins, {c['n']} held-out patients): {fmt(c['ece_before'])} uncalibrated, "
        f"{fmt(c['ece_after'])} after temperature scaling (T = {c['temperature']:.3f}, fitted on the "
        "validation split and stored in the model contract at export).</p>"
    )


def _survival_calibration(c: dict) -> str:
    d = c["d_calibration"]
    rows = [
        {
            "horizon (months)": h["horizon"],
            "calibration error": h["calibration_error"] if h["calibration_error"] is not None else float("nan"),
            "slope": h["slope"] if h["slope"] is not None else float("nan"),
            "groups": len(h["groups"]),
        }
        for h in c["horizons"]
    ]
    return (
        f"<p>D-calibration over {d['n']} held-out patients: chi-square {fmt(d['chi2'])}, p = {d['p_value']:.2g} "
        "(each patient's predicted survival at their own time should be uniform; a small p says the curves do "
        "not match the outcomes).</p>"
        + table(pd.DataFrame(rows))
        + "<p class=note>At each horizon: patients in five groups of predicted risk, each group's Kaplan-Meier "
        "event probability against its mean prediction; error = patient-weighted mean |observed - predicted|, "
        "slope 1 = the spread of risks is right.</p>"
    )


def _subgroups(ev: Evidence) -> str:
    frame = ev.subgroups.copy()
    frame["AUROC (95% CI)"] = [
        f"{fmt(a)} ({fmt(lo)}–{fmt(hi)})"
        for a, lo, hi in frame[["auroc", "auroc_low", "auroc_high"]].itertuples(index=False)
    ]
    frame["ECE (95% CI)"] = [
        f"{fmt(a)} ({fmt(lo)}–{fmt(hi)})" for a, lo, hi in frame[["ece", "ece_low", "ece_high"]].itertuples(index=False)
    ]
    shown = frame[["variable", "group", "n", "prevalence", "AUROC (95% CI)", "ECE (95% CI)"]]
    return table(shown) + "<p class=note>Held-out patients; confidence intervals from 500 bootstrap resamples.</p>"


def _genes(ev: Evidence) -> str:
    html = "<div class=figs>" + img(figures.top_genes(ev.gene_ranking), "top genes by Integrated Gradients")
    if ev.ablation_ranking is not None:
        html += img(
            figures.top_genes(ev.ablation_ranking, title="Top genes (feature ablation)"),
            "top genes by feature ablation",
        )
    html += "</div>"
    s, m = ev.gene_stability, ev.method_agreement
    html += (
        f"<p>Stability across {s['n_rankings']} disjoint patient folds: top-{s['top_k']} Jaccard "
        f"{fmt(s['jaccard_mean'])} (min {fmt(s['jaccard_min'])}), Spearman {fmt(s['spearman_mean'])}.</p>"
    )
    if m:
        html += (
            f"<p>Integrated Gradients vs feature ablation: top-{m['top_k']} Jaccard {fmt(m['jaccard_mean'])}, "
            f"Spearman {fmt(m['spearman_mean'])}.</p>"
        )
    return html + "<p class=note>Red: raises the predicted response; blue: lowers it.</p>"


def _saliency(ev: Evidence, dm) -> str:
    if not ev.saliencies:
        return "<p>No saliency maps: none asked for (<code>--saliency-cases 0</code>), or no held-out study.</p>"
    truth = load_truth(dm.cohort_dir)
    known = patients_by_id(truth) if truth else {}
    pictures = []
    for n, s in enumerate(ev.saliencies[:OVERLAYS], start=1):
        lesion = known.get(s.patient_id, {}).get("lesion_centre_mm")
        pictures.append(img(overlay_png(s, dm.geometry.window, lesion), f"saliency overlay, held-out case {n}"))
    return (
        "<div class=figs>" + "".join(pictures) + "</div>"
        f"<p>Occlusion sensitivity on {len(ev.saliencies)} held-out studies, resampled onto each source "
        "series; the slice through the peak is shown (+: peak, circle: planted lesion when known).</p>"
    )


def _stratification(ev: Evidence) -> str:
    r = ev.risk
    pairs = "; ".join(f"{k}: p = {v:.2g}" for k, v in r["pairwise_p"].items())
    html = img(figures.kaplan_meier(ev.survival, r["p_value"]), "Kaplan-Meier curves by risk group")
    html += (
        f"<p>Risk score: the model's log-odds, oriented and cut into tertiles on the training split "
        f"(hazard ratio per SD there: {r['train_hazard_ratio_per_sd']:.2f}). Held-out log-rank p = {r['p_value']:.2g} "
        f"({r['n']} patients); pairwise: {esc(pairs)}.</p>"
    )
    if ev.clusters:
        html += (
            f"<p>KMeans ({ev.clusters['k']} clusters) on the fused embeddings vs the known subtypes: "
            f"adjusted Rand index {fmt(ev.clusters['ari'])} (0 = chance).</p>"
        )
    return html


def _treatment(ev: Evidence) -> str:
    t = ev.treatments
    counts = t["recommended"].value_counts()
    rule = (
        "the lower end of the 95% interval of its predicted benefit over the reference"
        if ev.benefit is not None
        else "its predicted log-odds of response over the reference's"
    )
    html = (
        img(figures.treatment_gains(t), "predicted treatment gains")
        + f"<p>Reference (standard of care): {esc(t.attrs['reference'])}. A patient is switched only when "
        f"{rule} exceeds {t.attrs['margin']} log-odds; otherwise the reference is kept (no confident benefit). "
        f"Recommended: {esc(', '.join(f'{k} {v}' for k, v in counts.items()))}.</p>"
    )
    return html + (_policies(ev.policy) if ev.policy else "")


def _policies(policy: dict) -> str:
    """radfusion's policy beside the causal-ML peers', treating everyone alike and the oracle."""
    rows = []
    for name, entry in policy["policies"].items():
        observed, true = entry["observed"], entry.get("true", {})
        rows.append(
            {
                "policy": name,
                "switch rule": entry["rule"],
                "response rate (observed, IPW)": observed["value"],
                "95% CI": f"{observed['low']:.3f}–{observed['high']:.3f}",
                "response rate (truth)": true.get("policy", float("nan")),
                "true best recommended": entry.get("accuracy", float("nan")),
                **{f"Qini ({lv})": q["qini_coefficient"] for lv, q in entry["qini"].items()},
            }
        )
    for level, observed in policy["everyone"].items():
        truth_value = next(iter(policy["policies"].values())).get("true", {}).get(f"all_{level}", float("nan"))
        rows.append(
            {
                "policy": f"everyone {level}",
                "switch rule": "",
                "response rate (observed, IPW)": observed["value"],
                "95% CI": f"{observed['low']:.3f}–{observed['high']:.3f}",
                "response rate (truth)": truth_value,
            }
        )
    html = (
        "<h3>Policy value</h3>"
        + table(pd.DataFrame(rows))
        + "<p class=note>Observed: the held-out patients whose given treatment matches the policy, weighted by "
        "their arm's share (valid where treatment was assigned at random). Truth: each patient's true response "
        "probability under the recommended treatment (synthetic cohorts). Peers: EconML's learners on the same "
        "training and validation patients and features as the model's treatment term "
        "(training/evidence/peers.py). Qini coefficient: area between the "
        "ranking's incremental-responder curve and a random ranking's.</p>"
    )
    html += img(figures.qini_curves(policy), "Qini curves")
    if policy["groups"]:
        html += "<h3>Biomarker groups</h3>" + table(pd.DataFrame(policy["groups"]))
        html += (
            "<p class=note>Observed difference in response rate between the arms in each group (95% Wald "
            "interval) beside the model's mean predicted difference.</p>"
        )
    return html
