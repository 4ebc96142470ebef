"""Hand-built DICOM series with a known ground truth: a voxel grid G cut along any
acquisition plane into CT slices (or an enhanced multi-frame CT), so readers can be
checked against what was written."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import (
    CTImageStorage,
    EnhancedCTImageStorage,
    ExplicitVRLittleEndian,
    MRImageStorage,
    generate_uid,
)

AXIAL = ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0))  # normal +z

AXIAL_REVERSED = ((1.0, 0.0, 0.0), (0.0, -1.0, 0.0))  # normal -z, rows run posterior->anterior

SAGITTAL = ((0.0, 1.0, 0.0), (0.0, 0.0, -1.0))  # normal -x, rows head to feet

CORONAL = ((1.0, 0.0, 0.0), (0.0, 0.0, -1.0))  # normal +y, rows head to feet

SPACING_ZYX = (5.0, 2.0, 3.0)  # mm between voxels of G along z, y, x

ORIGIN_XYZ = (-40.0, 25.0, -120.0)  # patient position of G[0, 0, 0]


def ground_truth(shape: tuple[int, int, int] = (6, 5, 4)) -> np.ndarray:
    """HU values on the patient grid, all distinct and within a CT range."""
    return (np.arange(np.prod(shape), dtype=np.int16).reshape(shape) * 7 - 400).astype(np.int16)


def _axis_and_sign(v: tuple[float, float, float]) -> tuple[int, int]:
    axis = int(np.argmax(np.abs(v)))
    return axis, int(np.sign(v[axis]))


def cut_slices(G: np.ndarray, row_dir, col_dir) -> tuple[np.ndarray, np.ndarray, tuple[float, float]]:
    """Slices of G acquired with the given ImageOrientationPatient (axis-aligned).

    Returns pixels (slice, row, col), the ImagePositionPatient of each slice and
    PixelSpacing (between rows, between columns)."""
    normal = tuple(np.cross(row_dir, col_dir))
    zyx_coords = np.stack(
        np.meshgrid(*[np.arange(n) * s for n, s in zip(G.shape, SPACING_ZYX, strict=True)], indexing="ij")
    )
    xyz = np.stack([zyx_coords[2], zyx_coords[1], zyx_coords[0]]) + np.reshape(ORIGIN_XYZ, (3, 1, 1, 1))
    # array axis of G for each patient axis x, y, z is 2, 1, 0
    order, flips = [], []
    for v in (normal, col_dir, row_dir):  # slice, row, col
        axis, sign = _axis_and_sign(v)
        order.append(2 - axis)
        flips.append(sign < 0)
    pixels = np.transpose(G, order)
    coords = np.transpose(xyz, [0, *(o + 1 for o in order)])
    for k, flip in enumerate(flips):
        if flip:
            pixels = np.flip(pixels, k)
            coords = np.flip(coords, k + 1)
    positions = coords[:, :, 0, 0].T
    spacing = (SPACING_ZYX[order[1]], SPACING_ZYX[order[2]])
    return np.ascontiguousarray(pixels), positions, spacing


def ct_slice(
    hu: np.ndarray,
    position,
    orientation=AXIAL,
    pixel_spacing=(2.0, 3.0),
    *,
    study_uid: str,
    series_uid: str,
    number: int,
    modality: str = "CT",
    image_type=("ORIGINAL", "PRIMARY", "AXIAL"),
    signed: bool = True,
    intercept: float | None = None,
) -> Dataset:
    """One single-frame CT/MR image; HU are stored with the given signedness."""
    if intercept is None:
        intercept = 0.0 if signed else -1024.0
    stored = np.rint(np.asarray(hu, dtype=np.float64) - intercept)
    stored = stored.astype(np.int16 if signed else np.uint16)
    sop_class = CTImageStorage if modality == "CT" else MRImageStorage
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.FrameOfReferenceUID = generate_uid()
    ds.PatientID = "TEST0001"
    ds.Modality = modality
    ds.SeriesNumber = 1
    ds.InstanceNumber = number
    ds.ImageType = list(image_type)
    ds.ImagePositionPatient = [float(v) for v in position]
    ds.ImageOrientationPatient = [float(v) for v in (*orientation[0], *orientation[1])]
    ds.PixelSpacing = [float(v) for v in pixel_spacing]
    ds.SliceThickness = 5.0
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = stored.shape
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1 if signed else 0
    ds.RescaleIntercept = intercept
    ds.RescaleSlope = 1.0
    ds.PixelData = stored.tobytes()
    return ds


def write_series(
    folder: Path,
    G: np.ndarray,
    orientation=AXIAL,
    *,
    study_uid: str | None = None,
    rng: np.random.Generator | None = None,
    **kwargs,
) -> tuple[list[Path], str]:
    """Write G as a series in ``orientation``: files written in shuffled order under
    random hexadecimal names. Returns (paths, series uid)."""
    rng = rng or np.random.default_rng(0)
    study_uid = study_uid or generate_uid()
    series_uid = generate_uid()
    pixels, positions, spacing = cut_slices(G, *orientation)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for k in rng.permutation(len(pixels)):
        ds = ct_slice(
            pixels[k],
            positions[k],
            orientation,
            spacing,
            study_uid=study_uid,
            series_uid=series_uid,
            number=int(k) + 1,
            **kwargs,
        )
        path = folder / f"{rng.integers(16**8):08x}"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths, series_uid


def enhanced_ct(
    hu: np.ndarray,
    positions: np.ndarray,
    *,
    functional_groups: bool = True,
    modality: str = "CT",
    per_frame_intercepts: list[float] | None = None,
) -> Dataset:
    """An Enhanced CT-like multi-frame image: geometry and rescale in functional groups
    (one shared rescale, or one per frame when ``per_frame_intercepts`` is given)."""
    intercepts = np.asarray(per_frame_intercepts if per_frame_intercepts is not None else [-1024.0] * len(hu))
    stored = (hu - intercepts[:, None, None]).astype(np.uint16)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = EnhancedCTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = EnhancedCTImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = modality
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL", "NONE"]
    ds.NumberOfFrames = len(hu)
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = hu.shape[1:]
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.PixelData = stored.tobytes()
    if functional_groups:
        plane = Dataset()
        plane.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        measures = Dataset()
        measures.PixelSpacing = [2.0, 3.0]
        measures.SliceThickness = 5.0
        shared = Dataset()
        shared.PlaneOrientationSequence = Sequence([plane])
        shared.PixelMeasuresSequence = Sequence([measures])
        if per_frame_intercepts is None:
            shared.PixelValueTransformationSequence = Sequence([_rescale(-1024.0)])
        ds.SharedFunctionalGroupsSequence = Sequence([shared])
        frames = []
        for position, intercept in zip(positions, intercepts, strict=True):
            item, pos = Dataset(), Dataset()
            pos.ImagePositionPatient = [float(v) for v in position]
            item.PlanePositionSequence = Sequence([pos])
            if per_frame_intercepts is not None:
                item.PixelValueTransformationSequence = Sequence([_rescale(float(intercept))])
            frames.append(item)
        ds.PerFrameFunctionalGroupsSequence = Sequence(frames)
    return ds


def _rescale(intercept: float) -> Dataset:
    transform = Dataset()
    transform.RescaleIntercept = intercept
    transform.RescaleSlope = 1.0
    transform.RescaleType = "HU"
    return transform


# The reader's note for write_axial_series with one slice left out.
GAP_NOTE = "slice steps 5.00-10.00 mm resampled onto a uniform 5.00 mm grid (9 -> 10 slices)"


def write_axial_series(
    folder: Path, study_uid: str, number: int, n_slices: int, keep=None, image_type=("ORIGINAL", "PRIMARY", "AXIAL")
) -> None:
    pixels, positions, _ = cut_slices(ground_truth((n_slices, 5, 4)), *AXIAL)
    keep = list(range(n_slices)) if keep is None else keep
    series_uid = generate_uid()
    folder.mkdir(parents=True, exist_ok=True)
    for i in keep:
        ds = ct_slice(
            pixels[i], positions[i], study_uid=study_uid, series_uid=series_uid, number=i + 1, image_type=image_type
        )
        ds.SeriesNumber = number
        ds.save_as(folder / f"{number:02d}-{i:03d}.dcm", enforce_file_format=True)


def input_outcome(run) -> str:
    """``"<kind>: <message>"`` of the RadfusionInputError ``run()`` raises, or "read"."""
    from radfusion.errors import RadfusionInputError

    try:
        run()
    except RadfusionInputError as exc:
        return f"{exc.kind}: {exc.message}"
    return "read"


def fresh_copy(study, folder: Path):
    """A copy of a discovered study (radfusion.dicom.StudyFiles) under new Study, Series
    and SOP Instance UIDs, written to ``folder``, discovered again: a test that sends it to
    the session's shared PACS finds there only what it sent itself."""
    import pydicom

    from radfusion.dicom import find_studies

    study_uid = generate_uid()
    series_uids: dict[str, str] = {}
    folder.mkdir(parents=True, exist_ok=True)
    for i, header in enumerate(study.instances):
        ds = pydicom.dcmread(header.path)
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uids.setdefault(str(ds.SeriesInstanceUID), generate_uid())
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.save_as(folder / f"{i:04d}.dcm", enforce_file_format=True)
    (copy,) = find_studies(folder).studies.values()
    return copy


def main_series(root: Path) -> dict[str, list[pydicom.Dataset]]:
    """Main series by patient, sorted along z (the localizer left out)."""
    series: dict[str, list[pydicom.Dataset]] = defaultdict(list)
    for path in (root / "dicom").rglob("*.dcm"):
        ds = pydicom.dcmread(path)
        if "LOCALIZER" not in ds.ImageType:
            series[ds.PatientID].append(ds)
    return {pid: sorted(s, key=lambda d: float(d.ImagePositionPatient[2])) for pid, s in series.items()}
