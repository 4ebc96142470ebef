"""The facts of one scored case that a prediction SR reports besides the prediction
(``result`` of radfusion.serving.reports.sr.build_prediction_sr): the HTTP answer
(radfusion.predictor.format_prediction), where the genomics and clinical values came
from, and how the scored series was chosen and repaired."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from radfusion.contract import ModelContract
from radfusion.prediction import Prediction
from radfusion.predictor import PreparedCase, format_prediction


def prediction_facts(
    contract: ModelContract, case: PreparedCase, prediction: Prediction, sources: Mapping[str, str]
) -> dict[str, Any]:
    """``sources``: PatientData.sources() ("genomics_source", "clinical_source")."""
    facts = format_prediction(contract, case, prediction)
    facts.update(sources)
    if case.study is not None:
        facts["series_reason"] = case.study.series_reason
        facts["series_rejected"] = case.study.rejected_summary
        facts["geometry_corrections"] = list(case.study.corrections)
    return facts
