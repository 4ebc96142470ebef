"""The prediction SR of a model with conformal prediction sets: each label's group says
whether the set holds it (coded Yes/No), and the set with its coverage is stated as
text. Written from a real case through the ONNX Predictor, checked by dciodvfy, read
back by code."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from radfusion.conformal import ConformalSpec
from radfusion.predictor import Predictor
from radfusion.serving.reports import sr_codes as rc
from radfusion.serving.reports.facts import prediction_facts
from tests.support.prediction_sr import first_scored_study, write_valid_report
from tests.support.tiny import tiny_net


@pytest.mark.parametrize("rule_out_first", [False, True])
def test_the_report_states_the_prediction_set(tiny_cohort: Path, tiny_contract, tmp_path: Path, rule_out_first) -> None:
    from radfusion.training.export import export_onnx

    # Thresholds that keep both labels (nothing ruled out) or rule out the first one for any case.
    first = -1.0 if rule_out_first else None
    spec = ConformalSpec(coverage=0.9, thresholds=[first, None], calibration_counts=[50, 40])
    contract = dataclasses.replace(tiny_contract, conformal=spec)
    model = tmp_path / "model.onnx"
    export_onnx(tiny_net(contract), contract, model)
    paths, case, prediction = first_scored_study(Predictor.load(model, device="cpu"), tiny_cohort)
    labels = contract.labels
    expected = labels[1:] if rule_out_first else labels
    assert list(prediction.prediction_set) == expected

    facts = prediction_facts(contract, case, prediction, {"genomics_source": "request"})
    report = write_valid_report(contract, prediction, facts, paths, tmp_path / "sr.dcm")
    assert report.texts[rc.PREDICTION_SET.meaning].startswith(" or ".join(expected) + " (coverage 90%")
    assert report.prediction_set == expected
    assert report.predicted == list(prediction.predicted)
