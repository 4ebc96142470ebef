"""Build a volume in HU (or scanner units for MR) from the instances of one series:
single-frame slices or one multi-frame Enhanced CT/MR image.

Files are read and decoded on a small thread pool, so file reads and the compiled
decoders' work overlap (the speed claim lives in bench/ingest.py). Slices are stacked
by radfusion.dicom.geometry: ordered along the slice normal, duplicates, gantry tilt
and gaps repaired within the policy's limits and recorded, anything else rejected
with a specific error. Mixed orientations, sizes or pixel spacings are always
rejected."""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom

from radfusion.dicom.discover import UNREADABLE_DICOM_ERRORS
from radfusion.dicom.geometry import GeometryPolicy, stack_slices
from radfusion.dicom.pixels import physical_values
from radfusion.dicom.sources import read_dataset
from radfusion.errors import CorruptDicomError, GeometryError, UnsupportedPixelDataError

ORIENTATION_TOLERANCE = 1e-3
# Threads reading one series; a few are enough to overlap file reads and decoding.
READ_THREADS = min(4, os.cpu_count() or 1)
# Below this many files a pool costs more than it saves.
_MIN_FILES_FOR_THREADS = 8


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
    # Geometry repairs made while stacking (dropped duplicates, tilt, gaps), in words.
    corrections: list[str] = field(default_factory=list)

    @property
    def affine(self) -> np.ndarray:
        """4x4 voxel index (slice, row, col, 1) -> patient position (x, y, z, 1), LPS."""
        affine = np.eye(4)
        affine[:3, :3] = self.direction * np.asarray(self.spacing)[None, :]
        affine[:3, 3] = self.origin
        return affine

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.voxels.shape)

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
            corrections=list(self.corrections),
        )


def load_volume(paths: Sequence[Path | str], policy: GeometryPolicy | None = None) -> Volume:
    """Read, decode and stack the instances of one series."""
    if not paths:
        raise GeometryError("series has no instances")
    policy = policy or GeometryPolicy()
    slices = _read_all([Path(p) for p in paths])
    n_frames = [_number_of_frames(ds) for ds, _ in slices]
    if len(slices) == 1 and (n_frames[0] > 1 or "PerFrameFunctionalGroupsSequence" in slices[0][0]):
        return _multiframe_volume(*slices[0], policy)
    if max(n_frames) > 1:
        raise UnsupportedPixelDataError("series of several multi-frame instances cannot be stacked")
    return _stack_single_frames(slices, policy)


def _read_all(paths: list[Path]) -> list[tuple[pydicom.Dataset, np.ndarray]]:
    if len(paths) < _MIN_FILES_FOR_THREADS or READ_THREADS < 2:
        return [_read_and_decode(p) for p in paths]
    with ThreadPoolExecutor(READ_THREADS) as pool:
        return list(pool.map(_read_and_decode, paths))


def _read_and_decode(path: Path) -> tuple[pydicom.Dataset, np.ndarray]:
    """The header (pixel data dropped once decoded, to halve peak memory) and values."""
    ds = _read(path)
    _number_of_frames(ds)  # a malformed frame count is a corrupt file, before decoding
    values = physical_values(ds)
    for keyword in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"):
        if keyword in ds:
            delattr(ds, keyword)
    return ds, values


def _number_of_frames(ds: pydicom.Dataset) -> int:
    try:
        return int(ds.get("NumberOfFrames", 1) or 1)
    except (TypeError, ValueError) as exc:
        raise CorruptDicomError("invalid NumberOfFrames") from exc


def _read(path: Path) -> pydicom.Dataset:
    try:
        ds = read_dataset(path)
    except UNREADABLE_DICOM_ERRORS as exc:
        raise CorruptDicomError(f"unreadable DICOM file ({type(exc).__name__})") from exc
    if "PixelData" not in ds and "FloatPixelData" not in ds:
        raise CorruptDicomError("instance has no pixel data")
    return ds


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


