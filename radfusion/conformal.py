"""Conformal prediction sets for classification models: instead of one label, the set
of labels that cannot be ruled out at a stated coverage ("responder or non-responder:
cannot tell at 90%" is an answer a clinician can act on; a one-label set is a
prediction that holds at that coverage).

Split conformal, class-conditional (Mondrian by the true label): on calibration cases
the model never trained on (export uses the test split), the nonconformity of a
case is 1 - p(its true label); for each label k the threshold q_k is the
ceil((n_k + 1) * coverage)-th smallest score among the n_k cases of label k. A new
case's set holds every label k with 1 - p_k <= q_k. Then, for exchangeable cases,
P(true label in set | true label = k) >= coverage for every label k, not only on
average: a rare class (non-responders) gets its coverage too. A label with too few
calibration cases for the coverage (ceil((n_k + 1) * coverage) > n_k) has no threshold
and is always in the set: the honest answer is that it cannot be ruled out."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

DEFAULT_COVERAGE = 0.9
METHOD = "split conformal, class-conditional (Mondrian by label)"


@dataclass
class ConformalSpec:
    """What the contract keeps: the coverage, one threshold per label (contract order;
    None: the label is never ruled out) and the calibration cases per label."""

    coverage: float
    thresholds: list[float | None]
    calibration_counts: list[int]
    method: str = METHOD
    # Measured at export on cases the thresholds were not fitted on (cross-fitted halves
    # of the calibration split): per label and overall share of cases whose true label
    # was in their set, and the mean set size.
    test: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not 0.0 < self.coverage < 1.0:
            raise ValueError(f"conformal coverage must be between 0 and 1, not {self.coverage}")
        if len(self.thresholds) != len(self.calibration_counts):
            raise ValueError("conformal thresholds and calibration counts differ in length")

    def prediction_set(self, probabilities: np.ndarray) -> np.ndarray:
        """(cases, labels) bool: label k is in case i's set. ``probabilities``: (cases,
        labels) or one case's (labels,)."""
        p = np.atleast_2d(np.asarray(probabilities, dtype=np.float64))
        if p.shape[1] != len(self.thresholds):
            raise ValueError(f"{p.shape[1]} probabilities for {len(self.thresholds)} conformal labels")
        limit = np.array([np.inf if q is None else q for q in self.thresholds])
        return (1.0 - p) <= limit


def fit_class_conditional(
    probabilities: np.ndarray, labels: np.ndarray, coverage: float = DEFAULT_COVERAGE
) -> ConformalSpec:
    """Thresholds from calibration cases: ``probabilities`` (cases, labels) as the
    service computes them (after the temperature), ``labels`` their true label indices."""
    p = np.asarray(probabilities, dtype=np.float64)
    y = np.asarray(labels, dtype=int)
    if p.ndim != 2 or len(p) != len(y):
        raise ValueError("conformal calibration needs one probability row per labelled case")
    if not np.all(np.isfinite(p)):
        raise ValueError("conformal calibration probabilities must be finite")
    thresholds: list[float | None] = []
    counts = []
    for k in range(p.shape[1]):
        scores = np.sort(1.0 - p[y == k, k])
        n = len(scores)
        rank = math.ceil((n + 1) * coverage)
        thresholds.append(float(scores[rank - 1]) if rank <= n else None)
        counts.append(n)
    return ConformalSpec(coverage=coverage, thresholds=thresholds, calibration_counts=counts)


def coverage_report(spec: ConformalSpec, probabilities: np.ndarray, labels: np.ndarray) -> dict:
    """On cases not used to fit: the share whose true label was in the set (overall
    and per label), the mean set size and the share of one-label sets."""
    return set_report(spec.prediction_set(probabilities), labels)


def set_report(sets: np.ndarray, labels: np.ndarray) -> dict:
    """coverage_report's figures of given (cases, labels) membership."""
    y = np.asarray(labels, dtype=int)
    covered = sets[np.arange(len(y)), y]
    sizes = sets.sum(axis=1)
    return {
        "cases": len(y),
        "coverage": float(covered.mean()) if len(y) else None,
        "coverage_by_label": [float(covered[y == k].mean()) if (y == k).any() else None for k in range(sets.shape[1])],
        "mean_set_size": float(sizes.mean()) if len(y) else None,
        "single_label_share": float((sizes == 1).mean()) if len(y) else None,
    }
