"""Where the studies of an archive come from, and how one study reaches local disk.

An archive is a folder tree (DICOM files under any names, and any ``*.zip`` inside it
holding more), a single zip file, or the root URL of a DICOMweb server.

Discovery is split so that it can overlap with decoding: ``list_units`` walks the
archive cheaply (folder listings, zip paths, QIDO-RS pages); ``scan_unit`` reads the
headers of one unit (in a worker process); ``StudyAssembler`` turns scanned units into
studies. A study is released as soon as the unit holding it has been scanned. Should a
later unit hold more files of a released study (a study split across folders), the
study is released again at the end with all its files: its row then carries a larger
``n_instances`` and replaces the earlier one (see writer.py)."""

from __future__ import annotations

import os
import shutil
import tempfile
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
from pydicom.errors import InvalidDicomError

from radfusion.dicom import read_header
from radfusion.errors import RadfusionInputError

QIDO_PAGE = 500
_HEADER_ERRORS = (InvalidDicomError, EOFError, OSError, ValueError, KeyError)


class FetchError(RadfusionInputError):
    """The study could not be fetched (server error, network): worth retrying later."""

    kind = "fetch_failed"


class CorruptArchiveError(RadfusionInputError):
    kind = "corrupt_archive"


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
    kind: str  # "dir" (files of one folder), "zip" (one zip file) or "qido" (one listing page)
    path: str  # folder, zip file, or DICOMweb root URL
    names: tuple[str, ...] = ()
    entries: tuple[tuple[str, str, int], ...] = ()  # qido: (study uid, patient id, instances)


@dataclass
class ScanResult:
    found: list[tuple[str, str, FileRef | None, int]] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # reasons only: names may identify patients


def is_dicomweb(archive: str | Path) -> bool:
    return str(archive).startswith(("http://", "https://"))


def list_units(archive: str | Path) -> Iterator[ScanUnit]:
    if is_dicomweb(archive):
        yield from _qido_pages(str(archive).rstrip("/"))
        return
    root = Path(archive)
    if root.is_file():
        yield ScanUnit("zip", str(root)) if _is_zip(root) else ScanUnit("dir", str(root.parent), names=(root.name,))
        return
    if not root.is_dir():
        raise FileNotFoundError(f"archive {archive} is neither a folder, a zip file nor an http(s) URL")
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        names = sorted(n for n in filenames if not n.startswith("."))
        plain = tuple(n for n in names if not n.lower().endswith(".zip"))
        if plain:
            yield ScanUnit("dir", dirpath, names=plain)
        for name in names:
            if name.lower().endswith(".zip"):
                yield ScanUnit("zip", os.path.join(dirpath, name))


def scan_unit(unit: ScanUnit) -> ScanResult:
    """Read the headers of one unit. Unreadable files are counted, never raised."""
    result = ScanResult()
    if unit.kind == "qido":
        result.found = [(uid, pid, None, n) for uid, pid, n in unit.entries]
    elif unit.kind == "zip":
        _scan_zip(Path(unit.path), result)
    else:
        for name in unit.names:
            try:
                header = read_header(Path(unit.path) / name)
            except _HEADER_ERRORS as exc:
                result.skipped.append(f"not a readable DICOM file: {type(exc).__name__}")
                continue
            result.found.append((header.study_uid, header.patient_id, FileRef(str(Path(unit.path) / name)), 1))
    return result


def _scan_zip(path: Path, result: ScanResult) -> None:
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        result.skipped.append(f"not a readable zip archive: {type(exc).__name__}")
        return
    with archive:
        for info in sorted(archive.infolist(), key=lambda i: i.filename):
            if info.is_dir() or Path(info.filename).name.startswith("."):
                continue
            try:
                with archive.open(info) as member:
                    ds = pydicom.dcmread(member, stop_before_pixels=True,
                                         specific_tags=["StudyInstanceUID", "SeriesInstanceUID", "PatientID"])
                uid = str(ds.StudyInstanceUID)
                ds.SeriesInstanceUID  # noqa: B018 - a file without a series is not an image instance
            except (*_HEADER_ERRORS, AttributeError, zipfile.BadZipFile) as exc:
                result.skipped.append(f"not a readable DICOM file: {type(exc).__name__}")
                continue
            result.found.append((uid, str(ds.get("PatientID", "")), FileRef(str(path), info.filename), 1))


