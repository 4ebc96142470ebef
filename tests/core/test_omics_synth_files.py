"""The synthetic cohort's raw omics files: deterministic, sample IDs that are not
PatientIDs, and read back by the omics readers to the released table's values."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from radfusion.omics import map_to_patients, read_expression, read_maf, read_sample_map
from radfusion.synth import genomics_table, simulate_patients
from radfusion.synth.omics_files import write_omics_files


def test_files_are_deterministic_and_read_back_to_the_released_table(tmp_path: Path) -> None:
    cohort = simulate_patients(40, seed=5, n_genes=30)
    a, b = write_omics_files(cohort, tmp_path / "a"), write_omics_files(cohort, tmp_path / "b")
    names = sorted(p.name for p in a.iterdir())
    assert names == ["copy_number.seg", "expression.tsv", "genes.bed", "mutations.maf", "sample_map.csv"]
    assert all((a / n).read_bytes() == (b / n).read_bytes() for n in names)

    sample_map = read_sample_map(a / "sample_map.csv")
    released = genomics_table(cohort).set_index("patient_id")
    assert len(sample_map) == len(released) == 34  # 15% of 40 without genomics
    assert not set(sample_map["sample_id"]) & set(sample_map["patient_id"])

    expression = map_to_patients(read_expression(a / "expression.tsv", sample_ids=sample_map["sample_id"]), sample_map)
    np.testing.assert_array_equal(expression.values.loc[released.index, cohort.genes], released[cohort.genes])
    mutations = map_to_patients(read_maf(a / "mutations.maf"), sample_map).values
    for column in mutations.columns:
        np.testing.assert_array_equal(mutations.loc[released.index, column], released[column])
    maf = (a / "mutations.maf").read_text()
    assert "\tSilent\t" in maf and "germline_risk" in maf  # what the reader must ignore is there
