"""Expression matrices: CSV, TSV or Parquet, samples as rows or as columns.

The first column (or a stored Parquet index) holds the labels of the rows. Which axis
holds the samples is detected from the sample IDs the caller knows (the sample map),
or from Ensembl gene IDs on one axis; otherwise the caller must say, because a guess
that swaps genes and samples would produce a plausible-looking, wrong table.

Values are declared as ``log`` (already log-scale, e.g. log2(TPM+1), kept as they are)
or ``counts`` (raw read counts, turned into log2(CPM + 1): each sample divided by its
library size, the sum of its counts over the matrix's genes, times 10^6, plus 1, log2).
CPM is used rather than TPM because gene lengths are not part of a count matrix."""

from __future__ import annotations

import csv
import re
from collections.abc import Collection
from pathlib import Path

import numpy as np
import pandas as pd

from radfusion.errors import OmicsFormatError
from radfusion.genomics import BLOCK_SUFFIXES, EXPRESSION
from radfusion.omics.block import GeneBlock

SCALES = ("log", "counts")
ORIENTATIONS = ("auto", "samples_as_rows", "genes_as_rows")
_ENSEMBL_GENE = re.compile(r"^ENS[A-Z]*G\d{6,}(\.\d+)?$")
# Declared "log" but every value a whole number above this: almost surely raw counts.
_COUNTS_LIKE_MAX = 100.0


def read_expression(
    path: Path | str,
    scale: str = "log",
    orientation: str = "auto",
    sample_ids: Collection[str] | None = None,
) -> GeneBlock:
    """The matrix as an expression block, samples as rows, log-scale values."""
    if scale not in SCALES:
        raise ValueError(f"expression scale must be one of {SCALES}, not {scale!r}")
    if orientation not in ORIENTATIONS:
        raise ValueError(f"orientation must be one of {ORIENTATIONS}, not {orientation!r}")
    path = Path(path)
    raw = _read_labelled(path)
    notes: list[str] = []
    numeric, ignored = _numeric_part(raw)
    if ignored:
        notes.append(f"ignored non-numeric columns: {', '.join(ignored)}")
    if orientation == "auto":
        orientation = _detect_orientation(numeric, sample_ids, path.name)
        notes.append(f"orientation detected: {orientation.replace('_', ' ')}")
    matrix = numeric.T if orientation == "genes_as_rows" else numeric
    matrix.index = matrix.index.astype(str).str.strip()
    matrix.columns = matrix.columns.astype(str).str.strip()
    matrix.index.name = "sample_id"
    _check_labels(matrix, path.name)
    if scale == "counts":
        matrix = log_cpm(matrix, path.name)
        notes.append("raw counts -> log2(CPM + 1), library size = sum of counts per sample")
    elif _looks_like_counts(matrix):
        notes.append(
            "declared log-scale but every value is a whole number and some exceed "
            f"{_COUNTS_LIKE_MAX:g}: check whether these are raw counts"
        )
    return GeneBlock(EXPRESSION, matrix.astype(np.float64), path.name, notes)


