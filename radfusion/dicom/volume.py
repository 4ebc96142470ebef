"""Build a volume in HU (or scanner units for MR) from the instances of one series.

Slices are ordered by their position along the slice normal computed from
ImageOrientationPatient, never by file name or InstanceNumber. Geometry that cannot
be trusted (mixed orientations or sizes, duplicate positions, gaps, gantry tilt) is
rejected with a specific error rather than silently producing a distorted volume."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.pixels import apply_modality_lut

from radfusion.dicom.discover import UNREADABLE_DICOM_ERRORS
from radfusion.errors import CorruptDicomError, GeometryError, UnsupportedPixelDataError

# Relative tolerance on slice spacing before the series counts as having gaps.
SPACING_TOLERANCE = 0.1
ORIENTATION_TOLERANCE = 1e-3


@dataclass
class Volume:
    """Voxel values with their geometry. Axis order (slice, row, col)."""

    voxels: np.ndarray  # float32, HU for CT
    spacing: tuple[float, float, float]  # mm along (slice, row, col)
    origin: tuple[float, float, float]  # patient position of voxel (0, 0, 0)
    # Columns are the patient-space directions of the (slice, row, col) axes.
    direction: np.ndarray
    modality: str
    sop_uids: list[str]

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.voxels.shape)  # type: ignore[return-value]

    def canonical(self) -> Volume:
        """Reorient to (z, y, x) patient axes with increasing coordinates, so axial,
        coronal and sagittal acquisitions reach the model the same way round."""
        dominant = np.argmax(np.abs(self.direction), axis=0)  # patient axis of each array axis
        if len(set(dominant.tolist())) != 3:
            raise GeometryError("oblique orientation cannot be mapped to patient axes")
        # Patient axis 2 (z) first, then y, then x.
        order = [int(np.where(dominant == p)[0][0]) for p in (2, 1, 0)]
        voxels = np.transpose(self.voxels, order)
        direction = self.direction[:, order]
        spacing = tuple(self.spacing[i] for i in order)
        origin = np.asarray(self.origin, dtype=float)
        for axis in range(3):
            if direction[2 - axis, axis] < 0:
                voxels = np.flip(voxels, axis)
                origin = origin + direction[:, axis] * spacing[axis] * (voxels.shape[axis] - 1)
                direction[:, axis] = -direction[:, axis]
        return Volume(
            voxels=np.ascontiguousarray(voxels),
            spacing=spacing,  # type: ignore[arg-type]
            origin=tuple(float(v) for v in origin),  # type: ignore[arg-type]
            direction=direction,
            modality=self.modality,
            sop_uids=self.sop_uids,
        )


def load_volume(paths: Sequence[Path | str]) -> Volume:
    """Read, decode and stack the instances of one series."""
    if not paths:
        raise GeometryError("series has no instances")
    datasets = [_read(Path(p)) for p in paths]
    n_frames = [_number_of_frames(ds) for ds in datasets]
    if len(datasets) == 1 and n_frames[0] > 1:
        return _multiframe_volume(datasets[0])
    if max(n_frames) > 1:
        raise UnsupportedPixelDataError("series of several multi-frame instances cannot be stacked")
    return _stack_single_frames(datasets)


def _number_of_frames(ds: pydicom.Dataset) -> int:
    try:
        return int(ds.get("NumberOfFrames", 1) or 1)
    except (TypeError, ValueError) as exc:
        raise CorruptDicomError("invalid NumberOfFrames") from exc


def _read(path: Path) -> pydicom.Dataset:
    try:
        ds = pydicom.dcmread(path)
    except UNREADABLE_DICOM_ERRORS as exc:
        raise CorruptDicomError(f"unreadable DICOM file ({type(exc).__name__})") from exc
    if "PixelData" not in ds and "FloatPixelData" not in ds:
        raise CorruptDicomError("instance has no pixel data")
    return ds


def _pixels(ds: pydicom.Dataset) -> np.ndarray:
    """Decode and apply the modality LUT (RescaleSlope/Intercept) to get HU for CT."""
    try:
        raw = ds.pixel_array
    except (NotImplementedError, RuntimeError) as exc:
        # Raised by pydicom when no installed plugin can decode the transfer syntax.
        raise UnsupportedPixelDataError(
            f"cannot decode transfer syntax {ds.file_meta.TransferSyntaxUID.name}: {str(exc).splitlines()[0][:160]}"
        ) from exc
    except (ValueError, EOFError, AttributeError, KeyError, IndexError) as exc:
        raise CorruptDicomError(f"pixel data cannot be decoded ({type(exc).__name__}: {str(exc)[:160]})") from exc
    if ds.get("SamplesPerPixel", 1) != 1:
        raise UnsupportedPixelDataError(f"{ds.get('PhotometricInterpretation')} colour images are not volumes")
    values = apply_modality_lut(raw, ds).astype(np.float32)
    if ds.get("PhotometricInterpretation") == "MONOCHROME1" and ds.get("Modality") != "CT":
        # Only for non-quantitative modalities: CT's HU come from the modality LUT and
        # MONOCHROME1 only says how to display them.
        values = values.max() + values.min() - values
    if not np.all(np.isfinite(values)):
        raise CorruptDicomError("pixel data holds non-finite values")
    return values


def _orientation(ds: pydicom.Dataset) -> tuple[np.ndarray, np.ndarray]:
    iop = ds.get("ImageOrientationPatient")
    if iop is None or len(iop) != 6:
        raise GeometryError("missing ImageOrientationPatient")
    row_dir = np.asarray(iop[:3], dtype=float)
    col_dir = np.asarray(iop[3:], dtype=float)
    if abs(np.linalg.norm(row_dir) - 1) > 1e-2 or abs(np.linalg.norm(col_dir) - 1) > 1e-2:
        raise GeometryError("ImageOrientationPatient is not made of unit vectors")
    return row_dir, col_dir


def _pixel_spacing(ds: pydicom.Dataset) -> tuple[float, float]:
    spacing = ds.get("PixelSpacing") or ds.get("ImagerPixelSpacing")
    if spacing is None or len(spacing) != 2 or min(float(v) for v in spacing) <= 0:
        raise GeometryError("missing or invalid PixelSpacing")
    return float(spacing[0]), float(spacing[1])


def _stack_single_frames(datasets: list[pydicom.Dataset]) -> Volume:
    first = datasets[0]
    modality = str(first.get("Modality", ""))
    row_dir, col_dir = _orientation(first)
    pixel_spacing = _pixel_spacing(first)
    shape = (int(first.Rows), int(first.Columns))
    for ds in datasets[1:]:
        r, c = _orientation(ds)
        if not (np.allclose(r, row_dir, atol=ORIENTATION_TOLERANCE) and np.allclose(c, col_dir, atol=ORIENTATION_TOLERANCE)):
            raise GeometryError("mixed slice orientations in one series")
        if (int(ds.Rows), int(ds.Columns)) != shape:
            raise GeometryError("slices of different sizes in one series")
        if not np.allclose(_pixel_spacing(ds), pixel_spacing, rtol=1e-3):
            raise GeometryError("slices with different PixelSpacing in one series")

    normal = np.cross(row_dir, col_dir)
    positions = np.array([_position(ds) for ds in datasets])
    order = np.argsort(positions @ normal, kind="stable")
    datasets = [datasets[i] for i in order]
    positions = positions[order]
    slice_spacing = _slice_spacing(positions, normal, first)

    voxels = np.stack([_pixels(ds) for ds in datasets])
    direction = np.stack([normal, col_dir, row_dir], axis=1)  # axes (slice, row, col)
    return Volume(
        voxels=voxels,
        spacing=(slice_spacing, pixel_spacing[0], pixel_spacing[1]),
        origin=tuple(float(v) for v in positions[0]),  # type: ignore[arg-type]
        direction=direction,
        modality=modality,
        sop_uids=[str(ds.get("SOPInstanceUID", "")) for ds in datasets],
    )


def _position(ds: pydicom.Dataset) -> np.ndarray:
    ipp = ds.get("ImagePositionPatient")
    if ipp is None or len(ipp) != 3:
        raise GeometryError("missing ImagePositionPatient")
    return np.asarray(ipp, dtype=float)


def _slice_spacing(positions: np.ndarray, normal: np.ndarray, first: pydicom.Dataset) -> float:
    if len(positions) == 1:
        thickness = first.get("SpacingBetweenSlices") or first.get("SliceThickness") or 1.0
        return float(thickness)
    along = positions @ normal
    steps = np.diff(along)
    if np.any(steps < 1e-3):
        raise GeometryError("duplicate slice positions in one series")
    median = float(np.median(steps))
    if np.max(np.abs(steps - median)) > SPACING_TOLERANCE * median:
        raise GeometryError(
            f"non-uniform slice spacing ({steps.min():.2f}-{steps.max():.2f} mm): missing slices or gaps"
        )
    # Offsets between slices must lie along the normal; a sideways drift means gantry tilt.
    offsets = positions[-1] - positions[0]
    sideways = np.linalg.norm(offsets - (offsets @ normal) * normal)
    if sideways > 0.01 * np.linalg.norm(offsets) + 1e-3:
        raise GeometryError("slices are sheared (gantry tilt): positions drift off the slice normal")
    return median


def _multiframe_volume(ds: pydicom.Dataset) -> Volume:
    """Enhanced CT/MR: per-frame positions come from the functional groups."""
    frames = _pixels(ds)
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    shared = ds.get("SharedFunctionalGroupsSequence")
    if not per_frame or not shared:
        raise UnsupportedPixelDataError("multi-frame image without functional groups has no slice geometry")
    try:
        plane = shared[0].PlaneOrientationSequence[0] if "PlaneOrientationSequence" in shared[0] else per_frame[0].PlaneOrientationSequence[0]
        measures = shared[0].PixelMeasuresSequence[0] if "PixelMeasuresSequence" in shared[0] else per_frame[0].PixelMeasuresSequence[0]
        positions = np.array([f.PlanePositionSequence[0].ImagePositionPatient for f in per_frame], dtype=float)
    except (AttributeError, IndexError, KeyError) as exc:
        raise GeometryError("multi-frame image lacks plane position/orientation") from exc
    row_dir, col_dir = _orientation(plane)
    pixel_spacing = _pixel_spacing(measures)
    if "RescaleSlope" not in ds and "ModalityLUTSequence" not in ds:
        # Enhanced CT/MR keep the modality LUT in the functional groups, which
        # apply_modality_lut does not look at.
        frames = _rescale_frames(frames, shared[0], per_frame)
    normal = np.cross(row_dir, col_dir)
    order = np.argsort(positions @ normal, kind="stable")
    positions = positions[order]
    slice_spacing = _slice_spacing(positions, normal, measures)
    direction = np.stack([normal, col_dir, row_dir], axis=1)
    return Volume(
        voxels=np.ascontiguousarray(frames[order]),
        spacing=(slice_spacing, pixel_spacing[0], pixel_spacing[1]),
        origin=tuple(float(v) for v in positions[0]),  # type: ignore[arg-type]
        direction=direction,
        modality=str(ds.get("Modality", "")),
        sop_uids=[str(ds.get("SOPInstanceUID", ""))],
    )


def _rescale_frames(frames: np.ndarray, shared: pydicom.Dataset, per_frame) -> np.ndarray:
    """Apply PixelValueTransformationSequence (shared or per frame) to get HU."""
    slopes, intercepts = [], []
    for item in per_frame:
        group = item if "PixelValueTransformationSequence" in item else shared
        if "PixelValueTransformationSequence" not in group:
            return frames
        transform = group.PixelValueTransformationSequence[0]
        slopes.append(float(transform.get("RescaleSlope", 1.0) or 1.0))
        intercepts.append(float(transform.get("RescaleIntercept", 0.0) or 0.0))
    slope = np.asarray(slopes, dtype=np.float32)[:, None, None]
    intercept = np.asarray(intercepts, dtype=np.float32)[:, None, None]
    return (frames * slope + intercept).astype(np.float32)
