"""The report's figures, each returned as PNG bytes (matplotlib, no display)."""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from sklearn.metrics import auc, precision_recall_curve, roc_curve

from radfusion.training.evidence.stratify import GROUPS, km_curves


def _png(fig, layout: bool = True) -> bytes:
    """``layout``: False keeps the figure's own layout (one made with room for a legend)."""
    buffer = io.BytesIO()
    if layout:
        fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    return buffer.getvalue()


def roc_pr(probability: np.ndarray, label: np.ndarray) -> bytes:
    fig, (left, right) = plt.subplots(1, 2, figsize=(8, 3.6))
    fpr, tpr, _ = roc_curve(label, probability)
    left.plot(fpr, tpr, lw=2, label=f"AUROC {auc(fpr, tpr):.3f}")
    left.plot([0, 1], [0, 1], "k--", lw=0.8)
    left.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC")
    precision, recall, _ = precision_recall_curve(label, probability)
    right.plot(recall, precision, lw=2, label=f"AUPRC {auc(recall, precision):.3f}")
    right.axhline(label.mean(), color="k", ls="--", lw=0.8, label=f"prevalence {label.mean():.2f}")
    right.set(xlabel="recall", ylabel="precision", title="Precision-recall")
    for ax in (left, right):
        ax.legend(loc="lower right")
    return _png(fig)


def reliability(calibration: dict) -> bytes:
    fig, ax = plt.subplots(figsize=(4.2, 4))
    ax.plot([0, 1], [0, 1], "k--", lw=0.8, label="perfect")
    for key, name in (("reliability_before", "uncalibrated"), ("reliability_after", "temperature-scaled")):
        points = calibration[key]
        ece = calibration["ece_before" if key.endswith("before") else "ece_after"]
        ax.plot(points["predicted"], points["observed"], "o-", label=f"{name} (ECE {ece:.3f})")
    ax.set(
        xlabel="mean predicted probability",
        ylabel="observed frequency",
        title=f"Reliability (T = {calibration['temperature']:.2f})",
        xlim=(0, 1),
        ylim=(0, 1),
    )
    ax.legend(loc="upper left", fontsize=8)
    return _png(fig)


def kaplan_meier(survival: pd.DataFrame, p_value: float) -> bytes:
    fig, ax = plt.subplots(figsize=(5.5, 4))
    curves = km_curves(survival["group"].to_numpy(), survival["months"].to_numpy(), survival["event"].to_numpy())
    for group in GROUPS:
        if group in curves:
            curves[group].plot_survival_function(ax=ax, ci_show=True)
    ax.set(
        xlabel="months", ylabel="survival probability", title=f"Kaplan-Meier by risk group (log-rank p = {p_value:.2g})"
    )
    return _png(fig)


def top_genes(ranking: pd.DataFrame, n: int = 20, title: str = "Top genes (Integrated Gradients)") -> bytes:
    top = ranking.head(n).iloc[::-1]
    fig, ax = plt.subplots(figsize=(5, 0.25 * n + 1))
    colours = np.where(top["direction"] >= 0, "tab:red", "tab:blue")
    ax.barh(top.index, top["importance"], color=colours)
    ax.set(xlabel="mean |attribution| (log-odds)", title=title)
    ax.tick_params(axis="y", labelsize=8)
    return _png(fig)


def qini_curves(policy: dict) -> bytes:
    """Each policy's Qini curve (incremental responders per patient vs share ranked)."""
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for name, entry in policy["policies"].items():
        for level, curve in entry["qini"].items():
            ax.plot(curve["share"], curve["gain"], label=f"{name} ({level})")
    # A random ranking: the straight line to where every ranking of that level ends.
    for curve in next(iter(policy["policies"].values()))["qini"].values():
        ax.plot([0, 1], [0, curve["gain"][-1]], "k--", lw=0.8)
    ax.set(xlabel="share of patients, highest predicted benefit first", ylabel="incremental responders per patient")
    ax.legend(fontsize=7)
    return _png(fig)


