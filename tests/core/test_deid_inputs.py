"""Inputs `radfusion deid` cannot write are reported by reason, never skipped silently:
in the per-file report, in the summary's counts by reason, and in the log by the file's
keyed reference (never its path)."""

from __future__ import annotations

import csv
import shutil

import pydicom
from pydicom.data import get_testdata_file

from radfusion.deid.keys import DeidKey
from radfusion.deid.run import (
    REASON_DICOMDIR,
    REASON_DUPLICATE,
    REASON_NO_PREAMBLE,
    REASON_NOT_DICOM,
    REASON_TRUNCATED,
    deidentify_tree,
)

KEY = DeidKey.from_text("radfusion-test-key-inputs-012345")


def test_unwritable_inputs_are_reported_by_reason(tmp_path, caplog):
    src = tmp_path / "in" / "PATIENT_SMITH"
    src.mkdir(parents=True)
    shutil.copy(get_testdata_file("CT_small.dcm"), src / "first.dcm")
    (src / "z_copy").mkdir()
    shutil.copy(get_testdata_file("CT_small.dcm"), src / "z_copy" / "second.dcm")  # same SOP Instance UID
    shutil.copy(get_testdata_file("DICOMDIR"), src / "DICOMDIR")
    shutil.copy(get_testdata_file("rtstruct.dcm"), src / "raw.dcm")  # no preamble, no file meta
    shutil.copy(get_testdata_file("MR_truncated.dcm"), src / "cut.dcm")
    (src / "notes.txt").write_text("not an image")
    caplog.set_level("INFO")

    summary = deidentify_tree(tmp_path / "in", tmp_path / "out", KEY)

    with open(summary.report, newline="") as f:
        rows = {r["input"].split("/", 1)[1]: r for r in csv.DictReader(f)}
    assert {name: r["reason"] for name, r in rows.items() if r["status"] != "written"} == {
        "z_copy/second.dcm": REASON_DUPLICATE,
        "DICOMDIR": REASON_DICOMDIR,
        "raw.dcm": REASON_NO_PREAMBLE,
        "cut.dcm": REASON_TRUNCATED,
        "notes.txt": REASON_NOT_DICOM,
    }
    assert rows["first.dcm"]["status"] == "written" and summary.written == 1
    assert summary.reasons == {
        REASON_DUPLICATE: 1,
        REASON_DICOMDIR: 1,
        REASON_NO_PREAMBLE: 1,
        REASON_TRUNCATED: 1,
        REASON_NOT_DICOM: 1,
    }
    assert summary.skipped + summary.failed == 5 and summary.files_seen == 6
    # The log names each file by its keyed reference and gives its reason, never its path.
    for row in rows.values():
        if row["status"] != "written":
            assert f"file {row['ref']} {row['status']}: {row['reason']}" in caplog.text
    for secret in ("SMITH", "PATIENT_", "z_copy", "second.dcm", "raw.dcm", "cut.dcm", "notes"):
        assert secret not in caplog.text
    assert [pydicom.dcmread(p).PatientIdentityRemoved for p in (tmp_path / "out").rglob("*.dcm")] == ["YES"]
