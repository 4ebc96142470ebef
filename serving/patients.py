"""Per-patient tables joined to studies by PatientID: genomics and clinical covariates.

One lookup for every consumer (the scorer's local and Ray engines, the PACS listener):
``PatientTables.lookup(patient_id)`` returns a small picklable ``PatientData`` with the
values the model takes and, for each kind, where they came from. A kind the model
requires (``contract.may_miss`` says no) that the tables lack for a patient is a
specific per-study error (``PatientDataMissingError``), raised by ``PatientData.check``
before the study is read; a kind the model may miss is simply left out, and the
prediction's ``modalities_used`` says so. A table the model needs but was not given,
or a clinical table without the model's covariates, is refused when the tables are
loaded: better one clear message at start than the same error on every study."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import pydicom

from radfusion.cohort_manifest.outcomes import read_clinical
from radfusion.contract import ModelContract
from radfusion.errors import ClinicalInputError
from radfusion.genomics import load_genomics_table, row_as_mapping
from radfusion.serving.patient_data import (
    CLINICAL,
    GENOMICS,
    NOT_USED,
    PatientData,
    PatientDataMissingError,
    found_in,
    no_table,
    no_values_in,
    not_in,
)

log = logging.getLogger(__name__)

__all__ = ["PatientData", "PatientDataMissingError", "PatientTable", "PatientTableError", "PatientTables"]


class PatientTableError(ValueError):
    """A table that cannot serve the model (missing columns, repeated patients, none
    given where the model requires one): raised once, when the tables are loaded."""


class PatientTable:
    """One table indexed by PatientID (text). ``columns``: keep only these."""

    def __init__(self, kind: str, frame: pd.DataFrame, path: Path | None = None, columns: list[str] | None = None):
        self.kind, self.path = kind, path
        self.frame = frame[columns] if columns is not None else frame

    @classmethod
    def load(cls, kind: str, path: Path | str, columns: list[str] | None = None) -> PatientTable:
        """Parquet, CSV or TSV with a ``patient_id`` column (genomics: else the first)."""
        path = Path(path)
        if kind == GENOMICS:
            try:
                return cls(kind, load_genomics_table(path), path)
            except ValueError as exc:  # duplicate patients, unknown file type
                raise PatientTableError(f"{path.name}: {exc}") from exc
        frame, repeated = read_clinical(path, [])
        if repeated:
            # Which row is right cannot be known; the count only (the ids identify patients).
            raise PatientTableError(f"{kind} table {path.name} lists {len(repeated)} patient(s) more than once")
        absent = [c for c in columns or [] if c not in frame.columns]
        if absent:
            raise PatientTableError(f"{kind} table {path.name} lacks the model's column(s): {', '.join(absent)}")
        return cls(kind, frame, path, columns)

    def find(self, patient_id: str) -> dict[str, Any] | None:
        """The patient's values, or None when the patient has no row."""
        if not patient_id:
            return None
        return row_as_mapping(self.frame, patient_id)


class PatientTables:
    """The genomics and clinical tables a model is scored with (either may be absent)."""

    def __init__(
        self, contract: ModelContract, genomics: PatientTable | None = None, clinical: PatientTable | None = None
    ):
        self.contract = contract
        self.genomics = genomics if contract.uses_genomics else None
        self.clinical = clinical if contract.uses_clinical else None
        for kind, table in ((GENOMICS, self.genomics), (CLINICAL, self.clinical)):
            if table is None and self._uses(kind) and not self._may_miss(kind):
                raise PatientTableError(f"the model requires {kind} input: give a {kind} table")

    @classmethod
    def from_paths(
        cls, contract: ModelContract, genomics: Path | str | None = None, clinical: Path | str | None = None
    ) -> PatientTables:
        """Loads only the tables the model uses (a clinical table keeps only the
        model's covariates); a table it does not use is named in a warning."""
        for kind, path in ((GENOMICS, genomics), (CLINICAL, clinical)):
            if path and not cls._uses_kind(contract, kind):
                log.warning("the model takes no %s input: the %s table is not used", kind, kind)
        covariates = contract.clinical.covariates if contract.clinical is not None else None
        try:
            return cls(
                contract,
                PatientTable.load(GENOMICS, genomics) if genomics and contract.uses_genomics else None,
                PatientTable.load(CLINICAL, clinical, covariates) if clinical and contract.uses_clinical else None,
            )
        except ClinicalInputError as exc:  # read_clinical: no patient_id column
            raise PatientTableError(exc.message) from exc

    def lookup(self, patient_id: str) -> PatientData:
        genes, genomics_source = self._find(GENOMICS, self.genomics, patient_id)
        covariates, clinical_source = self._find(CLINICAL, self.clinical, patient_id)
        missing = tuple(
            kind
            for kind, values in ((GENOMICS, genes), (CLINICAL, covariates))
            if self._uses(kind) and values is None and not self._may_miss(kind)
        )
        return PatientData(genes, covariates, genomics_source, clinical_source, missing)

    def _find(self, kind: str, table: PatientTable | None, patient_id: str) -> tuple[dict[str, Any] | None, str]:
        if not self._uses(kind):
            return None, NOT_USED
        if table is None:
            return None, no_table(kind)
        values = table.find(patient_id)
        if values is None:
            return None, not_in(kind)
        if kind == CLINICAL and all(pd.isna(v) for v in values.values()):
            # An empty row (an outer-joined export) is no data, like an all-NaN omics block.
            return None, no_values_in(kind)
        return values, found_in(kind)

    @staticmethod
    def _uses_kind(contract: ModelContract, kind: str) -> bool:
        return contract.uses_genomics if kind == GENOMICS else contract.uses_clinical

    def _uses(self, kind: str) -> bool:
        return self._uses_kind(self.contract, kind)

    def _may_miss(self, kind: str) -> bool:
        if kind == CLINICAL:
            return self.contract.may_miss(CLINICAL)
        # Genomics can be left out when every omics block the model uses may be missing.
        return all(self.contract.may_miss(b.name) for b in self.contract.omics if self.contract.trains(b.name))


def patient_id_of(paths: Sequence[Path]) -> str:
    """PatientID of the first readable file (used only for the lookup, never logged)."""
    for path in paths:
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["PatientID"])
        except Exception:  # noqa: BLE001 - bad input must not raise here (never a 500)
            continue  # an unreadable file is reported by the study reader, with its error kind
        return str(ds.get("PatientID", "") or "").strip()
    return ""
