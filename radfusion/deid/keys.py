"""The secret behind every pseudonym: HMAC-SHA256 keyed by the site's key.

The same key gives the same pseudonymous patient IDs, UIDs, date offsets and file names
on every run and every machine, so studies de-identified on different days still join;
without the key nobody can recompute them from the originals. Each use gets its own
purpose label so a UID digest can never equal a patient-ID digest.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from pathlib import Path

from radfusion.deid.errors import DeidKeyError

# An HMAC key shorter than this is guessable by brute force over small ID spaces.
MIN_KEY_BYTES = 16
PSEUDONYM_PREFIX = "DEID"


@dataclass(frozen=True)
class DeidKey:
    secret: bytes

    def __post_init__(self) -> None:
        if len(self.secret) < MIN_KEY_BYTES:
            raise DeidKeyError(f"the de-identification key must be at least {MIN_KEY_BYTES} bytes")

    def __repr__(self) -> str:  # never print the secret
        return f"DeidKey(fingerprint={self.fingerprint})"

    @classmethod
    def from_text(cls, text: str) -> DeidKey:
        return cls(text.strip().encode("utf-8"))

    @classmethod
    def from_file(cls, path: Path) -> DeidKey:
        if not path.is_file():
            raise DeidKeyError("the key file does not exist")
        return cls(path.read_bytes().strip())

    def digest(self, purpose: str, value: str) -> bytes:
        return hmac.new(self.secret, f"{purpose}\x00{value}".encode(), hashlib.sha256).digest()

    @property
    def fingerprint(self) -> str:
        """A short public label of the key: tells two keys apart without revealing either."""
        return self.digest("fingerprint", "").hex()[:12]

    def patient_pseudonym(self, patient_key: str) -> str:
        return f"{PSEUDONYM_PREFIX}{self.digest('patient', patient_key).hex()[:16].upper()}"

    def path_name(self, relative_dir: str) -> str:
        """A folder name for one input folder (its path below --dicom), unlinkable without the key."""
        return "d" + self.digest("path", relative_dir).hex()[:16]
