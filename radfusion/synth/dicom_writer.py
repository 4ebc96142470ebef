"""Write one study (main axial series + one-slice localizer) as DICOM files.

The files are valid CT Image Storage instances (0 dciodvfy errors), written in shuffled order under
meaningless hex names, so a reader must sort slices by geometry and pick the
series by content, never by file name, order or folder.

Speed matters (400 studies x 33 files in well under a minute; a 300-slice 512 x 512
study in seconds): one Dataset per series is built once and only the per-slice
elements change between saves. Each study is stored in one transfer syntax:
uncompressed, RLE Lossless, JPEG 2000 Lossless or JPEG-LS Lossless (pydicom's
encoders: its own RLE, pylibjpeg-openjpeg, pyjpegls).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, CTImageStorage, ExplicitVRLittleEndian

from radfusion.synth.study_spec import LAYOUT_BUCKETS, LAYOUT_BY_SERIES, UNCOMPRESSED, StudySpec

MAIN_SERIES_NUMBER = 2
LOCALIZER_SERIES_NUMBER = 1


@dataclass(frozen=True)
class SliceGeometry:
    """Where one image sits in patient space."""

    position: tuple[float, float, float]
    orientation: tuple[float, ...]
    pixel_spacing: tuple[float, float]  # (between rows, between columns), as DICOM


def main_slice_position(spec: StudySpec, k: int) -> tuple[float, float, float]:
    """ImagePositionPatient of slice k (z increases with k)."""
    ox, oy, oz = spec.origin_mm
    return (ox, oy, round(oz + k * spec.slice_spacing_mm, 4))


def stored_values(hu: np.ndarray, spec: StudySpec) -> np.ndarray:
    """HU to stored pixel values for the study's signedness, intercept and bit depth."""
    raw = hu.astype(np.int32) - int(spec.rescale_intercept)
    dtype: type[np.integer]
    if spec.signed:
        low, high, dtype = -(2 ** (spec.bits_stored - 1)), 2 ** (spec.bits_stored - 1) - 1, np.int16
    else:
        low, high, dtype = 0, 2**spec.bits_stored - 1, np.uint16
    return np.clip(raw, low, high).astype(dtype)


