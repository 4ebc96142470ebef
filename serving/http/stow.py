"""DICOMweb STOW-RS as input to the HTTP service: ``POST /dicom-web/studies`` with a
``multipart/related; type="application/dicom"`` body, one DICOM instance per part
(what a PACS or `dicomweb-client` sends). The instances are scored as one study and
the answer is the prediction JSON (as /predict answers), not a stored-instances list:
nothing is stored.

The body is streamed to a temporary file (the size limit middleware caps it) and the
parts are cut out of it by their boundary without holding the body in memory."""

from __future__ import annotations

import mmap
import re
from pathlib import Path

from radfusion.errors import RadfusionInputError

_BOUNDARY = re.compile(r'boundary="?([^";]+)"?', re.IGNORECASE)


class BadMultipartError(RadfusionInputError):
    """A multipart body (a STOW-RS multipart/related message or a form upload) that is
    malformed: no boundary or another one, truncated, a part without a name, a text
    field that is not UTF-8, too many parts."""

    kind = "bad_multipart"
    http_status = 400


class UnsupportedMediaTypeError(RadfusionInputError):
    """A request body of a media type the route does not take: STOW-RS takes
    multipart/related of application/dicom; the APIs take JSON or a form."""

    kind = "unsupported_media_type"
    http_status = 415


def boundary_of(content_type: str) -> bytes:
    media_type = content_type.split(";", 1)[0].strip().lower()
    if media_type != "multipart/related":
        raise UnsupportedMediaTypeError(
            f'STOW-RS takes multipart/related; type="application/dicom", not {media_type or "no content type"}'
        )
    type_param = re.search(r'type="?([^";]+)"?', content_type, re.IGNORECASE)
    if type_param and type_param[1].strip().lower() != "application/dicom":
        raise UnsupportedMediaTypeError(f"STOW-RS parts must be application/dicom, not {type_param[1].strip()}")
    match = _BOUNDARY.search(content_type)
    if not match:
        raise BadMultipartError("multipart/related body without a boundary parameter")
    return match[1].strip().encode()


def split_parts(body: Path, boundary: bytes, out: Path, max_parts: int) -> list[Path]:
    """Write each part's content of the multipart ``body`` file to ``out``/partNNNNNN."""
    delimiter = b"--" + boundary
    out.mkdir(parents=True, exist_ok=True)
    parts: list[Path] = []
    if body.stat().st_size == 0:
        raise BadMultipartError("empty STOW-RS body")
    with open(body, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
        position = data.find(delimiter)
        if position < 0:
            raise BadMultipartError("body holds no part with the declared boundary")
        while True:
            position += len(delimiter)
            if data[position : position + 2] == b"--":
                break  # the closing delimiter
            headers_end = data.find(b"\r\n\r\n", position)
            next_delimiter = data.find(b"\r\n" + delimiter, position)
            if headers_end < 0 or next_delimiter < 0 or headers_end > next_delimiter:
                raise BadMultipartError("malformed multipart part (no header end or no closing boundary)")
            headers = bytes(data[position:headers_end]).decode("latin-1").lower()
            part_type = re.search(r"content-type:\s*([^\s;]+)", headers)
            if part_type and part_type[1] != "application/dicom":
                raise UnsupportedMediaTypeError(f"STOW-RS part of type {part_type[1]}; only application/dicom is taken")
            if len(parts) >= max_parts:
                raise BadMultipartError(f"more than {max_parts} parts")
            target = out / f"part{len(parts):06d}.dcm"
            with open(target, "wb") as part:
                part.write(data[headers_end + 4 : next_delimiter])
            parts.append(target)
            position = next_delimiter + 2
    if not parts:
        raise BadMultipartError("STOW-RS body holds no instance")
    return parts
