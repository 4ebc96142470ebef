"""Where the studies of an archive come from, and how one study reaches local disk.

An archive is a folder tree (DICOM files under any names, and any ``*.zip`` inside it
holding more), a single zip file, or the root URL of a DICOMweb server.

Discovery is split so that it can overlap with decoding: ``list_units`` walks the
archive cheaply (one unit per folder's files, per zip file, per QIDO-RS page);
``scan_unit`` reads the headers of one unit (in a worker process); ``StudyAssembler``
turns scanned units into studies, in walk order. A study is released as soon as the
walk has left the smallest folder (or zip) holding all its files seen so far: a
depth-first walk never comes back into a folder it has left, so a study laid out as
``study/series/files`` (or one zip per study, or a flat folder) is released whole, as
early as possible. Should a later unit still hold files of a released study (a study
scattered across the tree), the study is released again at the end with all its files:
its row then carries a larger ``n_instances`` and replaces the earlier one (writer.py).
DICOMweb studies are released as soon as their listing page arrives.

Discovery survives any bytes: it reads only as far as the identifiers (PatientID,
StudyInstanceUID, SeriesInstanceUID; at most HEADER_LIMIT bytes, inflating a Deflated
file only that far), opens nothing that is not a regular file, and never opens a zip
inside a zip. A file whose identifiers cannot be read belongs to no study: it is
skipped with a reason (radfusion.errors.input_error's kind, never the library's text),
counted by reason in the run's summary; a unit that cannot be read at all (a folder
that cannot be listed, a zip that is no zip) is recorded as failed. What is wrong
after the identifiers is the study's to report, as its error row.

Zip archives are read by the one reader of serving/study_files.py and DICOMweb servers
through the one client of serving/dicomweb.py (its trusted policy): a study's zip
members and instances are streamed to disk under a per-study budget of bytes and files,
and a study over it, or one that cannot be fetched, is that study's error row."""

from __future__ import annotations

import functools
import hashlib
import os
import shutil
import stat
import sys
import tempfile
import zipfile
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO

from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.tag import BaseTag, Tag

from radfusion.dicom.bounded import read_bounded
from radfusion.errors import input_error
from radfusion.serving.dicomweb import DicomwebPolicy, DicomwebRef, fetch_study, search_studies
from radfusion.serving.study_files import (
    BadArchiveError,
    Budget,
    extract_members,
    is_zip_archive,
    open_zip,
    zip_members,
)

QIDO_PAGE = 500
# The scorer's operator chose the archive: its DICOMweb server is trusted (no allow-list).
TRUSTED = DicomwebPolicy.trusted()


@dataclass(frozen=True)
class FileRef:
    path: str
    member: str | None = None  # name inside the zip file at ``path``


@dataclass(frozen=True)
class StudyRef:
    """One study to score; small and picklable (it travels to workers and Ray tasks)."""

    study_uid: str
    patient_id: str
    n_instances: int
    files: tuple[FileRef, ...] = ()
    dicomweb_url: str | None = None


@dataclass(frozen=True)
class ScanUnit:
    # "dir" (files of one folder), "zip" (one zip file), "qido" (one listing page) or
    # "unlisted" (a folder the walk could not list; names: the error's type).
    kind: str
    path: str  # folder, zip file, or DICOMweb root URL
    names: tuple[str, ...] = ()
    entries: tuple[tuple[str, str, int], ...] = ()  # qido: (study uid, patient id, instances)
    index: int = 0  # position in the walk


@dataclass
class ScanResult:
    index: int = 0
    position: str = ""  # the unit's folder or zip file: where the walk is
    found: list[tuple[str, str, FileRef | None, int]] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # reasons only: names may identify patients
    failed: str | None = None  # why the unit as a whole could not be read (reason only)


def is_dicomweb(archive: str | Path) -> bool:
    return str(archive).startswith(("http://", "https://"))


def list_units(archive: str | Path) -> Iterator[ScanUnit]:
    for index, unit in enumerate(_walk(archive)):
        yield replace(unit, index=index)


