"""Score rows say why each study's series was chosen, why every other series was not,
and what geometry the reader repaired; a study beyond the repair limits is an error row
that says why. Studies are written here slice by slice (test_dicom_reading builders)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from pydicom.uid import generate_uid

from radfusion.serving.scoring.score import score_archive
from tests.support.dicom_series import (
    GAP_NOTE,
    write_axial_series,
)


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """Three studies: one with a slice missing (filled) beside a localizer and a short
    series, one intact, one with three slices missing in a row (beyond the limit)."""
    root = tmp_path_factory.mktemp("series_archive")
    uids = {name: generate_uid() for name in ("gap", "intact", "wide_gap")}
    write_axial_series(root / "gap", uids["gap"], 1, 1, image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"))
    write_axial_series(root / "gap", uids["gap"], 2, 10, keep=[k for k in range(10) if k != 6])
    write_axial_series(root / "gap", uids["gap"], 3, 3)
    write_axial_series(root / "intact", uids["intact"], 5, 10)
    write_axial_series(root / "wide_gap", uids["wide_gap"], 7, 10, keep=[0, 1, 2, 6, 7, 8, 9])
    return root, uids


def test_rows_record_the_series_choice_and_the_repairs(archive, tiny_onnx_model: Path, tmp_path: Path) -> None:
    root, uids = archive
    out = tmp_path / "scores.parquet"
    summary = score_archive(root, tiny_onnx_model, out, device="cpu", progress=False, workers=0)
    rows = pd.read_parquet(out).set_index("study_instance_uid")
    assert (summary["scored"], summary["failed"], summary["geometry_corrected"]) == (2, 1, 1)

    gap = rows.loc[uids["gap"]]
    assert pd.isna(gap["error"]) and gap["modalities_used"] == "image"
    assert gap["series_reason"] == "CT series with 9 slices"
    assert gap["series_rejected"] == (
        "series 1: localizer image type (localizer/scout/derived); series 3: only 3 slice(s), fewer than 4"
    )
    assert gap["geometry_corrections"] == GAP_NOTE

    intact = rows.loc[uids["intact"]]
    assert intact["series_reason"] == "CT series with 10 slices"
    assert (intact["series_rejected"], intact["geometry_corrections"]) == ("", "")  # nothing else, nothing repaired

    wide = rows.loc[uids["wide_gap"]]
    assert wide["error"].startswith("geometry_rejected: ")
    assert "missing slices or gaps wider than 2 slices" in wide["error"]
    assert pd.isna(wide["series_reason"]) and pd.isna(wide["geometry_corrections"])
