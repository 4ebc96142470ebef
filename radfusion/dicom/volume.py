"""Build a volume in HU (or scanner units for MR) from the instances of one series:
single-frame slices or one multi-frame Enhanced CT/MR image.

Reading runs in two passes over the files. The first reads every header (with the
stored pixel bytes) and checks its values against radfusion.limits.BOUNDS
(radfusion.dicom.checks), then the series' geometry: sizes, orientations, pixel and
slice spacing, all before a single pixel is decoded, and the decoded size against the
study's budget. The second decodes. Both run on a small thread pool, so file reads
and the compiled decoders' work overlap (the speed claim lives in bench/ingest.py).

A file's failure, whatever raised it, becomes the specific error of
radfusion.errors.input_error prefixed with "file i of n" (1-based, in the order the
paths were given), so a message says which file without naming it. Slices are
stacked by radfusion.dicom.geometry: ordered along the slice normal, duplicates,
gantry tilt and gaps repaired within the policy's limits and recorded, anything else
rejected with a specific error. Mixed orientations, sizes or pixel spacings are
always rejected."""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TypeVar

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError

from radfusion.dicom.checks import check_instance, decoded_bytes, matrix_size, number_of_frames, pixel_spacing
from radfusion.dicom.geometry import GeometryPolicy, check_slice_spacing, stack_slices
from radfusion.dicom.pixels import physical_values
from radfusion.dicom.sources import read_dataset
from radfusion.errors import (
    CorruptDicomError,
    GeometryError,
    RadfusionInputError,
    UnsupportedPixelDataError,
    input_error,
)
from radfusion.limits import StudyBudget, StudyClock

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


def load_volume(
    paths: Sequence[Path | str], policy: GeometryPolicy | None = None, clock: StudyClock | None = None
) -> Volume:
    """Read, check, decode and stack the instances of one series. ``clock``: the study's
    budget being spent (a fresh default StudyBudget when not given)."""
    if not paths:
        raise GeometryError("series has no instances")
    policy = policy or GeometryPolicy()
    clock = clock or StudyBudget().start()
    datasets = _each_file([Path(p) for p in paths], _read_checked, clock)
    clock.check_decoded(sum(decoded_bytes(ds) for ds in datasets))
    first = datasets[0]
    if len(datasets) == 1 and (number_of_frames(first) > 1 or "PerFrameFunctionalGroupsSequence" in first):
        layout = _labelled(partial(_multiframe_layout, first), "file 1 of 1")
        (frames,) = _each_file(datasets, _decode, clock)
        return _multiframe_volume(first, frames, layout, policy)
    if any(number_of_frames(ds) > 1 for ds in datasets):
        raise UnsupportedPixelDataError("series of several multi-frame instances cannot be stacked")
    layout = _single_frame_layout(datasets)
    return _stack_single_frames(datasets, _each_file(datasets, _decode, clock), layout, policy)


_In = TypeVar("_In")
_Out = TypeVar("_Out")


def _each_file(items: list[_In], work: Callable[[_In], _Out], clock: StudyClock) -> list[_Out]:
    """``work`` on every file, in order, each failure labelled with the file's position.
    The clock is checked between files; after a failure no further file is started."""
    n = len(items)

    def one(numbered: tuple[int, _In]) -> _Out:
        i, item = numbered
        where = f"file {i + 1} of {n}"
        clock.check_time(where)
        return _labelled(partial(work, item), where)

    if n < _MIN_FILES_FOR_THREADS or READ_THREADS < 2:
        return [one(numbered) for numbered in enumerate(items)]
    with ThreadPoolExecutor(READ_THREADS) as pool:
        futures = [pool.submit(one, numbered) for numbered in enumerate(items)]
        try:
            return [future.result() for future in futures]
        except BaseException:
            for future in futures:
                future.cancel()
            raise


