"""Find DICOM studies in a folder tree, zip archives or DICOMDIR media whatever the
file names: headers are read (without pixel data) and instances grouped by
StudyInstanceUID. Files that are not DICOM and DICOM objects without an image (SR,
presentation states, key object selections) are skipped with a recorded reason."""

from __future__ import annotations

import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from pydicom.errors import InvalidDicomError
from pydicom.uid import UID

from radfusion.dicom.sources import list_inputs, read_dataset

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

# What pydicom raises for a file that is not (readable) DICOM.
UNREADABLE_DICOM_ERRORS = (InvalidDicomError, EOFError, OSError, ValueError, KeyError, zipfile.BadZipFile)

# Reason recorded for DICOM objects that hold no image (SR, presentation states, ...).
NOT_AN_IMAGE = "DICOM object without an image"

# Storage classes that never carry a diagnostic volume (secondary capture and friends).
SECONDARY_CAPTURE_PREFIX = "1.2.840.10008.5.1.4.1.1.7"


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

    @property
    def has_image(self) -> bool:
        return self.rows > 0 and self.cols > 0


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
    """Read the header of one file; raises InvalidDicomError for non-DICOM files."""
    ds = read_dataset(path, stop_before_pixels=True, specific_tags=_HEADER_TAGS)
    if "StudyInstanceUID" not in ds or "SeriesInstanceUID" not in ds:
        raise InvalidDicomError("no StudyInstanceUID/SeriesInstanceUID")
    thickness = ds.get("SliceThickness")
    iop = ds.get("ImageOrientationPatient")
    number = ds.get("SeriesNumber")
    return InstanceHeader(
        path=Path(path),
        study_uid=str(ds.StudyInstanceUID),
        series_uid=str(ds.SeriesInstanceUID),
        sop_uid=str(ds.get("SOPInstanceUID", "")),
        sop_class_uid=str(ds.get("SOPClassUID", "")),
        patient_id=str(ds.get("PatientID", "")),
        modality=str(ds.get("Modality", "")),
        series_description=str(ds.get("SeriesDescription", "")),
        series_number=int(number) if number not in (None, "") else None,
        image_type=tuple(str(v).upper() for v in _as_list(ds.get("ImageType", []))),
        rows=int(ds.get("Rows", 0) or 0),
        cols=int(ds.get("Columns", 0) or 0),
        n_frames=int(ds.get("NumberOfFrames", 1) or 1),
        slice_thickness=float(thickness) if thickness not in (None, "") else None,
        orientation=tuple(float(v) for v in iop) if iop else None,
    )


def read_headers(paths: list[Path]) -> tuple[list[InstanceHeader], list[tuple[Path, str]]]:
    """Headers of the readable DICOM image instances; the others skipped with a
    reason, so one bad file never raises."""
    headers: list[InstanceHeader] = []
    skipped: list[tuple[Path, str]] = []
    for path in paths:
        try:
            header = read_header(path)
        except UNREADABLE_DICOM_ERRORS as exc:
            skipped.append((Path(path), f"not a readable DICOM file: {type(exc).__name__}"))
            continue
        if header.has_image:
            headers.append(header)
        else:
            skipped.append((Path(path), f"{NOT_AN_IMAGE}: {_sop_class_name(header)}"))
    return headers, skipped


def _sop_class_name(header: InstanceHeader) -> str:
    """'Comprehensive SR Storage (SR)': what the object is, never who it is about."""
    uid = UID(header.sop_class_uid) if header.sop_class_uid else None
    name = uid.name if uid is not None else "no SOPClassUID"
    return f"{name} ({header.modality or 'no modality'})"


def find_studies(root: Path | str) -> Discovery:
    """Walk ``root`` (folders, zip archives, DICOMDIR) and group every readable DICOM
    image instance by study. Files are visited in sorted order so the result is
    deterministic."""
    files, skipped_inputs = list_inputs(Path(root))
    headers, skipped = read_headers(files)
    skipped = skipped_inputs + skipped
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
