"""The prediction SR for every task's typed prediction (radfusion.prediction.Prediction):
classification, multi-label and both survival forms, written, re-read from the file and
checked item by item against the prediction's HTTP answer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest

from radfusion.dicom import find_studies
from radfusion.prediction import Prediction
from radfusion.serving.reports.sr import build_prediction_sr, new_uid, read_evidence


@pytest.fixture(scope="module")
def evidence(tiny_cohort: Path):
    study = sorted(find_studies(tiny_cohort / "dicom").studies.values(), key=lambda s: s.patient_id)[0]
    return read_evidence([h.path for h in study.instances][:3])


def _contract(tiny_contract, task: str, labels: list[str], time_bins: list[float] | None = None):
    import dataclasses

    return dataclasses.replace(tiny_contract, task=task, labels=labels, time_bins=time_bins or [])


def _written(contract, prediction: Prediction, evidence, tmp_path: Path) -> pydicom.Dataset:
    facts = {"modalities_used": ["image"], "genomics_source": "patient not in the genomics table"}
    sr = build_prediction_sr(contract, prediction, facts, evidence, new_uid(), new_uid(), version=1)
    path = tmp_path / "sr.dcm"
    sr.save_as(path)
    return pydicom.dcmread(path)


def _items(ds, meaning: str):
    return [i for i in ds.ContentSequence if i.ConceptNameCodeSequence[0].CodeMeaning == meaning]


def _number(item) -> float:
    return float(item.MeasuredValueSequence[0].NumericValue)


def _group_values(group) -> dict[str, object]:
    out = {}
    for i in group.ContentSequence:
        name = i.ConceptNameCodeSequence[0].CodeMeaning
        out[name] = _number(i) if i.ValueType == "NUM" else i.ConceptCodeSequence[0].CodeMeaning
    return out


def test_discrete_survival_answer_becomes_risk_and_survival_curve(tiny_contract, evidence, tmp_path: Path) -> None:
    contract = _contract(tiny_contract, "survival:discrete", ["t12", "t24", "t36"], [12.0, 24.0, 36.0])
    prediction = Prediction.from_outputs(contract, np.array([-2.0, -1.0, 0.5]))
    result = prediction.answer()
    ds = _written(contract, prediction, evidence, tmp_path)
    (risk,) = _items(ds, "Risk score")
    assert _number(risk) == pytest.approx(result["risk_score"], rel=1e-6)
    curve = [_group_values(g) for g in _items(ds, "Survival probability")]
    assert [c["Time point"] for c in curve] == [12.0, 24.0, 36.0]
    assert [c["Probability"] for c in curve] == pytest.approx(list(result["survival_probabilities"].values()), rel=1e-6)
    assert curve[0]["Probability"] > curve[1]["Probability"] > curve[2]["Probability"]
    assert not _items(ds, "Predicted class") and not _items(ds, "Class probability")


def test_cox_answer_is_a_risk_score_only(tiny_contract, evidence, tmp_path: Path) -> None:
    contract = _contract(tiny_contract, "survival:cox", ["risk"])
    ds = _written(contract, Prediction.from_outputs(contract, np.array([0.8])), evidence, tmp_path)
    assert _number(_items(ds, "Risk score")[0]) == pytest.approx(0.8)
    assert not _items(ds, "Survival probability")


def test_multilabel_answer_lists_every_label_at_or_above_half(tiny_contract, evidence, tmp_path: Path) -> None:
    contract = _contract(tiny_contract, "multilabel", ["drug_a", "drug_b", "drug_c"])
    ds = _written(contract, Prediction.from_outputs(contract, np.array([0.9, 0.2, 0.5])), evidence, tmp_path)
    predicted = [i.ConceptCodeSequence[0].CodeMeaning for i in _items(ds, "Predicted class")]
    assert predicted == ["drug_a", "drug_c"]
    groups = {g["Class"]: g["Probability"] for g in map(_group_values, _items(ds, "Class probability"))}
    assert groups == pytest.approx({"drug_a": 0.9, "drug_b": 0.2, "drug_c": 0.5})


def test_classification_answer_names_one_class(tiny_contract, evidence, tmp_path: Path) -> None:
    prediction = Prediction.from_outputs(tiny_contract, np.array([0.3, 0.7]))
    result = prediction.answer()
    ds = _written(tiny_contract, prediction, evidence, tmp_path)
    assert [i.ConceptCodeSequence[0].CodeMeaning for i in _items(ds, "Predicted class")] == [result["predicted_label"]]
    assert len(_items(ds, "Class probability")) == 2 and not _items(ds, "Risk score")