class StudyAssembler:
    """Scanned units in, studies out (see the module docstring for the release rule)."""

    def __init__(self, dicomweb_url: str | None = None):
        self.dicomweb_url = dicomweb_url
        self.skipped_files = 0
        self._files: dict[str, list[FileRef]] = {}
        self._patients: dict[str, str] = {}
        self._grown: set[str] = set()

    def add(self, result: ScanResult) -> list[StudyRef]:
        self.skipped_files += len(result.skipped)
        new: dict[str, StudyRef | None] = {}
        for uid, patient_id, ref, count in result.found:
            if ref is None:  # a DICOMweb listing entry: the server knows the whole study
                if uid not in self._patients:
                    self._patients[uid] = patient_id
                    new[uid] = StudyRef(uid, patient_id, count, dicomweb_url=self.dicomweb_url)
                continue
            if uid in self._files and uid not in new:
                self._grown.add(uid)
            else:
                self._patients.setdefault(uid, patient_id)
                new[uid] = None
            self._files.setdefault(uid, []).append(ref)
        return [ref or self._study(uid) for uid, ref in sorted(new.items())]

    def finish(self) -> list[StudyRef]:
        """Studies that gained files after they were released, now with all of them."""
        return [self._study(uid) for uid in sorted(self._grown)]

    def _study(self, uid: str) -> StudyRef:
        files = tuple(self._files[uid])
        return StudyRef(uid, self._patients[uid], len(files), files=files)


@contextmanager
def local_study_files(study: StudyRef) -> Iterator[list[Path]]:
    """The study's files as local paths; zip members and DICOMweb instances are written
    to a private temporary folder (under names we choose: no path from the archive is
    trusted) that is removed afterwards."""
    if study.dicomweb_url is None and all(f.member is None for f in study.files):
        yield [Path(f.path) for f in study.files]
        return
    folder = Path(tempfile.mkdtemp(prefix="radfusion-study-"))
    try:
        if study.dicomweb_url is not None:
            yield _fetch_dicomweb(study, folder)
        else:
            yield _extract_members(study.files, folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _extract_members(files: tuple[FileRef, ...], folder: Path) -> list[Path]:
    paths: list[Path] = []
    by_zip: dict[str, list[tuple[int, str]]] = {}
    for i, ref in enumerate(files):
        if ref.member is None:
            paths.append(Path(ref.path))
        else:
            by_zip.setdefault(ref.path, []).append((i, ref.member))
    for zip_path, members in by_zip.items():
        try:
            with zipfile.ZipFile(zip_path) as archive:
                for i, member in members:
                    target = folder / f"{i:06d}.dcm"
                    target.write_bytes(archive.read(member))
                    paths.append(target)
        except (zipfile.BadZipFile, OSError, KeyError) as exc:
            raise CorruptArchiveError(f"zip member cannot be read ({type(exc).__name__})") from None
    return paths


_clients: dict[str, object] = {}


def dicomweb_client(url: str):
    """One client per server and process (workers reuse the HTTP session)."""
    if url not in _clients:
        from dicomweb_client.api import DICOMwebClient

        _clients[url] = DICOMwebClient(url=url)
    return _clients[url]


def _fetch_dicomweb(study: StudyRef, folder: Path) -> list[Path]:
    try:
        instances = dicomweb_client(study.dicomweb_url).retrieve_study(study.study_uid)
    except Exception as exc:  # noqa: BLE001 - requests/HTTP errors of any kind: retry on resume
        status = getattr(getattr(exc, "response", None), "status_code", None)
        raise FetchError(f"WADO-RS retrieve failed ({type(exc).__name__}{f', HTTP {status}' if status else ''})") from None
    paths = []
    for i, ds in enumerate(instances):
        path = folder / f"{i:06d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def _qido_pages(url: str) -> Iterator[ScanUnit]:
    client = dicomweb_client(url)
    offset = 0
    while True:
        try:
            page = client.search_for_studies(offset=offset, limit=QIDO_PAGE,
                                             fields=["NumberOfStudyRelatedInstances"])
        except Exception as exc:  # noqa: BLE001
            raise FetchError(f"QIDO-RS study search failed ({type(exc).__name__})") from None
        entries = tuple(
            (_value(item, "0020000D"), _value(item, "00100020"), int(_value(item, "00201208") or 0))
            for item in page
        )
        if entries:
            yield ScanUnit("qido", url, entries=entries)
        if len(page) < QIDO_PAGE:
            return
        offset += len(page)


def _value(item: dict, tag: str) -> str:
    values = item.get(tag, {}).get("Value") or [""]
    return str(values[0])


def _is_zip(path: Path) -> bool:
    return path.suffix.lower() == ".zip"
