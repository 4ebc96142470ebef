"""PS3.15 Table E.1-1 (confidentiality_profile.csv, see table.py) and the rules that turn
a row and the chosen options into one action.

Options (PS3.15 E.3): each option column of the table gives the attribute's code when
that option is applied. With several applied options, the Modified Dates Option's C on a
date wins (a date kept unmoved would give away the offset of every other date), then any
K (the option that retains it), then any C, then the Basic Profile code.

Combined codes (Z/D, X/Z, X/D, X/Z/D, X/Z/U*) leave the choice to the attribute's Type
in the IOD: Type 3 may be removed (X), Type 2 must stay but may be empty (Z), Type 1
needs a value (D, or U* for references whose UIDs are remapped). The IOD type tables are
not shipped here, so radfusion takes the choice every IOD accepts, which never carries
more of the original than the others: X/Z -> Z (empty), X/D, Z/D, X/Z/D -> D (a dummy),
X/Z/U* -> U (the references stay, their UIDs remapped). An attribute is never removed
where some IOD needs it: what was there stays there, emptied, dummied or remapped. A
sequence that holds items is the exception to "empty": a Type 3 sequence must hold 1-n
items when present, so its items stay, de-identified as a dummied sequence's
(radfusion.deid.actions).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from functools import lru_cache
from importlib import resources

from pydicom.tag import BaseTag

from radfusion.deid.table import TABLE_FILE, data_lines, read_table, rows_digest


class Action(StrEnum):
    REMOVE = "X"
    EMPTY = "Z"
    DUMMY = "D"
    KEEP = "K"
    CLEAN = "C"
    REMAP_UID = "U"


class Option(StrEnum):
    """The options of PS3.15 E.3, named as the table's columns."""

    RETAIN_SAFE_PRIVATE = "retain_safe_private"
    RETAIN_UIDS = "retain_uids"
    RETAIN_DEVICE_IDENTITY = "retain_device_identity"
    RETAIN_INSTITUTION_IDENTITY = "retain_institution_identity"
    RETAIN_PATIENT_CHARACTERISTICS = "retain_patient_characteristics"
    RETAIN_FULL_DATES = "retain_full_dates"
    RETAIN_MODIFIED_DATES = "retain_modified_dates"
    CLEAN_DESCRIPTORS = "clean_descriptors"
    CLEAN_STRUCTURED_CONTENT = "clean_structured_content"
    CLEAN_GRAPHICS = "clean_graphics"


@dataclass(frozen=True)
class ProfileRow:
    tag: str
    name: str
    in_std_comp_iod: str
    basic: str
    options: tuple[tuple[Option, str], ...]  # only the options that give a code

    def code(self, applied: frozenset[Option]) -> str:
        """The row's code under the applied options (module docstring: precedence)."""
        codes = {option: code for option, code in self.options if option in applied}
        if codes.get(Option.RETAIN_MODIFIED_DATES) == "C":
            return "C"
        for wanted in ("K", "C"):
            if wanted in codes.values():
                return wanted
        return self.basic


class TableIntegrityError(RuntimeError):
    """The shipped table is not the one its header names (edited or truncated)."""


def checked_rows(text: str) -> list[dict[str, str]]:
    """The table's rows, once their count and digest match the header's."""
    header, rows = read_table(text)
    if len(rows) != int(header.get("rows", -1)) or rows_digest(data_lines(text)) != header.get("rows_sha256"):
        raise TableIntegrityError(f"{TABLE_FILE} does not match its rows/rows_sha256 header")
    return rows


@lru_cache(maxsize=1)
def profile_rows() -> tuple[ProfileRow, ...]:
    """Every row of Table E.1-1, in the table's order; checked against the header."""
    rows = checked_rows(resources.files("radfusion.deid").joinpath(TABLE_FILE).read_text("utf-8"))
    return tuple(
        ProfileRow(
            tag=r["tag"],
            name=r["name"],
            in_std_comp_iod=r["in_std_comp_iod"],
            basic=r["basic"],
            options=tuple((o, r[o.value]) for o in Option if r[o.value]),
        )
        for r in rows
    )


@lru_cache(maxsize=1)
def _exact_rows() -> dict[int, ProfileRow]:
    return {int(r.tag, 16): r for r in profile_rows() if "x" not in r.tag and r.tag != "private"}


@lru_cache(maxsize=1)
def _masked_rows() -> tuple[tuple[int, int, ProfileRow], ...]:
    """(mask, value, row) for the repeating-group rows such as 50xxxxxx and 60xx4000."""
    out = []
    for r in profile_rows():
        if "x" in r.tag:
            mask = int("".join("0" if c == "x" else "F" for c in r.tag), 16)
            out.append((mask, int(r.tag.replace("x", "0"), 16), r))
    return tuple(out)


@lru_cache(maxsize=1)
def _private_row() -> ProfileRow:
    return next(r for r in profile_rows() if r.tag == "private")


def row_for(tag: BaseTag) -> ProfileRow | None:
    if tag.is_private:
        return _private_row()
    row = _exact_rows().get(int(tag))
    if row is None:
        row = next((r for mask, value, r in _masked_rows() if int(tag) & mask == value), None)
    return row


def _is_overlay_group(tag: BaseTag) -> bool:
    return 0x6000 <= tag.group <= 0x60FF and tag.group % 2 == 0


# Attributes the table's edition does not list that hold the patient's birth or death
# date as free text (an LO, so the date shifting of unlisted DA/DT/TM misses them): removed
# whatever the options, as the table removes Patient's Birth Date's other forms.
BEYOND_TABLE = {
    0x00100033: Action.REMOVE.value,  # Patient's Birth Date in Alternative Calendar
    0x00100034: Action.REMOVE.value,  # Patient's Death Date in Alternative Calendar
}


def table_code(tag: BaseTag, applied: frozenset[Option] = frozenset()) -> str | None:
    """The code for this tag under the applied options (BEYOND_TABLE included); None if
    neither lists it."""
    row = row_for(tag)
    if row is None and int(tag) in BEYOND_TABLE:
        return BEYOND_TABLE[int(tag)]
    if row is None and _is_overlay_group(tag):
        # The table removes Overlay Data and Overlay Comments; the rest of the Overlay
        # Plane Module (rows, columns, origin, type) would then describe data that is no
        # longer there, so the whole repeating group goes.
        return Action.REMOVE.value
    return None if row is None else row.code(applied)


def resolve(code: str) -> Action:
    """One action for a (possibly combined) code: see the module docstring for the rule."""
    choices = {c.rstrip("*") for c in code.split("/")}
    for preferred in ("U", "D", "Z"):
        if len(choices) > 1 and preferred in choices:
            return Action(preferred)
    return Action(code)


def action_for(tag: BaseTag, applied: frozenset[Option] = frozenset()) -> Action | None:
    code = table_code(tag, applied)
    return None if code is None else resolve(code)
