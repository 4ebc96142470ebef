"""The prediction SR of a model with a treatment covariate states the recommended
treatment and why (the benefit, its interval and the margin: radfusion.treatment's
reason), or why the case could not be ranked. Written from a real case, checked by
dciodvfy, read back by code."""

from __future__ import annotations

from pathlib import Path

import pytest

from radfusion.dicom import find_studies
from radfusion.genomics import load_genomics_table, row_as_mapping
from radfusion.predictor import Predictor
from radfusion.serving.reports import sr_codes as rc
from radfusion.serving.reports.facts import prediction_facts
from radfusion.serving.reports.sr import build_prediction_sr, new_uid, read_evidence
from tests.support.prediction_sr import read_report
from tests.support.validators import assert_dciodvfy_valid

SWITCHED = {
    "available": True,
    "recommended": "targeted",
    "reason": "switch to targeted: targeted's benefit +2.10 log-odds (95% interval +0.40 to +3.90); "
    "its lower bound clears the margin 0",
}
UNRANKED = {"available": False, "reason": "no clinical covariates in this case (the treatment is one of them)"}


@pytest.mark.parametrize("ranking", [SWITCHED, UNRANKED], ids=["ranked", "unranked"])
def test_the_report_states_the_recommendation_and_why(
    tiny_cohort: Path, tiny_onnx_model: Path, tmp_path: Path, ranking: dict
) -> None:
    predictor = Predictor.load(tiny_onnx_model, device="cpu")
    table = load_genomics_table(tiny_cohort / "genomics.parquet")
    study = next(s for s in find_studies(tiny_cohort / "dicom").studies.values() if s.patient_id in table.index)
    paths = [h.path for h in study.instances]
    case = predictor.prepare(paths, row_as_mapping(table, study.patient_id))
    (prediction,) = predictor.predictions([case])
    facts = prediction_facts(predictor.contract, case, prediction, {"genomics_source": "request"})
    facts["treatment_ranking"] = ranking
    sr = build_prediction_sr(predictor.contract, prediction, facts, read_evidence(paths[:3]), new_uid(), new_uid(), 1)
    path = tmp_path / "sr.dcm"
    sr.save_as(path, enforce_file_format=True)
    assert_dciodvfy_valid(path)
    texts = read_report(path).texts
    assert texts[rc.TREATMENT_REASON.meaning] == ranking["reason"]
    assert texts.get(rc.RECOMMENDED_TREATMENT.meaning) == ranking.get("recommended")
