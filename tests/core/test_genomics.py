"""Genomics tables: Parquet, CSV and TSV give the same frame indexed by patient id as
strings (leading zeros kept), and lookups of unknown patients return None."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from radfusion.genomics import feature_columns, load_genomics_table, row_as_mapping

IDS = ["007", "010", "1234", "A-19"]


def table() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "patient_id": IDS,
            "TP53": [5.25, 3.5, 7.125, 0.0],
            "EGFR": [1.0, 2.5, 3.75, 9.5],
            "EGFR_mut": [1, 0, 0, 1],
        }
    )


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    df = table()
    paths = {
        "parquet": tmp_path / "g.parquet",
        "csv": tmp_path / "g.csv",
        "tsv": tmp_path / "g.tsv",
        "txt": tmp_path / "g.txt",
    }
    df.to_parquet(paths["parquet"], index=False)
    df.to_csv(paths["csv"], index=False)
    df.to_csv(paths["tsv"], sep="\t", index=False)
    df.to_csv(paths["txt"], sep="\t", index=False)
    return paths


def test_all_formats_give_the_same_frame(files: dict[str, Path]) -> None:
    reference = load_genomics_table(files["parquet"])
    assert reference.index.name == "patient_id"
    assert list(reference.index) == IDS  # "007" keeps its zeros, "1234" stays text
    assert all(isinstance(i, str) for i in reference.index)
    assert list(reference.columns) == ["TP53", "EGFR", "EGFR_mut"]
    assert reference.loc["1234", "TP53"] == 7.125
    for kind in ("csv", "tsv", "txt"):
        other = load_genomics_table(files[kind])
        pd.testing.assert_frame_equal(other, reference, check_index_type=False, obj=kind)
        assert list(other.index) == IDS, kind


def test_suffix_is_case_insensitive(tmp_path: Path) -> None:
    path = tmp_path / "G.CSV"
    table().to_csv(path, index=False)
    assert list(load_genomics_table(path).index) == IDS


@pytest.mark.parametrize("ids", [IDS, ["007", "010", "1234", "0"]], ids=["mixed", "all-digits"])
def test_first_column_is_the_id_when_not_named_patient_id(tmp_path: Path, ids: list[str]) -> None:
    """A table whose id column has another name: still text ids, leading zeros kept
    even when every id looks like a number."""
    df = table().rename(columns={"patient_id": "sample"}).assign(sample=ids)
    csv, tsv, parquet = tmp_path / "g.csv", tmp_path / "g.tsv", tmp_path / "g.parquet"
    df.to_csv(csv, index=False)
    df.to_csv(tsv, sep="\t", index=False)
    df.to_parquet(parquet, index=False)
    for path in (csv, tsv, parquet):
        loaded = load_genomics_table(path)
        assert loaded.index.name == "patient_id"
        assert list(loaded.index) == ids, path.suffix
        assert list(loaded.columns) == ["TP53", "EGFR", "EGFR_mut"]


def test_numeric_ids_in_parquet_become_strings(tmp_path: Path) -> None:
    path = tmp_path / "g.parquet"
    pd.DataFrame({"patient_id": [7, 10], "TP53": [1.0, 2.0]}).to_parquet(path, index=False)
    loaded = load_genomics_table(path)
    assert list(loaded.index) == ["7", "10"]
    assert row_as_mapping(loaded, "7") == {"TP53": 1.0}


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_duplicate_ids_raise(tmp_path: Path, suffix: str) -> None:
    df = pd.DataFrame({"patient_id": ["007", "008", "007"], "TP53": [1.0, 2.0, 3.0]})
    path = tmp_path / f"g{suffix}"
    df.to_csv(path, index=False) if suffix == ".csv" else df.to_parquet(path, index=False)
    with pytest.raises(ValueError, match=r"^genomics table has duplicate patient ids$"):
        load_genomics_table(path)


def test_ids_that_differ_only_in_leading_zeros_are_not_duplicates(tmp_path: Path) -> None:
    path = tmp_path / "g.csv"
    pd.DataFrame({"patient_id": ["7", "007"], "TP53": [1.0, 2.0]}).to_csv(path, index=False)
    loaded = load_genomics_table(path)
    assert row_as_mapping(loaded, "7") == {"TP53": 1.0}
    assert row_as_mapping(loaded, "007") == {"TP53": 2.0}


@pytest.mark.parametrize("name", ["g.xlsx", "g.json", "g"])
def test_unsupported_suffix_raises(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_text("patient_id,TP53\n007,1.0\n")
    with pytest.raises(ValueError, match="unsupported genomics file type"):
        load_genomics_table(path)


def test_row_as_mapping(files: dict[str, Path]) -> None:
    loaded = load_genomics_table(files["csv"])
    assert row_as_mapping(loaded, "007") == {"TP53": 5.25, "EGFR": 1.0, "EGFR_mut": 1}
    assert row_as_mapping(loaded, "7") is None  # no silent match without the zeros
    assert row_as_mapping(loaded, "unknown") is None


def test_feature_columns_are_the_numeric_ones_in_order(tmp_path: Path) -> None:
    path = tmp_path / "g.csv"
    df = table()
    df.insert(2, "site", ["a", "b", "c", "d"])  # text: a pandas string column
    df["flag"] = [True, False, True, True]  # booleans are not features ...
    df["KRAS_mut"] = [True, False, False, True]  # ... unless they are mutation flags: 1/0
    df.to_csv(path, index=False)
    loaded = load_genomics_table(path)
    assert feature_columns(loaded) == ["TP53", "EGFR", "EGFR_mut", "KRAS_mut"]
    assert loaded["KRAS_mut"].tolist() == [1.0, 0.0, 0.0, 1.0]
    loaded = loaded.drop(columns="KRAS_mut")
    assert np.issubdtype(loaded["EGFR_mut"].dtype, np.integer)
    # nullable pandas dtypes count as numeric
    loaded["EGFR"] = loaded["EGFR"].astype("Float64")
    loaded["EGFR_mut"] = loaded["EGFR_mut"].astype("Int64")
    assert feature_columns(loaded) == ["TP53", "EGFR", "EGFR_mut"]


def test_a_feature_with_mistyped_cells_is_an_error_not_lost() -> None:
    df = table().set_index("patient_id")
    df["EGFR"] = df["EGFR"].astype(object)
    df.iloc[1, df.columns.get_loc("EGFR")] = "<5"
    with pytest.raises(ValueError, match=r"with values that are not numbers: EGFR \(1 not numbers\)"):
        feature_columns(df)


def test_synthetic_cohort_genomics_load_as_written(tiny_cohort: Path) -> None:
    parquet = load_genomics_table(tiny_cohort / "genomics.parquet")
    csv = load_genomics_table(tiny_cohort / "genomics.csv")
    pd.testing.assert_frame_equal(parquet, csv, check_index_type=False)
    assert parquet.index.is_unique and parquet.index.str.match(r"^RFP\d{7}$").all()
    assert feature_columns(parquet) == list(parquet.columns)  # 100 genes + 5 mutation flags
    assert len(parquet.columns) == 105
