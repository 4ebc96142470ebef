"""Specific input errors. Each carries a machine-readable ``kind`` so HTTP, DICOM and
batch callers can map it (HTTP 4xx reason, per-study error row) without parsing text.
Messages never contain patient names or identifiers.

One failure has one kind everywhere (HTTP body, scorer error row, listener): the
catalogue of kinds is generated from the classes themselves (``error_catalogue``), and
docs/errors.md is that catalogue as a table:

    radfusion errors --markdown > docs/errors.md
"""

from __future__ import annotations

import inspect
import os
import struct
import zipfile
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from pydicom.errors import InvalidDicomError


class UserError(ValueError):
    """A command was given something it cannot use (a missing folder, a number out of
    range, a model that was never exported): the operator can fix it. The `radfusion`
    command prints it as one line, ``radfusion <command>: <problem>; <fix>``, and exits
    1 (a traceback only with ``radfusion --debug``). Not an input kind of the catalogue:
    no HTTP request or study row carries it."""

    def __init__(self, problem: str, fix: str | None = None):
        super().__init__(f"{problem}; {fix}" if fix else problem)
        self.problem = problem
        self.fix = fix


def checkpoint_problem(path: Path | str) -> str | None:
    """Why ``path`` cannot be a checkpoint radfusion train wrote, or None: it is missing,
    or it is not a zip archive (what torch.save writes) — a CSV, an ONNX file or a
    truncated download is named here, before torch tries to unpickle it."""
    if not Path(path).is_file():
        return "no such file"
    if not zipfile.is_zipfile(path):
        return "not a checkpoint (a .ckpt radfusion train wrote is a zip archive; this file is not)"
    return None


