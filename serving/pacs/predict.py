"""One received study -> prediction, with the same preprocessing and ONNX runtime as the
HTTP service (radfusion.predictor). Genomics come from a configured table, looked up by
the study's PatientID; a patient without a row is scored image-only, and says so."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pydicom

from radfusion.contract import ModelContract
from radfusion.genomics import load_genomics_table, row_as_mapping
from radfusion.predictor import PreparedCase, format_prediction, prepare_case, stack_inputs
from radfusion.runtime import OnnxModel


@dataclass
class StudyPrediction:
    result: dict[str, Any]  # radfusion.predictor.format_prediction, plus "genomics_source"
    case: PreparedCase


class GenomicsLookup:
    """PatientID -> the patient's genomic profile, from a Parquet/CSV table (or none)."""

    def __init__(self, table: pd.DataFrame | None):
        self.table = table

    @classmethod
    def from_path(cls, path: Path | str | None) -> GenomicsLookup:
        return cls(load_genomics_table(path) if path else None)

    def find(self, patient_id: str) -> dict[str, float] | None:
        if self.table is None or not patient_id:
            return None
        return row_as_mapping(self.table, patient_id)


def patient_id_of(paths: Sequence[Path]) -> str:
    """PatientID of the first readable file (used only for the lookup, never logged)."""
    for path in paths:
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["PatientID"])
        except Exception:
            continue  # an unreadable file is reported by the study reader
        return str(ds.get("PatientID", "") or "").strip()
    return ""


class StudyPredictor:
    def __init__(self, model: OnnxModel, genomics: GenomicsLookup):
        self.model = model
        self.contract = model.contract
        self.genomics = genomics

    def predict(self, paths: Sequence[Path]) -> StudyPrediction:
        """Raises a RadfusionInputError subclass for a study the model cannot take."""
        genes = self.genomics.find(patient_id_of(paths)) if self.contract.uses_genomics else None
        case = prepare_case(self.contract, list(paths), genes)
        inputs = case.inputs
        probabilities = self.model.run(*stack_inputs([inputs]))
        result = format_prediction(self.contract, case, np.asarray(probabilities)[0])
        result["genomics_source"] = genomics_source(self.contract, genes is not None)
        return StudyPrediction(result=result, case=case)


def genomics_source(contract: ModelContract, found: bool) -> str:
    """Where the prediction's genomics came from, in words for the report."""
    if not contract.uses_genomics:
        return "not used by the model"
    return "genomics table" if found else "none found for the patient: image-only prediction"
