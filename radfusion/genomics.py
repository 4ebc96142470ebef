"""Genomics tables: one row per patient, the id column first, then features
(expression values and ``<GENE>_mut`` mutation flags)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

ID_COLUMN = "patient_id"
_log = logging.getLogger(__name__)


def load_genomics_table(path: Path | str) -> pd.DataFrame:
    """Read Parquet or CSV/TSV and index it by patient id (kept as a string)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        table = pd.read_parquet(path)
        if table.index.name == ID_COLUMN:  # written with the ids as its index
            table = table.reset_index()
    elif suffix in (".csv", ".tsv", ".txt"):
        sep = "\t" if suffix != ".csv" else ","
        # The id column is read as text whatever its name, so "007" keeps its zeros.
        header = pd.read_csv(path, sep=sep, nrows=0).columns
        id_column = ID_COLUMN if ID_COLUMN in header else header[0]
        table = pd.read_csv(path, sep=sep, dtype={id_column: str})
    else:
        raise ValueError(f"unsupported genomics file type {suffix!r} (use .parquet, .csv or .tsv)")
    id_column = ID_COLUMN if ID_COLUMN in table.columns else table.columns[0]
    table[id_column] = table[id_column].astype(str)
    # Mutation flags written as True/False are features like 1/0 (other True/False
    # columns are not features: feature_columns leaves them out).
    flags = [c for c in table.columns if str(c).endswith("_mut") and pd.api.types.is_bool_dtype(table[c].dtype)]
    table[flags] = table[flags].astype(np.float64)
    if table[id_column].duplicated().any():
        raise ValueError("genomics table has duplicate patient ids")
    table = table.set_index(id_column)
    table.index.name = ID_COLUMN
    return table


# Gene-level features of the non-expression blocks carry the block in their name, as
# the mutation (VCF/MAF) and copy-number (segments) readers write them.
BLOCK_SUFFIXES = {"_mut": "mutation", "_cn": "copy_number"}
EXPRESSION = "expression"


def block_of(feature: str) -> str:
    for suffix, block in BLOCK_SUFFIXES.items():
        if feature.endswith(suffix):
            return block
    return EXPRESSION


def split_blocks(features: list[str]) -> dict[str, list[str]]:
    """Features grouped by omics block, blocks in a fixed order, features in table order."""
    order = [EXPRESSION, *BLOCK_SUFFIXES.values()]
    blocks: dict[str, list[str]] = {}
    for feature in features:
        blocks.setdefault(block_of(feature), []).append(feature)
    return {name: blocks[name] for name in order if name in blocks}


def feature_columns(table: pd.DataFrame) -> list[str]:
    """Numeric feature columns in table order. A text column that is mostly numbers is a
    feature with mistyped cells ("<5", "n.d."): an error, not a feature silently lost;
    other text columns (sample names, batches) are left out, with a warning naming them."""
    # pandas' own test: numpy's issubdtype raises on pandas string/nullable dtypes.
    numeric = [
        c
        for c in table.columns
        if pd.api.types.is_numeric_dtype(table[c].dtype) and not pd.api.types.is_bool_dtype(table[c].dtype)
    ]
    text = [c for c in table.columns if c not in numeric]
    mistyped = []
    for column in text:
        if pd.api.types.is_bool_dtype(table[column].dtype):
            continue
        given = table[column].dropna()
        parsed = pd.to_numeric(given, errors="coerce")
        if len(given) and parsed.notna().mean() >= 0.5:
            mistyped.append(f"{column} ({int(parsed.isna().sum())} not numbers)")
    if mistyped:
        raise ValueError(
            f"genomics column(s) with values that are not numbers: {', '.join(mistyped[:10])}; "
            "leave a cell empty when the value is unknown"
        )
    if text:
        _log.warning("genomics columns that are not numbers are not features: %s", ", ".join(map(str, text[:10])))
    return numeric


def row_as_mapping(table: pd.DataFrame, patient_id: str) -> dict[str, float] | None:
    """The patient's features, or None when the patient has no genomics."""
    if patient_id not in table.index:
        return None
    return table.loc[patient_id].to_dict()