def writable(flag: str, path: Path | str, folder: bool = True) -> None:
    """``path`` (a folder to write into, or a file to write when ``folder`` is False)
    can be written: its nearest existing folder is writable (a read-only mount, a folder
    of another user). Checked before any work, so minutes of it are not lost."""
    target = Path(path).absolute() if folder else Path(path).absolute().parent
    existing = next(p for p in (target, *target.parents) if p.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(
            f"{flag} {path}: cannot write there ({existing} is read-only or not yours)",
            "give a folder you can write to",
        )


class RadfusionInputError(ValueError):
    """Bad input: the caller can fix it. Never a crash of the batch or the server."""

    kind = "bad_input"
    http_status = 400
    # True when the same input may succeed later (an upstream outage, a full server):
    # the scorer retries such rows on resume, an HTTP client may retry the request.
    retryable = False

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message

    def to_dict(self) -> dict[str, str]:
        return {"error": self.kind, "detail": self.message}


class CorruptDicomError(RadfusionInputError):
    """A file is not readable DICOM (truncated, not DICOM at all, broken header)."""

    kind = "corrupt_dicom"


class NoImageSeriesError(RadfusionInputError):
    """The study holds no series the model can use (no image series, or every series rejected)."""

    kind = "no_image_series"
    http_status = 422


class MultipleStudiesError(RadfusionInputError):
    """The files sent as one study belong to several studies (StudyInstanceUID): send one study at a time."""

    kind = "multiple_studies"
    http_status = 422


class WrongModalityError(RadfusionInputError):
    """The study's modality is not one the model accepts."""

    kind = "wrong_modality"
    http_status = 422


class GeometryError(RadfusionInputError):
    """The chosen series' geometry (spacing, orientation, gaps) cannot be repaired safely."""

    kind = "geometry_rejected"
    http_status = 422


class UnsupportedPixelDataError(RadfusionInputError):
    """The pixel data uses an encoding or layout this installation cannot decode."""

    kind = "unsupported_pixel_data"
    http_status = 422


class GenePanelError(RadfusionInputError):
    """The genomics do not match the model's gene panel."""

    kind = "gene_panel_mismatch"
    http_status = 422


class ClinicalInputError(RadfusionInputError):
    """Clinical covariates are missing, of the wrong type or out of range."""

    kind = "clinical_invalid"
    http_status = 422


class OmicsFormatError(RadfusionInputError):
    """An omics file (expression matrix, VCF, MAF, SEG, gene annotation, sample map)
    that cannot be read as declared: the message names the file's problem."""

    kind = "omics_format"
    http_status = 422


class NoModalityError(RadfusionInputError):
    """The case carries no modality the model could predict from."""

    kind = "no_modality"
    http_status = 422


class InvalidValueError(RadfusionInputError):
    """A number the model would use is not finite, or not representable once converted
    to the model's float32 (a genomic value of 1e39, a covariate of inf, a RescaleSlope
    of 0): the message names the feature or header element."""

    kind = "invalid_value"
    http_status = 422


class StudyOverBudgetError(RadfusionInputError):
    """Reading the study would cost more than its budget (voxels after resampling,
    decoded bytes, files or seconds); refused before the work is done."""

    kind = "study_over_budget"
    http_status = 413


class UploadTooLargeError(RadfusionInputError):
    """The study (request body, upload, archive study or DICOMweb retrieval) is larger
    than the size or file-count limit."""

    kind = "upload_too_large"
    http_status = 413


class ZipBombError(UploadTooLargeError):
    """A zip member that declares far more bytes than it holds compressed (a zip bomb):
    refused from its header, before anything is inflated."""

    kind = "zip_bomb"


class UnprocessableStudyError(RadfusionInputError):
    """The study's files broke the reader in a way it does not name (a malformed file
    it did not anticipate); the message says which file. Still the input's fault as far
    as the caller can act on it."""

    kind = "unprocessable_study"
    http_status = 422


# Library exceptions a hostile or damaged file provokes while it is parsed or decoded,
# with what each says about the file. Anything else is "unprocessable".
_CORRUPTION = (
    (InvalidDicomError, "not DICOM (no valid preamble or header)"),
    (RecursionError, "elements nested too deeply"),
    (NotImplementedError, "an unknown value representation or encoding"),
    (zlib.error, "deflated data that cannot be inflated"),
    (struct.error, "a truncated or malformed element"),
    (EOFError, "truncated"),
    (UnicodeError, "text that cannot be decoded"),
    (OverflowError, "a value out of range"),
    (ZeroDivisionError, "a zero where a divisor is needed"),
    (zipfile.BadZipFile, "a broken zip member"),
    (OSError, "unreadable"),
    (KeyError, "a required element missing"),
    (IndexError, "an element with too few values"),
    (AttributeError, "a required element missing or of the wrong type"),
    (TypeError, "an element of the wrong type"),
    (ValueError, "an invalid value"),
)


# What reading a damaged or hostile file raises: the library exceptions input_error
# names, and ours (a file over its byte bound).
READ_ERRORS: tuple[type[BaseException], ...] = (RadfusionInputError, *(cls for cls, _ in _CORRUPTION))


def input_error(exc: BaseException, where: str = "study") -> RadfusionInputError:
    """The one mapping from an exception raised while reading ``where`` (e.g. "file 3
    of 25") to a specific kind. The exception's message is never quoted: library
    messages can carry header values (names, IDs) and paths."""
    exc = _underlying(exc)
    if isinstance(exc, RadfusionInputError):
        return exc
    if isinstance(exc, MemoryError):
        return StudyOverBudgetError(f"{where}: reading it ran out of memory")
    for cls, meaning in _CORRUPTION:
        if isinstance(exc, cls):
            return CorruptDicomError(f"{where}: {meaning} ({_name(exc)})")
    return UnprocessableStudyError(f"{where}: could not be read ({_name(exc)})")


def _underlying(exc: BaseException) -> BaseException:
    """The exception that says what was wrong: pydicom reports a RecursionError (a
    sequence nested thousands deep) as the OSError it raised while handling it, and
    budget errors may surface wrapped by a library."""
    seen: BaseException | None = exc
    for _ in range(8):
        if seen is None:
            break
        if isinstance(seen, (RecursionError, MemoryError, RadfusionInputError)):
            return seen
        seen = seen.__cause__ or seen.__context__
    return exc


def _name(exc: BaseException) -> str:
    """``zlib.error`` rather than zlib's bare ``error``."""
    name = type(exc).__name__
    return f"{type(exc).__module__}.{name}" if name == "error" else name


@dataclass(frozen=True)
class ErrorKind:
    """One row of the catalogue."""

    kind: str
    http_status: int
    retryable: bool
    meaning: str
    cls: type[RadfusionInputError]


def error_classes(root: type[RadfusionInputError] = RadfusionInputError) -> list[type[RadfusionInputError]]:
    """``root`` and every subclass of it imported so far, depth first."""
    found = [root]
    for sub in root.__subclasses__():
        found += error_classes(sub)
    return found


def _meaning(cls: type) -> str:
    doc = cls.__doc__ if "__doc__" in vars(cls) else None
    return " ".join((inspect.cleandoc(doc) if doc else "").split())


def error_catalogue(classes: Iterable[type[RadfusionInputError]] | None = None) -> list[ErrorKind]:
    """One entry per kind, sorted by kind. A subclass that keeps its parent's kind is
    the same failure and is not listed again."""
    entries: dict[str, ErrorKind] = {}
    for cls in error_classes() if classes is None else classes:
        if cls.kind not in entries:
            entries[cls.kind] = ErrorKind(cls.kind, cls.http_status, cls.retryable, _meaning(cls), cls)
    return sorted(entries.values(), key=lambda e: e.kind)


def markdown_table(entries: Iterable[ErrorKind]) -> str:
    lines = [
        "# Error kinds",
        "",
        "Generated from the error classes by `radfusion errors --markdown`; do not edit.",
        "The same kind appears in the HTTP body (`error`), the scorer's error rows",
        "(`<kind>: <reason>`) and the listener's logs. Retryable: the same input may succeed later.",
        "",
        "| kind | HTTP status | retryable | meaning |",
        "|---|---|---|---|",
    ]
    for e in entries:
        retryable = "yes" if e.retryable else "no"
        lines.append(f"| `{e.kind}` | {e.http_status} | {retryable} | {e.meaning.replace('|', '/')} |")
    return "\n".join(lines) + "\n"