def _walk(archive: str | Path) -> Iterator[ScanUnit]:
    if is_dicomweb(archive):
        yield from _qido_pages(str(archive).rstrip("/"))
        return
    root = Path(archive)
    if root.is_file():
        yield (
            ScanUnit("zip", str(root))
            if is_zip_archive(root)
            else ScanUnit("dir", str(root.parent), names=(root.name,))
        )
        return
    if not root.is_dir():
        raise FileNotFoundError(f"archive {archive} is neither a folder, a zip file nor an http(s) URL")
    unlisted: list[OSError] = []
    for dirpath, dirnames, filenames in os.walk(root, onerror=unlisted.append):
        while unlisted:  # a folder os.walk could not list: recorded, never raised
            error = unlisted.pop(0)
            yield ScanUnit("unlisted", str(error.filename or dirpath), names=(type(error).__name__,))
        # Hidden folders hold caches (radfusion 0.1's cohort index in .radfusion/), not studies.
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        names = sorted(n for n in filenames if not n.startswith("."))
        plain = tuple(n for n in names if not n.lower().endswith(".zip"))
        if plain:
            yield ScanUnit("dir", dirpath, names=plain)
        for name in names:
            if name.lower().endswith(".zip"):
                yield ScanUnit("zip", os.path.join(dirpath, name))
    for error in unlisted:  # the last folders of the walk
        yield ScanUnit("unlisted", str(error.filename or root), names=(type(error).__name__,))


def scan_unit(unit: ScanUnit) -> ScanResult:
    """Read the identifiers of every file of one unit. Never raises, whatever the bytes:
    a file that cannot be read is skipped with a reason, a unit that cannot be read at
    all (a zip that is no zip, a folder that cannot be listed) is recorded as failed,
    and the walk goes on."""
    result = ScanResult(index=unit.index, position=unit.path)
    try:
        if unit.kind == "qido":
            result.found = [(uid, pid, None, n) for uid, pid, n in unit.entries]
        elif unit.kind == "zip":
            _scan_zip(Path(unit.path), result)
        elif unit.kind == "unlisted":
            result.failed = f"a folder could not be listed ({unit.names[0] if unit.names else 'OSError'})"
        else:
            for name in unit.names:
                path = Path(unit.path) / name
                _add_instance(result, functools.partial(_read_file_ids, path), FileRef(str(path)))
    except Exception as exc:  # noqa: BLE001 - one unit never stops the walk
        error = input_error(exc, "the unit")
        result.failed = f"{error.kind}: {error.message}"
    return result


# Discovery needs only these; reading stops after the last of them (they come before
# anything large in any real file), so it costs a few kilobytes per file.
_ID_TAGS = [Tag("PatientID"), Tag("StudyInstanceUID"), Tag("SeriesInstanceUID")]
_LAST_ID = max(_ID_TAGS)
# What discovery reads of one file (or inflates of a deflated one) at most to find
# them: a header that would need more is a hostile one.
HEADER_LIMIT = 16 * 1024**2


def _past_ids(tag: BaseTag, vr: str | None, length: int) -> bool:
    return tag > _LAST_ID


def _read_file_ids(path: Path) -> Dataset:
    # O_NONBLOCK: a FIFO (or a device) planted in the archive would block open() forever.
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
            raise _NotAFile()
        return _read_ids(handle)


def _read_ids(source: IO[bytes]) -> Dataset:
    """PatientID, StudyInstanceUID and SeriesInstanceUID of one file (or zip member),
    reading (or inflating) no further than HEADER_LIMIT bytes of it."""
    return read_bounded(source, HEADER_LIMIT, stop_when=_past_ids, specific_tags=list(_ID_TAGS))


class _NotAFile(OSError):
    """A FIFO, socket or device where a file was listed."""


class _NestedZip(Exception):
    """A zip member that is itself a zip: not opened (a zip-in-zip is a classic bomb
    vector, and an archive's layout never needs one)."""


