"""WADO-RS retrieval of the results this service keeps (PS3.18 10.4): ``GET
/dicom-web/studies/{study}[/series/{series}[/instances/{instance}]]`` answers the
prediction and failure SRs of that study, series or instance as
``multipart/related; type="application/dicom"``, each part in the transfer syntax it
is stored in (no transcoding: an Accept that asks for another one is 406)."""

from __future__ import annotations

import io
import uuid
from collections.abc import Sequence
from pathlib import Path

import pydicom

from radfusion.serving.http.stow import NotAcceptableError, ResultNotFoundError, media_ranges

_DICOM = "application/dicom"
_ANY = frozenset({"*/*", "multipart/*", "multipart/related"})


def check_accepts_dicom(accept: str | None, transfer_syntax: str) -> None:
    """No Accept, or one that takes multipart/related of application/dicom in
    ``transfer_syntax`` (or any), passes; anything else is NotAcceptableError."""
    if not accept or not accept.strip():
        return
    for media, params in media_ranges(accept):
        if media not in _ANY:
            continue
        part_type = params.get("type", _DICOM).lower()
        syntax = params.get("transfer-syntax", "*")
        if part_type in (_DICOM, "*/*", "application/*") and syntax in ("*", transfer_syntax):
            return
    raise NotAcceptableError(
        f'results are sent as multipart/related; type="{_DICOM}" in transfer syntax {transfer_syntax} only'
    )


def multipart_dicom(paths: Sequence[Path]) -> tuple[bytes, str, str]:
    """The body, its Content-Type and the transfer syntax of the files (all written
    alike by this service). A file the store let go meanwhile (retention, size cap) is
    left out; none left is ResultNotFoundError."""
    found = []
    for path in paths:
        try:
            found.append(path.read_bytes())
        except FileNotFoundError:
            continue
    if not found:
        raise ResultNotFoundError("this service holds no result for it")
    boundary = uuid.uuid4().hex
    syntax = str(pydicom.dcmread(io.BytesIO(found[0]), stop_before_pixels=True).file_meta.TransferSyntaxUID)
    chunks = []
    for data in found:
        head = f"--{boundary}\r\nContent-Type: {_DICOM}; transfer-syntax={syntax}\r\n\r\n"
        chunks += [head.encode(), data, b"\r\n"]
    chunks.append(f"--{boundary}--\r\n".encode())
    content_type = f'multipart/related; type="{_DICOM}"; boundary={boundary}'
    return b"".join(chunks), content_type, syntax
