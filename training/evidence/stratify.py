"""Patient stratification: risk groups with survival curves, and clusters of the
fused embeddings against known subtypes.

The risk score is the model's positive-class log-odds. Its direction and the tertile
cut points are fixed on the training split (a Cox model on the score), then applied
to held-out patients, so the log-rank test on the held-out split is not tuned on
the patients it is tested on."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from lifelines import CoxPHFitter, KaplanMeierFitter
from lifelines.statistics import multivariate_logrank_test, pairwise_logrank_test
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score
from sklearn.preprocessing import StandardScaler

from radfusion.training.evidence.cases import Cases, positive_log_odds, predict_logits, used_presence

GROUPS = ("low", "intermediate", "high")


@dataclass
class RiskModel:
    """How a score becomes a risk group: orientation (+1: higher score, higher
    hazard) and the two tertile cut points of the oriented training scores."""

    direction: float
    cuts: tuple[float, float]
    hazard_ratio_per_sd: float

    def groups(self, score: np.ndarray) -> np.ndarray:
        oriented = self.direction * np.asarray(score)
        return np.asarray(GROUPS, dtype=object)[np.digitize(oriented, self.cuts)]


def risk_scores(net, cases: Cases) -> np.ndarray:
    return positive_log_odds(predict_logits(net, cases))


def fit_risk_model(score: np.ndarray, months: np.ndarray, event: np.ndarray) -> RiskModel:
    """Orientation from a univariable Cox model, cut points at the tertiles."""
    z = (score - score.mean()) / (score.std() or 1.0)
    frame = pd.DataFrame({"z": z, "T": months, "E": event})
    cox = CoxPHFitter().fit(frame, duration_col="T", event_col="E")
    log_hr = float(cox.params_["z"])
    direction = 1.0 if log_hr >= 0 else -1.0
    oriented = direction * score
    cuts = tuple(float(q) for q in np.quantile(oriented, [1 / 3, 2 / 3]))
    return RiskModel(direction, cuts, float(np.exp(abs(log_hr))))


def logrank(groups: np.ndarray, months: np.ndarray, event: np.ndarray) -> dict:
    """Multivariate log-rank across the groups and pairwise tests between them."""
    overall = multivariate_logrank_test(months, groups, event)
    frame = pd.DataFrame({"T": months, "E": event, "group": groups})
    pairwise = pairwise_logrank_test(frame["T"], frame["group"], frame["E"])
    pairs = {f"{a} vs {b}": float(p) for (a, b), p in pairwise.summary["p"].items()}
    return {
        "p_value": float(overall.p_value),
        "statistic": float(overall.test_statistic),
        "pairwise_p": pairs,
        "n": len(groups),
        "n_per_group": {g: int((groups == g).sum()) for g in GROUPS},
    }


def km_curves(groups: np.ndarray, months: np.ndarray, event: np.ndarray) -> dict[str, KaplanMeierFitter]:
    curves = {}
    for g in GROUPS:
        mask = groups == g
        if mask.any():
            curves[g] = KaplanMeierFitter(label=f"{g} risk (n={int(mask.sum())})").fit(months[mask], event[mask])
    return curves


@torch.no_grad()
def fused_embeddings(net, cases: Cases) -> np.ndarray:
    """Every modality's (masked) embedding concatenated: the fused representation."""
    net.eval()
    presence = used_presence(net, cases.presence)
    parts = net.embeddings(cases.image, cases.genomics, cases.clinical, presence)
    return torch.cat(parts, dim=1).numpy()


def cluster_subtypes(embeddings: np.ndarray, labels: np.ndarray, seed: int = 0) -> dict:
    """KMeans with as many clusters as known subtypes; adjusted Rand index against them
    (0: no better than chance, 1: identical partitions)."""
    k = len(np.unique(labels))
    x = StandardScaler().fit_transform(embeddings)
    clusters = KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(x)
    return {"ari": float(adjusted_rand_score(labels, clusters)), "k": int(k), "n": len(labels), "clusters": clusters}
