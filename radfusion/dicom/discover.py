"""Find DICOM studies in a folder tree, zip archives or DICOMDIR media whatever the
file names: headers are read (without pixel data) and instances grouped by
StudyInstanceUID. Files that are not DICOM and DICOM objects without an image (SR,
presentation states, key object selections) are skipped with a recorded reason.

Discovery survives any byte sequence: whatever a file makes the parser raise (an
unknown VR, sequences nested thousands deep, a deflated body that does not inflate, a
truncated element), the file is skipped with a reason from radfusion.errors.input_error,
never the library's message. Header values that do not parse are skipped too when the
reader needs them (Rows, Columns, NumberOfFrames) and treated as absent when they only
inform the choice of series (SeriesNumber, SliceThickness, ImageOrientationPatient).

A reader that goes on to decode the chosen series (radfusion.study) asks read_headers to
``keep`` the datasets: each plain file is then read once, whole, values longer than
64 KiB (the pixel data of a real-size slice among them) left in the file until they are
used, and the volume reader takes the kept dataset instead of parsing the file again. A
file that whole read does not survive is read as before (its header only), so what is
found and skipped is the same either way, and the volume reader meets the failure itself."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
from pydicom.dataelem import RawDataElement, convert_raw_data_element
from pydicom.errors import InvalidDicomError
from pydicom.tag import Tag
from pydicom.uid import UID

from radfusion.dicom.sources import list_inputs, read_dataset, read_plain_dataset
from radfusion.errors import CorruptDicomError, RadfusionInputError, input_error
from radfusion.limits import StudyClock

# Tags needed to group and choose series; reading stops at pixel data anyway.
_HEADER_TAGS = [
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SOPInstanceUID",
    "SOPClassUID",
    "PatientID",
    "Modality",
    "SeriesDescription",
    "SeriesNumber",
    "ImageType",
    "Rows",
    "Columns",
    "NumberOfFrames",
    "SliceThickness",
    "ImageOrientationPatient",
]

# What the volume reader reads of a kept dataset besides _HEADER_TAGS (its checks, slice
# geometry and decoding).
_VOLUME_TAGS = [
    "ImagePositionPatient",
    "PixelSpacing",
    "RescaleSlope",
    "RescaleIntercept",
    "BitsAllocated",
    "BitsStored",
    "PixelRepresentation",
    "SamplesPerPixel",
    "PhotometricInterpretation",
]
_KEPT_TAGS = tuple(Tag(keyword) for keyword in (*_HEADER_TAGS, *_VOLUME_TAGS))

# Reason prefix recorded for files that cannot be read as DICOM.
UNREADABLE = "not a readable DICOM file"

# Reason recorded for DICOM objects that hold no image (SR, presentation states, ...).
NOT_AN_IMAGE = "DICOM object without an image"

# Storage classes that never carry a diagnostic volume (secondary capture and friends).
SECONDARY_CAPTURE_PREFIX = "1.2.840.10008.5.1.4.1.1.7"

log = logging.getLogger(__name__)
PROGRESS_FILES = 2000  # header reads between two progress lines


@dataclass(frozen=True)
class InstanceHeader:
    path: Path
    study_uid: str
    series_uid: str
    sop_uid: str
    sop_class_uid: str
    patient_id: str
    modality: str
    series_description: str
    series_number: int | None
    image_type: tuple[str, ...]
    rows: int
    cols: int
    n_frames: int
    slice_thickness: float | None
    orientation: tuple[float, ...] | None
    # Elements present but malformed, read as absent (they only inform the choice).
    malformed: tuple[str, ...] = ()

    @property
    def has_image(self) -> bool:
        return self.rows > 0 and self.cols > 0

    @property
    def is_image_class(self) -> bool:
        """Its SOP class stores images (CT Image Storage, ...), whatever its header says."""
        return bool(self.sop_class_uid) and "Image Storage" in UID(self.sop_class_uid).name


@dataclass
class StudyFiles:
    study_uid: str
    patient_id: str
    instances: list[InstanceHeader] = field(default_factory=list)


@dataclass
class Discovery:
    studies: dict[str, StudyFiles]
    skipped: list[tuple[Path, str]]


def read_header(path: Path) -> InstanceHeader:
    """Read the header of one file; raises InvalidDicomError for non-DICOM files and
    CorruptDicomError for a size or frame count that does not parse."""
    ds = read_dataset(path, stop_before_pixels=True, specific_tags=_HEADER_TAGS, defer_size=_DEFER_BYTES)
    return _header_of(ds, path)


def _header_of(ds: pydicom.Dataset, path: Path) -> InstanceHeader:
    if "StudyInstanceUID" not in ds or "SeriesInstanceUID" not in ds:
        raise InvalidDicomError("no StudyInstanceUID/SeriesInstanceUID")
    malformed: list[str] = []
    return InstanceHeader(
        path=Path(path),
        study_uid=str(ds.StudyInstanceUID),
        series_uid=str(ds.SeriesInstanceUID),
        sop_uid=str(ds.get("SOPInstanceUID", "")),
        sop_class_uid=str(ds.get("SOPClassUID", "")),
        patient_id=str(ds.get("PatientID", "")),
        modality=str(ds.get("Modality", "")),
        series_description=str(ds.get("SeriesDescription", "")),
        series_number=_optional(ds, "SeriesNumber", int, malformed),
        image_type=tuple(str(v).upper() for v in _as_list(ds.get("ImageType", []))),
        rows=_count(ds, "Rows", default=0, minimum=0),
        cols=_count(ds, "Columns", default=0, minimum=0),
        n_frames=_count(ds, "NumberOfFrames", default=1, minimum=1),
        slice_thickness=_optional(ds, "SliceThickness", _positive, malformed),
        orientation=_optional(ds, "ImageOrientationPatient", _orientation, malformed),
        malformed=tuple(malformed),
    )


# Header reads never hold long values (a hostile private element of a gigabyte): pydicom
# leaves values longer than this in the file.
_DEFER_BYTES = 64 * 1024


def _count(ds, keyword: str, default: int, minimum: int) -> int:
    """A size or count the reader relies on; absent or empty gives ``default``."""
    try:
        value = ds.get(keyword)
        if value is None or value == "":
            return default
        number = int(value)
    except (TypeError, ValueError, OverflowError) as exc:
        raise CorruptDicomError(f"invalid {keyword}") from exc
    if number < minimum:
        raise CorruptDicomError(f"invalid {keyword}")
    return number


def _optional(ds, keyword: str, parse, malformed: list[str]):
    """A value that only informs the choice of series: None when absent, and None
    (its keyword noted in ``malformed``) when it does not parse."""
    try:
        value = ds.get(keyword)
        if value is None or value == "":
            return None
        return parse(value)
    except (AttributeError, KeyError, TypeError, ValueError, OverflowError, IndexError):
        malformed.append(keyword)
        return None


def _positive(value) -> float:
    number = float(value)
    if not math.isfinite(number) or number <= 0:
        raise ValueError("not a positive finite number")
    return number


def _orientation(values) -> tuple[float, ...]:
    numbers = tuple(float(v) for v in _as_list(values))
    if len(numbers) != 6 or not all(math.isfinite(v) for v in numbers):
        raise ValueError("not six finite numbers")
    return numbers


def read_headers(
    paths: list[Path], clock: StudyClock | None = None, keep: dict[Path, pydicom.Dataset] | None = None
) -> tuple[list[InstanceHeader], list[tuple[Path, str]]]:
    """Headers of the readable DICOM image instances; the others skipped with a
    reason, so one bad file never raises (the clock, when given, may: the study has
    run out of time). ``keep``: filled with the datasets of the plain files read whole,
    by path (see the module's docstring)."""
    headers: list[InstanceHeader] = []
    skipped: list[tuple[Path, str]] = []
    for i, path in enumerate(paths):
        if clock is not None:
            clock.check_time(f"header of file {i + 1} of {len(paths)}")
        try:
            header = read_header(path) if keep is None else _read_kept(Path(path), keep)
        except Exception as exc:  # noqa: BLE001 - any byte sequence: the file is skipped, never the folder
            skipped.append((Path(path), unreadable_reason(exc)))
            continue
        if header.has_image:
            headers.append(header)
        elif header.is_image_class:  # an image header cut short (truncated) or damaged
            skipped.append((Path(path), f"{UNREADABLE}: an image without Rows/Columns (truncated or damaged header)"))
        else:
            skipped.append((Path(path), f"{NOT_AN_IMAGE}: {_sop_class_name(header)}"))
    return headers, skipped


def _read_kept(path: Path, keep: dict[Path, pydicom.Dataset]) -> InstanceHeader:
    """The header of one file from a whole read whose dataset is kept; read_header's
    read when the file is not a plain one (a zip member or a deflated body, read whole
    only when decoded) or does not survive the whole read."""
    try:
        ds = read_plain_dataset(path, defer_size=_DEFER_BYTES)
        if ds is not None:
            _convert_at_once(ds)
            header = _header_of(ds, path)
            keep[path] = ds
            return header
    except Exception:  # noqa: BLE001 - read_header below reads the file as it always has, and says why
        pass
    return read_header(path)


def _convert_at_once(ds: pydicom.Dataset) -> None:
    """The values every read of a kept dataset uses (_KEPT_TAGS), converted from the raw
    bytes in one go, as Dataset.__getitem__ converts each on its first use (which also
    looks up the character set again each time). A value
    that does not convert is left raw: its first use raises as it always has."""
    encoding = ds.original_character_set
    for tag in _KEPT_TAGS:
        raw = ds.get_item(tag, keep_deferred=True)
        if not isinstance(raw, RawDataElement) or (raw.value is None and raw.length) or raw.VR == "SQ":
            continue  # absent, converted already, left in the file, or not what it should be
        try:
            ds[tag] = convert_raw_data_element(raw, encoding=encoding, ds=ds)
        except Exception:  # noqa: BLE001 - see the docstring
            continue


def unreadable_reason(exc: BaseException) -> str:
    """Why a file was skipped, in the words of radfusion.errors.input_error (the type
    of the library's exception, never its message: it can quote values and paths)."""
    if isinstance(exc, InvalidDicomError):
        return f"{UNREADABLE}: InvalidDicomError"  # not DICOM at all: nothing more to say
    if isinstance(exc, RadfusionInputError):
        return f"{UNREADABLE}: {exc.message}"
    return input_error(exc, UNREADABLE).message


def _sop_class_name(header: InstanceHeader) -> str:
    """'Comprehensive SR Storage (SR)': what the object is, never who it is about."""
    uid = UID(header.sop_class_uid) if header.sop_class_uid else None
    name = uid.name if uid is not None else "no SOPClassUID"
    return f"{name} ({header.modality or 'no modality'})"


def find_studies(root: Path | str) -> Discovery:
    """Walk ``root`` (folders, zip archives, DICOMDIR) and group every readable DICOM
    image instance by study. Files are visited in sorted order so the result is
    deterministic."""
    files, skipped = list_inputs(Path(root))
    headers: list[InstanceHeader] = []
    # In parts, so a large archive shows progress (minutes of header reads otherwise silent).
    for start in range(0, len(files), PROGRESS_FILES):
        part_headers, part_skipped = read_headers(files[start : start + PROGRESS_FILES])
        headers += part_headers
        skipped += part_skipped
        if len(files) > PROGRESS_FILES:
            log.info("DICOM headers: %d of %d files read", min(start + PROGRESS_FILES, len(files)), len(files))
    studies: dict[str, StudyFiles] = {}
    for header in headers:
        study = studies.setdefault(header.study_uid, StudyFiles(header.study_uid, header.patient_id))
        study.instances.append(header)
    return Discovery(studies=studies, skipped=skipped)


def iter_files(root: Path) -> list[Path]:
    """Candidate instance paths under ``root`` (zip members as virtual paths)."""
    return list_inputs(root)[0]


def _as_list(value) -> list:
    """A multi-valued element (pydicom MultiValue) as a list; a single value as [value]."""
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        return [value]
    return list(value)
