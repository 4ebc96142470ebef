"""Cross-validation metrics and the table, on inputs whose answers are known by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from radfusion.training.cv.arrays import Outcome
from radfusion.training.cv.metrics import fold_metric, paired_differences, pooled_metric, summarise
from radfusion.training.cv.table import build_results, markdown
from tests.support.cv_folds import fake_fold


def _survival(time, event) -> Outcome:
    time = np.asarray(time, dtype=float)
    return Outcome(label=np.zeros(len(time), dtype=int), time=time, event=np.asarray(event))


def _labels(labels) -> Outcome:
    n = len(labels)
    return Outcome(label=np.asarray(labels), time=np.zeros(n), event=np.zeros(n, dtype=int))


def test_fold_metric_ranks_risk_against_time_and_probabilities_against_labels() -> None:
    outcome = _survival([1, 2, 3, 4, 5], [1, 1, 1, 1, 0])
    assert fold_metric(True, np.array([5, 4, 3, 2, 1.0]), outcome) == 1.0  # earlier event, higher risk
    assert fold_metric(True, np.array([1, 2, 3, 4, 5.0]), outcome) == 0.0
    # Pairs: (1,2) right, (1,3) right, (2,3) wrong -> 2/3; the censored patient makes no pair as first.
    assert fold_metric(True, np.array([3, 1, 2.0]), _survival([1, 2, 3], [1, 1, 0])) == pytest.approx(2 / 3)
    assert math.isnan(fold_metric(True, np.array([1, 2.0]), _survival([1, 2], [0, 0])))

    binary = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])
    # Positives (1, 3) score 0.8 and 0.7; negatives 0.1 and 0.4: all 4 pairs right.
    assert fold_metric(False, binary, _labels([0, 1, 0, 1])) == 1.0
    assert fold_metric(False, binary, _labels([1, 0, 1, 0])) == 0.0
    assert math.isnan(fold_metric(False, binary, _labels([1, 1, 1, 1])))
    three = np.eye(3)[[0, 1, 2, 0, 1, 2]] * 0.7 + 0.1
    assert fold_metric(False, three, _labels([0, 1, 2, 0, 1, 2])) == 1.0
    # A class absent from the fold: AUROC over the classes present.
    assert fold_metric(False, three[:2], _labels([0, 1])) == 1.0


def test_summarise_gives_the_t_interval_and_the_corrected_one_for_repeats() -> None:
    s = summarise([0.6, 0.7, 0.8])
    half = 4.302652729911275 * 0.1 / math.sqrt(3)  # t(0.975, 2) * sd / sqrt(n)
    assert (s.mean, s.sd, s.n) == (pytest.approx(0.7), pytest.approx(0.1), 3)
    assert (s.low, s.high) == (pytest.approx(0.7 - half), pytest.approx(0.7 + half))
    # NaN folds (metric undefined) are left out, not counted as zero.
    assert summarise([0.6, float("nan"), 0.7, 0.8]) == s

    values = [0.6, 0.7, 0.8, 0.65, 0.75] * 2  # 5 folds x 2 repeats
    corrected = summarise(values, repeats=2, folds=5)
    sd = float(np.std(values, ddof=1))
    se = math.sqrt((1 / 10 + 0.2 / 0.8) * sd**2)  # Nadeau & Bengio: 1/n + n_test/n_train
    assert corrected.high - corrected.mean == pytest.approx(2.2621571627409915 * se)  # t(0.975, 9)
    assert corrected.high - corrected.low > summarise(values).high - summarise(values).low
    assert summarise([0.7]).n == 1 and math.isnan(summarise([0.7]).low)


def test_paired_differences_and_the_pooled_metric() -> None:
    assert paired_differences([0.7, 0.6], [0.5, 0.65]) == pytest.approx([0.2, -0.05])
    with pytest.raises(ValueError, match="same folds"):
        paired_differences([0.7], [0.5, 0.6])

    time = np.arange(1, 41, dtype=float)
    outcome = _survival(np.tile(time, 2), np.ones(80, dtype=int))
    patient = np.tile([f"p{i:02d}" for i in range(40)], 2)
    risk = -np.tile(time, 2)  # a perfect ranking in both repeats
    repeat = np.repeat([0, 1], 40)
    # The second repeat lists its patients in another order: pooling matches them by id.
    order = np.r_[np.arange(40), 40 + np.random.default_rng(0).permutation(40)]
    pooled = pooled_metric(True, risk[order], outcome.take(order), repeat, patient[order], samples=50)
    assert pooled == {"value": 1.0, "low": 1.0, "high": 1.0}
    noisy = risk + np.random.default_rng(1).normal(0, 15, 80)
    pooled = pooled_metric(True, noisy, outcome, repeat, patient, samples=200)
    assert 0.5 < pooled["low"] < pooled["value"] < pooled["high"] < 1.0


def test_the_table_reports_paired_differences_the_best_baseline_and_the_time_ratio() -> None:
    seconds = {"radfusion": 30.0, "coxnet": 1.0, "rsf": 5.0}
    folds = [
        fake_fold(0, {"radfusion": 0.70, "coxnet": 0.60, "rsf": 0.72}, seconds, n_train=6),
        fake_fold(1, {"radfusion": 0.64, "coxnet": 0.66, "rsf": 0.70}, seconds, n_train=6),
    ]
    summary = build_results(folds[::-1], folds=2, repeats=1, cli_args=["--config", "x.yaml"])
    models = summary["models"]
    assert list(models) == ["radfusion", "coxnet", "rsf"]
    assert models["radfusion"]["per_fold"] == [0.70, 0.64]  # sorted by fold
    assert models["coxnet"]["paired_difference"]["per_fold"] == pytest.approx([0.10, -0.02])
    assert summary["best_baseline"] == "rsf"  # mean 0.71 against coxnet's 0.63
    assert summary["deep_vs_best_classical"] == pytest.approx(-0.04)  # (-0.02 + -0.06) / 2
    assert summary["cv_seconds_ratio"] == pytest.approx(60.0 / 10.0)  # summed over folds
    assert models["radfusion"]["pooled"]["value"] == 1.0  # the rows rank perfectly
    text = markdown(summary)
    assert "| radfusion (genomics+clinical, late) | 0.670 |" in text
    assert "| radfusion − coxnet | +0.100 | -0.020 |" in text
    assert "radfusion − best baseline: -0.040" in text
    assert "On these folds rsf did better than radfusion" in text


def test_without_baselines_the_table_has_the_network_alone() -> None:
    folds = [fake_fold(k, {"radfusion": 0.6 + 0.1 * k}, {"radfusion": 2.0}, n_train=6) for k in range(2)]
    summary = build_results(folds, folds=2, repeats=1, cli_args=[])
    assert list(summary["models"]) == ["radfusion"]
    assert summary["best_baseline"] is None and summary["deep_vs_best_classical"] is None
    assert summary["cv_seconds_ratio"] is None
    assert "Best baseline: –" in markdown(summary)
