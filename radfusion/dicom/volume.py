"""Build a volume in HU (or scanner units for MR) from the instances of one series:
single-frame slices or one multi-frame Enhanced CT/MR image.

Reading runs in two passes over the files. The first reads every header (with the
stored pixel bytes) and checks its values against radfusion.limits.BOUNDS
(radfusion.dicom.checks), then the series' geometry: sizes, orientations, pixel and
slice spacing, all before a single pixel is decoded, and the decoded size against the
study's budget. The second decodes. Both run on a small thread pool, so file reads
and numpy's work overlap with the rest (the JPEG 2000 and JPEG-LS codecs installed here,
pylibjpeg-openjpeg and pyjpegls, hold the GIL while they decode; the speed claims live
in bench/ingest.py and bench/realsize.py). Headers already read (radfusion.study reads
each file once, its pixel data left in the file until decoded) are passed as
``datasets`` and not read again. Single-frame slices are decoded straight into their
place along the slice normal (known from the headers' positions) in one preallocated
float32 volume, so stacking copies nothing; read for a model grid (``target_spacing``)
that shrinks rows or columns by more than half, each slice is reduced to its block
means (radfusion.dicom.blocks) as soon as it is decoded instead, when stacking has
nothing to repair, and the series never exists at full resolution in float32.

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
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TypeVar

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.uid import UncompressedTransferSyntaxes

from radfusion.dicom.blocks import block_mean, block_size, zoom_factors
from radfusion.dicom.checks import check_instance, decoded_bytes, matrix_size, number_of_frames, pixel_spacing
from radfusion.dicom.geometry import GeometryPolicy, check_slice_spacing, only_sorting, stack_slices
from radfusion.dicom.pixels import physical_values, transfer_syntax
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
# Threads decoding one series' compressed pixel data (a decoder may release the GIL);
# a few are enough. Headers and native pixel data are read in the calling thread: there
# the GIL's hand-offs between threads cost more than the numpy work they would overlap.
READ_THREADS = min(4, os.cpu_count() or 1)
# Below this many files a pool costs more than it saves.
_MIN_FILES_FOR_THREADS = 8


@dataclass
class Volume:
    """Voxel values with their geometry. Axis order (slice, row, col).

    A volume read for a model grid (load_volume's ``target_spacing``) may hold block
    means (radfusion.dicom.blocks) instead of voxels along the axes the grid shrinks by
    more than half: ``voxels[a]`` averages ``blocks[a]`` voxels along axis a, whole
    blocks counted from the end canonical() puts first, and ``shape`` stays the series'
    own (``full_shape``), as do spacing, origin and affine."""

    voxels: np.ndarray  # float32, HU for CT
    spacing: tuple[float, float, float]  # mm along (slice, row, col)
    origin: tuple[float, float, float]  # patient position of voxel (0, 0, 0)
    # Columns are the patient-space directions of the (slice, row, col) axes.
    direction: np.ndarray
    modality: str
    sop_uids: list[str]
    # Geometry repairs made while stacking (dropped duplicates, tilt, gaps), in words.
    corrections: list[str] = field(default_factory=list)
    # Voxels averaged into each value of ``voxels`` along each axis ((1, 1, 1): none),
    # and the series' voxels along each axis when some are (None: voxels.shape).
    blocks: tuple[int, int, int] = (1, 1, 1)
    full_shape: tuple[int, int, int] | None = None

    @property
    def affine(self) -> np.ndarray:
        """4x4 voxel index (slice, row, col, 1) -> patient position (x, y, z, 1), LPS."""
        affine = np.eye(4)
        affine[:3, :3] = self.direction * np.asarray(self.spacing)[None, :]
        affine[:3, 3] = self.origin
        return affine

    @property
    def shape(self) -> tuple[int, int, int]:
        """Voxels of the series along each axis (at full resolution)."""
        return self.full_shape if self.full_shape is not None else tuple(self.voxels.shape)

    def canonical(self) -> Volume:
        """Reorient to (z, y, x) patient axes with increasing coordinates, so axial,
        coronal and sagittal acquisitions reach the model the same way round."""
        order, flips = canonical_axes(self.direction)
        voxels = np.transpose(self.voxels, order)
        shape = tuple(self.shape[i] for i in order)
        spacing, origin, direction = _canonical_geometry(self.direction, self.spacing, self.origin, self.shape)
        for axis in range(3):
            if flips[axis]:
                voxels = np.flip(voxels, axis)
        return Volume(
            voxels=np.ascontiguousarray(voxels),
            spacing=spacing,
            origin=origin,
            direction=direction,
            modality=self.modality,
            sop_uids=self.sop_uids,
            corrections=list(self.corrections),
            blocks=tuple(self.blocks[i] for i in order),  # type: ignore[arg-type]
            full_shape=shape if self.full_shape is not None else None,  # type: ignore[arg-type]
        )


def canonical_axes(direction: np.ndarray) -> tuple[list[int], list[bool]]:
    """The array axis that becomes each canonical (z, y, x) axis, and whether it is
    then reversed (its direction points to decreasing patient coordinates)."""
    dominant = np.argmax(np.abs(direction), axis=0)  # patient axis of each array axis
    if len(set(dominant.tolist())) != 3:
        raise GeometryError("oblique orientation cannot be mapped to patient axes")
    # Patient axis 2 (z) first, then y, then x.
    order = [int(np.where(dominant == p)[0][0]) for p in (2, 1, 0)]
    return order, [bool(direction[2 - axis, order[axis]] < 0) for axis in range(3)]


def _canonical_geometry(
    direction: np.ndarray, spacing: Sequence[float], origin: Sequence[float], shape: Sequence[int]
) -> tuple[tuple[float, float, float], tuple[float, float, float], np.ndarray]:
    """(spacing, origin, direction) of a volume of ``shape`` reoriented by canonical()."""
    order, flips = canonical_axes(direction)
    direction = direction[:, order]
    spacing = tuple(spacing[i] for i in order)
    corner = np.asarray(origin, dtype=float)
    for axis in range(3):
        if flips[axis]:
            corner = corner + direction[:, axis] * spacing[axis] * (shape[order[axis]] - 1)
            direction[:, axis] = -direction[:, axis]
    return spacing, tuple(float(v) for v in corner), direction  # type: ignore[return-value]


def load_volume(
    paths: Sequence[Path | str],
    policy: GeometryPolicy | None = None,
    clock: StudyClock | None = None,
    datasets: Mapping[Path, pydicom.Dataset] | None = None,
    target_spacing: Sequence[float] | None = None,
) -> Volume:
    """Read, check, decode and stack the instances of one series. ``clock``: the study's
    budget being spent (a fresh default StudyBudget when not given). ``datasets``:
    files already read whole (their pixel data may be deferred), by path; the others
    are read here. ``target_spacing``: the (z, y, x) spacing of the model grid the
    volume is read for; single-frame slices that need no repair are then reduced by the
    grid's block means (radfusion.dicom.blocks) as they are decoded, so the series is
    never held at full resolution (the Volume's ``blocks`` say by how much)."""
    if not paths:
        raise GeometryError("series has no instances")
    policy = policy or GeometryPolicy()
    clock = clock or StudyBudget().start()
    read = partial(_read_checked, read=datasets.get if datasets else None)
    paths = [Path(p) for p in paths]
    # Files read here (not kept by discovery) may inflate a zip member or a deflated body.
    unread = datasets is None or any(p not in datasets for p in paths)
    instances = _each_file(paths, read, clock, READ_THREADS if unread else 1)
    clock.check_decoded(sum(decoded_bytes(ds) for ds in instances))
    first = instances[0]
    if len(instances) == 1 and (number_of_frames(first) > 1 or "PerFrameFunctionalGroupsSequence" in first):
        layout = _labelled(partial(_multiframe_layout, first), "file 1 of 1")
        (frames,) = _each_file(instances, _decode, clock)  # one file: in this thread
        return _multiframe_volume(first, frames, layout, policy)
    if any(number_of_frames(ds) > 1 for ds in instances):
        raise UnsupportedPixelDataError("series of several multi-frame instances cannot be stacked")
    layout = _single_frame_layout(instances)
    reduction = _in_plane_reduction(layout, (len(instances), *matrix_size(first)), target_spacing)
    if reduction is not None:
        return _reduced_single_frames(instances, layout, reduction, clock)
    return _stack_single_frames(instances, layout, policy, clock)


_In = TypeVar("_In")
_Out = TypeVar("_Out")


def _each_file(items: list[_In], work: Callable[[_In], _Out], clock: StudyClock, threads: int = 1) -> list[_Out]:
    """``work`` on every file, in order, on ``threads`` threads, each failure labelled
    with the file's position. The clock is checked between files; after a failure no
    further file is started."""
    n = len(items)

    def one(numbered: tuple[int, _In]) -> _Out:
        i, item = numbered
        where = f"file {i + 1} of {n}"
        clock.check_time(where)
        return _labelled(partial(work, item), where)

    if n < _MIN_FILES_FOR_THREADS or threads < 2:
        return [one(numbered) for numbered in enumerate(items)]
    with ThreadPoolExecutor(threads) as pool:
        futures = [pool.submit(one, numbered) for numbered in enumerate(items)]
        try:
            return [future.result() for future in futures]
        except BaseException:
            for future in futures:
                future.cancel()
            raise


def decode_threads(datasets: list[pydicom.Dataset]) -> int:
    """READ_THREADS for a series with compressed pixel data, else 1 (see READ_THREADS)."""
    for ds in datasets:
        syntax = transfer_syntax(ds)
        if syntax is not None and syntax not in UncompressedTransferSyntaxes:
            return READ_THREADS
    return 1


def _labelled(work: Callable[[], _Out], where: str) -> _Out:
    """``work()``, any exception it raises turned into a specific input error that
    starts with ``where`` (input_error leaves our own errors' text as it is)."""
    try:
        return work()
    except RadfusionInputError as exc:
        raise type(exc)(f"{where}: {exc.message}") from exc
    except Exception as exc:  # any byte sequence: one file's failure, named by position
        raise input_error(exc, where) from exc


def _read_checked(path: Path, read: Callable[[Path], pydicom.Dataset | None] | None = None) -> pydicom.Dataset:
    """The dataset (pixel bytes stored or deferred, not decoded) whose header passed the
    checks; ``read``: the dataset already read for a path (None: read it here)."""
    ds = read(path) if read is not None else None
    try:
        if ds is None:
            ds = read_dataset(path)
    except InvalidDicomError as exc:  # pydicom's word for "not DICOM at all"
        raise CorruptDicomError("not a readable DICOM file (InvalidDicomError)") from exc
    if "PixelData" not in ds and "FloatPixelData" not in ds:
        raise CorruptDicomError("instance has no pixel data")
    check_instance(ds)
    return ds


def _decode(ds: pydicom.Dataset, out: np.ndarray | None = None) -> np.ndarray:
    """Physical values (written into ``out`` when given); the stored pixel data is
    dropped once decoded, to halve peak memory."""
    values = physical_values(ds, out)
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
    # np.allclose against the first slice, for all slices at once (the values are finite).
    directions = np.array([[*s.row_dir, *s.col_dir] for s in slices])
    same_orientation = _close(directions, atol=ORIENTATION_TOLERANCE, rtol=1e-5)
    same_size = np.array([s.shape == first.shape for s in slices])
    same_spacing = _close(np.array([s.pixel_spacing for s in slices]), atol=1e-8, rtol=1e-3)
    for i in np.flatnonzero(~(same_orientation & same_size & same_spacing))[:1].tolist():
        differs = f"(file {i + 1} of {n} differs from file 1)"
        if not same_orientation[i]:
            raise GeometryError(f"mixed slice orientations in one series {differs}")
        if not same_size[i]:
            raise GeometryError(f"slices of different sizes in one series {differs}")
        raise GeometryError(f"slices with different PixelSpacing in one series {differs}")
    positions = np.array([s.position for s in slices])
    check_slice_spacing(positions, first.row_dir, first.col_dir)
    nominal = _labelled(partial(_nominal_spacing, datasets[0]), f"file 1 of {n}")
    return _Layout(first.row_dir, first.col_dir, first.pixel_spacing, positions, nominal)


def _close(rows: np.ndarray, atol: float, rtol: float) -> np.ndarray:
    """Whether each row is np.allclose to the first."""
    return np.all(np.abs(rows - rows[0]) <= atol + rtol * np.abs(rows[0]), axis=1)


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
    datasets: list[pydicom.Dataset], layout: _Layout, policy: GeometryPolicy, clock: StudyClock
) -> Volume:
    """Each file decoded (on the thread pool) into its place along the slice normal in
    one float32 array: the order stack_slices takes, so it stacks without a copy."""
    sop_uids = [str(ds.get("SOPInstanceUID", "")) for ds in datasets]
    normal = np.cross(layout.row_dir, layout.col_dir)
    order = np.argsort(layout.positions @ normal, kind="stable")
    place = np.empty(len(order), dtype=np.intp)
    place[order] = np.arange(len(order))
    voxels = np.empty((len(datasets), *matrix_size(datasets[0])), dtype=np.float32)
    _each_file(
        list(zip(datasets, place.tolist(), strict=True)),
        lambda item: _decode(item[0], voxels[item[1]]),
        clock,
        decode_threads(datasets),
    )
    sorted_layout = _Layout(
        layout.row_dir, layout.col_dir, layout.pixel_spacing, layout.positions[order], layout.nominal_spacing
    )
    return _stacked(voxels, sorted_layout, policy, datasets[0], lambda kept: [sop_uids[order[i]] for i in kept])


@dataclass(frozen=True)
class _Reduction:
    """Block means of each slice as it is decoded: ``blocks`` voxels along rows and
    along columns, counted from the last row (column) where ``reversed`` (the end
    canonical() puts first)."""

    blocks: tuple[int, int]
    reversed: tuple[bool, bool]

    def of(self, values: np.ndarray) -> np.ndarray:
        view = values[:: -1 if self.reversed[0] else 1, :: -1 if self.reversed[1] else 1]
        for axis, k in enumerate(self.blocks):
            if k > 1:
                view = block_mean(view, axis, k)
        return view[:: -1 if self.reversed[0] else 1, :: -1 if self.reversed[1] else 1]


def _in_plane_reduction(
    layout: _Layout, shape: tuple[int, int, int], target_spacing: Sequence[float] | None
) -> _Reduction | None:
    """How the slices can be reduced in-plane as they are decoded for a grid of
    ``target_spacing``: when stacking would only sort them (no duplicate, tilt or gap
    to repair at full resolution), the orientation maps to patient axes, and the grid
    shrinks a row or column by more than half; None otherwise."""
    if target_spacing is None or not only_sorting(layout.positions, layout.row_dir, layout.col_dir):
        return None
    direction = _direction(layout)
    try:
        order, flips = canonical_axes(direction)
    except GeometryError:
        return None  # oblique: canonical() says so, on the full-resolution path
    along = np.sort(layout.positions @ np.cross(layout.row_dir, layout.col_dir))
    slice_spacing = float(np.median(np.diff(along))) if len(along) > 1 else layout.nominal_spacing
    spacing = (slice_spacing, *layout.pixel_spacing)
    factors = zoom_factors([shape[i] for i in order], [spacing[i] for i in order], target_spacing)
    blocks = {order[axis]: block_size(f) for axis, f in enumerate(factors)}
    reverse = {order[axis]: flipped for axis, flipped in enumerate(flips)}
    if blocks[1] == blocks[2] == 1:
        return None
    return _Reduction((blocks[1], blocks[2]), (reverse[1], reverse[2]))


def _reduced_single_frames(
    datasets: list[pydicom.Dataset], layout: _Layout, reduction: _Reduction, clock: StudyClock
) -> Volume:
    """Each file decoded (on the thread pool) into a slice-sized buffer of its thread
    and reduced into its place along the slice normal; stacking only sorts these slices
    (only_sorting), so the geometry is what stack_slices would give."""
    n, (rows, cols) = len(datasets), matrix_size(datasets[0])
    sop_uids = [str(ds.get("SOPInstanceUID", "")) for ds in datasets]
    normal = np.cross(layout.row_dir, layout.col_dir)
    order = np.argsort(layout.positions @ normal, kind="stable")
    place = np.empty(n, dtype=np.intp)
    place[order] = np.arange(n)
    kr, kc = reduction.blocks
    voxels = np.empty((n, -(-rows // kr), -(-cols // kc)), dtype=np.float32)
    buffers = threading.local()

    def decode(item: tuple[pydicom.Dataset, int]) -> None:
        ds, at = item
        if getattr(buffers, "values", None) is None:
            buffers.values = np.empty((rows, cols), dtype=np.float32)
        voxels[at] = reduction.of(_decode(ds, buffers.values))

    _each_file(list(zip(datasets, place.tolist(), strict=True)), decode, clock, decode_threads(datasets))
    positions = layout.positions[order]
    along = positions @ normal
    spacing = float(np.median(np.diff(along))) if n > 1 else layout.nominal_spacing
    return Volume(
        voxels=voxels,
        spacing=(spacing, *layout.pixel_spacing),
        origin=tuple(float(v) for v in positions[0]),  # type: ignore[arg-type]
        direction=_direction(layout),
        modality=str(datasets[0].get("Modality", "")),
        sop_uids=[sop_uids[i] for i in order],
        blocks=(1, kr, kc),
        full_shape=(n, rows, cols),
    )


def _direction(layout: _Layout) -> np.ndarray:
    """Patient directions of the (slice, row, col) axes, as columns."""
    return np.stack([np.cross(layout.row_dir, layout.col_dir), layout.col_dir, layout.row_dir], axis=1)


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
        direction=_direction(layout),
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
