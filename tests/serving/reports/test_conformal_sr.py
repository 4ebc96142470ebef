"""The prediction SR of a model with conformal prediction sets: each label's group says
whether the set holds it (coded Yes/No), and the set with its coverage is stated as
text. Written from a real case through the ONNX Predictor, checked by dciodvfy, read
back by code."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from radfusion.conformal import ConformalSpec
from radfusion.dicom import find_studies
from radfusion.genomics import load_genomics_table, row_as_mapping
from radfusion.predictor import Predictor
from radfusion.serving.reports import sr_codes as rc
from radfusion.serving.reports.facts import prediction_facts
from radfusion.serving.reports.sr import build_prediction_sr, new_uid, read_evidence
from tests.support.prediction_sr import read_report
from tests.support.tiny import tiny_net
from tests.support.validators import assert_dciodvfy_valid


@pytest.mark.parametrize("rule_out_first", [False, True])
def test_the_report_states_the_prediction_set(tiny_cohort: Path, tiny_contract, tmp_path: Path, rule_out_first) -> None:
    from radfusion.training.export import export_onnx

    # Thresholds that keep both labels (nothing ruled out) or rule out the first one for any case.
    first = -1.0 if rule_out_first else None
    spec = ConformalSpec(coverage=0.9, thresholds=[first, None], calibration_counts=[50, 40])
    contract = dataclasses.replace(tiny_contract, conformal=spec)
    model = tmp_path / "model.onnx"
    export_onnx(tiny_net(contract), contract, model)
    predictor = Predictor.load(model, device="cpu")
    table = load_genomics_table(tiny_cohort / "genomics.parquet")
    study = next(s for s in find_studies(tiny_cohort / "dicom").studies.values() if s.patient_id in table.index)
    paths = [h.path for h in study.instances]
    case = predictor.prepare(paths, row_as_mapping(table, study.patient_id))
    (prediction,) = predictor.predictions([case])
    labels = contract.labels
    expected = labels[1:] if rule_out_first else labels
    assert list(prediction.prediction_set) == expected

    facts = prediction_facts(contract, case, prediction, {"genomics_source": "request"})
    sr = build_prediction_sr(contract, prediction, facts, read_evidence(paths[:3]), new_uid(), new_uid(), version=1)
    path = tmp_path / "sr.dcm"
    sr.save_as(path, enforce_file_format=True)
    assert_dciodvfy_valid(path)

    report = read_report(path)
    assert report.texts[rc.PREDICTION_SET.meaning].startswith(" or ".join(expected) + " (coverage 90%")
    assert report.prediction_set == expected
    assert report.predicted == list(prediction.predicted)
