"""The shipped Table E.1-1 is the edition its header names: the row count and the digest
of its rows are recomputed, every tag is the attribute pydicom's data dictionary knows by
that name, and the attributes recent editions added are there."""

from __future__ import annotations

import re
from importlib import resources

import pytest
from pydicom.datadict import dictionary_description, dictionary_VR

from radfusion.deid.profile import Option, TableIntegrityError, checked_rows, profile_rows
from radfusion.deid.table import COLUMNS, TABLE_FILE, data_lines, read_table, rows_digest


def _text() -> str:
    return resources.files("radfusion.deid").joinpath(TABLE_FILE).read_text("utf-8")


def test_header_names_the_source_and_pins_the_rows():
    header, rows = read_table(_text())
    assert header["source_repository"] == "innolitics/dicom-standard"
    assert re.fullmatch(r"[0-9a-f]{40}", header["source_commit"])
    assert re.fullmatch(r"[0-9a-f]{40}", header["source_file_git_blob"])
    assert "PS3.15 2024b" in header["edition"]
    assert int(header["rows"]) == len(rows) == 621
    assert rows_digest(data_lines(_text())) == header["rows_sha256"]
    assert "/work" not in _text() and "/home" not in _text()  # no machine paths
    assert tuple(rows[0]) == COLUMNS and {o.value for o in Option} == set(COLUMNS[4:])


def test_a_changed_or_missing_row_fails_the_check():
    text = _text()
    assert len(checked_rows(text)) == 621
    edited = text.replace("00080050,Accession Number,Y,Z,", "00080050,Accession Number,Y,K,")
    assert edited != text
    with pytest.raises(TableIntegrityError):
        checked_rows(edited)
    with pytest.raises(TableIntegrityError):
        checked_rows("\n".join(line for line in text.splitlines() if not line.startswith("00080050")))


def _squash(name: str) -> str:
    """Names compared without punctuation, case, the (Retired)/(Trial) marks or the
    table's "(see Note n)" references."""
    name = re.sub(r"\(see note \d+\)", "", name.lower())
    return re.sub(r"[^a-z0-9]", "", name.replace("retired", "").replace("trial", ""))


def test_every_tag_is_the_attribute_its_name_says():
    mismatched = []
    for row in profile_rows():
        if row.tag == "private":
            continue
        tag = int((row.tag[:4] + "3000" if row.tag.endswith("xxxx") else row.tag).replace("x", "0"), 16)
        dictionary_VR(tag)  # raises for a tag pydicom does not know
        if _squash(dictionary_description(tag)) != _squash(row.name):
            mismatched.append((row.tag, row.name, dictionary_description(tag)))
    assert mismatched == []


@pytest.mark.parametrize(
    "name",
    [
        "Station AE Title",
        "Retrieve AE Title",
        "Receiving AE",
        "Requesting AE",
        "Destination AE",
        "Originator",
        "Certificate of Signer",
        "Acquisition UID",
        "Pyramid UID",
        "Pyramid Label",
        "Selector AS Value",
        "Selector PN Value",
        "Selector UR Value",
        "Issuer of Clinical Trial Subject ID",
        "Issuer of Clinical Trial Protocol ID",
        "Issuer of Clinical Trial Series ID",
        "Issuer of Clinical Trial Time Point ID",
    ],
)
def test_attributes_of_recent_editions_are_listed(name):
    assert _squash(name) in {_squash(r.name) for r in profile_rows()}
    assert any(r.basic != "K" for r in profile_rows() if _squash(r.name) == _squash(name))
