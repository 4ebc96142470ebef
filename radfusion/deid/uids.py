"""UID remapping: HMAC of the original UID -> a 2.25 UID (PS3.5 B.2, UUID-derived root).

Deterministic per key, so every reference to a UID (SOP Instance UID in one file,
Referenced SOP Instance UID in another, Frame of Reference UID across a series) maps to
the same new UID within a study, across studies and across runs.
"""

from __future__ import annotations

from pydicom.uid import UID

from radfusion.deid.keys import DeidKey

DICOM_ROOT = "1.2.840.10008."


def remap_uid(key: DeidKey, uid: str) -> str:
    """The keyed replacement of an instance UID; UIDs the standard defines (SOP Classes,
    Transfer Syntaxes, coding schemes, context groups, templates: the DICOM root
    1.2.840.10008, PS3.6 Annex A) identify no one and are kept, so a Referenced SOP Class
    UID or a Context UID inside a dummied sequence still names its class or group."""
    uid = uid.strip().rstrip("\x00")
    if not uid or uid.startswith(DICOM_ROOT) or UID(uid).keyword:
        return uid
    # 128 bits, like a UUID: at most 39 digits, so "2.25." + digits fits the 64-char UI limit.
    return "2.25." + str(int.from_bytes(key.digest("uid", uid)[:16], "big"))
