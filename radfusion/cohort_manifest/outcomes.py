"""The clinical/outcome table: one row per patient, PatientID as text."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from radfusion.errors import ClinicalInputError
from radfusion.genomics import ID_COLUMN


def read_clinical(path: Path | str, outcomes: list[str]) -> tuple[pd.DataFrame, dict[str, int]]:
    """The table indexed by patient_id, and {patient_id: rows} for patients listed more
    than once (the first row is kept)."""
    path = Path(path)
    if path.suffix.lower() == ".parquet":
        table = pd.read_parquet(path)
    else:
        table = pd.read_csv(path, sep="," if path.suffix.lower() == ".csv" else "\t", dtype={ID_COLUMN: str})
    if ID_COLUMN not in table.columns:
        raise ClinicalInputError(f"{path.name}: no {ID_COLUMN} column")
    missing = [c for c in outcomes if c not in table.columns]
    if missing:
        raise ClinicalInputError(f"{path.name}: outcome column(s) missing: {', '.join(missing)}")
    table[ID_COLUMN] = table[ID_COLUMN].astype(str).str.strip()
    counts = table[ID_COLUMN].value_counts()
    repeated = {str(p): int(n) for p, n in counts[counts > 1].sort_index().items()}
    return table.drop_duplicates(ID_COLUMN, keep="first").set_index(ID_COLUMN), repeated
