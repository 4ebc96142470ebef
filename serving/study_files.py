"""Uploaded study parts -> DICOM files on local disk, safely.

A part is a zip archive (detected by content, not by name) or one DICOM file. Zip
members are written under generated names inside a fresh folder, so no member name can
reach outside it; members whose names try to (absolute paths, '..') reject the whole
archive. Sizes are counted while decompressing, never trusted from the zip headers."""

from __future__ import annotations

import os
import shutil
import zipfile
from collections.abc import Sequence
from pathlib import Path, PurePosixPath, PureWindowsPath

from radfusion.errors import RadfusionInputError

DEFAULT_MAX_STUDY_BYTES = 2 * 1024**3  # uncompressed, over all parts of one request
DEFAULT_MAX_MEMBERS = 20_000
_CHUNK = 1024 * 1024


class BadArchiveError(RadfusionInputError):
    kind = "bad_archive"
    http_status = 400


class UnsafeArchiveError(RadfusionInputError):
    kind = "unsafe_archive"
    http_status = 400


class UploadTooLargeError(RadfusionInputError):
    kind = "upload_too_large"
    http_status = 413


def limit_from_env(name: str, default: int) -> int:
    value = os.environ.get(name, "").strip()
    return int(value) if value else default


def is_dicom_file(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(132)
    return len(head) == 132 and head[128:132] == b"DICM"


def is_zip_file(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(4)
    return head in (b"PK\x03\x04", b"PK\x05\x06") or zipfile.is_zipfile(path)


def _unsafe_name(name: str) -> bool:
    for pure in (PurePosixPath(name), PureWindowsPath(name)):
        if pure.is_absolute() or pure.drive or ".." in pure.parts:
            return True
    return False


def extract_zip(archive: Path, dest: Path, budget: list[int], max_members: int) -> list[Path]:
    """Extract regular members of ``archive`` into ``dest`` as 000000.dcm, 000001.dcm, ...

    ``budget`` is a one-item list holding the bytes still allowed; it is shared by the
    parts of one request and decremented as bytes are written."""
    try:
        with zipfile.ZipFile(archive) as zf:
            members = [m for m in zf.infolist() if not m.is_dir()]
            if len(members) > max_members:
                raise UploadTooLargeError(f"archive holds {len(members)} files; at most {max_members} allowed")
            for member in members:
                if _unsafe_name(member.filename):
                    raise UnsafeArchiveError("archive member names point outside the archive (absolute path or '..')")
            dest.mkdir(parents=True, exist_ok=True)
            written: list[Path] = []
            for i, member in enumerate(members):
                if PurePosixPath(member.filename).name.startswith(".") or member.filename.startswith("__MACOSX/"):
                    continue
                target = dest / f"{i:06d}.dcm"
                with zf.open(member) as src, open(target, "wb") as out:
                    while chunk := src.read(_CHUNK):
                        budget[0] -= len(chunk)
                        if budget[0] < 0:
                            raise UploadTooLargeError("study is larger than the server's uncompressed size limit")
                        out.write(chunk)
                written.append(target)
            return written
    except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, EOFError, RuntimeError) as exc:
        # RuntimeError: encrypted members; NotImplementedError: unsupported compression.
        raise BadArchiveError(f"not a readable zip archive ({type(exc).__name__})") from exc
    except OSError as exc:
        raise BadArchiveError(f"zip archive cannot be extracted ({type(exc).__name__})") from exc


def study_files(parts: Sequence[Path], workdir: Path, max_bytes: int, max_members: int) -> list[Path]:
    """The DICOM files of uploaded ``parts`` under ``workdir``, all under generated names:
    zips are extracted, anything else is moved in as one DICOM file (and reported as
    corrupt later if it is not)."""
    workdir.mkdir(parents=True, exist_ok=True)
    budget = [max_bytes]
    files: list[Path] = []
    for index, part in enumerate(parts):
        if not is_dicom_file(part) and is_zip_file(part):
            files.extend(extract_zip(part, workdir / f"part{index:03d}", budget, max_members - len(files)))
        else:
            budget[0] -= part.stat().st_size
            if budget[0] < 0:
                raise UploadTooLargeError("study is larger than the server's size limit")
            # The upload's temporary name carries the client's file name, which may hold
            # a patient's name and would reach logs through reader warnings.
            files.append(Path(shutil.move(part, workdir / f"file{index:06d}.dcm")))
        if len(files) > max_members:
            raise UploadTooLargeError(f"study holds more than {max_members} files")
    return files


def remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