def _stack_single_frames(slices: list[tuple[pydicom.Dataset, np.ndarray]], policy: GeometryPolicy) -> Volume:
    datasets = [ds for ds, _ in slices]
    first = datasets[0]
    row_dir, col_dir = _orientation(first)
    pixel_spacing = _pixel_spacing(first)
    shape = (int(first.Rows), int(first.Columns))
    for ds in datasets[1:]:
        r, c = _orientation(ds)
        if not (
            np.allclose(r, row_dir, atol=ORIENTATION_TOLERANCE) and np.allclose(c, col_dir, atol=ORIENTATION_TOLERANCE)
        ):
            raise GeometryError("mixed slice orientations in one series")
        if (int(ds.Rows), int(ds.Columns)) != shape:
            raise GeometryError("slices of different sizes in one series")
        if not np.allclose(_pixel_spacing(ds), pixel_spacing, rtol=1e-3):
            raise GeometryError("slices with different PixelSpacing in one series")
    positions = np.array([_position(ds) for ds in datasets])
    stack = stack_slices(
        [v for _, v in slices],
        positions,
        row_dir,
        col_dir,
        pixel_spacing,
        policy,
        single_slice_spacing=_nominal_spacing(first),
    )
    return Volume(
        voxels=stack.voxels,
        spacing=(stack.slice_spacing, pixel_spacing[0], pixel_spacing[1]),
        origin=tuple(float(v) for v in stack.origin),  # type: ignore[arg-type]
        direction=np.stack([np.cross(row_dir, col_dir), col_dir, row_dir], axis=1),  # axes (slice, row, col)
        modality=str(first.get("Modality", "")),
        sop_uids=[str(datasets[i].get("SOPInstanceUID", "")) for i in stack.kept],
        corrections=stack.corrections,
    )


def _nominal_spacing(ds: pydicom.Dataset) -> float:
    """Slice spacing of a lone slice, which has no neighbour to measure it from."""
    return float(ds.get("SpacingBetweenSlices") or ds.get("SliceThickness") or 1.0)


def _position(ds: pydicom.Dataset) -> np.ndarray:
    ipp = ds.get("ImagePositionPatient")
    if ipp is None or len(ipp) != 3:
        raise GeometryError("missing ImagePositionPatient")
    return np.asarray(ipp, dtype=float)


def _multiframe_volume(ds: pydicom.Dataset, frames: np.ndarray, policy: GeometryPolicy) -> Volume:
    """Enhanced CT/MR: per-frame positions come from the functional groups."""
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    shared = ds.get("SharedFunctionalGroupsSequence")
    if not per_frame or not shared:
        raise UnsupportedPixelDataError("multi-frame image without functional groups has no slice geometry")
    try:
        plane = (
            shared[0].PlaneOrientationSequence[0]
            if "PlaneOrientationSequence" in shared[0]
            else per_frame[0].PlaneOrientationSequence[0]
        )
        measures = (
            shared[0].PixelMeasuresSequence[0]
            if "PixelMeasuresSequence" in shared[0]
            else per_frame[0].PixelMeasuresSequence[0]
        )
        positions = np.array([f.PlanePositionSequence[0].ImagePositionPatient for f in per_frame], dtype=float)
    except (AttributeError, IndexError, KeyError, TypeError, ValueError) as exc:
        raise GeometryError("multi-frame image lacks plane position/orientation") from exc
    frames = frames.reshape(-1, *frames.shape[-2:])  # a one-frame image decodes as 2-D
    if len(positions) != len(frames):
        raise GeometryError(f"{len(frames)} frames but {len(positions)} per-frame positions")
    row_dir, col_dir = _orientation(plane)
    pixel_spacing = _pixel_spacing(measures)
    stack = stack_slices(
        frames, positions, row_dir, col_dir, pixel_spacing, policy, single_slice_spacing=_nominal_spacing(measures)
    )
    return Volume(
        voxels=np.ascontiguousarray(stack.voxels),
        spacing=(stack.slice_spacing, pixel_spacing[0], pixel_spacing[1]),
        origin=tuple(float(v) for v in stack.origin),  # type: ignore[arg-type]
        direction=np.stack([np.cross(row_dir, col_dir), col_dir, row_dir], axis=1),
        modality=str(ds.get("Modality", "")),
        sop_uids=[str(ds.get("SOPInstanceUID", ""))],
        corrections=stack.corrections,
    )
