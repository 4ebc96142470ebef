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


def _png(fig) -> bytes:
    buffer = io.BytesIO()
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
