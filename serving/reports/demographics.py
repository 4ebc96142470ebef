"""The patient and study attributes an SR carries, taken from a source header that may
hold anything a modality or a migration wrote.

highdicom copies these attributes as they are and refuses values outside their VR
(PatientSex "U", a birth date "1960-06-17"), which used to cost a scored study its SR.
Here each attribute is kept when valid, normalised when its meaning is unambiguous
(an ISO date, "MALE", an age without its unit, an over-long name) and otherwise left
empty: an SR without a birth date is better than no SR.

Identifiers are the exception: PatientID, IssuerOfPatientID, AccessionNumber, StudyID and
StudyInstanceUID are copied verbatim, because the PACS files the SR under them and a
"repaired" identifier could file it under another patient or order."""

from __future__ import annotations

import datetime
import math
import re
import unicodedata
from typing import Any

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

# Written empty when absent or invalid (type 2 in the Patient and General Study modules).
TYPE2 = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
)
VERBATIM = ("StudyInstanceUID", "PatientID", "IssuerOfPatientID", "AccessionNumber", "StudyID")
UTF8 = "ISO_IR 192"

_SEX = {"M": "M", "F": "F", "O": "O", "MALE": "M", "FEMALE": "F", "OTHER": "O"}
_DATE = re.compile(r"(\d{4})[-./]?(\d{2})[-./]?(\d{2})")
_TIME = re.compile(r"(\d{2})(?::?(\d{2})(?::?(\d{2})(\.\d{1,6})?)?)?")
_AGE = re.compile(r"0*(\d{1,3})\s*([DWMY]?)")


def _text(value: Any) -> str:
    """One value as text without control characters (a multi-valued element: its first)."""
    if isinstance(value, MultiValue | list | tuple):
        value = value[0] if len(value) else ""
    text = "" if value is None else str(value)
    return "".join(ch for ch in text if unicodedata.category(ch)[0] != "C").strip()


def person_name(value: Any) -> str:
    """A PN: at most three component groups of at most five components, each group at
    most 64 characters, no backslash."""
    groups = _text(value).replace("\\", " ").split("=")[:3]
    fitted = []
    for group in groups:
        components = [c.strip() for c in group.split("^")][:5]
        while len("^".join(components)) > 64:
            longest = max(range(len(components)), key=lambda i: len(components[i]))
            components[longest] = components[longest][: len(components[longest]) - (len("^".join(components)) - 64)]
        fitted.append("^".join(components).rstrip("^"))
    return "=".join(fitted).rstrip("=")


def sex(value: Any) -> str:
    return _SEX.get(_text(value).upper(), "")  # "U", "unknown", garbage: unknown, i.e. empty


def date(value: Any) -> str:
    match = _DATE.fullmatch(_text(value))
    if not match:
        return ""
    try:
        return datetime.date(*map(int, match.groups())).strftime("%Y%m%d")
    except ValueError:
        return ""


def time(value: Any) -> str:
    match = _TIME.fullmatch(_text(value))
    if not match:
        return ""
    hh, mm, ss, fraction = match.groups()
    if int(hh) > 23 or (mm and int(mm) > 59) or (ss and int(ss) > 60):
        return ""
    return f"{hh}{mm or ''}{ss or ''}{(fraction or '') if ss else ''}"


def age(value: Any) -> str:
    match = _AGE.fullmatch(_text(value).upper())
    return f"{int(match[1]):03d}{match[2] or 'Y'}" if match else ""


def decimal(value: Any) -> str:
    try:
        number = float(_text(value))
    except ValueError:
        return ""
    return f"{number:.6g}" if math.isfinite(number) and 0 < number < 1000 else ""


def long_string(value: Any) -> str:
    return _text(value).replace("\\", " ")[:64]


_NORMALISE = {
    "PatientName": person_name,
    "ReferringPhysicianName": person_name,
    "PatientBirthDate": date,
    "PatientSex": sex,
    "StudyDate": date,
    "StudyTime": time,
    "PatientAge": age,
    "PatientSize": decimal,
    "PatientWeight": decimal,
    "StudyDescription": long_string,
}


def _get(header: Dataset, keyword: str) -> Any:
    try:
        return header.get(keyword)
    except Exception:  # noqa: BLE001 - an element that cannot be decoded is treated as absent
        return None


def patient_and_study(header: Dataset | None) -> Dataset:
    """The attributes of ``header``'s Patient and Study modules an SR carries, each valid
    for its VR (identifiers verbatim), with SpecificCharacterSet UTF-8 when any is not ASCII."""
    header = header if header is not None else Dataset()
    out = Dataset()
    for keyword in VERBATIM:
        value = _get(header, keyword)
        if value is not None and value != "":
            setattr(out, keyword, value)
    for keyword, normalise in _NORMALISE.items():
        value = _get(header, keyword)
        text = normalise(value) if value is not None else ""
        if text:
            setattr(out, keyword, text)
    for keyword in TYPE2:
        if keyword not in out:
            setattr(out, keyword, "")
    if any(not str(element.value).isascii() for element in out):
        out.SpecificCharacterSet = UTF8
    return out
