"""The cross-validation table: the folds' results summarised per model (cv.json) and
shown as Markdown (cv.md): one row per model, the network's configuration first, each
baseline's paired difference from it (radfusion minus baseline: positive means the
network did better on the same folds), then every fold's values."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from radfusion.training.cv.affine import AFFINE_BASELINES
from radfusion.training.cv.arrays import Outcome
from radfusion.training.cv.fold import DEEP
from radfusion.training.cv.metrics import metric_name, paired_differences, pooled_metric, summarise

METRIC_TITLES = {"cindex": "C-index", "auroc": "AUROC"}


def _interval(summary) -> dict:
    return {"mean": summary.mean, "ci95": [summary.low, summary.high], "sd": summary.sd, "n_folds": summary.n}


def _pooled(results: list[dict], model: str, survival: bool, n_classes: int) -> dict:
    rows = [row for r in results for row in r["predictions"] if row["model"] == model]
    if survival:
        scores = np.array([row["risk"] for row in rows])
        outcome = Outcome(
            label=np.zeros(len(rows), dtype=int),
            time=np.array([row["time"] for row in rows], dtype=np.float64),
            event=np.array([row["event"] for row in rows], dtype=np.int64),
        )
    else:
        labels = results[0]["labels"]
        scores = np.array([[row[f"p_{label}"] for label in labels] for row in rows]).reshape(len(rows), n_classes)
        label = np.array([row["label"] for row in rows], dtype=int)
        outcome = Outcome(label=label, time=np.zeros(len(rows)), event=np.zeros(len(rows), dtype=int))
    repeat = np.array([row["repeat"] for row in rows])
    patient = np.array([str(row["patient_id"]) for row in rows])
    return pooled_metric(survival, scores, outcome, repeat, patient)


def build_results(results: Sequence[dict], folds: int, repeats: int, cli_args: Sequence[str]) -> dict:
    """cv.json's content from the (repeat, fold) results of fold.run_fold."""
    results = sorted(results, key=lambda r: (r["repeat"], r["fold"]))
    first = results[0]
    survival = first["survival"]
    names = list(first["models"])
    deep = [r["models"][DEEP]["metric"] for r in results]
    models: dict[str, dict] = {}
    for name in names:
        values = [r["models"][name]["metric"] for r in results]
        entry = {
            "per_fold": values,
            **_interval(summarise(values, repeats, folds)),
            "pooled": _pooled(results, name, survival, len(first["labels"])),
            "seconds": float(sum(r["models"][name]["seconds"] for r in results)),
            "seconds_per_fold": [r["models"][name]["seconds"] for r in results],
        }
        if name == DEEP:
            entry["evaluate"] = [r["models"][name]["evaluate"] for r in results]
        else:
            entry["chosen"] = [r["models"][name].get("chosen", {}) for r in results]
            diffs = paired_differences(deep, values)
            entry["paired_difference"] = {"per_fold": diffs, **_interval(summarise(diffs, repeats, folds))}
        if repeats > 1:
            entry["per_repeat_mean"] = [
                summarise([v for r, v in zip(results, values, strict=True) if r["repeat"] == k]).mean
                for k in range(repeats)
            ]
        models[name] = entry
    baselines = [n for n in names if n != DEEP]
    best = max(baselines, key=lambda n: _finite(models[n]["mean"])) if baselines else None
    slowest = max((models[n]["seconds"] for n in baselines), default=0.0)
    return {
        "task": first["task"],
        "metric": metric_name(survival),
        "folds": folds,
        "repeats": repeats,
        "n_patients": sum(r["n_train"] + r["n_val"] + r["n_test"] for r in results) // len(results),
        "radfusion": {"arguments": list(cli_args), "modalities": first["modalities"], "fusion": first["fusion"]},
        "folds_detail": [{k: r[k] for k in ("repeat", "fold", "n_train", "n_val", "n_test")} for r in results],
        "models": models,
        "best_baseline": best,
        # radfusion minus the best baseline (by mean), fold by fold: >= 0 means the
        # network is at least as good as the best classical model.
        "deep_vs_best_classical": models[best]["paired_difference"]["mean"] if best else None,
        "cv_seconds_ratio": models[DEEP]["seconds"] / slowest if slowest > 0 else None,
    }


