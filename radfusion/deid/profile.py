"""PS3.15 Table E.1-1 as data, and the one rule that turns a row into an action.

The table (basic_profile.csv, next to this file) is read once. Each row gives the Basic
Profile code and, for dates and times, the code of the Retain Longitudinal Temporal
Information with Modified Dates Option, which radfusion always applies (dates move by a
per-patient offset so intervals survive; see dates.py).

Combined codes (Z/D, X/Z, X/D, X/Z/D, X/Z/U*) name the choices from strictest to the one
that keeps a value. The standard picks by the attribute's Type in the IOD: Type 3 may be
removed (X), Type 2 must stay but may be empty (Z), Type 1 needs a value (D, or U* for a
sequence of references whose UIDs are remapped). Our rule: take the strictest choice that
keeps the SOP Instance valid, using IOD_REQUIRED below for the SOP Classes where a
combined-code attribute is Type 1 or 2; everywhere else (Type 3 or not in the IOD) the
first choice. Z/D without IOD knowledge gives Z, which a Type 2 attribute accepts.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from enum import StrEnum
from functools import lru_cache
from importlib import resources

from pydicom.tag import BaseTag


class Action(StrEnum):
    REMOVE = "X"
    EMPTY = "Z"
    DUMMY = "D"
    KEEP = "K"
    CLEAN = "C"
    REMAP_UID = "U"


@dataclass(frozen=True)
class ProfileRow:
    tag: str
    basic: str
    modified_dates: str
    name: str


# SOP Classes whose IOD holds the Enhanced General Equipment Module (Mandatory), where
# Device Serial Number is Type 1: enhanced and legacy-converted CT/MR/PET, XA/XRF,
# segmentation.
_ENHANCED_EQUIPMENT = frozenset(
    {
        "1.2.840.10008.5.1.4.1.1.2.1",  # Enhanced CT
        "1.2.840.10008.5.1.4.1.1.2.2",  # Legacy Converted Enhanced CT
        "1.2.840.10008.5.1.4.1.1.4.1",  # Enhanced MR
        "1.2.840.10008.5.1.4.1.1.4.3",  # Enhanced MR Color
        "1.2.840.10008.5.1.4.1.1.4.4",  # Legacy Converted Enhanced MR
        "1.2.840.10008.5.1.4.1.1.12.1.1",  # Enhanced XA
        "1.2.840.10008.5.1.4.1.1.12.2.1",  # Enhanced XRF
        "1.2.840.10008.5.1.4.1.1.128.1",  # Legacy Converted Enhanced PET
        "1.2.840.10008.5.1.4.1.1.130",  # Enhanced PET
        "1.2.840.10008.5.1.4.1.1.66.4",  # Segmentation
    }
)

# SR SOP Classes (SR Document General Module), where Referenced Performed Procedure Step
# Sequence is Type 2: the prediction reports serving/ writes are Comprehensive SR.
_STRUCTURED_REPORTS = frozenset(
    {
        "1.2.840.10008.5.1.4.1.1.88.11",  # Basic Text SR
        "1.2.840.10008.5.1.4.1.1.88.22",  # Enhanced SR
        "1.2.840.10008.5.1.4.1.1.88.33",  # Comprehensive SR
        "1.2.840.10008.5.1.4.1.1.88.34",  # Comprehensive 3D SR
    }
)

# Combined-code attributes that are Type 1 or 2 in the IOD of a SOP Class.
IOD_REQUIRED: dict[int, tuple[frozenset[str], str]] = {
    0x00181000: (_ENHANCED_EQUIPMENT, "1"),  # Device Serial Number
    0x00081111: (_STRUCTURED_REPORTS, "2"),  # Referenced Performed Procedure Step Sequence
}


@lru_cache(maxsize=1)
def profile_rows() -> tuple[ProfileRow, ...]:
    """Every row of Table E.1-1, in the table's order."""
    text = resources.files("radfusion.deid").joinpath("basic_profile.csv").read_text("utf-8")
    lines = [line for line in text.splitlines() if line and not line.startswith("#")]
    return tuple(ProfileRow(**row) for row in csv.DictReader(lines))


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


def _is_overlay_group(tag: BaseTag) -> bool:
    return 0x6000 <= tag.group <= 0x60FF and tag.group % 2 == 0


def table_code(tag: BaseTag) -> str | None:
    """The code for this tag under Basic Profile + Modified Dates Option; None if unlisted."""
    if tag.is_private:
        return Action.REMOVE.value
    row = _exact_rows().get(int(tag))
    if row is None:
        row = next((r for mask, value, r in _masked_rows() if int(tag) & mask == value), None)
    if row is None and _is_overlay_group(tag):
        # The table removes Overlay Data and Overlay Comments; the rest of the Overlay
        # Plane Module (rows, columns, origin, type) would then describe data that is no
        # longer there, so the whole repeating group goes.
        return Action.REMOVE.value
    if row is None:
        return None
    return row.modified_dates or row.basic


def resolve(code: str, tag: BaseTag, sop_class_uid: str) -> Action:
    """One action for a (possibly combined) code; see the module docstring for the rule."""
    choices = [c.rstrip("*") for c in code.split("/")]
    if len(choices) == 1:
        return Action(choices[0])
    classes, iod_type = IOD_REQUIRED.get(int(tag), (frozenset(), ""))
    if sop_class_uid not in classes:
        return Action(choices[0])
    if iod_type == "2" and "Z" in choices:
        return Action.EMPTY
    return Action(choices[-1])


def action_for(tag: BaseTag, sop_class_uid: str) -> Action | None:
    code = table_code(tag)
    return None if code is None else resolve(code, tag, sop_class_uid)
