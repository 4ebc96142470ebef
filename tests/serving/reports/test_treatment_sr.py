"""The prediction SR of a model with a treatment covariate states the recommended
treatment and why (the benefit, its interval and the margin: radfusion.treatment's
reason), or why the case could not be ranked. Written from a real case, checked by
dciodvfy, read back by code."""

from __future__ import annotations

from pathlib import Path

import pytest

from radfusion.predictor import Predictor
from radfusion.serving.reports import sr_codes as rc
from radfusion.serving.reports.facts import prediction_facts
from tests.support.prediction_sr import first_scored_study, write_valid_report

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
    paths, case, prediction = first_scored_study(predictor, tiny_cohort)
    facts = prediction_facts(predictor.contract, case, prediction, {"genomics_source": "request"})
    facts["treatment_ranking"] = ranking
    texts = write_valid_report(predictor.contract, prediction, facts, paths, tmp_path / "sr.dcm").texts
    assert texts[rc.TREATMENT_REASON.meaning] == ranking["reason"]
    assert texts.get(rc.RECOMMENDED_TREATMENT.meaning) == ranking.get("recommended")