def log_cpm(counts: pd.DataFrame, name: str = "matrix") -> pd.DataFrame:
    """log2(counts / library size * 1e6 + 1) per sample (row). Negative counts are an
    error; a sample whose counts sum to zero has no expression profile (all NaN)."""
    values = counts.to_numpy(dtype=np.float64)
    if (values < 0).any():
        rows = np.flatnonzero((values < 0).any(axis=1))
        raise OmicsFormatError(f"{name}: negative counts in {len(rows)} sample(s); counts must be >= 0")
    library = np.nansum(np.where(np.isinf(values), np.nan, values), axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        cpm = np.where(library > 0, values / library * 1e6, np.nan)
    return pd.DataFrame(np.log2(cpm + 1.0), index=counts.index, columns=counts.columns)


def _read_labelled(path: Path) -> pd.DataFrame:
    suffix = path.suffix.lower()
    try:
        if suffix == ".parquet":
            table = pd.read_parquet(path)
            if isinstance(table.index, pd.RangeIndex):
                table = table.set_index(table.columns[0])
        elif suffix in (".csv", ".tsv", ".txt"):
            sep = "," if suffix == ".csv" else "\t"
            header = pd.read_csv(path, sep=sep, nrows=0).columns
            _refuse_repeated_header(path, sep)
            # Labels stay text: sample "007" must not become 7.
            table = pd.read_csv(path, sep=sep, dtype={header[0]: str}).set_index(header[0])
        else:
            raise OmicsFormatError(f"{path.name}: unsupported expression file type {suffix!r} (.csv, .tsv or .parquet)")
    except (pd.errors.ParserError, pd.errors.EmptyDataError, IndexError, UnicodeDecodeError) as exc:
        raise OmicsFormatError(f"{path.name}: not a readable table ({type(exc).__name__})") from exc
    if table.empty:
        raise OmicsFormatError(f"{path.name}: the expression matrix is empty")
    return table


def _refuse_repeated_header(path: Path, sep: str) -> None:
    """pandas renames a repeated column ("TP53" -> "TP53.1"): catch it in the raw header."""
    with open(path, encoding="utf-8", newline="") as handle:
        labels = [label.strip() for label in next(csv.reader(handle, delimiter=sep), [])[1:]]
    repeated = sorted({label for label in labels if labels.count(label) > 1})
    if repeated:
        raise OmicsFormatError(f"{path.name}: {len(repeated)} duplicated column label(s) in the header")


def _numeric_part(table: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """Numeric columns; wholly non-numeric ones (a GCT 'Description', a symbol column
    beside Ensembl IDs) are set aside and named. A numeric column with stray text is
    an error naming the column."""
    keep, ignored = [], []
    for column in table.columns:
        series = table[column]
        if pd.api.types.is_numeric_dtype(series.dtype) and not pd.api.types.is_bool_dtype(series.dtype):
            keep.append(column)
            continue
        parsed = pd.to_numeric(series, errors="coerce")
        if parsed.notna().sum() == 0:
            ignored.append(str(column))
        elif (parsed.isna() & series.notna()).any():
            raise OmicsFormatError(f"column {column!r} mixes numbers and text")
        else:
            keep.append(column)
    numeric = table[keep].apply(pd.to_numeric, errors="coerce") if keep else table[keep]
    if numeric.shape[1] == 0:
        raise OmicsFormatError("the expression matrix has no numeric columns")
    return numeric, ignored


def _detect_orientation(matrix: pd.DataFrame, sample_ids: Collection[str] | None, name: str) -> str:
    rows = {str(v).strip() for v in matrix.index}
    cols = {str(v).strip() for v in matrix.columns}
    if sample_ids is not None and len(sample_ids) > 0:
        known = {str(s) for s in sample_ids}
        in_rows, in_cols = len(rows & known), len(cols & known)
        if in_rows != in_cols:
            return "samples_as_rows" if in_rows > in_cols else "genes_as_rows"
    ens_rows = sum(bool(_ENSEMBL_GENE.match(v)) for v in rows) / len(rows)
    ens_cols = sum(bool(_ENSEMBL_GENE.match(v)) for v in cols) / len(cols)
    if max(ens_rows, ens_cols) > 0.5 and ens_rows != ens_cols:
        return "genes_as_rows" if ens_rows > ens_cols else "samples_as_rows"
    raise OmicsFormatError(
        f"{name}: cannot tell whether samples are rows or columns (no known sample IDs on "
        "either axis): give the sample map or the orientation"
    )


def _check_labels(matrix: pd.DataFrame, name: str) -> None:
    for what, labels in (("sample", matrix.index), ("gene", matrix.columns)):
        duplicated = labels[labels.duplicated()].unique()
        if len(duplicated):
            raise OmicsFormatError(
                f"{name}: {len(duplicated)} duplicated {what} label(s)"
                + (f": {', '.join(map(str, duplicated[:10]))}" if what == "gene" else "")
            )
    suffixed = [g for g in matrix.columns if any(g.endswith(s) for s in BLOCK_SUFFIXES)]
    if suffixed:
        raise OmicsFormatError(f"{name}: expression genes named like another block's features: {suffixed[:10]}")


def _looks_like_counts(matrix: pd.DataFrame) -> bool:
    values = matrix.to_numpy(dtype=np.float64)
    finite = values[np.isfinite(values)]
    return finite.size > 0 and bool(np.all(finite == np.round(finite))) and float(finite.max()) > _COUNTS_LIKE_MAX
