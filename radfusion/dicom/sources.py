"""Where DICOM instances live: plain files in nested folders, members of zip archives,
and DICOMDIR media (a CD/USB export whose index lists the instances).

A zip member is named by a *virtual path*, ``<archive>.zip/<member name>``, so that
the rest of radfusion (headers, volumes, the cohort index, the training records) keeps
handling plain ``Path`` objects and never extracts archives to disk.

Whatever the bytes, listing never raises: an archive or index that cannot be read is
skipped with a reason. Zip members are read under a byte bound: a member declaring
more than it, or inflating more than MAX_ZIP_RATIO times its compressed size, is
refused before it is inflated, and header reads stream the member instead of reading
it whole."""

from __future__ import annotations

import io
import os
import struct
import threading
import zipfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import IO

import pydicom
from pydicom import filereader
from pydicom.charset import default_encoding
from pydicom.dataelem import RawDataElement
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.filereader import read_file_meta_info
from pydicom.tag import Tag
from pydicom.uid import (
    AllTransferSyntaxes,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from radfusion.dicom.bounded import read_bounded
from radfusion.errors import UploadTooLargeError, input_error
from radfusion.limits import GIB, StudyBudget, check_zip_member

ZIP_SUFFIX = ".zip"
DICOMDIR_NAME = "DICOMDIR"
# Folder names archive tools add that never hold DICOM (macOS resource forks).
_JUNK_DIRS = ("__MACOSX",)
# One file (a zip member) may hold at most what a whole study may hold.
MAX_FILE_BYTES = StudyBudget().max_bytes
_CHUNK = 1024 * 1024

Skipped = list[tuple[Path, str]]


def list_inputs(root: Path | str) -> tuple[list[Path], Skipped]:
    """Every candidate instance under ``root`` (a folder, a file, a zip archive or a
    DICOMDIR) in a deterministic order, plus what was skipped and why. Folders are
    walked in sorted order; hidden files are ignored."""
    root = Path(root)
    files: list[Path] = []
    skipped: Skipped = []
    if root.is_file():
        _add_file(root, files, skipped)
        return files, skipped
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if not name.startswith("."):
                _add_file(Path(dirpath) / name, files, skipped)
    return _unique(files), skipped


def _add_file(path: Path, files: list[Path], skipped: Skipped) -> None:
    if path.name.upper() == DICOMDIR_NAME:
        _add_dicomdir(path, files, skipped)
    elif path.suffix.lower() == ZIP_SUFFIX and zipfile.is_zipfile(path):
        _add_zip(path, files, skipped)
    else:
        files.append(path)


def _add_dicomdir(path: Path, files: list[Path], skipped: Skipped) -> None:
    """The index itself is not an image; the instances its records reference are read
    (when the walk reaches them they are not listed twice) and missing ones reported.
    ReferencedFileID is a path relative to the DICOMDIR's folder (PS3.10 8.6); one that
    leads out of that folder is refused, so an index cannot make the reader open files
    elsewhere on the machine."""
    try:
        referenced = _referenced_files(path)
    except Exception as exc:  # noqa: BLE001 - any damage to the index skips it, never the walk
        skipped.append((path, input_error(exc, "unreadable DICOMDIR").message))
        return
    media = Path(os.path.abspath(path.parent))
    for member in referenced:
        if not Path(os.path.abspath(member)).is_relative_to(media):
            skipped.append((path, "DICOMDIR lists a file outside its media folder"))
        elif member.is_file():
            files.append(member)
        else:
            skipped.append((member, "listed in DICOMDIR but missing on the media"))
    skipped.append((path, f"DICOMDIR media index ({len(referenced)} instances listed)"))


def _referenced_files(path: Path) -> list[Path]:
    """The files the index's records reference; patient/study/series records without
    a ReferencedFileID only structure the index."""
    out = []
    for record in pydicom.dcmread(path).DirectoryRecordSequence:
        file_id = record.get("ReferencedFileID")
        if file_id:
            parts = [file_id] if isinstance(file_id, str) else list(file_id)
            out.append(path.parent.joinpath(*(str(p) for p in parts)))
    return out


def _add_zip(path: Path, files: list[Path], skipped: Skipped) -> None:
    try:
        with zipfile.ZipFile(path) as archive:
            names = [info.filename for info in archive.infolist() if not info.is_dir()]
    except Exception as exc:  # noqa: BLE001 - a damaged archive is skipped, the walk goes on
        skipped.append((path, input_error(exc, "unreadable zip archive").message))
        return
    for name in sorted(names):
        parts = name.split("/")
        if any(part.startswith(".") or part in _JUNK_DIRS for part in parts):
            continue
        if name.lower().endswith(ZIP_SUFFIX):
            skipped.append((path / name, "zip archive inside a zip archive is not opened"))
        else:
            files.append(path / name)


def _unique(paths: list[Path]) -> list[Path]:
    seen: set[Path] = set()
    out = []
    for path in paths:
        key = Path(os.path.abspath(path))
        if key not in seen:
            seen.add(key)
            out.append(path)
    return out


def read_dataset(path: Path | str, max_bytes: int = MAX_FILE_BYTES, **kwargs) -> pydicom.Dataset:
    """``pydicom.dcmread`` for a plain file or a zip member's virtual path, under
    ``max_bytes``: a zip member's inflated bytes and a Deflated file's inflated body are
    counted (radfusion.dicom.bounded), beyond them the file is refused. With
    ``stop_before_pixels`` a member is streamed, so a header read inflates only the header."""
    path = Path(path)
    located = _zip_member(path)
    if located is None:
        if not _deflated(path):
            return pydicom.dcmread(path, **kwargs)
        with open(path, "rb") as handle:
            return _read_bounded(handle, max_bytes, kwargs)
    archive, member = located
    if kwargs.get("stop_before_pixels"):
        with _open_member(archive, member, max_bytes) as stream:
            return _read_bounded(stream, max_bytes, kwargs)
    return _read_bounded(io.BytesIO(_read_member(archive, member, max_bytes)), max_bytes, kwargs)


def read_plain_dataset(path: Path | str, **kwargs) -> pydicom.Dataset | None:
    """``pydicom.dcmread`` of a plain file whose body is not deflated, so that values it
    defers (``defer_size``) are read from the file when used; None for a zip member or a
    deflated file, which only read_dataset reads under its bound. A file whose meta
    header _peek_meta reads is read from where that header ends (_read_body), as
    dcmread would read it after parsing the header again."""
    path = Path(path)
    if _zip_member(path) is not None:
        return None
    meta = _peek_meta(path)
    syntax = meta.syntax if meta is not None else None
    if syntax == DeflatedExplicitVRLittleEndian or (syntax is None and _deflated(path)):
        return None
    if meta is not None and set(kwargs) <= {"defer_size"}:
        encoding = _BODY_ENCODINGS.get(syntax) if syntax is not None else None
        if encoding is not None and meta.body_group != 0:  # a command set: dcmread's own path
            return _read_body(path, meta, *encoding, kwargs.get("defer_size"))
    return pydicom.dcmread(path, **kwargs)


# A meta header (group 0002) is a few hundred bytes; one that does not end within this
# many is left to pydicom.
_META_PEEK = 2048
_LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"})
_SHORT_VRS = frozenset(
    {b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FD", b"FL", b"IS", b"LO", b"LT", b"PN", b"SH", b"SL"}
    | {b"SS", b"ST", b"TM", b"UI", b"UL", b"US"}
)
# (implicit VR, little endian) of a body, by transfer syntax, as dcmread decides them for
# the standard's syntaxes (encapsulated ones are explicit VR little endian, PS3.5 A.4).
_BODY_ENCODINGS: dict[str, tuple[bool, bool]] = {
    str(uid): (uid == ImplicitVRLittleEndian, uid != ExplicitVRBigEndian)
    for uid in (ImplicitVRLittleEndian, ExplicitVRLittleEndian, ExplicitVRBigEndian, *AllTransferSyntaxes)
    if uid != DeflatedExplicitVRLittleEndian
}


@dataclass(frozen=True)
class _Meta:
    """A plainly formed meta header, read by _peek_meta."""

    preamble: bytes
    elements: list[RawDataElement]
    syntax: str | None
    end: int  # where the body starts
    body_group: int  # the group of the body's first element


def _peek_meta(path: Path) -> _Meta | None:
    """A file's meta header read straight from its first bytes (pydicom's parse of the
    meta costs as much again as the rest of a header); None unless it is plainly
    formed: the preamble's DICM, explicit VR little endian elements of known VRs and
    defined lengths, at most one TransferSyntaxUID, and the group's end within the first
    _META_PEEK bytes. Anything else is left to pydicom."""
    with open(path, "rb") as handle:
        head = handle.read(_META_PEEK)
    if head[128:132] != b"DICM":
        return None
    at, syntax = 132, None
    elements: list[RawDataElement] = []
    while at + 8 <= len(head):
        group, element = struct.unpack_from("<HH", head, at)
        if group != 2:
            return _Meta(head[:128], elements, syntax, at, group)
        vr = head[at + 4 : at + 6]
        if vr in _LONG_VRS:
            if at + 12 > len(head):
                return None
            (length,) = struct.unpack_from("<I", head, at + 8)
            start = at + 12
        elif vr in _SHORT_VRS:
            (length,) = struct.unpack_from("<H", head, at + 6)
            start = at + 8
        else:
            return None
        if length == 0xFFFFFFFF or start + length > len(head):
            return None
        value = head[start : start + length]
        if element == 0x0010:
            if syntax is not None or vr != b"UI":
                return None  # two of them (pydicom keeps the last), or bytes pydicom would not compare as a UID
            syntax = value.decode("ascii", "replace").rstrip("\0 ")
        elements.append(RawDataElement(Tag(group, element), vr.decode("ascii"), length, value, start, False, True))
        at = start + length
    return None


def _read_body(
    path: Path, meta: _Meta, implicit_vr: bool, little_endian: bool, defer_size: int | str | float | None
) -> pydicom.Dataset:
    """The file read from the end of its meta header as dcmread reads it from there:
    its body with pydicom's read_dataset, and the dataset dcmread would return."""
    with open(path, "rb") as handle:
        handle.seek(meta.end)
        body = filereader.read_dataset(handle, implicit_vr, little_endian, defer_size=defer_size)
        file_meta = FileMetaDataset({e.tag: e for e in meta.elements})
        file_meta.set_original_encoding(False, True, default_encoding)
        ds = FileDataset(handle, body, meta.preamble, file_meta, implicit_vr, little_endian)
    ds.set_original_encoding(implicit_vr, little_endian, body._character_set)
    return ds


def _deflated(path: Path) -> bool:
    """Whether the file's meta header declares a deflated body (pydicom would inflate
    all of it at once). A file without a readable meta header is left to dcmread."""
    try:
        meta = read_file_meta_info(path)
    except Exception:  # noqa: BLE001 - dcmread reports what is wrong with the file
        return False
    return meta.get("TransferSyntaxUID") == DeflatedExplicitVRLittleEndian


def _read_bounded(stream: IO[bytes], max_bytes: int, kwargs: dict) -> pydicom.Dataset:
    # Values are bounded by max_bytes here; deferring them would need a file to reopen.
    return read_bounded(
        stream,
        max_bytes,
        stop_before_pixels=bool(kwargs.get("stop_before_pixels")),
        specific_tags=kwargs.get("specific_tags"),
    )


def stored_size(path: Path) -> int:
    """Bytes ``path`` holds once uncompressed (a zip member: as its archive declares);
    0 when it cannot be told, so the file fails later, when it is read."""
    try:
        located = _zip_member(path)
        if located is None:
            return path.stat().st_size
        archive, member = located
        return _archive(archive).getinfo(member).file_size
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return 0


def _zip_member(path: Path) -> tuple[Path, str] | None:
    """(archive, member) when ``path`` lies inside a zip file; None for a plain path."""
    if path.is_file():
        return None
    for parent in path.parents:
        if parent.suffix.lower() == ZIP_SUFFIX and parent.is_file():
            return parent, path.relative_to(parent).as_posix()
    return None


_zip_lock = threading.Lock()


def _archive(archive: Path) -> zipfile.ZipFile:
    stat = archive.stat()
    with _zip_lock:
        return _open_zip(str(archive.resolve()), stat.st_mtime_ns, stat.st_size)


def _member_info(handle: zipfile.ZipFile, member: str, max_bytes: int) -> zipfile.ZipInfo:
    """The member's entry, refused on what the archive declares, before inflating it."""
    try:
        info = handle.getinfo(member)
    except KeyError as exc:
        raise FileNotFoundError("no such member in the zip archive") from exc
    check_zip_member(info.file_size, info.compress_size, max_bytes)
    return info


def _open_member(archive: Path, member: str, max_bytes: int) -> IO[bytes]:
    """A seekable stream of the member. zipfile never yields more than the declared
    size (and then fails the CRC), so the declared-size check bounds what is read."""
    handle = _archive(archive)
    info = _member_info(handle, member, max_bytes)
    with _zip_lock:  # the shared handle's reads are locked by zipfile; opening is ours
        return handle.open(info)


def _read_member(archive: Path, member: str, max_bytes: int) -> bytes:
    """The whole member, counted while it is inflated."""
    chunks, total = [], 0
    with _open_member(archive, member, max_bytes) as stream:
        while chunk := stream.read(_CHUNK):
            total += len(chunk)
            if total > max_bytes:
                raise UploadTooLargeError(f"zip member inflates beyond {max_bytes / GIB:.2f} GiB")
            chunks.append(chunk)
    return b"".join(chunks)


@lru_cache(maxsize=8)
def _open_zip(path: str, mtime_ns: int, size: int) -> zipfile.ZipFile:
    """Archives stay open between reads: the central directory of a large archive is
    parsed once, not once per member. The key changes when the file does."""
    return zipfile.ZipFile(path)