def _labelled(work: Callable[[], _Out], where: str) -> _Out:
    """``work()``, any exception it raises turned into a specific input error that
    starts with ``where`` (input_error leaves our own errors' text as it is)."""
    try:
        return work()
    except RadfusionInputError as exc:
        raise type(exc)(f"{where}: {exc.message}") from exc
    except Exception as exc:  # any byte sequence: one file's failure, named by position
        raise input_error(exc, where) from exc


def _read_checked(path: Path) -> pydicom.Dataset:
    """The dataset (pixel bytes stored, not decoded) whose header passed the checks."""
    try:
        ds = read_dataset(path)
    except InvalidDicomError as exc:  # pydicom's word for "not DICOM at all"
        raise CorruptDicomError("not a readable DICOM file (InvalidDicomError)") from exc
    if "PixelData" not in ds and "FloatPixelData" not in ds:
        raise CorruptDicomError("instance has no pixel data")
    check_instance(ds)
    return ds


def _decode(ds: pydicom.Dataset) -> np.ndarray:
    """Physical values; the stored pixel data is dropped once decoded, to halve peak memory."""
    values = physical_values(ds)
    for keyword in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"):
        if keyword in ds:
            delattr(ds, keyword)
    return values


@dataclass
class _Layout:
    """A series' geometry as its headers give it, checked before decoding."""

    row_dir: np.ndarray
    col_dir: np.ndarray
    pixel_spacing: tuple[float, float]
    positions: np.ndarray
    nominal_spacing: float


@dataclass
class _Slice:
    """One single-frame instance's geometry, from its header."""

    row_dir: np.ndarray
    col_dir: np.ndarray
    pixel_spacing: tuple[float, float]
    position: np.ndarray
    shape: tuple[int, int]

    @classmethod
    def of(cls, ds: pydicom.Dataset) -> _Slice:
        row_dir, col_dir = _orientation(ds)
        return cls(row_dir, col_dir, pixel_spacing(ds), _position(ds), matrix_size(ds))


def _single_frame_layout(datasets: list[pydicom.Dataset]) -> _Layout:
    """Every slice's geometry, consistent with the first's, and the slice spacing."""
    n = len(datasets)
    slices = [_labelled(partial(_Slice.of, ds), f"file {i} of {n}") for i, ds in enumerate(datasets, start=1)]
    first = slices[0]
    for i, other in enumerate(slices[1:], start=2):
        differs = f"(file {i} of {n} differs from file 1)"
        if not (
            np.allclose(other.row_dir, first.row_dir, atol=ORIENTATION_TOLERANCE)
            and np.allclose(other.col_dir, first.col_dir, atol=ORIENTATION_TOLERANCE)
        ):
            raise GeometryError(f"mixed slice orientations in one series {differs}")
        if other.shape != first.shape:
            raise GeometryError(f"slices of different sizes in one series {differs}")
        if not np.allclose(other.pixel_spacing, first.pixel_spacing, rtol=1e-3):
            raise GeometryError(f"slices with different PixelSpacing in one series {differs}")
    positions = np.array([s.position for s in slices])
    check_slice_spacing(positions, first.row_dir, first.col_dir)
    nominal = _labelled(partial(_nominal_spacing, datasets[0]), f"file 1 of {n}")
    return _Layout(first.row_dir, first.col_dir, first.pixel_spacing, positions, nominal)


def _orientation(ds: pydicom.Dataset) -> tuple[np.ndarray, np.ndarray]:
    iop = ds.get("ImageOrientationPatient")
    if iop is None:
        raise GeometryError("missing ImageOrientationPatient")
    if len(iop) != 6:
        raise GeometryError(f"ImageOrientationPatient holds {len(iop)} values, not 6")
    row_dir = np.asarray(iop[:3], dtype=float)
    col_dir = np.asarray(iop[3:], dtype=float)
    if not (abs(np.linalg.norm(row_dir) - 1) <= 1e-2 and abs(np.linalg.norm(col_dir) - 1) <= 1e-2):  # NaN too
        raise GeometryError("ImageOrientationPatient is not made of unit vectors")
    return row_dir, col_dir


