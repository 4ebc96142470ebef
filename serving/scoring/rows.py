"""The output: one row per study, with a fixed schema derived from the model contract.

Timing columns: ``prepare_seconds`` is the study's own fetch + read + preprocess time in
its worker; ``infer_seconds`` is its share of the batch's inference time (batch time /
batch size). ``n_instances`` is the number of files (instances) the study had when it
was scored; a rerun uses it to notice a study that has grown since.

Provenance columns: ``series_reason`` says why the scored series was chosen,
``series_rejected`` why each other series of the study was not ("series 2: localizer
image type ...; series 4: ..."), ``geometry_corrections`` what the reader repaired
(missing slices, uneven spacing, tilt, duplicates; "" when nothing). A study whose
selection failed has the reasons in ``error`` instead. ``genomics_source`` /
``clinical_source`` say where each came from (serving/patients.py).

Missing-data columns (radfusion.preprocess.ModelInputs.imputation, as the HTTP answer
gives it): ``imputed_features`` counts the features and covariates that took their
training value in the blocks fed to the model, ``absent_blocks`` names the blocks given
with more missing than their cap allows (fed as absent), and ``imputation`` holds the
per-block detail as JSON text ({block: {imputed, of, treated_as_absent,
unseen_levels}}). On a row whose case could not be prepared (its ``error`` says why)
``imputed_features`` is 0 and the other two are empty: the column stays an integer
column whatever rows a file holds.

A table-only run (serving/scoring/table.py) writes the same schema, one row per
patient: its study and series columns are empty and ``n_instances`` is 0."""

from __future__ import annotations

import json

import pyarrow as pa

from radfusion.contract import ModelContract
from radfusion.errors import RadfusionInputError
from radfusion.prediction import Prediction, output_columns, prob_column
from radfusion.preprocess import ModelInputs
from radfusion.study import StudyImage
from radfusion.treatment import ranks_treatments


class InferenceFailedError(RadfusionInputError):
    """ONNX Runtime failed on this study even when run alone (the rest of its batch was
    scored). Retried on resume: a transient runtime failure may not recur."""

    kind = "inference_failed"
    http_status = 500
    retryable = True


class WorkerCrashedError(RadfusionInputError):
    """The process preparing this study died (out of memory, a decoder crash); the
    other studies went on in a new worker. Retried on resume."""

    kind = "worker_crashed"
    http_status = 500
    retryable = True


# Error kinds worth another try when the same command is run again; any other error
# (a corrupt file, a wrong modality) would only fail the same way. The retryable kinds
# of the error catalogue (tests/core/test_errors.py checks), and "fetch_failed", which
# rows written by earlier versions carry.
RETRY_ON_RESUME = frozenset(
    {
        "dicomweb_unavailable",
        "dicomweb_timeout",
        "overloaded",
        InferenceFailedError.kind,
        WorkerCrashedError.kind,
        "fetch_failed",
    }
)

__all__ = [
    "RETRY_ON_RESUME",
    "TIMING_COLUMNS",
    "InferenceFailedError",
    "WorkerCrashedError",
    "error_kind",
    "fill_imputation",
    "fill_prediction",
    "fill_series",
    "new_row",
    "output_schema",
    "prob_column",  # radfusion.prediction's, re-exported for radfusion.serving.scoring.score
]

# The Parquet type of each kind of prediction column (radfusion.prediction.output_columns).
_ARROW_TYPES = {"string": pa.string(), "float64": pa.float64(), "list<string>": pa.list_(pa.string())}


# A model with a treatment covariate: its ranking per study (radfusion.treatment), as /predict
# gives it with rank_treatments: the recommendation, why, and the whole ranking as JSON.
TREATMENT_COLUMNS = (
    ("recommended_treatment", pa.string()),
    ("treatment_reason", pa.string()),
    ("treatment_ranking", pa.string()),
)


def output_schema(contract: ModelContract) -> pa.Schema:
    return pa.schema(
        [
            ("study_instance_uid", pa.string()),
            ("patient_id", pa.string()),
            ("series_instance_uid", pa.string()),
            ("series_reason", pa.string()),
            ("series_rejected", pa.string()),
            ("geometry_corrections", pa.string()),
            # The task's columns: prob_<label> + predicted_label(s), or risk_score (+ survival_<months>).
            *[(name, _ARROW_TYPES[kind]) for name, kind in output_columns(contract)],
            ("modalities_used", pa.string()),
            ("imputed_features", pa.int32()),
            ("absent_blocks", pa.string()),
            ("imputation", pa.string()),
            *(TREATMENT_COLUMNS if ranks_treatments(contract) else ()),
            ("genomics_source", pa.string()),
            ("clinical_source", pa.string()),
            ("model_name", pa.string()),
            ("model_version", pa.string()),
            ("n_instances", pa.int32()),
            ("prepare_seconds", pa.float64()),
            ("infer_seconds", pa.float64()),
            ("error", pa.string()),
        ]
    )


TIMING_COLUMNS = ("prepare_seconds", "infer_seconds")


def new_row(contract: ModelContract, study_uid: str | None, patient_id: str, n_instances: int) -> dict:
    row = dict.fromkeys(output_schema(contract).names)
    row.update(
        study_instance_uid=study_uid,
        patient_id=patient_id,
        model_name=contract.name,
        model_version=contract.version,
        n_instances=n_instances,
        imputed_features=0,
    )
    return row


def fill_series(row: dict, study: StudyImage) -> None:
    """The series-selection summary of a study that was read."""
    row["series_instance_uid"] = study.series_uid
    row["series_reason"] = study.series_reason
    row["series_rejected"] = study.rejected_summary
    row["geometry_corrections"] = "; ".join(study.corrections)


def fill_imputation(row: dict, inputs: ModelInputs) -> None:
    """What the missing-data policy did for this case (the answer's ``imputation``)."""
    imputation = inputs.imputation()
    row["imputed_features"] = imputation["imputed_features"]
    row["absent_blocks"] = ",".join(imputation["absent_blocks"])
    row["imputation"] = json.dumps(imputation["blocks"], sort_keys=True)


def fill_prediction(row: dict, prediction: Prediction, modalities_used: list[str]) -> None:
    """The prediction's columns (radfusion.prediction.Prediction.columns) into ``row``."""
    row.update(prediction.columns())
    row["modalities_used"] = "+".join(modalities_used)  # as the manifest writes a pattern


def error_kind(error: str | None) -> str | None:
    return None if error is None else error.split(":", 1)[0]