def _finite(value: float | None, undefined: float = float("-inf")) -> float:
    return value if value is not None and math.isfinite(value) else undefined


def _fmt(value, digits: int = 3) -> str:
    return "–" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def _signed(value) -> str:
    return "–" if value is None or not math.isfinite(value) else f"{value:+.3f}"


def _ci(pair) -> str:
    low, high = pair
    return f"{_fmt(low)} to {_fmt(high)}"


def markdown(summary: dict) -> str:
    title = METRIC_TITLES[summary["metric"]]
    deep = summary["radfusion"]
    row_name = {DEEP: f"radfusion ({'+'.join(deep['modalities'])}, {deep['fusion']})"}
    # Folds of different repeats share patients: their interval is the corrected one (metrics.summarise).
    interval = "folds, corrected for repeats" if summary["repeats"] > 1 else "folds"
    lines = [
        f"# Cross-validation: {summary['folds']} folds x {summary['repeats']} repeat(s), "
        f"{summary['n_patients']} patients, {title} ({summary['task']})",
        "",
        "radfusion arguments: `" + " ".join(deep["arguments"]) + "`",
        "",
        f"| model | {title} mean | 95% CI ({interval}) | pooled (95% CI) | radfusion − model | 95% CI | seconds |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, m in summary["models"].items():
        pooled = m["pooled"]
        diff = m.get("paired_difference")
        lines.append(
            f"| {row_name.get(name, name)} | {_fmt(m['mean'])} | {_ci(m['ci95'])} "
            f"| {_fmt(pooled['value'])} ({_ci((pooled['low'], pooled['high']))}) "
            f"| {_signed(diff['mean']) if diff else '–'} | {_ci(diff['ci95']) if diff else '–'} "
            f"| {m['seconds']:.1f} |"
        )
    folds = summary["folds_detail"]
    header = [f"r{f['repeat']} f{f['fold']}" for f in folds]
    lines += ["", f"Per fold ({title}; paired rows: radfusion − baseline on that fold):", ""]
    lines += ["| model | " + " | ".join(header) + " |", "|---|" + "---|" * len(header)]
    for name, m in summary["models"].items():
        lines.append(f"| {row_name.get(name, name)} | " + " | ".join(_fmt(v) for v in m["per_fold"]) + " |")
    for name, m in summary["models"].items():
        if "paired_difference" in m:
            cells = " | ".join(_signed(v) for v in m["paired_difference"]["per_fold"])
            lines.append(f"| radfusion − {name} | {cells} |")
    best, difference = summary["best_baseline"], summary["deep_vs_best_classical"]
    lines += [
        "",
        f"Best baseline: {best or '–'}; radfusion − best baseline: {_signed(difference)}; "
        f"time radfusion / slowest baseline: {_fmt(summary['cv_seconds_ratio'], 1)}",
    ]
    if best and difference is not None and difference < 0:
        lines += ["", f"On these folds {best} did better than radfusion on average: consider it for this cohort."]
        models = summary["models"]
        # The best of the linear baselines that beat the network on these folds.
        exportable = summary["task"] in ("survival_cox", "classification")
        better = [
            n
            for n in AFFINE_BASELINES
            if exportable and n in models and _finite(models[n]["paired_difference"]["mean"], 0.0) < 0
        ]
        linear = max(better, key=lambda n: _finite(models[n]["mean"]), default=None)
        if linear:
            lines += [
                f"A linear baseline ({linear}) can be exported in the network's place, under the same contract: "
                f"`radfusion export --checkpoint CHECKPOINT --out MODEL.onnx --model {linear}`."
            ]
    return "\n".join(lines) + "\n"
