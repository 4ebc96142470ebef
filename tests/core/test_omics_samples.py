"""Sample IDs -> PatientIDs only through the sample map: unmapped samples reported,
a patient's first sample in the map kept (the others reported), contradictory maps
refused with row numbers instead of IDs; blocks join into the wide table."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from radfusion.errors import OmicsFormatError
from radfusion.genomics import split_blocks
from radfusion.omics import (
    GeneBlock,
    join_patient_blocks,
    map_to_patients,
    read_sample_map,
)


def test_mapping_keeps_the_first_sample_in_the_map_and_reports_the_rest(tmp_path: Path) -> None:
    path = tmp_path / "map.csv"
    path.write_text("sample_id,patient_id\nS-B,P1\nS-A,P1\nS-C,P2\nS-C,P2\n")
    sample_map = read_sample_map(path)
    assert sample_map.values.tolist() == [["S-B", "P1"], ["S-A", "P1"], ["S-C", "P2"]]
    values = pd.DataFrame(
        {"EGFR": [1.0, 2.0, 3.0, 4.0]}, index=pd.Index(["S-A", "S-B", "S-C", "S-X"], name="sample_id")
    )
    mapped = map_to_patients(GeneBlock("expression", values, "x"), sample_map)
    assert mapped.sample_of == {"P1": "S-B", "P2": "S-C"}
    assert mapped.values["EGFR"].to_dict() == {"P1": 2.0, "P2": 3.0}
    assert mapped.unmapped == ["S-X"]
    assert mapped.duplicates == {"P1": ["S-B", "S-A"]}


def test_contradictory_or_incomplete_maps_are_refused_without_ids(tmp_path: Path) -> None:
    clash = tmp_path / "clash.csv"
    clash.write_text("sample_id,patient_id\nS-1,P1\nS-1,P2\n")
    with pytest.raises(OmicsFormatError, match=r"more than one patient on data row\(s\) 1, 2") as info:
        read_sample_map(clash)
    assert "S-1" not in str(info.value) and "P1" not in str(info.value)
    empty = tmp_path / "empty.csv"
    empty.write_text("sample_id,patient_id\nS-1,\n")
    with pytest.raises(OmicsFormatError, match=r"empty sample_id or patient_id on data row\(s\) 1"):
        read_sample_map(empty)
    wrong = tmp_path / "wrong.csv"
    wrong.write_text("sample,patient\nS-1,P1\n")
    with pytest.raises(OmicsFormatError, match="columns missing: sample_id, patient_id"):
        read_sample_map(wrong)


def test_blocks_join_into_the_table_the_contract_splits() -> None:
    expression = pd.DataFrame({"EGFR": [1.0, 2.0]}, index=pd.Index(["P1", "P2"], name="patient_id"))
    mutation = pd.DataFrame({"EGFR_mut": [1.0]}, index=pd.Index(["P2"], name="patient_id"))
    copy_number = pd.DataFrame({"EGFR_cn": [np.inf]}, index=pd.Index(["P3"], name="patient_id"))
    table = join_patient_blocks([expression, mutation, copy_number])
    assert list(table.index) == ["P1", "P2", "P3"]
    assert split_blocks(list(table.columns)) == {
        "expression": ["EGFR"],
        "mutation": ["EGFR_mut"],
        "copy_number": ["EGFR_cn"],
    }
    assert np.isnan(table.loc["P1", "EGFR_mut"]) and np.isnan(table.loc["P3", "EGFR_cn"])  # inf -> NaN
    with pytest.raises(ValueError, match="feature columns in two blocks"):
        join_patient_blocks([expression, expression])