def _add_instance(result: ScanResult, read, ref: FileRef) -> None:
    try:
        ds = read()
        study_uid, series_uid = str(ds.get("StudyInstanceUID", "")), str(ds.get("SeriesInstanceUID", ""))
        patient_id = str(ds.get("PatientID", ""))
    except Exception as exc:  # noqa: BLE001 - any bytes: the file is skipped, never the walk
        result.skipped.append(_skip_reason(exc))
        return
    if not study_uid or not series_uid:
        result.skipped.append("not an image instance: no StudyInstanceUID/SeriesInstanceUID")
        return
    result.found.append((study_uid, patient_id, ref, 1))


def _read_member_ids(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> Dataset:
    try:
        member = archive.open(info)
    except (RuntimeError, NotImplementedError) as exc:  # what zipfile raises for these two
        raise BadArchiveError(
            f"a zip member is encrypted or uses an unsupported compression ({type(exc).__name__})"
        ) from exc
    with member:
        if member.read(4) == b"PK\x03\x04":
            raise _NestedZip()
        member.seek(0)
        return _read_ids(member)


def _skip_reason(exc: Exception) -> str:
    """Why a file was skipped: its kind and what was wrong, never the library's message
    (it can quote header values and paths)."""
    if isinstance(exc, InvalidDicomError):
        return "not a DICOM file"
    if isinstance(exc, _NotAFile):
        return "not a regular file (a FIFO, socket or device)"
    if isinstance(exc, _NestedZip):
        return "a zip inside a zip archive: not read"
    error = input_error(exc, "file")
    return f"{error.kind}: {error.message}"


def _scan_zip(path: Path, result: ScanResult) -> None:
    try:
        with open_zip(path) as archive:
            for info in sorted(zip_members(archive), key=lambda i: i.filename):
                read = functools.partial(_read_member_ids, archive, info)
                _add_instance(result, read, FileRef(str(path), info.filename))
    except BadArchiveError as exc:
        result.failed = f"{exc.kind}: {exc.message}"
        result.skipped.append(result.failed)  # the zip file itself is a skipped file


@dataclass
class _Pending:
    patient_id: str
    home: str  # smallest folder (or zip) holding every file seen so far
    files: list[FileRef] = field(default_factory=list)


def _key(uid: str) -> bytes:
    """A released study is remembered by a 16-byte digest of its UID, not its files:
    memory stays at ~200 bytes per study on archives of millions."""
    return hashlib.blake2b(uid.encode(), digest_size=16).digest()


class StudyAssembler:
    """Scanned units in (any order), studies out (see the module docstring)."""

    def __init__(self, dicomweb_url: str | None = None):
        self.dicomweb_url = dicomweb_url
        self.skipped_files = 0
        # Files that belong to no study found (unreadable headers), and units that could
        # not be read at all, by reason: reported in the run's summary, never lost.
        self.skipped_by_reason: Counter[str] = Counter()
        self.failed_units: Counter[str] = Counter()
        self._next = 0
        self._waiting: dict[int, ScanResult] = {}
        self._pending: dict[str, _Pending] = {}
        self._released: dict[bytes, str] = {}  # digest -> home
        self._late: dict[str, list[FileRef]] = {}  # files found after their study's release
        self._listed: set[bytes] = set()

    def add(self, result: ScanResult) -> list[StudyRef]:
        self._waiting[result.index] = result
        released: list[StudyRef] = []
        while self._next in self._waiting:
            released += self._apply(self._waiting.pop(self._next))
            self._next += 1
        return released

    def finish(self) -> list[StudyRef]:
        """Everything still pending, then the scattered studies with all their files
        (those under their first home, read again, plus those found later)."""
        assert not self._waiting, "finish() before every unit was added"
        studies = [self._release(uid) for uid in sorted(self._pending)]
        for uid, late in sorted(self._late.items()):
            patient_id, files = _files_under(self._released[_key(uid)], uid)
            files += late
            studies.append(StudyRef(uid, patient_id, len(files), files=tuple(files)))
        return studies

    def _apply(self, result: ScanResult) -> list[StudyRef]:
        self.skipped_files += len(result.skipped)
        self.skipped_by_reason.update(result.skipped)
        if result.failed is not None:
            self.failed_units[result.failed] += 1
        listed: list[StudyRef] = []
        for uid, patient_id, ref, count in result.found:
            if ref is None:  # a DICOMweb listing entry: the server holds the whole study
                if _key(uid) not in self._listed:
                    self._listed.add(_key(uid))
                    listed.append(StudyRef(uid, patient_id, count, dicomweb_url=self.dicomweb_url))
            elif _key(uid) in self._released:
                self._late.setdefault(uid, []).append(ref)
            else:
                pending = self._pending.setdefault(uid, _Pending(patient_id, result.position))
                pending.home = os.path.commonpath([pending.home, result.position])
                pending.files.append(ref)
        left_behind = [uid for uid, p in self._pending.items() if not _within(result.position, p.home)]
        return listed + [self._release(uid) for uid in sorted(left_behind)]

    def _release(self, uid: str) -> StudyRef:
        pending = self._pending.pop(uid)
        self._released[_key(uid)] = sys.intern(pending.home)
        files = tuple(pending.files)
        return StudyRef(uid, pending.patient_id, len(files), files=files)


def _files_under(home: str, uid: str) -> tuple[str, list[FileRef]]:
    patient_id, files = "", []  # type: str, list[FileRef]
    for unit in list_units(home):
        for found_uid, found_patient, ref, _ in scan_unit(unit).found:
            if found_uid == uid:
                assert ref is not None  # home is a local folder or zip: no DICOMweb listing entries
                patient_id = found_patient
                files.append(ref)
    return patient_id, files


def _within(position: str, home: str) -> bool:
    return position == home or position.startswith(home.rstrip(os.sep) + os.sep)


@contextmanager
def local_study_files(study: StudyRef, budget: Budget | None = None) -> Iterator[list[Path]]:
    """The study's files as local paths; zip members and DICOMweb instances are streamed
    to a private temporary folder (under names we choose: no path from the archive is
    trusted) that is removed afterwards. ``budget``: the bytes and files one study may
    take (default: the upload limits); a study over it raises UploadTooLargeError."""
    budget = budget or Budget()
    if study.dicomweb_url is None and all(f.member is None for f in study.files):
        budget.spend_files(len(study.files))
        yield [Path(f.path) for f in study.files]
        return
    folder = Path(tempfile.mkdtemp(prefix="radfusion-study-"))
    try:
        if study.dicomweb_url is not None:
            yield _fetch_dicomweb(study, folder, budget)
        else:
            yield _extract_members(study.files, folder, budget)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _extract_members(files: tuple[FileRef, ...], folder: Path, budget: Budget) -> list[Path]:
    paths: list[Path] = []
    by_zip: dict[str, list[tuple[int, str]]] = {}
    for i, ref in enumerate(files):
        if ref.member is None:
            budget.spend_files(1)
            paths.append(Path(ref.path))
        else:
            by_zip.setdefault(ref.path, []).append((i, ref.member))
    for zip_path, members in by_zip.items():
        paths += extract_members(zip_path, members, folder, budget)
    return paths


def _fetch_dicomweb(study: StudyRef, folder: Path, budget: Budget) -> list[Path]:
    assert study.dicomweb_url is not None  # local_study_files calls this for DICOMweb studies only
    policy = DicomwebPolicy.trusted(max_bytes=budget.bytes_left, max_instances=budget.files_left)
    return fetch_study(DicomwebRef(url=study.dicomweb_url, study_uid=study.study_uid), policy, folder)


def _qido_pages(url: str) -> Iterator[ScanUnit]:
    offset = 0
    while True:
        page = search_studies(url, TRUSTED, offset=offset, limit=QIDO_PAGE, fields=["NumberOfStudyRelatedInstances"])
        entries = tuple(
            (_value(item, "0020000D"), _value(item, "00100020"), int(_value(item, "00201208") or 0)) for item in page
        )
        if entries:
            yield ScanUnit("qido", url, entries=entries)
        if len(page) < QIDO_PAGE:
            return
        offset += len(page)


def _value(item: dict, tag: str) -> str:
    values = item.get(tag, {}).get("Value") or [""]
    return str(values[0])
