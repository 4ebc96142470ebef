"""The report's "Classical baselines" section: the deep models against the classical
baselines fitted on the same patients and features, from `radfusion evaluate`'s
metrics.json (one test split, bootstrap intervals over patients) and from a
`radfusion cv` cv.json (per-fold values, mean and interval, paired differences per
fold). Where a deep model loses to a baseline, the section says so in words."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

from radfusion.training.cv.verdict import loses, model_summary, sentence
from radfusion.training.report.html import esc, table

METRIC_TITLES = {"cindex": "C-index", "auroc": "AUROC"}
DEEP = "radfusion"  # the network's name in cv.json (training/cv/fold.py)


def find_cv(run_dir: Path, cv: Path | None = None) -> Path | None:
    """cv.json: ``cv`` (the file or its folder) when given, else one in the run folder
    (``cv.json`` or ``cv/cv.json``), else None."""
    if cv is not None:
        path = Path(cv) / "cv.json" if Path(cv).is_dir() else Path(cv)
        if not path.is_file():
            raise FileNotFoundError(f"no cross-validation summary at {path} (radfusion cv writes cv.json)")
        return path
    for candidate in (run_dir / "cv.json", run_dir / "cv" / "cv.json"):
        if candidate.is_file():
            return candidate
    return None


def baselines_section(metrics: dict | None, cv: dict | None) -> str:
    """The section's HTML; empty when neither source has a baseline."""
    parts = []
    if metrics:
        parts.append(evaluate_html(metrics))
    if cv and len(cv.get("models", {})) > 1:
        parts.append(cv_html(cv))
    return "".join(p for p in parts if p)


def _fmt(value, digits: int = 3) -> str:
    return "–" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def _signed(value) -> str:
    return "–" if value is None or not math.isfinite(value) else f"{value:+.3f}"


def _ci(pair, show=_signed) -> str:
    low, high = pair
    return f"{show(low)} to {show(high)}"


def _sentences(items: list[tuple[str, bool]]) -> str:
    return "".join(f"<p class={'fail' if lost else 'note'}>{esc(text)}</p>" for text, lost in items)


def evaluate_html(metrics: dict) -> str:
    """Every deep model against each baseline fitted on its split and features."""
    rows, said = [], []
    for name, r in metrics.items():
        compared = r.get("vs_baselines") or {}
        for baseline, c in compared.items():
            rows.append(
                {
                    "model": name,
                    "baseline": baseline,
                    "metric": METRIC_TITLES[c["metric"]],
                    "model value": _fmt(c["model"]),
                    "baseline value": _fmt(c["baseline_value"]),
                    "model − baseline": _signed(c["difference"]),
                    "95% CI": _ci(c["ci95"]),
                    "verdict": c["verdict"],
                }
            )
        if compared:
            title = METRIC_TITLES[next(iter(compared.values()))["metric"]]
            text = model_summary(name, compared, title, "this test split")
            if text:
                said.append((text, True))
    absent = [
        (f"{name}: {'skipped' if 'skipped' in r else 'failed'}: {r.get('skipped') or r.get('failed')}", False)
        for name, r in metrics.items()
        if r.get("kind") == "baseline" and ("skipped" in r or "failed" in r)
    ]
    if not rows and not absent:
        return ""
    html = "<h3>Deep models against classical baselines (test split, radfusion evaluate)</h3>"
    if rows:
        resamples = next(c for r in metrics.values() for c in (r.get("vs_baselines") or {}).values())["resamples"]
        html += table(pd.DataFrame(rows)) + (
            "<p class=note>Each baseline is fitted on the deep model's own training and validation patients "
            "with the same table features (after the same missing-data policy) and scored on the same test "
            f"patients; 95% CI from {resamples} bootstrap resamples of those patients, the same for both models.</p>"
        )
        if not said:
            said = [("No deep model did worse than a classical baseline on this test split.", False)]
    return html + _sentences(said + absent)


def cv_html(summary: dict) -> str:
    """cv.json: per model mean and interval over folds, pooled metric, paired
    differences from the network, every fold's values, and what they say."""
    title = METRIC_TITLES[summary["metric"]]
    models = summary["models"]
    deep = summary.get("radfusion", {})
    deep_name = f"radfusion ({'+'.join(deep.get('modalities', []))}, {deep.get('fusion', '?')})"
    overview = []
    for name, m in models.items():
        diff = m.get("paired_difference")
        pooled = m.get("pooled") or {}
        bounds = (pooled.get("low"), pooled.get("high"))
        overview.append(
            {
                "model": deep_name if name == DEEP else name,
                f"{title} mean": _fmt(m.get("mean")),
                "95% CI": _ci(m.get("ci95", (None, None)), _fmt),
                "pooled (95% CI)": f"{_fmt(pooled.get('value'))} ({_ci(bounds, _fmt)})",
                "radfusion − model": _signed(diff["mean"]) if diff else "–",
                "95% CI of the difference": _ci(diff["ci95"]) if diff else "–",
                "seconds": _fmt(m.get("seconds"), 1),
            }
        )
    folds = [f"r{f['repeat']} f{f['fold']}" for f in summary["folds_detail"]]
    per_fold = [_fold_row(deep_name if n == DEEP else n, folds, m["per_fold"], _fmt) for n, m in models.items()]
    per_fold += [
        _fold_row(f"radfusion − {n}", folds, m["paired_difference"]["per_fold"], _signed)
        for n, m in models.items()
        if "paired_difference" in m
    ]
    said = []
    for name, m in models.items():
        diff = m.get("paired_difference")
        if diff:
            low, high = diff["ci95"]
            lost = loses(diff["mean"], low, high)
            said.append((sentence("radfusion", name, diff["mean"], low, high, title, "these folds"), lost))
    said.sort(key=lambda item: not item[1])  # losses first
    interval = "t interval over folds" + (", corrected for repeats" if summary["repeats"] > 1 else "")
    return (
        f"<h3>Cross-validation: {summary['folds']} folds x {summary['repeats']} repeat(s), "
        f"{summary['n_patients']} patients, {title} (radfusion cv)</h3>"
        + table(pd.DataFrame(overview))
        + f"<p class=note>95% CI: {interval}; pooled: the metric over all out-of-fold predictions with a "
        "bootstrap interval over patients. Every model is fitted on the same training part of each fold with "
        "the same features and scored on the same held-out fold.</p>"
        + f"<p>Per fold ({esc(title)}; paired rows: radfusion − baseline on that fold):</p>"
        + table(pd.DataFrame(per_fold))
        + _sentences(said)
    )


def _fold_row(model: str, folds: list[str], values: list, show) -> dict:
    return {"model": model, **{fold: show(v) for fold, v in zip(folds, values, strict=True)}}


def load_json(path: Path | None) -> dict | None:
    return json.loads(path.read_text()) if path is not None and path.is_file() else None
