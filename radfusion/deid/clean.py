"""The Clean Descriptors and Clean Structured Content cleaning of free text (action C).

The text stays, so a series description or a report sentence still says what it said,
but what identifies goes: the parts of every person name in the dataset (patient,
physicians, operators, observers), the patient's IDs, the accession and study numbers,
every date the dataset holds (written as DICOM, ISO or day/month forms), e-mail
addresses, and every run of digits long enough to be an identifier or a phone number.
Each removal leaves REMOVED_MARK (XXX in a Code String); the result is cut to the VR's length limit.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

REMOVED_MARK = "***"
# A Code String allows only capitals, digits, space and underscore: its mark must too.
_MARK_BY_VR = {"CS": "XXX"}
_MAX_LENGTH = {"AE": 16, "CS": 16, "SH": 16, "LO": 64, "ST": 1024, "LT": 10240, "UC": 1 << 16}
# Attributes whose values identify the patient or the study, wherever they occur.
_ID_KEYWORDS = (
    "PatientID",
    "OtherPatientIDs",
    "AccessionNumber",
    "StudyID",
    "MedicalRecordLocator",
    "AdmissionID",
    "ServiceEpisodeID",
    "RequestedProcedureID",
    "PerformedProcedureStepID",
    "ScheduledProcedureStepID",
    "FillerOrderNumberImagingServiceRequest",
    "PlacerOrderNumberImagingServiceRequest",
    "ClinicalTrialSubjectID",
    "ClinicalTrialSubjectReadingID",
    "PatientAddress",
    "PatientTelephoneNumbers",
)
_DIGIT_RUN = re.compile(r"\d(?:[\d\-/. ()]*\d){4,}")  # five or more digits, separators allowed
_EMAIL = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
_MIN_DIGITS = 5


@dataclass(frozen=True)
class DescriptorCleaner:
    pattern: re.Pattern | None

    @classmethod
    def from_dataset(cls, ds: Dataset) -> DescriptorCleaner:
        """Collect what identifies from the original dataset (before any action ran)."""
        words: set[str] = set()
        for elem in ds.iterall():
            if elem.VR == "SQ" or elem.value in (None, ""):
                continue
            values = [str(v) for v in (elem.value if isinstance(elem.value, (list, MultiValue)) else [elem.value])]
            if elem.VR == "PN":
                words.update(p for v in values for p in re.split(r"[\^=\s,]+", v) if len(p) >= 2)
            elif elem.VR == "DA":
                words.update(f for v in values for f in _date_forms(v))
            elif elem.keyword in _ID_KEYWORDS:
                words.update(v.strip() for v in values if len(v.strip()) >= 2)
        if not words:
            return cls(None)
        alternatives = "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True))
        return cls(re.compile(rf"(?<![A-Za-z0-9])(?:{alternatives})(?![A-Za-z0-9])", re.IGNORECASE))

    def clean(self, text: str, vr: str) -> str:
        mark = _MARK_BY_VR.get(vr, REMOVED_MARK)
        if self.pattern is not None:
            text = self.pattern.sub(mark, text)
        text = _EMAIL.sub(mark, text)
        text = _DIGIT_RUN.sub(lambda m: mark if _digits(m.group()) >= _MIN_DIGITS else m.group(), text)
        limit = _MAX_LENGTH.get(vr)
        return text[:limit] if limit else text

    def clean_value(self, value, vr: str):
        if isinstance(value, (list, MultiValue)):
            return [self.clean(str(v), vr) for v in value]
        return self.clean(str(value), vr) if value not in (None, "") else value


def _digits(text: str) -> int:
    return sum(c.isdigit() for c in text)


def _date_forms(value: str) -> list[str]:
    try:
        day = datetime.strptime(value.strip().replace(".", ""), "%Y%m%d")
    except ValueError:
        return []
    return [
        day.strftime(f)
        for f in ("%Y%m%d", "%Y-%m-%d", "%Y.%m.%d", "%Y/%m/%d", "%d/%m/%Y", "%m/%d/%Y", "%d.%m.%Y", "%d-%m-%Y")
    ]
