"""Cross-validation metrics.

- per fold: Harrell's C (lifelines, as `radfusion evaluate` computes it) for survival,
  AUROC (scikit-learn; one-vs-rest macro for more than two classes) for classification;
- over folds: mean and a 95% t interval. With repeated CV the folds of different
  repeats share patients, so a plain t interval over all of them is too narrow: the
  variance is corrected as Nadeau & Bengio (2003) propose for resampled estimates,
  (1/n + n_test/n_train) s^2 (Bouckaert & Frank 2004's corrected repeated k-fold t);
- pooled: the metric over all out-of-fold predictions of a repeat (averaged over
  repeats), with a percentile bootstrap interval over patients;
- paired: per-fold differences between two models on the same folds, summarised as above."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats
from sklearn.metrics import roc_auc_score

from radfusion.training.cv.arrays import Outcome
from radfusion.training.tasks import concordance

BOOTSTRAP_SAMPLES = 1000


def metric_name(survival: bool) -> str:
    return "cindex" if survival else "auroc"


def fold_metric(survival: bool, scores: np.ndarray, outcome: Outcome) -> float:
    """One model's metric on one set of predictions: ``scores`` are risks (survival) or
    class probabilities (n, classes). NaN where undefined (no event, one class)."""
    scores = np.asarray(scores, dtype=np.float64)
    if survival:
        if outcome.event.sum() == 0 or len(scores) < 2:
            return float("nan")
        try:
            return concordance(scores, outcome.time, outcome.event)
        except ZeroDivisionError:  # no comparable pair (e.g. all events at one time)
            return float("nan")
    labels = outcome.label.astype(int)
    present = np.unique(labels)
    if len(present) < 2:
        return float("nan")
    if scores.shape[1] == 2:
        return float(roc_auc_score(labels, scores[:, 1]))
    # Classes absent from these patients drop out: AUROC over the ones present.
    probs = scores[:, present] / scores[:, present].sum(axis=1, keepdims=True)
    if len(present) == 2:
        return float(roc_auc_score(labels == present[1], probs[:, 1]))
    return float(roc_auc_score(labels, probs, multi_class="ovr", average="macro", labels=present))


@dataclass(frozen=True)
class Summary:
    """Mean over folds with its 95% interval (``low``, ``high``), the folds' standard
    deviation and how many folds had a defined value."""

    mean: float
    sd: float
    low: float
    high: float
    n: int

    def as_dict(self) -> dict:
        return asdict(self)


def summarise(values: Sequence[float], repeats: int = 1, folds: int | None = None) -> Summary:
    """Mean and 95% t interval of per-fold values (NaN folds left out). ``repeats`` > 1:
    the corrected repeated-CV variance with test share 1/``folds``."""
    v = np.asarray([x for x in values if np.isfinite(x)], dtype=np.float64)
    n = len(v)
    if n == 0:
        return Summary(float("nan"), float("nan"), float("nan"), float("nan"), 0)
    mean = float(v.mean())
    if n < 2:
        return Summary(mean, float("nan"), float("nan"), float("nan"), n)
    sd = float(v.std(ddof=1))
    if repeats > 1:
        share = 1.0 / (folds or n)
        se = math.sqrt((1.0 / n + share / (1.0 - share)) * sd**2)
    else:
        se = sd / math.sqrt(n)
    half = float(stats.t.ppf(0.975, n - 1)) * se
    return Summary(mean, sd, mean - half, mean + half, n)


def paired_differences(a: Sequence[float], b: Sequence[float]) -> list[float]:
    """a - b fold by fold (the same folds, in the same order)."""
    if len(a) != len(b):
        raise ValueError(f"paired differences need the same folds: {len(a)} vs {len(b)}")
    return [float(x - y) for x, y in zip(a, b, strict=True)]


def pooled_metric(
    survival: bool,
    scores: np.ndarray,
    outcome: Outcome,
    repeat: np.ndarray,
    patient: np.ndarray,
    samples: int = BOOTSTRAP_SAMPLES,
    seed: int = 0,
) -> dict[str, float]:
    """The metric over all out-of-fold predictions of each repeat, averaged over
    repeats, and a 95% percentile bootstrap interval (patients resampled, the same
    draw in every repeat). Risk scores of different folds come from different fits,
    so the pooled c-index also measures how well their scales agree."""
    # Each repeat predicts every patient once: in patient order, one draw serves all.
    by_repeat = [np.flatnonzero(repeat == r) for r in np.unique(repeat)]
    order = [idx[np.argsort(np.asarray(patient)[idx], kind="stable")] for idx in by_repeat]

    def value(rows: np.ndarray) -> float:
        per_repeat = [fold_metric(survival, scores[o[rows]], outcome.take(o[rows])) for o in order]
        defined = [v for v in per_repeat if np.isfinite(v)]
        return float(np.mean(defined)) if defined else float("nan")

    n = min(len(o) for o in order)
    point = value(np.arange(n))
    rng = np.random.default_rng(seed)
    draws = np.array([value(rng.integers(0, n, n)) for _ in range(samples)])
    draws = draws[np.isfinite(draws)]
    low, high = np.percentile(draws, [2.5, 97.5]) if len(draws) else (np.nan, np.nan)
    return {"value": point, "low": float(low), "high": float(high)}


def bootstrap_counts(n: int, samples: int = BOOTSTRAP_SAMPLES, seed: int = 0) -> np.ndarray:
    """Bootstrap resamples of ``n`` patients as counts (samples x n: how often each
    patient is drawn), so several models can be scored on the same draws."""
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n, (samples, n))
    counts = np.zeros((samples, n))
    np.add.at(counts, (np.arange(samples)[:, None], draws), 1.0)
    return counts


def resampled_metric(survival: bool, scores: np.ndarray, outcome: Outcome, counts: np.ndarray) -> np.ndarray:
    """``fold_metric`` on each resample of ``counts`` (bootstrap_counts), NaN where it
    is undefined. Harrell's C and binary AUROC are pair statistics, so a resample's
    value is a ratio of count-weighted pair sums: one matrix product for all resamples
    instead of a library call each (1000 calls of scikit-learn's AUROC took 3 s on 160
    patients). Pairs are counted as lifelines and scikit-learn count them: an event
    before a later time, or before a censoring at the same time; tied scores count half."""
    scores = np.asarray(scores, dtype=np.float64)
    if survival:
        risk, time, event = scores.reshape(len(scores)), outcome.time, outcome.event.astype(bool)
        later = (time[:, None] < time[None, :]) | ((time[:, None] == time[None, :]) & ~event[None, :])
        comparable = (event[:, None] & later).astype(np.float64)
        return _pair_ratio(counts, comparable, _ordered(risk, risk), counts)
    labels = outcome.label.astype(int)
    if scores.shape[1] != 2:  # multi-class one-vs-rest macro AUROC: no pair form, one call each
        return np.array([_resampled(fold_metric, survival, scores, outcome, row) for row in counts])
    positive, negative = labels == 1, labels == 0
    pairs = np.ones((positive.sum(), negative.sum()))
    order = _ordered(scores[positive, 1], scores[negative, 1])
    return _pair_ratio(counts[:, positive], pairs, order, counts[:, negative])


def _ordered(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """1 where a_i ranks above b_j, 0.5 on a tie."""
    return (a[:, None] > b[None, :]) + 0.5 * (a[:, None] == b[None, :])


def _pair_ratio(left: np.ndarray, pairs: np.ndarray, right_order: np.ndarray, right: np.ndarray) -> np.ndarray:
    total = np.einsum("bi,ij,bj->b", left, pairs, right)
    ordered = np.einsum("bi,ij,bj->b", left, pairs * right_order, right)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, ordered / np.where(total > 0, total, 1.0), np.nan)


def _resampled(metric, survival: bool, scores: np.ndarray, outcome: Outcome, counts: np.ndarray) -> float:
    rows = np.repeat(np.arange(len(counts)), counts.astype(int))
    return metric(survival, scores[rows], outcome.take(rows))


def percentile_interval(draws: np.ndarray) -> tuple[float, float]:
    """95% percentile interval of the defined draws (NaN, NaN when none is)."""
    draws = np.asarray(draws, dtype=np.float64)
    draws = draws[np.isfinite(draws)]
    if not len(draws):
        return float("nan"), float("nan")
    low, high = np.percentile(draws, [2.5, 97.5])
    return float(low), float(high)
