"""Deliver an SR document: C-STORE to a DICOM peer, or STOW-RS to a DICOMweb server.

A sender either returns (delivered) or raises SendError with a reason fit for the
status table and logs (no identifiers). Both are safe to repeat: a PACS that already
holds the SOP instance keeps one copy."""

from __future__ import annotations

import re
from dataclasses import dataclass

from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE

from radfusion.serving.dicomweb import DicomwebPolicy, store_refusal
from radfusion.serving.settings import PEER_PATTERN

# C-STORE statuses that mean the peer holds the instance (0xB0xx are warnings).
_STORED = {0x0000, 0xB000, 0xB006, 0xB007}


class SendError(RuntimeError):
    pass


@dataclass(frozen=True)
class DicomPeer:
    """A C-STORE destination: AE title, host and port."""

    ae_title: str
    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> DicomPeer:
        """``AET@host:port``, e.g. ``ORTHANC@127.0.0.1:4242``."""
        match = re.fullmatch(PEER_PATTERN, text.strip())
        if not match:
            raise ValueError(f"expected AET@HOST:PORT, got {text!r}")
        return cls(match[1], match[2], int(match[3]))

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"


class CStoreSender:
    def __init__(self, peer: DicomPeer, calling_ae_title: str, timeout: float = 30.0):
        self.peer = peer
        self.calling_ae_title = calling_ae_title
        self.timeout = timeout

    def __str__(self) -> str:
        return f"C-STORE {self.peer}"

    def send(self, dataset: Dataset) -> None:
        ae = AE(ae_title=self.calling_ae_title)
        ae.add_requested_context(dataset.SOPClassUID, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = self.timeout
        assoc = ae.associate(self.peer.host, self.peer.port, ae_title=self.peer.ae_title)
        if not assoc.is_established:
            # pynetdicom reports a refused TCP connection as an aborted association.
            reason = "rejected" if assoc.is_rejected else "failed (peer unreachable or aborted)"
            raise SendError(f"association with {self.peer} {reason}")
        try:
            status = assoc.send_c_store(dataset)
        finally:
            assoc.release()
        code = getattr(status, "Status", None)
        if code is None:
            raise SendError(f"no C-STORE response from {self.peer} (connection lost or timed out)")
        if code not in _STORED:
            raise SendError(f"{self.peer} answered C-STORE with status 0x{code:04X}")


class StowSender:
    """STOW-RS to ``url`` (the DICOMweb root, e.g. http://pacs/dicom-web) through the one
    DICOMweb client (radfusion.serving.dicomweb, trusted policy: the operator configured
    this destination). A bearer token, when given, is sent as Authorization."""

    def __init__(self, url: str, token: str | None = None, timeout: float = 30.0):
        self.url = url.rstrip("/")
        self.token = token
        self.policy = DicomwebPolicy.trusted(timeout_s=timeout)

    def __str__(self) -> str:
        return f"STOW-RS {self.url}"

    def send(self, dataset: Dataset) -> None:
        refusal = store_refusal(self.url, [dataset], self.policy, self.token)
        if refusal is not None:
            raise SendError(f"STOW-RS to {self.url}: {refusal}")
