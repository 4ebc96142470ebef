"""DICOMweb STOW-RS input of the HTTP service (PS3.18 10.5): ``POST /dicom-web/studies``
(or ``/dicom-web/studies/{study}``) with a ``multipart/related; type="application/dicom"``
body, one DICOM instance per part (what a PACS, Orthanc or `dicomweb-client` sends).
The instances are grouped by study and each study is scored; the answer is a Store
Instances Response (radfusion.serving.http.store_response) and the prediction becomes
an SR of the study (radfusion.serving.http.stow_results).

Here: the request side. The body is streamed to a temporary file (the size limit
middleware caps it) and the parts are cut out of it by their boundary without holding
the body in memory; each part's identifying header is read once to group the parts by
study; the Accept header is negotiated before the body is read."""

from __future__ import annotations

import mmap
import re
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pydicom

from radfusion.dicom.checks import cut_short
from radfusion.errors import CorruptDicomError, RadfusionInputError, input_error

_BOUNDARY = re.compile(r'boundary="?([^";]+)"?', re.IGNORECASE)
# What a Store Instances Response can be sent as; PS3.18 8.7.3 also names XML, which
# this service does not write.
DICOM_JSON = "application/dicom+json"
_JSON_ACCEPTED = frozenset({DICOM_JSON, "application/json", "application/*", "*/*"})
_UID = re.compile(r"[0-9]+(\.[0-9]+)*")
_IDENTIFYING = ["StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID"]


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


class NotAcceptableError(RadfusionInputError):
    """The request's Accept header excludes every media type the DICOMweb route can
    answer with (STOW-RS: application/dicom+json; WADO-RS: multipart/related of
    application/dicom in the transfer syntax the result is stored in)."""

    kind = "not_acceptable"
    http_status = 406


class ResultNotFoundError(RadfusionInputError):
    """WADO-RS: this service holds no result (prediction SR) for the study, series or
    instance asked for: none was made, or it was deleted after the retention period."""

    kind = "result_not_found"
    http_status = 404


def media_ranges(accept: str) -> list[tuple[str, dict[str, str]]]:
    """The media ranges of an Accept header with q > 0, each with its parameters."""
    ranges = []
    for item in accept.split(","):
        pieces = [p.strip() for p in item.split(";")]
        if not pieces[0]:
            continue
        params = {}
        for piece in pieces[1:]:
            name, _, value = piece.partition("=")
            params[name.strip().lower()] = value.strip().strip('"')
        try:
            weight = float(params.pop("q", "1"))
        except ValueError:
            weight = 1.0
        if weight > 0:
            ranges.append((pieces[0].lower(), params))
    return ranges


def check_accepts_json(accept: str | None) -> None:
    """A Store Instances Response goes out as DICOM JSON: a client whose Accept header
    takes none of it (e.g. application/dicom+xml only) gets 406 before its body is read."""
    if not accept or not accept.strip():
        return
    if not any(media in _JSON_ACCEPTED for media, _ in media_ranges(accept)):
        raise NotAcceptableError(f"the Store Instances Response is sent as {DICOM_JSON} only")


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


@dataclass(frozen=True)
class Instance:
    """One received instance by its identifying UIDs, and where its part lies."""

    study_uid: str
    series_uid: str
    sop_uid: str
    sop_class_uid: str
    path: Path
    damaged: bool = False  # cut short: its identifiers are readable, its data are not whole


@dataclass(frozen=True)
class UnreadablePart:
    """A part whose SOP Class and Instance UIDs cannot be read: no instance to name."""

    error: RadfusionInputError


def _identify(path: Path, index: int) -> Instance | UnreadablePart:
    try:
        # Values over 1 KiB (pixel data) are not read, only their lengths: enough to tell a
        # part that was cut short.
        ds = pydicom.dcmread(path, defer_size=1024)
        uids = [str(ds.get(keyword, "") or "").strip() for keyword in _IDENTIFYING]
        damaged = cut_short(ds, path.stat().st_size)
    except Exception as exc:  # noqa: BLE001 - received bytes: any failure is this part's error
        return UnreadablePart(input_error(exc, f"part {index + 1}"))
    missing = [k for k, uid in zip(_IDENTIFYING, uids, strict=True) if not _UID.fullmatch(uid) or len(uid) > 64]
    if missing:
        return UnreadablePart(CorruptDicomError(f"part {index + 1}: no valid {', '.join(missing)}"))
    study_uid, series_uid, sop_uid, sop_class_uid = uids
    return Instance(study_uid, series_uid, sop_uid, sop_class_uid, path, damaged)


def group_by_study(parts: Sequence[Path]) -> tuple[dict[str, list[Instance]], list[UnreadablePart]]:
    """The parts as instances by study (in the order their studies first appear), and
    the parts that cannot be read as an instance at all."""
    studies: dict[str, list[Instance]] = defaultdict(list)
    unreadable = []
    for index, path in enumerate(parts):
        found = _identify(path, index)
        if isinstance(found, UnreadablePart):
            unreadable.append(found)
        else:
            studies[found.study_uid].append(found)
    return dict(studies), unreadable
