"""Study files -> DICOM files on local disk, safely: ONE reader of zip archives for HTTP
uploads and for the archive scorer.

A part is a zip archive (detected by content, not by name) or one DICOM file. Zip
members are written under generated names inside a fresh folder, so no member name can
reach outside it; members whose names try to (absolute paths, '..') reject the whole
archive. A ``Budget`` of bytes and files is shared by every part of one study (one
request, or one study of an archive), and a study over it is that study's
UploadTooLargeError. The zip headers are checked before anything is decompressed (a
member declaring more than the budget has left, members declaring more than it in all,
or a member declaring more than ``radfusion.limits.MAX_ZIP_RATIO`` times its compressed size: a zip bomb is
refused before its first byte is written), and the bytes are counted again while they
are decompressed, because headers can lie."""

from __future__ import annotations

import shutil
import zipfile
import zlib
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath

from radfusion.errors import RadfusionInputError, UploadTooLargeError
from radfusion.limits import check_zip_member

DEFAULT_MAX_STUDY_BYTES = 2 * 1024**3  # uncompressed, over all parts of one study
DEFAULT_MAX_MEMBERS = 20_000
_CHUNK = 1024 * 1024


class BadArchiveError(RadfusionInputError):
    """A zip archive that cannot be read (not a zip, truncated, encrypted, unsupported compression)."""

    kind = "bad_archive"
    http_status = 400


class UnsafeArchiveError(RadfusionInputError):
    """A zip archive whose member names point outside it (absolute paths or '..')."""

    kind = "unsafe_archive"
    http_status = 400


@dataclass
class Budget:
    """Uncompressed bytes and files still allowed for one study, spent as they are written."""

    bytes_left: int = DEFAULT_MAX_STUDY_BYTES
    files_left: int = DEFAULT_MAX_MEMBERS
    max_files: int = DEFAULT_MAX_MEMBERS

    @classmethod
    def of(cls, max_bytes: int, max_files: int) -> Budget:
        return cls(max_bytes, max_files, max_files)

    def spend_bytes(self, n: int) -> None:
        self.bytes_left -= n
        if self.bytes_left < 0:
            raise UploadTooLargeError("study is larger than the server's uncompressed size limit")

    def spend_files(self, n: int) -> None:
        self.files_left -= n
        if self.files_left < 0:
            raise UploadTooLargeError(f"study holds more than {self.max_files} files")

    def check_declared(self, members: Sequence[zipfile.ZipInfo]) -> None:
        """Refuse ``members`` from what their headers declare, before any is decompressed."""
        for member in members:
            check_member(member, self)
        declared = sum(m.file_size for m in members)
        if declared > self.bytes_left:
            raise UploadTooLargeError(
                f"zip members declare {declared:,} bytes; the study may take {self.bytes_left:,} more"
            )


def check_member(member: zipfile.ZipInfo, budget: Budget) -> None:
    """One member's header against what ``budget`` has left and the zip-bomb ratio."""
    check_zip_member(member.file_size, member.compress_size, budget.bytes_left)


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


def is_zip_archive(path: Path) -> bool:
    """A zip by content (a DICOM file's 128-byte preamble may hold anything, so a DICOM
    file is never taken for a zip)."""
    return not is_dicom_file(path) and is_zip_file(path)


def zip_members(archive: zipfile.ZipFile) -> list[zipfile.ZipInfo]:
    """The members that may hold a DICOM file, in archive order: regular files, not
    hidden ones or macOS resource forks."""
    return [
        m
        for m in archive.infolist()
        if not m.is_dir()
        and not PurePosixPath(m.filename).name.startswith(".")
        and not m.filename.startswith("__MACOSX/")
    ]