def _stack_single_frames(
    datasets: list[pydicom.Dataset], values: list[np.ndarray], layout: _Layout, policy: GeometryPolicy
) -> Volume:
    sop_uids = [str(ds.get("SOPInstanceUID", "")) for ds in datasets]
    return _stacked(values, layout, policy, datasets[0], lambda kept: [sop_uids[i] for i in kept])


def _stacked(
    slices: list[np.ndarray] | np.ndarray,
    layout: _Layout,
    policy: GeometryPolicy,
    first: pydicom.Dataset,
    sop_uids: Callable[[list[int]], list[str]],
) -> Volume:
    """The slices stacked along the normal (radfusion.dicom.geometry) as a Volume;
    ``sop_uids`` gives the instances behind the slices kept."""
    stack = stack_slices(
        slices,
        layout.positions,
        layout.row_dir,
        layout.col_dir,
        layout.pixel_spacing,
        policy,
        single_slice_spacing=layout.nominal_spacing,
    )
    return Volume(
        voxels=np.ascontiguousarray(stack.voxels),
        spacing=(stack.slice_spacing, *layout.pixel_spacing),
        origin=tuple(float(v) for v in stack.origin),  # type: ignore[arg-type]
        # axes (slice, row, col)
        direction=np.stack([np.cross(layout.row_dir, layout.col_dir), layout.col_dir, layout.row_dir], axis=1),
        modality=str(first.get("Modality", "")),
        sop_uids=sop_uids(stack.kept),
        corrections=stack.corrections,
    )


def _nominal_spacing(ds: pydicom.Dataset) -> float:
    """Slice spacing of a lone slice, which has no neighbour to measure it from. Not
    held to the slice-spacing bounds: nothing is resampled along it (localizers say
    650 mm here), but it must be a length."""
    spacing = float(ds.get("SpacingBetweenSlices") or ds.get("SliceThickness") or 1.0)
    if not (math.isfinite(spacing) and spacing > 0):
        raise GeometryError("SliceThickness/SpacingBetweenSlices is not a positive length")
    return spacing


def _position(ds: pydicom.Dataset) -> np.ndarray:
    ipp = ds.get("ImagePositionPatient")
    if ipp is None:
        raise GeometryError("missing ImagePositionPatient")
    if len(ipp) != 3:
        raise GeometryError(f"ImagePositionPatient holds {len(ipp)} values, not 3")
    position = np.asarray(ipp, dtype=float)
    if not np.all(np.isfinite(position)):
        raise GeometryError("ImagePositionPatient is not finite")
    return position


def _multiframe_layout(ds: pydicom.Dataset) -> _Layout:
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
    if positions.ndim != 2 or positions.shape[1] != 3 or not np.all(np.isfinite(positions)):
        raise GeometryError("multi-frame image has malformed per-frame positions")
    n_frames = number_of_frames(ds)
    if len(positions) != n_frames:
        raise GeometryError(f"{n_frames} frames but {len(positions)} per-frame positions")
    row_dir, col_dir = _orientation(plane)
    check_slice_spacing(positions, row_dir, col_dir)
    return _Layout(row_dir, col_dir, pixel_spacing(measures), positions, _nominal_spacing(measures))


def _multiframe_volume(ds: pydicom.Dataset, frames: np.ndarray, layout: _Layout, policy: GeometryPolicy) -> Volume:
    frames = frames.reshape(-1, *frames.shape[-2:])  # a one-frame image decodes as 2-D
    if len(layout.positions) != len(frames):
        raise GeometryError(f"{len(frames)} frames but {len(layout.positions)} per-frame positions")
    return _stacked(frames, layout, policy, ds, lambda kept: [str(ds.get("SOPInstanceUID", ""))])
