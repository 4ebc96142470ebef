"""One received study -> prediction, with the same preprocessing and ONNX runtime as the
HTTP service (radfusion.predictor). Genomics and clinical covariates come from the
configured tables, looked up by the study's PatientID with the scorer's lookup
(serving/patients.py): a patient without a row is scored without that input
when the model allows it, and the result says where each input came from.

Reading the received files is the listener's one boundary for bytes from outside:
whatever a file holds, it fails here with a specific input error kind
(radfusion.errors.input_error), within the study's budget (radfusion.limits)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from radfusion.errors import input_error
from radfusion.explain import ExplainSettings, ImageSaliency, case_image_saliency
from radfusion.limits import StudyBudget
from radfusion.prediction import NonFiniteOutputError, Prediction
from radfusion.predictor import PreparedCase, prepare_case, stack_inputs
from radfusion.runtime import OnnxModel
from radfusion.serving.patients import PatientTables, patient_id_of
from radfusion.serving.reports.facts import prediction_facts
from radfusion.treatment import rank_treatments, ranks_treatments


@dataclass
class StudyPrediction:
    """The typed prediction (what the SR reports), the case it was made from, and
    ``result``: the JSON-ready record kept in the listener's state — the HTTP answer
    (radfusion.predictor.format_prediction, with its "imputation": what the
    missing-data policy filled in or treated as absent) plus "genomics_source", "clinical_source",
    "series_reason", "series_rejected", "geometry_corrections" (a list) and "summary"
    (Prediction.summary, for logs and ``radfusion pacs-status``)."""

    prediction: Prediction
    result: dict[str, Any]
    case: PreparedCase


class StudyPredictor:
    def __init__(self, model: OnnxModel, patients: PatientTables, budget: StudyBudget | None = None):
        self.model = model
        self.contract = model.contract
        self.patients = patients
        self.budget = budget or StudyBudget()

    def predict(self, paths: Sequence[Path]) -> StudyPrediction:
        """Raises a RadfusionInputError subclass for a study the model cannot take
        (PatientDataMissingError: the tables lack an input the model requires;
        NonFiniteOutputError: the model's output for it is NaN/inf; any kind of
        radfusion.errors for the files themselves)."""
        patient = self.patients.lookup(patient_id_of(paths))
        patient.check()
        try:
            case = prepare_case(self.contract, list(paths), patient.genomics, patient.clinical, budget=self.budget)
        except Exception as exc:  # the boundary: received bytes never escape as a library error
            raise input_error(exc, where=f"study of {len(paths)} instances") from exc
        (outputs,) = self.model.run(*stack_inputs([case.inputs]))
        prediction = Prediction.from_outputs(self.contract, outputs)
        result = prediction_facts(self.contract, case, prediction, patient.sources())
        if ranks_treatments(self.contract):
            result["treatment_ranking"] = self._treatment_ranking(case)
        result["summary"] = prediction.summary()
        return StudyPrediction(prediction=prediction, result=result, case=case)

    def _treatment_ranking(self, case: PreparedCase) -> dict:
        """The ranking the SR states (recommendation and why), or why there is none."""
        try:
            return rank_treatments(self.model.run, self.contract, case.inputs)
        except NonFiniteOutputError as exc:  # the prediction stands; the ranking says why not
            return {"available": False, "reason": f"ranking failed: {exc.message}"}

    def saliency(self, case: PreparedCase, settings: ExplainSettings) -> ImageSaliency | None:
        """Where in the image the score comes from (radfusion.explain), at most
        1 + settings.max_windows + settings.refine_windows model rows; None when the case
        has no image."""
        return case_image_saliency(self.model.logits, self.contract, case.inputs, settings)
