"""Conformal prediction sets fitted at export (radfusion.conformal holds the method and
what serving applies), on probabilities as the service computes them (the exported
logits, the contract's temperature).

The thresholds are calibrated on the test split: the one part of the cohort that chose
nothing. The validation split chose the checkpoint (the best of every epoch), so its
patients look better predicted than new ones, and sets calibrated there covered less than
stated (bench/results/evidence.json before this: coverage 0.84-0.86 at a nominal 0.9 on
two of five draws). Their coverage is estimated by cross-fitting within the test split:
thresholds from one half, coverage measured on the other, both ways round."""

from __future__ import annotations

import logging

import numpy as np

from radfusion.conformal import ConformalSpec, fit_class_conditional, set_report
from radfusion.runtime import probabilities_from_logits
from radfusion.training.evidence.cases import collect_cases, predict_logits

log = logging.getLogger(__name__)

CALIBRATION_SPLIT = "test"


def fit_conformal(net, dm, temperature: float, coverage: float, seed: int = 0) -> ConformalSpec | None:
    """The spec, or None when the test split is empty (nothing to calibrate on)."""
    if not dm.records.get(CALIBRATION_SPLIT):
        log.warning("no test patients: the model is exported without conformal prediction sets")
        return None
    cases = collect_cases(dm, CALIBRATION_SPLIT)
    return conformal_spec(predict_logits(net, cases).numpy(), cases.label.numpy(), temperature, coverage, seed)


def conformal_spec(
    logits: np.ndarray, labels: np.ndarray, temperature: float, coverage: float, seed: int = 0
) -> ConformalSpec:
    """The spec from the calibration split's logits (as the model gives them) and labels."""
    probabilities = probabilities_from_logits(logits, temperature)
    spec = fit_class_conditional(probabilities, labels, coverage)
    spec.test = cross_fitted_coverage(probabilities, labels, coverage, seed)
    return spec


def cross_fitted_coverage(probabilities: np.ndarray, labels: np.ndarray, coverage: float, seed: int = 0) -> dict:
    """Coverage of sets calibrated on one half of the cases, measured on the other half
    (halves drawn within each label), both ways round, pooled."""
    rng = np.random.default_rng(seed)
    half = np.zeros(len(labels), dtype=bool)
    for k in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == k))
        half[members[: len(members) // 2]] = True
    sets = np.zeros(probabilities.shape, dtype=bool)
    for fit in (half, ~half):
        spec = fit_class_conditional(probabilities[fit], labels[fit], coverage)
        sets[~fit] = spec.prediction_set(probabilities[~fit])
    return set_report(sets, labels) | {"method": "cross-fitted halves of the calibration split"}