def treatment_gains(treatments: pd.DataFrame) -> bytes:
    fig, ax = plt.subplots(figsize=(5, 3.5))
    gain = treatments["gain_log_odds"].to_numpy()
    margin = treatments.attrs["margin"]
    ax.hist(gain, bins=30, color="tab:gray")
    ax.axvline(margin, color="tab:red", ls="--", label=f"margin {margin} log-odds")
    ax.set(
        xlabel=f"predicted gain over {treatments.attrs['reference']} (log-odds)",
        ylabel="patients",
        title="Treatment effect predicted per patient",
    )
    ax.legend()
    return _png(fig)


def training_curves(found) -> bytes:
    """training/curves.py's figure (losses and validation metrics per epoch)."""
    from radfusion.training.curves import draw

    return _png(draw(found), layout=False)


# How each presence pattern of `radfusion evaluate` is drawn: (marker, filled).
PATTERN_MARKERS = {"observed": ("o", True), "image_only": ("^", False), "genomics_only": ("s", False)}


def evaluation_figure(results: dict):
    """`radfusion evaluate`'s table as a plot: a panel per metric (AUROC, C-index,
    td-AUC), a row per model (deep models blue, classical baselines grey) with its
    value on all test patients (filled, with the 95% bootstrap interval where the
    results have one), under each presence pattern (hollow) and per seed (x)."""
    from radfusion.training.evaluate import METRIC_TITLES, PATTERN_TITLES

    metrics = [m for m in METRIC_TITLES if any(f"{m}_observed" in r for r in results.values())]
    if not metrics:
        raise ValueError("no model has a test metric")
    rows = {m: [n for n, r in results.items() if f"{m}_observed" in r] for m in metrics}
    height = max(len(names) for names in rows.values())
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.8 * len(metrics) + 1.5, 0.42 * height + 1.6), squeeze=False)
    for ax, metric in zip(axes[0], metrics, strict=True):
        names = rows[metric][::-1]  # the first model on top
        for y, name in enumerate(names):
            r = results[name]
            colour = "tab:gray" if r.get("kind") == "baseline" else "tab:blue"
            for pattern, (marker, filled) in PATTERN_MARKERS.items():
                value = r.get(f"{metric}_{pattern}")
                if value is None or not np.isfinite(value):
                    continue
                ax.plot(
                    [value],
                    [y],
                    marker,
                    ms=7,
                    color=colour,
                    mfc=colour if filled else "none",
                    label=PATTERN_TITLES[pattern],
                    gid=f"{name}|{pattern}",
                )
            headline = r.get(f"{metric}_observed")
            if headline is not None and np.isfinite(headline):
                ax.text(1.02, y, f"{headline:.3f}", transform=ax.get_yaxis_transform(), va="center", fontsize=8)
            ci = r.get(f"{metric}_ci95")
            if ci and all(v is not None and np.isfinite(v) for v in ci):
                ax.hlines(y, ci[0], ci[1], color=colour, lw=2, gid=f"{name}|ci95")
            seeds = r.get("seeds") or {}
            if seeds.get("metric") == metric:
                values = [v for v in seeds.get("values", []) if v is not None and np.isfinite(v)]
                ax.plot(values, [y] * len(values), "x", color="k", ms=5, label="per seed", gid=f"{name}|seeds")
        ax.axvline(0.5, color="k", ls="--", lw=0.8)
        ax.set_yticks(range(len(names)), names, fontsize=8)
        ax.set_ylim(-0.6, len(names) - 0.4)
        ax.set(xlabel=f"{METRIC_TITLES[metric]} (test split)", title=METRIC_TITLES[metric])
        ax.grid(axis="x", alpha=0.3)
    legend = {label: handle for ax in axes[0] for handle, label in zip(*ax.get_legend_handles_labels(), strict=True)}
    if legend:
        fig.legend(legend.values(), legend.keys(), loc="lower center", ncol=len(legend), fontsize=8, frameon=False)
    n_test = next((r["n_observed"] for r in results.values() if "n_observed" in r), None)
    fig.suptitle(
        "radfusion evaluate"
        + (f": {n_test} test patients" if n_test else "")
        + "\nblue: deep models, grey: classical baselines; bars: 95% bootstrap CI",
        fontsize=9,
    )
    fig.tight_layout(rect=(0, 0.3 / fig.get_figheight(), 1, 1))  # room for the legend below
    return fig


def evaluation(results: dict) -> bytes:
    return _png(evaluation_figure(results), layout=False)
