"""Dates and times moved by one per-patient offset (Modified Dates Option, DCM 113107).

Every point in time of a patient moves by the same timedelta (1 to 11 years back, plus
a fraction of a day), so every interval within the patient is kept: DT values move
exactly, a DA with its partner TM (StudyDate + StudyTime, ...) moves as one instant, a
DA on its own is read as midnight (so it moves by whole days) and a TM on its own moves
by the time-of-day part. Values are written back at their original precision. A value
that does not parse is not kept: the caller empties it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta

from radfusion.deid.keys import DeidKey

_MIN_DAYS, _SPAN_DAYS = 365, 3650
_DT = re.compile(r"^(\d{4})(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\.\d{1,6})?([+-]\d{4})?$")
_TM = re.compile(r"^(\d{2})(\d{2})?(\d{2})?(\.\d{1,6})?$")


@dataclass(frozen=True)
class DateShift:
    offset: timedelta

    @classmethod
    def for_patient(cls, key: DeidKey, patient_key: str) -> DateShift:
        digest = key.digest("dates", patient_key)
        days = _MIN_DAYS + int.from_bytes(digest[:4], "big") % _SPAN_DAYS
        seconds = 1 + int.from_bytes(digest[4:8], "big") % 86399
        return cls(timedelta(days=-days, seconds=seconds))

    def date(self, value: str) -> str | None:
        parsed = _parse_da(value)
        if parsed is None:
            return None
        return (datetime.combine(parsed, time()) + self.offset).strftime("%Y%m%d")

    def time(self, value: str) -> str | None:
        parsed = _parse_tm(value)
        if parsed is None:
            return None
        moved = datetime.combine(date(2000, 1, 1), parsed[0]) + self.offset
        return _format_tm(moved.time(), parsed[1])

    def date_and_time(self, da: str, tm: str) -> tuple[str, str] | None:
        day, clock = _parse_da(da), _parse_tm(tm)
        if day is None or clock is None:
            return None
        moved = datetime.combine(day, clock[0]) + self.offset
        return moved.strftime("%Y%m%d"), _format_tm(moved.time(), clock[1])

    def datetime(self, value: str) -> str | None:
        match = _DT.match(value.strip())
        if match is None:
            return None
        parts = match.groups()
        n_fields = sum(p is not None for p in parts[:6])
        fraction, zone = parts[6], parts[7]
        year, month, day, hour, minute, second = (
            int(p) if p else d for p, d in zip(parts[:6], (0, 1, 1, 0, 0, 0), strict=True)
        )
        micro = int((fraction or ".0")[1:].ljust(6, "0"))
        try:
            moved = datetime(year, month, day, hour, minute, second, micro) + self.offset
        except ValueError:
            return None
        text = moved.strftime("%Y%m%d%H%M%S")[: (2 + 2 * n_fields)]
        if fraction:
            text += "." + f"{moved.microsecond:06d}"[: len(fraction) - 1]
        return text + (zone or "")


def _parse_da(value: str) -> date | None:
    text = value.strip().replace(".", "")  # ACR-NEMA wrote YYYY.MM.DD
    try:
        return datetime.strptime(text, "%Y%m%d").date() if len(text) == 8 else None
    except ValueError:
        return None


def _parse_tm(value: str) -> tuple[time, str] | None:
    """(time, precision pattern) where the pattern is the original's digit layout."""
    text = value.strip().replace(":", "")  # ACR-NEMA wrote HH:MM:SS
    match = _TM.match(text)
    if match is None:
        return None
    hh, mm, ss, fraction = match.groups()
    try:
        parsed = time(int(hh), int(mm or 0), min(int(ss or 0), 59), int((fraction or ".0")[1:].ljust(6, "0")))
    except ValueError:
        return None
    layout = "H" + ("M" if mm else "") + ("S" if ss else "") + (str(len(fraction) - 1) if fraction else "")
    return parsed, layout


def _format_tm(value: time, layout: str) -> str:
    text = value.strftime("%H%M%S")[: 2 * len(layout.rstrip("0123456789"))]
    digits = layout.lstrip("HMS")
    if digits:
        text += "." + f"{value.microsecond:06d}"[: int(digits)]
    return text
