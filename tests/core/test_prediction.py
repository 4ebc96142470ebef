"""radfusion.prediction: the one place a model output row becomes a typed prediction,
and its three renderings (HTTP answer, scorer columns, what the SR reads), per task."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from radfusion.contract import ImageGeometry, ModelContract
from radfusion.errors import RadfusionInputError
from radfusion.prediction import NonFiniteOutputError, Prediction, output_columns


def contract(task: str, labels: list[str], time_bins: list[float] | None = None) -> ModelContract:
    return ModelContract(
        name="m", version="1", task=task, labels=labels, image=ImageGeometry(), omics=[], time_bins=time_bins or []
    )


CLASSIFICATION = contract("classification:response", ["non-responder", "responder"])
MULTILABEL = contract("multilabel:drugs", ["a", "b", "c"])
COX = contract("survival:cox", ["risk"])
DISCRETE = contract("survival:discrete", ["h0", "h1", "h2"], [6.0, 12.0, 24.0])


def test_classification_is_the_arg_max_of_the_probabilities() -> None:
    prediction = Prediction.from_outputs(CLASSIFICATION, np.array([0.3, 0.7], dtype=np.float32))
    assert prediction.predicted == ("responder",)
    assert prediction.answer() == {
        "probabilities": {"non-responder": pytest.approx(0.3), "responder": pytest.approx(0.7)},
        "predicted_label": "responder",
    }
    assert prediction.columns() == {
        "predicted_label": "responder",
        "prob_non_responder": pytest.approx(0.3),
        "prob_responder": pytest.approx(0.7),
    }
    assert prediction.risk_score is None and prediction.survival == () and prediction.summary() == "responder"


def test_multilabel_predicts_every_label_at_or_above_half() -> None:
    prediction = Prediction.from_outputs(MULTILABEL, np.array([0.9, 0.2, 0.5]))
    assert prediction.answer() == {"probabilities": {"a": 0.9, "b": 0.2, "c": 0.5}, "predicted_labels": ["a", "c"]}
    assert prediction.columns() == {"predicted_labels": ["a", "c"], "prob_a": 0.9, "prob_b": 0.2, "prob_c": 0.5}
    assert prediction.summary() == "a+c"
    nothing = Prediction.from_outputs(MULTILABEL, np.array([0.1, 0.2, 0.49]))
    assert nothing.answer()["predicted_labels"] == [] and nothing.columns()["predicted_labels"] == []


def test_cox_is_a_risk_score_and_no_probability() -> None:
    prediction = Prediction.from_outputs(COX, np.array([-0.8]))
    assert prediction.answer() == {"risk_score": -0.8}
    assert prediction.columns() == {"risk_score": -0.8}
    assert prediction.probabilities == () and prediction.predicted == ()
    assert output_columns(COX) == [("risk_score", "float64")]
    assert prediction.summary() == "risk -0.8"


def test_discrete_survival_is_a_curve_over_the_time_bins() -> None:
    logits = np.array([-2.0, -1.0, 0.5])
    hazards = 1 / (1 + np.exp(-logits))
    curve = [(1 - hazards[0]), (1 - hazards[0]) * (1 - hazards[1]), np.prod(1 - hazards)]
    prediction = Prediction.from_outputs(DISCRETE, logits)
    assert [t for t, _ in prediction.survival] == [6.0, 12.0, 24.0]
    assert [p for _, p in prediction.survival] == pytest.approx(curve, rel=1e-12)
    assert prediction.risk_score == pytest.approx(-math.log(curve[-1]), rel=1e-12)  # cumulative hazard
    answer = prediction.answer()
    assert list(answer) == ["risk_score", "survival_probabilities"]
    assert answer["survival_probabilities"] == {
        "6": pytest.approx(curve[0]),
        "12": pytest.approx(curve[1]),
        "24": pytest.approx(curve[2]),
    }
    assert prediction.columns() == {
        "risk_score": prediction.risk_score,
        "survival_6": pytest.approx(curve[0]),
        "survival_12": pytest.approx(curve[1]),
        "survival_24": pytest.approx(curve[2]),
    }
    fractional = dataclasses.replace(DISCRETE, time_bins=[1.5, 3.0, 4.25])
    names = [name for name, _ in output_columns(fractional)]
    assert names == ["risk_score", "survival_1_5", "survival_3", "survival_4_25"]


@pytest.mark.parametrize("task", [CLASSIFICATION, MULTILABEL, COX, DISCRETE], ids=lambda c: c.task)
def test_the_schema_names_exactly_the_columns_a_prediction_fills(task: ModelContract) -> None:
    outputs = np.linspace(0.1, 0.6, len(task.labels))
    columns = Prediction.from_outputs(task, outputs).columns()
    assert [name for name, _ in output_columns(task)] == list(columns)
    has_prob = any(name.startswith("prob_") for name in columns)
    assert has_prob == (not task.task.startswith("survival"))


@pytest.mark.parametrize("task", [CLASSIFICATION, MULTILABEL, COX, DISCRETE], ids=lambda c: c.task)
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_a_non_finite_output_is_an_input_error_never_an_answer(task: ModelContract, bad: float) -> None:
    outputs = np.full(len(task.labels), 0.25)
    outputs[-1] = bad
    with pytest.raises(NonFiniteOutputError) as caught:
        Prediction.from_outputs(task, outputs)
    assert isinstance(caught.value, RadfusionInputError)
    assert caught.value.to_dict() == {"error": "non_finite_output", "detail": caught.value.message}
    assert caught.value.http_status == 422


def test_outputs_of_the_wrong_width_are_refused() -> None:
    with pytest.raises(ValueError, match="3 outputs, the contract has 2 labels"):
        Prediction.from_outputs(CLASSIFICATION, np.array([0.1, 0.2, 0.7]))


def test_a_prediction_is_immutable_and_unknown_survival_forms_are_refused() -> None:
    prediction = Prediction.from_outputs(COX, np.array([0.1]))
    with pytest.raises(dataclasses.FrozenInstanceError):
        prediction.risk_score = 2.0  # type: ignore[misc]
    with pytest.raises(ValueError, match="unknown survival task"):
        Prediction.from_outputs(contract("survival:weibull", ["x"]), np.array([0.1]))


def test_output_columns_are_sql_names_and_a_clash_is_refused() -> None:
    from radfusion.prediction import prob_column, sql_name

    assert prob_column("Non-Responder (PD)") == "prob_non_responder_pd"
    assert sql_name("1.5") == "1_5"
    clashing = contract("classification:response", ["non-responder", "Non Responder"])
    with pytest.raises(ValueError, match=r"same output column\(s\) \['prob_non_responder'\]"):
        output_columns(clashing)
