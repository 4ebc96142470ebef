"""Biomarker discovery: which omics features drive the model's predictions.

Integrated Gradients (captum) attributes each patient's positive-class log-odds to
the omics inputs, from the training mean (z = 0, the "average patient") to the
patient's values; the cohort ranking is the mean |attribution| per feature. Feature
ablation (captum), which replaces one feature at a time with the training mean, is
the second, gradient-free method: two methods that agree are harder to fool (e.g. by
saturated activations). Stability is the agreement of rankings computed on disjoint
folds of patients (or from models trained with different seeds)."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import torch
from captum.attr import FeatureAblation, IntegratedGradients
from scipy.stats import spearmanr

from radfusion.training.evidence.cases import Cases, log_odds_torch, used_presence

METHODS = ("integrated_gradients", "feature_ablation")


def omics_features(net, dm) -> list[str]:
    """Feature names of the model's `genomics` input, in input order."""
    return [f for block in dm.omics for f in block.features]


class _LogOdds(torch.nn.Module):
    """genomics first (the attributed input), the rest fixed per patient."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, genomics, image, clinical, presence):
        return log_odds_torch(self.net(image, genomics, clinical, presence))


def gene_attributions(
    net,
    cases: Cases,
    features: list[str],
    method: str = "integrated_gradients",
    n_steps: int = 32,
    batch_size: int = 16,
) -> pd.DataFrame:
    """(patients with genomics) x features attributions of the positive-class log-odds."""
    if method not in METHODS:
        raise ValueError(f"unknown attribution method {method!r}; choose from {METHODS}")
    if not any(net.uses(b) for b in net.omics_sizes):
        raise ValueError("the model does not use genomics: nothing to attribute")
    keep = cases.has(net, "genomics")
    if not keep.any():
        raise ValueError("no case has genomics to attribute")
    sub = cases.subset(keep)
    forward = _LogOdds(net).eval()
    presence = used_presence(net, sub.presence)
    rows = []
    for start in range(0, len(sub), batch_size):
        s = slice(start, start + batch_size)
        genomics = sub.genomics[s].clone().requires_grad_(method == "integrated_gradients")
        extra = (sub.image[s], sub.clinical[s], presence[s])
        if method == "integrated_gradients":
            attr = IntegratedGradients(forward).attribute(
                genomics,
                baselines=torch.zeros_like(genomics),
                additional_forward_args=extra,
                n_steps=n_steps,
                internal_batch_size=batch_size * 8,
            )
        else:
            with torch.no_grad():
                attr = FeatureAblation(forward).attribute(
                    genomics,
                    baselines=0.0,
                    additional_forward_args=extra,
                    perturbations_per_eval=8,
                )
        rows.append(attr.detach())
    return pd.DataFrame(torch.cat(rows).numpy(), index=sub.patient_ids, columns=features)


def rank_features(attributions: pd.DataFrame) -> pd.DataFrame:
    """Cohort ranking: mean |attribution| (importance) and mean signed attribution
    (direction: positive raises the predicted response), most important first."""
    table = pd.DataFrame(
        {
            "importance": attributions.abs().mean(axis=0),
            "direction": attributions.mean(axis=0),
        }
    )
    table = table.sort_values("importance", ascending=False)
    table["rank"] = np.arange(1, len(table) + 1)
    return table


def top_k_agreement(importances: list[pd.Series], k: int = 20) -> dict[str, float]:
    """Mean pairwise Jaccard overlap of the top-k sets and Spearman correlation of the
    importances, over every pair of rankings."""
    if len(importances) < 2:
        raise ValueError("stability needs at least two rankings")
    jaccard, rho = [], []
    for a, b in itertools.combinations(importances, 2):
        top_a, top_b = set(a.nlargest(k).index), set(b.nlargest(k).index)
        jaccard.append(len(top_a & top_b) / len(top_a | top_b))
        rho.append(spearmanr(a, b.loc[a.index]).statistic)
    return {
        "top_k": k,
        "jaccard_mean": float(np.mean(jaccard)),
        "jaccard_min": float(np.min(jaccard)),
        "spearman_mean": float(np.mean(rho)),
        "n_rankings": len(importances),
    }


def fold_stability(attributions: pd.DataFrame, n_folds: int = 3, k: int = 20, seed: int = 0) -> dict[str, float]:
    """Agreement of the rankings computed on disjoint random folds of the patients:
    a biomarker list that changes with the patients sampled is not a finding."""
    order = np.random.default_rng(seed).permutation(len(attributions))
    folds = np.array_split(order, n_folds)
    return top_k_agreement([rank_features(attributions.iloc[f])["importance"] for f in folds], k)


def compare_methods(first: pd.DataFrame, second: pd.DataFrame, k: int = 20) -> dict[str, float]:
    """Agreement of two methods' cohort rankings (same patients)."""
    common = first.index.intersection(second.index)
    a = rank_features(first.loc[common])["importance"]
    b = rank_features(second.loc[common])["importance"]
    return top_k_agreement([a, b], k)
