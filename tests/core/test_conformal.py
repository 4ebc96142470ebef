"""Conformal prediction sets (radfusion.conformal): the class-conditional guarantee
checked by simulation over many calibration draws, the edge cases, and the sets in
the contract and in every rendering of an answer (JSON, scorer columns)."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from radfusion.conformal import ConformalSpec, coverage_report, fit_class_conditional
from radfusion.contract import ModelContract
from radfusion.prediction import Prediction, output_columns

DRAWS = 300


def _cohort(rng: np.random.Generator, n: int, n_classes: int, weights: np.ndarray):
    """Cases whose label is drawn from the model's own probabilities (a calibrated
    model), classes unbalanced by ``weights``."""
    logits = rng.normal(scale=1.5, size=(n, n_classes)) + np.log(weights)
    p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    labels = np.array([rng.choice(n_classes, p=row) for row in p])
    return p, labels


@pytest.mark.parametrize("coverage", [0.8, 0.9])
@pytest.mark.parametrize("n_classes", [2, 3])
def test_every_label_is_covered_at_least_at_the_nominal_rate(coverage: float, n_classes: int) -> None:
    """Averaged over 300 calibration draws of 150 cases (the rare class has ~30), the
    held-out coverage of each label is at least nominal and at most nominal + 1/(n_k + 1)
    (the method's bounds), within 0.01 (3x the simulation's standard error)."""
    weights = np.array([0.2, *[0.8 / (n_classes - 1)] * (n_classes - 1)])
    covered = np.zeros(n_classes)
    upper = np.zeros(n_classes)
    for seed in range(DRAWS):
        rng = np.random.default_rng(seed)
        spec = fit_class_conditional(*_cohort(rng, 150, n_classes, weights), coverage)
        report = coverage_report(spec, *_cohort(rng, 500, n_classes, weights))
        covered += np.array(report["coverage_by_label"]) / DRAWS
        upper += (coverage + 1.0 / (np.array(spec.calibration_counts) + 1)) / DRAWS
    assert np.all(covered >= coverage - 0.01), covered
    assert np.all(covered <= upper + 0.01), (covered, upper)


def test_a_label_with_too_few_cases_is_never_ruled_out() -> None:
    p = np.array([[0.9, 0.1]] * 20 + [[0.2, 0.8]] * 5)
    labels = np.array([0] * 20 + [1] * 5)
    spec = fit_class_conditional(p, labels, coverage=0.9)  # ceil(6 * 0.9) = 6 > 5 cases of label 1
    assert spec.thresholds[1] is None and spec.calibration_counts == [20, 5]
    assert spec.prediction_set(np.array([[0.999, 0.001]]))[0].tolist() == [True, True]


def test_calibration_rejects_what_it_cannot_trust() -> None:
    with pytest.raises(ValueError, match="finite"):
        fit_class_conditional(np.array([[np.nan, 1.0]]), np.array([0]))
    with pytest.raises(ValueError, match="between 0 and 1"):
        ConformalSpec(coverage=1.0, thresholds=[0.1], calibration_counts=[3])


def _contract(tiny_contract: ModelContract, spec: ConformalSpec) -> ModelContract:
    return ModelContract.from_json(dataclasses.replace(tiny_contract, conformal=spec).to_json())


def test_the_contract_carries_the_sets_and_every_answer_renders_them(tiny_contract: ModelContract) -> None:
    negative, positive = tiny_contract.labels
    spec = ConformalSpec(coverage=0.9, thresholds=[0.7, None], calibration_counts=[40, 8])
    contract = _contract(tiny_contract, spec)
    assert contract.conformal == spec
    sure = Prediction.from_outputs(contract, np.array([0.8, 0.2]))
    assert sure.prediction_set == (negative, positive)  # the rare label is never ruled out
    unsure = Prediction.from_outputs(contract, np.array([0.2, 0.8]))
    assert unsure.prediction_set == (positive,)  # 1 - 0.2 > 0.7: the first label is ruled out
    answer = json.loads(json.dumps(unsure.answer()))
    assert answer["prediction_set"] == {"labels": [positive], "coverage": 0.9}
    assert unsure.columns()["prediction_set"] == [positive]
    assert ("prediction_set", "list<string>") in output_columns(contract)
    # Without sets in the contract, no key and no column.
    plain = Prediction.from_outputs(tiny_contract, np.array([0.2, 0.8]))
    assert "prediction_set" not in plain.answer() and "prediction_set" not in plain.columns()
    assert "prediction_set" not in dict(output_columns(tiny_contract))


def test_thresholds_must_match_the_labels(tiny_contract: ModelContract) -> None:
    with pytest.raises(ValueError, match="conformal thresholds"):
        _contract(tiny_contract, ConformalSpec(coverage=0.9, thresholds=[0.5], calibration_counts=[10]))


def test_a_contract_without_sets_is_written_as_before_and_later_fields_are_ignored(tiny_contract, caplog) -> None:
    """No "conformal" key where there are no sets (earlier versions read such contracts);
    a field a later version adds is ignored with a warning, not a crash."""
    data = tiny_contract.to_dict()
    assert "conformal" not in data
    with caplog.at_level("WARNING", logger="radfusion.contract"):
        read = ModelContract.from_dict({**data, "added_later": {"x": 1}})
    assert read == tiny_contract and "added_later" in caplog.text