@contextmanager
def open_zip(path: Path | str) -> Iterator[zipfile.ZipFile]:
    """The zip file at ``path``; any failure to read it is a BadArchiveError."""
    try:
        with zipfile.ZipFile(path) as archive:
            yield archive
    except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, EOFError, RuntimeError) as exc:
        # RuntimeError: encrypted members; NotImplementedError: unsupported compression.
        raise BadArchiveError(f"not a readable zip archive ({type(exc).__name__})") from exc
    except zlib.error as exc:  # a member's deflated data is corrupt (a bad CRC is BadZipFile)
        raise BadArchiveError("a zip member cannot be inflated (zlib.error)") from exc
    except (OSError, KeyError) as exc:
        raise BadArchiveError(f"zip archive cannot be extracted ({type(exc).__name__})") from exc


def _copy_member(archive: zipfile.ZipFile, member: zipfile.ZipInfo, target: Path, budget: Budget) -> Path:
    """One member streamed to ``target``, refused from its header first, its bytes
    counted as they are decompressed."""
    check_member(member, budget)
    try:
        with archive.open(member) as src, open(target, "wb") as out:
            while chunk := src.read(_CHUNK):
                budget.spend_bytes(len(chunk))
                out.write(chunk)
    except (zipfile.BadZipFile, zlib.error, EOFError) as exc:
        # A bad CRC, corrupt deflated data, a member cut short: the data is not what
        # the header declares.
        what = "zlib.error" if isinstance(exc, zlib.error) else type(exc).__name__
        raise BadArchiveError(f"a zip member is damaged ({what})") from exc
    return target


def extract_zip(archive: Path, dest: Path, budget: Budget) -> list[Path]:
    """Extract the members of an uploaded ``archive`` into ``dest`` as 000000.dcm, ...

    The whole archive is refused if any member name points outside it."""
    with open_zip(archive) as zf:
        members = [m for m in zf.infolist() if not m.is_dir()]
        if len(members) > budget.files_left:
            raise UploadTooLargeError(f"archive holds {len(members)} files; at most {budget.max_files} allowed")
        if any(_unsafe_name(m.filename) for m in members):
            raise UnsafeArchiveError("archive member names point outside the archive (absolute path or '..')")
        wanted = zip_members(zf)
        budget.check_declared(wanted)
        dest.mkdir(parents=True, exist_ok=True)
        written: list[Path] = []
        for i, member in enumerate(wanted):
            budget.spend_files(1)
            written.append(_copy_member(zf, member, dest / f"{i:06d}.dcm", budget))
        return written


def extract_members(zip_path: Path | str, members: Iterable[tuple[int, str]], dest: Path, budget: Budget) -> list[Path]:
    """Named members of an archive's zip (the scorer's study files) written to
    ``dest`` as <index>.dcm, under the study's budget."""
    with open_zip(zip_path) as zf:
        wanted = [(index, zf.getinfo(name)) for index, name in members]
        budget.check_declared([info for _, info in wanted])
        written: list[Path] = []
        for index, info in wanted:
            budget.spend_files(1)
            written.append(_copy_member(zf, info, dest / f"{index:06d}.dcm", budget))
        return written


def study_files(parts: Sequence[Path], workdir: Path, max_bytes: int, max_members: int) -> list[Path]:
    """The DICOM files of uploaded ``parts`` under ``workdir``, all under generated names:
    zips are extracted, anything else is moved in as one DICOM file (and reported as
    corrupt later if it is not)."""
    workdir.mkdir(parents=True, exist_ok=True)
    budget = Budget.of(max_bytes, max_members)
    files: list[Path] = []
    for index, part in enumerate(parts):
        if is_zip_archive(part):
            files.extend(extract_zip(part, workdir / f"part{index:03d}", budget))
        else:
            budget.spend_files(1)
            budget.spend_bytes(part.stat().st_size)
            # The upload's temporary name carries the client's file name, which may hold
            # a patient's name and would reach logs through reader warnings.
            files.append(Path(shutil.move(part, workdir / f"file{index:06d}.dcm")))
    return files


def remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
