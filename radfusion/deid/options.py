"""Which PS3.15 E.3 options a run applies, and how the output records them.

Every applied option goes into Deidentification Method Code Sequence with its CID 7050
code and into the Deidentification Method text, so a reader of the file knows what was
kept. The dates choice is one of three: modified (the default: every date of a patient
moves by one keyed offset, intervals kept), full (dates kept), or none of the two
(dates as the Basic Profile says: emptied or dummied, unlisted dates dummied too).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from radfusion.deid.profile import Option


class Dates(StrEnum):
    MODIFIED = "modified"
    FULL = "full"
    REMOVED = "removed"


# CID 7050 De-identification Method.
OPTION_CODES: dict[Option, Code] = {
    Option.RETAIN_UIDS: codes.DCM.RetainUidsOption,
    Option.RETAIN_DEVICE_IDENTITY: codes.DCM.RetainDeviceIdentityOption,
    Option.RETAIN_INSTITUTION_IDENTITY: codes.DCM.RetainInstitutionIdentityOption,
    Option.RETAIN_PATIENT_CHARACTERISTICS: codes.DCM.RetainPatientCharacteristicsOption,
    Option.RETAIN_FULL_DATES: codes.DCM.RetainLongitudinalTemporalInformationFullDatesOption,
    Option.RETAIN_MODIFIED_DATES: codes.DCM.RetainLongitudinalTemporalInformationModifiedDatesOption,
    Option.CLEAN_DESCRIPTORS: codes.DCM.CleanDescriptorsOption,
    Option.CLEAN_STRUCTURED_CONTENT: codes.DCM.CleanStructuredContentOption,
}
BASIC_PROFILE_CODE: Code = codes.DCM.BasicApplicationConfidentialityProfile

# Longitudinal Temporal Information Modified (0028,0303) per dates choice.
_TEMPORAL_STATE = {Dates.MODIFIED: "MODIFIED", Dates.FULL: "UNMODIFIED", Dates.REMOVED: "REMOVED"}


@dataclass(frozen=True)
class DeidOptions:
    dates: Dates = Dates.MODIFIED
    patient_characteristics: bool = False
    device_identity: bool = False
    institution_identity: bool = False
    uids: bool = False
    clean_descriptors: bool = False
    clean_structured_content: bool = False

    @property
    def applied(self) -> frozenset[Option]:
        chosen = {
            Option.RETAIN_PATIENT_CHARACTERISTICS: self.patient_characteristics,
            Option.RETAIN_DEVICE_IDENTITY: self.device_identity,
            Option.RETAIN_INSTITUTION_IDENTITY: self.institution_identity,
            Option.RETAIN_UIDS: self.uids,
            Option.CLEAN_DESCRIPTORS: self.clean_descriptors,
            Option.CLEAN_STRUCTURED_CONTENT: self.clean_structured_content,
            Option.RETAIN_FULL_DATES: self.dates is Dates.FULL,
            Option.RETAIN_MODIFIED_DATES: self.dates is Dates.MODIFIED,
        }
        return frozenset(option for option, on in chosen.items() if on)

    @property
    def method_codes(self) -> list[Code]:
        """Basic Profile first, then the options in CID 7050's order."""
        options = sorted((OPTION_CODES[o] for o in self.applied), key=lambda code: int(code.value))
        return [BASIC_PROFILE_CODE, *options]

    @property
    def method_text(self) -> str:
        """Deidentification Method (LO, at most 64 characters): the option codes in short."""
        options = ",".join(code.value for code in self.method_codes[1:])
        return f"radfusion deid: PS3.15 Basic Profile {options}".strip()[:64]

    @property
    def temporal_state(self) -> str:
        return _TEMPORAL_STATE[self.dates]
