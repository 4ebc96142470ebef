"""Sample IDs -> DICOM PatientIDs through an explicit sample map, never by guessing
(sample barcodes and PatientIDs differ, and a near-match is a different patient).

The map is a CSV/TSV with columns sample_id and patient_id. A patient with several
samples in one block keeps the sample listed first in the map (the data steward's
order of preference); the others are reported with the one kept. Error messages give
row numbers, never the IDs themselves, because messages end up in logs."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from radfusion.errors import OmicsFormatError
from radfusion.genomics import ID_COLUMN
from radfusion.omics.block import GeneBlock

MAP_COLUMNS = ("sample_id", "patient_id")


def read_sample_map(path: Path | str) -> pd.DataFrame:
    """Columns sample_id, patient_id (text), in file order, one row per sample."""
    path = Path(path)
    sep = "," if path.suffix.lower() == ".csv" else "\t"
    try:
        table = pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise OmicsFormatError(f"{path.name}: not a readable sample map ({type(exc).__name__})") from exc
    missing = [c for c in MAP_COLUMNS if c not in table.columns]
    if missing:
        raise OmicsFormatError(f"{path.name}: sample map columns missing: {', '.join(missing)}")
    table = table[list(MAP_COLUMNS)].apply(lambda c: c.str.strip())
    empty = table.index[(table == "").any(axis=1)]
    if len(empty):
        raise OmicsFormatError(f"{path.name}: empty sample_id or patient_id on data row(s) {_rows(empty)}")
    table = table.drop_duplicates()  # the same pair twice says nothing new
    clash = table.index[table["sample_id"].duplicated(keep=False)]
    if len(clash):
        raise OmicsFormatError(f"{path.name}: a sample_id maps to more than one patient on data row(s) {_rows(clash)}")
    return table.reset_index(drop=True)


@dataclass
class PatientBlock:
    """A block re-indexed by patient: ``values`` (index patient_id), which sample each
    patient's row came from, the samples the map does not know, and the patients that
    had several samples (all of them listed, the kept one first)."""

    name: str
    values: pd.DataFrame
    sample_of: dict[str, str]
    unmapped: list[str] = field(default_factory=list)
    duplicates: dict[str, list[str]] = field(default_factory=dict)


def map_to_patients(block: GeneBlock, sample_map: pd.DataFrame) -> PatientBlock:
    patient_of = dict(zip(sample_map["sample_id"], sample_map["patient_id"], strict=True))
    preference = {s: i for i, s in enumerate(sample_map["sample_id"])}
    samples = [str(s) for s in block.values.index]
    unmapped = sorted(s for s in samples if s not in patient_of)
    mapped = sorted((s for s in samples if s in patient_of), key=preference.__getitem__)
    chosen: dict[str, str] = {}
    duplicates: dict[str, list[str]] = {}
    for sample in mapped:
        patient = patient_of[sample]
        if patient in chosen:
            duplicates.setdefault(patient, [chosen[patient]]).append(sample)
        else:
            chosen[patient] = sample
    patients = sorted(chosen)
    values = block.values.loc[[chosen[p] for p in patients]].copy()
    values.index = pd.Index(patients, name=ID_COLUMN)
    return PatientBlock(block.name, values, {p: chosen[p] for p in patients}, unmapped, duplicates)


def _rows(index: pd.Index) -> str:
    numbers = [str(i + 1) for i in index[:10]]
    return ", ".join(numbers) + (f" and {len(index) - 10} more" if len(index) > 10 else "")
