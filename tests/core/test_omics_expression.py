"""Expression matrices: the same numbers whatever the file type and orientation, counts
turned into log2(CPM+1) with the numbers checked by hand, orientation detected from
the sample map (or refused), and NaN/inf values reported by sample and gene."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from radfusion.errors import OmicsFormatError
from radfusion.omics import read_expression

SAMPLES = ["S-007", "S-010", "S-123"]
GENES = ["TP53", "EGFR", "KRAS", "MYC"]
COUNTS = np.array([[10, 30, 60, 0], [0, 0, 5, 5], [100, 200, 300, 400]], dtype=float)
LOG = np.array([[5.25, 3.5, 7.125, 0.0], [1.0, 2.5, 3.75, 9.5], [4.0, 4.5, 6.0, 8.25]])


def write(frame: pd.DataFrame, path: Path) -> Path:
    if path.suffix == ".parquet":
        frame.to_parquet(path)  # the labels go in as the stored index
    else:
        frame.to_csv(path, sep="," if path.suffix == ".csv" else "\t", index_label="id")
    return path


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".parquet"])
@pytest.mark.parametrize("genes_as_rows", [False, True])
def test_same_matrix_from_every_type_and_orientation(tmp_path: Path, suffix: str, genes_as_rows: bool) -> None:
    frame = pd.DataFrame(LOG, index=SAMPLES, columns=GENES)
    path = write(frame.T if genes_as_rows else frame, tmp_path / f"expr{suffix}")
    block = read_expression(path, scale="log", sample_ids=SAMPLES)
    assert block.name == "expression"
    assert list(block.values.index) == SAMPLES and list(block.values.columns) == GENES
    np.testing.assert_array_equal(block.values.to_numpy(), LOG)
    detected = "genes as rows" if genes_as_rows else "samples as rows"
    assert f"orientation detected: {detected}" in block.notes


def test_raw_counts_become_log2_cpm(tmp_path: Path) -> None:
    path = write(pd.DataFrame(COUNTS.T, index=GENES, columns=SAMPLES), tmp_path / "counts.tsv")
    block = read_expression(path, scale="counts", sample_ids=SAMPLES)
    # Sample S-007: library 100 -> CPM 1e5, 3e5, 6e5, 0.
    np.testing.assert_allclose(block.values.loc["S-007"], np.log2([1e5 + 1, 3e5 + 1, 6e5 + 1, 1.0]))
    # S-010: library 10 -> 0, 0, 5e5, 5e5.
    np.testing.assert_allclose(block.values.loc["S-010"], np.log2([1.0, 1.0, 5e5 + 1, 5e5 + 1]))
    # Every sample's CPM sums to a million: the library-size normalisation holds.
    np.testing.assert_allclose((2.0**block.values - 1.0).sum(axis=1), 1e6)


def test_counts_declared_as_log_are_flagged_and_negative_counts_refused(tmp_path: Path) -> None:
    path = write(pd.DataFrame(COUNTS, index=SAMPLES, columns=GENES), tmp_path / "counts.csv")
    block = read_expression(path, scale="log", sample_ids=SAMPLES)
    assert any("check whether these are raw counts" in note for note in block.notes)
    declared = read_expression(path, "counts", sample_ids=SAMPLES).notes
    assert not any("check whether" in note for note in declared)
    negative = COUNTS.copy()
    negative[1, 2] = -3
    bad = write(pd.DataFrame(negative, index=SAMPLES, columns=GENES), tmp_path / "negative.csv")
    with pytest.raises(OmicsFormatError, match="negative counts in 1 sample"):
        read_expression(bad, scale="counts", sample_ids=SAMPLES)


def test_orientation_needs_known_samples_or_ensembl_ids(tmp_path: Path) -> None:
    path = write(pd.DataFrame(LOG, index=SAMPLES, columns=GENES), tmp_path / "expr.csv")
    with pytest.raises(OmicsFormatError, match="cannot tell whether samples are rows or columns"):
        read_expression(path)
    explicit = read_expression(path, orientation="samples_as_rows")
    assert list(explicit.values.index) == SAMPLES
    ensembl = ["ENSG00000141510", "ENSG00000146648", "ENSG00000133703", "ENSG00000136997"]
    by_id = write(pd.DataFrame(LOG.T, index=ensembl, columns=SAMPLES), tmp_path / "ensembl.tsv")
    assert list(read_expression(by_id).values.columns) == ensembl


def test_nan_and_inf_reported_by_sample_and_gene(tmp_path: Path) -> None:
    values = LOG.copy()
    values[0, 1] = np.nan
    values[2, 3] = np.inf
    values[2, 0] = np.nan
    path = write(pd.DataFrame(values, index=SAMPLES, columns=GENES), tmp_path / "expr.parquet")
    report = read_expression(path, sample_ids=SAMPLES).nonfinite()
    assert report == [
        {"sample_id": "S-007", "nan": ["EGFR"]},
        {"sample_id": "S-123", "nan": ["TP53"], "inf": ["MYC"]},
    ]


def test_label_column_kept_as_text_and_description_column_ignored(tmp_path: Path) -> None:
    frame = pd.DataFrame(LOG.T, index=GENES, columns=["007", "010", "123"])
    frame.insert(0, "Description", ["tumour protein p53", "EGF receptor", "KRAS proto-oncogene", "MYC"])
    path = write(frame, tmp_path / "gct_like.tsv")
    block = read_expression(path, sample_ids=["007", "010", "123"])
    assert list(block.values.index) == ["007", "010", "123"]  # not 7, 10, 123
    assert "ignored non-numeric columns: Description" in block.notes


def test_duplicate_genes_and_block_suffixes_refused(tmp_path: Path) -> None:
    dup = write(pd.DataFrame(LOG, index=SAMPLES, columns=["TP53", "EGFR", "TP53", "MYC"]), tmp_path / "dup.csv")
    with pytest.raises(OmicsFormatError, match="1 duplicated column label"):
        read_expression(dup, sample_ids=SAMPLES)
    dup_rows = write(pd.DataFrame(LOG.T, index=["TP53", "EGFR", "TP53", "MYC"], columns=SAMPLES), tmp_path / "dup.tsv")
    with pytest.raises(OmicsFormatError, match=r"1 duplicated gene label.*TP53"):
        read_expression(dup_rows, sample_ids=SAMPLES)
    suffixed = write(pd.DataFrame(LOG, index=SAMPLES, columns=["TP53", "EGFR_mut", "KRAS", "MYC"]), tmp_path / "s.csv")
    with pytest.raises(OmicsFormatError, match="EGFR_mut"):
        read_expression(suffixed, sample_ids=SAMPLES)
