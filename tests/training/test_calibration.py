"""Calibration estimators on synthetic scores whose calibration is known: the
perfect-calibration ECE floor, cross-fitted temperature scaling and the summary the
evidence report and its truth check read."""

from __future__ import annotations

import numpy as np
import pytest

from radfusion.training.evidence.calibration import (
    calibration_summary,
    cross_fitted_probability,
    ece,
    fit_temperature,
    fit_temperature_and_level,
    perfect_calibration_ece,
    positive_probability,
)
from radfusion.training.evidence.truth import check_calibration


def _scores(n: int, true_temperature: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two-class logits whose labels follow softmax(logits / true_temperature)."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 3, n)
    label = (rng.random(n) < 1 / (1 + np.exp(-z / true_temperature))).astype(int)
    return np.stack([np.zeros_like(z), z], axis=1), label


def test_perfect_calibration_floor_shrinks_with_n_and_with_confident_probabilities():
    rng = np.random.default_rng(1)
    uncertain = rng.uniform(0.3, 0.7, 3200)
    small, large = perfect_calibration_ece(uncertain[:200]), perfect_calibration_ece(uncertain)
    # Sampling noise of a binned mean falls as 1/sqrt(n): 16 times the cases, ~4 times less.
    assert 3.0 < small["mean"] / large["mean"] < 5.0, (small, large)
    assert small["p95"] > small["mean"]
    confident = np.where(rng.random(200) < 0.5, 0.02, 0.98)
    assert perfect_calibration_ece(confident)["mean"] < 0.5 * small["mean"]


def test_floor_separates_calibrated_from_overconfident_scores():
    logits, label = _scores(400, true_temperature=1.0)
    p = positive_probability(logits)
    floor = perfect_calibration_ece(p)
    # Calibrated: fresh label draws exceed the 95th percentile rarely.
    rng = np.random.default_rng(2)
    above = [ece(p, (rng.random(len(p)) < p).astype(int)) > floor["p95"] for _ in range(40)]
    assert np.mean(above) <= 0.2
    # Three times too confident: far beyond what noise explains.
    sharp = positive_probability(logits * 3.0)
    assert ece(sharp, label) > 2 * perfect_calibration_ece(sharp)["p95"]


def test_cross_fitted_temperatures_recover_the_truth_out_of_fold():
    logits, label = _scores(2000, true_temperature=2.0)
    probability, temperatures = cross_fitted_probability(logits, label, folds=5)
    assert len(temperatures) == 5 and all(abs(t - 2.0) < 0.3 for t in temperatures), temperatures
    assert len(set(np.round(temperatures, 6))) == 5  # each fold fitted on different cases
    assert ece(probability, label) < 0.5 * ece(positive_probability(logits), label)
    assert ece(probability, label) == pytest.approx(ece(positive_probability(logits, 2.0), label), abs=0.02)


def test_summary_reports_floor_and_cross_fitted_ece_and_the_check_shows_them():
    val_logits, val_label = _scores(80, true_temperature=2.0, seed=3)
    test_logits, test_label = _scores(200, true_temperature=2.0, seed=4)
    alone = calibration_summary(test_logits, test_label, 2.0)
    assert "cross_fitted" not in alone
    assert alone["ece_after"] == pytest.approx(ece(positive_probability(test_logits, 2.0), test_label))
    assert 0 < alone["ece_perfect_mean"] < alone["ece_perfect_p95"] < 0.2

    summary = calibration_summary(test_logits, test_label, 2.0, val_logits, val_label)
    pooled = summary["cross_fitted"]
    assert pooled["n"] == 280 and pooled["folds"] == len(pooled["temperatures"]) == 5
    assert pooled["ece_perfect_p95"] < summary["ece_perfect_p95"]  # more cases, less noise
    check = check_calibration(summary)
    assert check.measured == summary["ece_after"]
    assert f"{summary['ece_perfect_p95']:.3f}" in check.detail and f"{pooled['ece']:.3f}" in check.detail


def test_cross_fitting_uses_fewer_folds_for_a_rare_class_and_needs_two_of_each():
    logits, label = _scores(60, true_temperature=1.0, seed=5)
    rare = label.copy()
    rare[:] = 0
    rare[:3] = 1
    _, temperatures = cross_fitted_probability(logits, rare, folds=5)
    assert len(temperatures) == 3
    rare[1:3] = 0
    with pytest.raises(ValueError, match="two cases of each class"):
        cross_fitted_probability(logits, rare)
    # The summary leaves the pooled figure out rather than fail on such a split.
    assert "cross_fitted" not in calibration_summary(logits[30:], rare[30:], 1.0, logits[:30], rare[:30])


def test_level_from_training_and_temperature_from_validation_undo_an_offset():
    # Labels follow softmax((logits - 1.2) / 2): too confident and too high by 1.2.
    def draw(n, seed):
        rng = np.random.default_rng(seed)
        z = rng.normal(0.5, 3, n)
        label = (rng.random(n) < 1 / (1 + np.exp(-(z - 1.2) / 2.0))).astype(int)
        return np.stack([np.zeros_like(z), z], axis=1), label

    (train, train_y), (val, val_y), (test, test_y) = draw(300, 1), draw(150, 2), draw(20000, 3)
    t, shift = fit_temperature_and_level(train, train_y, val, val_y)
    leveled = positive_probability(train + shift, t)
    assert abs(leveled.mean() - train_y.mean()) < 1e-3  # the level is the training frequency
    assert 1.5 < t < 2.7 and -1.8 < shift[1] - shift[0] < -0.6
    alone = ece(positive_probability(test, fit_temperature(val, val_y)), test_y)
    both = ece(positive_probability(test + shift, t), test_y)
    assert both < 0.03 and both < alone
