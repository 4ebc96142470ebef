"""Where DICOM instances live: plain files in nested folders, members of zip archives,
and DICOMDIR media (a CD/USB export whose index lists the instances).

A zip member is named by a *virtual path*, ``<archive>.zip/<member name>``, so that
the rest of radfusion (headers, volumes, the cohort index, the training records) keeps
handling plain ``Path`` objects and never extracts archives to disk."""

from __future__ import annotations

import io
import os
import threading
import zipfile
from functools import lru_cache
from pathlib import Path

import pydicom
from pydicom.errors import InvalidDicomError

ZIP_SUFFIX = ".zip"
DICOMDIR_NAME = "DICOMDIR"
# Folder names archive tools add that never hold DICOM (macOS resource forks).
_JUNK_DIRS = ("__MACOSX",)

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
    ReferencedFileID is a path relative to the DICOMDIR's folder (PS3.10 8.6)."""
    try:
        records = pydicom.dcmread(path).DirectoryRecordSequence
    except (InvalidDicomError, ValueError, KeyError, AttributeError, OSError) as exc:
        skipped.append((path, f"unreadable DICOMDIR: {type(exc).__name__}"))
        return
    listed = 0
    for record in records:
        file_id = record.get("ReferencedFileID")
        if not file_id:
            continue  # patient/study/series records only structure the index
        parts = [file_id] if isinstance(file_id, str) else list(file_id)
        member = path.parent.joinpath(*parts)
        listed += 1
        if member.is_file():
            files.append(member)
        else:
            skipped.append((member, "listed in DICOMDIR but missing on the media"))
    skipped.append((path, f"DICOMDIR media index ({listed} instances listed)"))


def _add_zip(path: Path, files: list[Path], skipped: Skipped) -> None:
    try:
        with zipfile.ZipFile(path) as archive:
            names = [info.filename for info in archive.infolist() if not info.is_dir()]
    except (zipfile.BadZipFile, OSError) as exc:
        skipped.append((path, f"unreadable zip archive: {type(exc).__name__}"))
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


def read_dataset(path: Path | str, **kwargs) -> pydicom.Dataset:
    """``pydicom.dcmread`` for a plain file or a zip member's virtual path."""
    path = Path(path)
    located = _zip_member(path)
    if located is None:
        return pydicom.dcmread(path, **kwargs)
    archive, member = located
    return pydicom.dcmread(io.BytesIO(_read_member(archive, member)), **kwargs)


def _zip_member(path: Path) -> tuple[Path, str] | None:
    """(archive, member) when ``path`` lies inside a zip file; None for a plain path."""
    if path.is_file():
        return None
    for parent in path.parents:
        if parent.suffix.lower() == ZIP_SUFFIX and parent.is_file():
            return parent, path.relative_to(parent).as_posix()
    return None


_zip_lock = threading.Lock()


def _read_member(archive: Path, member: str) -> bytes:
    stat = archive.stat()
    with _zip_lock:  # one shared handle per archive: reads are serialised, parsing is not
        handle = _open_zip(str(archive.resolve()), stat.st_mtime_ns, stat.st_size)
        try:
            return handle.read(member)
        except KeyError as exc:
            raise FileNotFoundError(f"no member {member!r} in zip archive") from exc


@lru_cache(maxsize=8)
def _open_zip(path: str, mtime_ns: int, size: int) -> zipfile.ZipFile:
    """Archives stay open between reads: the central directory of a large archive is
    parsed once, not once per member. The key changes when the file does."""
    return zipfile.ZipFile(path)
