"""The Store Instances Response of STOW-RS (PS3.18 10.5.3 and Annex I), as DICOM JSON.

- ReferencedSOPSequence: the instances taken: their study was scored and has a result;
- FailedSOPSequence: the instances of a study that could not be scored, each with a
  Failure Reason (PS3.18 Table I.2-2);
- OtherFailuresSequence: parts that are no readable instance (no UIDs to name them);
- RetrieveURL: where the result of the study (its prediction SR) is retrieved with
  WADO-RS on this service, when the request held exactly one stored study.

Status (PS3.18 Table 10.5.3-1): 200 all taken without warning; 202 some taken while
others failed, or a warning (the result could not be sent to the PACS); 409 none taken.
Why a study failed or a warning arose also travels as HTTP ``Warning: 299`` headers,
kind and reason without identifiers, because no Failure Reason code says it.

Empty sequences are left out, never sent empty: Orthanc's DICOMweb client refuses a
sequence without "Value" and checks that ReferencedSOPSequence names exactly the
instances it sent, so the SR is linked by RetrieveURL, not listed as an instance."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from pydicom.dataset import Dataset

from radfusion import log_privacy
from radfusion.errors import RadfusionInputError
from radfusion.serving.http.stow import Instance

# Failure Reason values (PS3.18 Table I.2-2; 0xC409 within "Cannot understand" as
# dcm4chee uses it for an instance of another study than the one addressed).
PROCESSING_FAILURE = 0x0110
OUT_OF_RESOURCES = 0xA700
CANNOT_UNDERSTAND = 0xC000
STUDY_MISMATCH = 0xC409
_UNREADABLE_KINDS = frozenset({"corrupt_dicom", "unsupported_pixel_data"})
WARN_AGENT = "radfusion"
_MAX_WARNING_CHARS = 300


def failure_reason(error: RadfusionInputError) -> int:
    """The Failure Reason of the instances of a study that failed with ``error``."""
    if error.http_status == 413:
        return OUT_OF_RESOURCES
    if error.kind in _UNREADABLE_KINDS:
        return CANNOT_UNDERSTAND
    return PROCESSING_FAILURE


@dataclass
class StoreOutcome:
    """What became of a STOW-RS request's instances, filled study by study."""

    stored: list[Instance] = field(default_factory=list)
    failed: list[tuple[Instance, int]] = field(default_factory=list)
    other_failures: list[int] = field(default_factory=list)
    retrieve_urls: list[str] = field(default_factory=list)  # one per stored study
    warnings: list[str] = field(default_factory=list)

    def fail(self, instances: Sequence[Instance], reason: int, warning: str) -> None:
        self.failed += [(instance, reason) for instance in instances]
        self.warnings.append(warning)

    def store(self, instances: Sequence[Instance], retrieve_url: str) -> None:
        self.stored += instances
        self.retrieve_urls.append(retrieve_url)

    @property
    def status(self) -> int:
        if not self.stored:
            return 409
        return 202 if self.failed or self.other_failures or self.warnings else 200

    def dataset(self) -> Dataset:
        ds = Dataset()
        # Type 2: the study's URL when the request held one stored study (PS3.18 I.1).
        ds.RetrieveURL = self.retrieve_urls[0] if len(self.retrieve_urls) == 1 else ""
        if self.failed:
            ds.FailedSOPSequence = [_item(i, FailureReason=reason) for i, reason in self.failed]
        if self.stored:
            ds.ReferencedSOPSequence = [_item(i) for i in self.stored]
        if self.other_failures:
            ds.OtherFailuresSequence = [_reason(code) for code in self.other_failures]
        return ds

    def warning_header(self) -> str | None:
        """RFC 9111 Warning values (code 299, "miscellaneous persistent warning")."""
        if not self.warnings:
            return None
        return ", ".join(f'299 {WARN_AGENT} "{_warn_text(text)}"' for text in self.warnings)


def _item(instance: Instance, **extra: int) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = instance.sop_class_uid
    item.ReferencedSOPInstanceUID = instance.sop_uid
    for keyword, value in extra.items():
        setattr(item, keyword, value)
    return item


def _reason(code: int) -> Dataset:
    item = Dataset()
    item.FailureReason = code
    return item


def _warn_text(text: str) -> str:
    """A quoted-string that holds no UID or path, in printable ASCII (a header value)."""
    clean = log_privacy.redact(text)
    clean = "".join(ch if 32 <= ord(ch) < 127 else "?" for ch in clean).replace("\\", "/").replace('"', "'")
    return clean if len(clean) <= _MAX_WARNING_CHARS else clean[: _MAX_WARNING_CHARS - 3] + "..."