def _study_dataset(spec: StudySpec) -> Dataset:
    """Patient, study, equipment and image-pixel elements shared by every file."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = CTImageStorage
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = spec.study_date
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = spec.study_time
    ds.AccessionNumber = spec.accession_number
    ds.Modality = "CT"
    ds.Manufacturer = spec.manufacturer
    ds.InstitutionName = spec.institution
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = "CT CHEST"
    ds.ManufacturerModelName = spec.model_name
    ds.PatientName = spec.patient_name
    ds.PatientID = spec.patient_id
    ds.PatientBirthDate = spec.birth_date
    ds.PatientSex = spec.patient_sex
    ds.PatientAge = spec.patient_age
    ds.BodyPartExamined = "CHEST"
    ds.KVP = spec.kvp
    ds.XRayTubeCurrent = spec.tube_current_ma
    ds.ConvolutionKernel = spec.kernel
    ds.PatientPosition = "HFS"
    ds.StudyInstanceUID = spec.study_uid
    ds.StudyID = spec.study_id
    ds.AcquisitionNumber = 1
    ds.FrameOfReferenceUID = spec.frame_of_reference_uid
    ds.PositionReferenceIndicator = ""
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = spec.bits_stored
    ds.HighBit = spec.bits_stored - 1
    ds.PixelRepresentation = 1 if spec.signed else 0
    ds.RescaleIntercept = spec.rescale_intercept
    ds.RescaleSlope = 1
    ds.RescaleType = "HU"
    return ds


def _series_dataset(spec: StudySpec, *, localizer: bool) -> Dataset:
    ds = _study_dataset(spec)
    if localizer:
        ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
        ds.SeriesDescription = spec.localizer_description
        ds.SeriesInstanceUID = spec.localizer_series_uid
        ds.SeriesNumber = LOCALIZER_SERIES_NUMBER
        # Type 2 in the Image Plane module: present, and empty for a projection scout.
        ds.SliceThickness = None
        ds.WindowCenter, ds.WindowWidth = -500, 1500
    else:
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.SeriesDescription = spec.series_description
        ds.SeriesInstanceUID = spec.main_series_uid
        ds.SeriesNumber = MAIN_SERIES_NUMBER
        ds.SliceThickness = spec.slice_spacing_mm
        ds.SpacingBetweenSlices = spec.slice_spacing_mm
        ds.WindowCenter, ds.WindowWidth = 40, 400
    return ds


def _set_image(
    ds: Dataset, spec: StudySpec, uid: str, number: int, geometry: SliceGeometry, pixels: np.ndarray
) -> None:
    """Per-instance elements and pixel data (compressed when the study says so)."""
    ds.SOPInstanceUID = uid
    ds.file_meta.MediaStorageSOPInstanceUID = UID(uid)
    ds.InstanceNumber = number
    ds.ImagePositionPatient = list(geometry.position)
    ds.ImageOrientationPatient = list(geometry.orientation)
    ds.PixelSpacing = list(geometry.pixel_spacing)
    if ds.SliceThickness:  # axial slices only (the localizer's is empty)
        ds.SliceLocation = geometry.position[2]
    ds.Rows, ds.Columns = pixels.shape
    if spec.compression == UNCOMPRESSED:
        ds.PixelData = pixels.tobytes()
    else:
        ds.compress(spec.transfer_syntax, pixels, generate_instance_uid=False)


def _file_paths(spec: StudySpec, n_main: int, rng: np.random.Generator) -> tuple[list[str], str]:
    """Relative paths (under dicom/) for the main slices and the localizer.

    Depth varies by layout; names are random hex and unique within the study.
    """
    used: set[str] = set()

    def fresh(n_hex: int) -> str:
        while True:
            name = "".join(rng.choice(list("0123456789abcdef"), n_hex))
            if name not in used:
                used.add(name)
                return name

    if spec.layout == LAYOUT_BY_SERIES:
        main_dir, loc_dir = f"{spec.study_dir}/{fresh(4)}", f"{spec.study_dir}/{fresh(4)}"
        main = [f"{main_dir}/{fresh(8)}.dcm" for _ in range(n_main)]
        return main, f"{loc_dir}/{fresh(8)}.dcm"
    if spec.layout == LAYOUT_BUCKETS:
        buckets = [f"{spec.study_dir}/{fresh(4)}/{fresh(4)}" for _ in range(int(rng.integers(2, 4)))]
        main = [f"{buckets[rng.integers(len(buckets))]}/{fresh(8)}.dcm" for _ in range(n_main)]
        return main, f"{buckets[rng.integers(len(buckets))]}/{fresh(8)}.dcm"
    main = [f"{spec.study_dir}/{fresh(8)}.dcm" for _ in range(n_main)]
    return main, f"{spec.study_dir}/{fresh(8)}.dcm"


def write_study(
    spec: StudySpec, hu: np.ndarray, localizer_hu: np.ndarray, dicom_root: Path, rng: np.random.Generator
) -> list[str]:
    """Write all files of the study in shuffled order; returns their relative paths."""
    main_paths, localizer_path = _file_paths(spec, spec.n_slices, rng)
    for rel in {str(Path(p).parent) for p in [*main_paths, localizer_path]}:
        (dicom_root / rel).mkdir(parents=True, exist_ok=True)

    axial = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
    spacing = (spec.pixel_spacing_mm, spec.pixel_spacing_mm)
    series = _series_dataset(spec, localizer=False)
    localizer_slot = spec.n_slices  # one more job besides the axial slices
    for job in rng.permutation(spec.n_slices + 1):
        if job == localizer_slot:
            _write_localizer(spec, localizer_hu, dicom_root / localizer_path)
            continue
        k = int(job)
        geometry = SliceGeometry(main_slice_position(spec, k), axial, spacing)
        _set_image(series, spec, spec.sop_uid("main", k + 1), k + 1, geometry, stored_values(hu[k], spec))
        series.save_as(dicom_root / main_paths[k], enforce_file_format=True)
    return [*main_paths, localizer_path]


def _write_localizer(spec: StudySpec, image_hu: np.ndarray, path: Path) -> None:
    """One coronal scout covering the scan range, superior edge at the top row."""
    ox, oy, oz = spec.origin_mm
    extent_z = spec.n_slices * spec.slice_spacing_mm
    row_spacing = round(extent_z / image_hu.shape[0], 4)
    top_z = oz + (spec.n_slices - 0.5) * spec.slice_spacing_mm - row_spacing / 2
    centre_y = oy + (spec.rows - 1) * spec.pixel_spacing_mm / 2
    geometry = SliceGeometry(
        (ox, round(centre_y, 3), round(top_z, 3)),
        (1.0, 0.0, 0.0, 0.0, 0.0, -1.0),
        (row_spacing, spec.pixel_spacing_mm),
    )
    ds = _series_dataset(spec, localizer=True)
    _set_image(ds, spec, spec.sop_uid("localizer", 1), 1, geometry, stored_values(image_hu, spec))
    ds.save_as(path, enforce_file_format=True)
