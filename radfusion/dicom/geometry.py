"""Stack the slices of one series into a volume on a uniform grid, or refuse to.

Slices are ordered by their position along the slice normal (the cross product of
the ImageOrientationPatient row and column directions), never by file name or
InstanceNumber. What real series get wrong is then checked in this order:

1. duplicate positions: exact copies (the same slice sent twice) are dropped; two
   different images at one position (mixed acquisitions) are rejected;
2. gantry tilt: slice origins drift sideways off the normal. Each slice is shifted
   in-plane back onto the normal (linear interpolation) up to ``max_tilt_degrees``;
   beyond it, or with 0, the series is rejected;
3. missing slices and non-uniform spacing: the slices are resampled along the normal
   onto a uniform grid (linear interpolation between neighbours) as long as no step
   exceeds ``max_gap_factor`` typical steps; larger gaps are rejected, because
   interpolating across them would invent anatomy.

Every repair is recorded in words (``Stack.corrections``) so the caller can report it.
Before any of that, ``check_slice_spacing`` refuses a typical step outside
radfusion.limits.BOUNDS from the headers' positions alone, before pixels are decoded."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from radfusion.errors import GeometryError
from radfusion.limits import BOUNDS

# Steps within 1% of the typical step count as uniform (IPP is written rounded).
UNIFORM_TOLERANCE = 0.01
# Positions closer than this along the normal are the same position (mm).
SAME_POSITION_MM = 1e-3


@dataclass(frozen=True)
class GeometryPolicy:
    """How far geometry may be repaired before a series is rejected."""

    max_gap_factor: float = 2.0  # largest step filled, in typical steps; 1.0 = reject gaps
    max_tilt_degrees: float = 30.0  # largest gantry tilt corrected; 0 = reject tilt
    drop_identical_duplicates: bool = True

    @classmethod
    def from_geometry(cls, geometry) -> GeometryPolicy:
        """The policy an ImageGeometry carries (older contracts: the defaults)."""
        return cls(
            max_gap_factor=float(getattr(geometry, "max_gap_factor", cls.max_gap_factor)),
            max_tilt_degrees=float(getattr(geometry, "max_tilt_degrees", cls.max_tilt_degrees)),
        )


@dataclass
class Stack:
    voxels: np.ndarray  # (slice, row, col) float32 on a uniform grid
    origin: np.ndarray  # patient position of voxel (0, 0, 0)
    slice_spacing: float
    kept: list[int]  # indices (into the input) of the slices used, in slice order
    corrections: list[str] = field(default_factory=list)


def stack_slices(
    slices: list[np.ndarray] | np.ndarray,
    positions: np.ndarray,
    row_dir: np.ndarray,
    col_dir: np.ndarray,
    pixel_spacing: tuple[float, float],
    policy: GeometryPolicy,
    single_slice_spacing: float = 1.0,
) -> Stack:
    """``pixel_spacing``: (between rows, between columns) as in PixelSpacing."""
    normal = np.cross(row_dir, col_dir)
    along = positions @ normal
    order = [int(i) for i in np.argsort(along, kind="stable")]
    corrections: list[str] = []
    order = _drop_duplicates(order, along, slices, policy, corrections)
    if isinstance(slices, np.ndarray) and slices.dtype == np.float32 and order == list(range(len(slices))):
        voxels = slices  # already a float32 stack in slice order (radfusion.dicom.volume): no copy
    else:
        voxels = np.stack([np.asarray(slices[i], dtype=np.float32) for i in order])
    positions = positions[order]
    along = along[order]
    if len(order) == 1:
        return Stack(voxels, positions[0], float(single_slice_spacing), order, corrections)
    voxels = _correct_tilt(voxels, positions, along, normal, row_dir, col_dir, pixel_spacing, policy, corrections)
    voxels, spacing = _uniform_along_normal(voxels, along, policy, corrections)
    return Stack(voxels, positions[0], spacing, order, corrections)


def only_sorting(positions: np.ndarray, row_dir: np.ndarray, col_dir: np.ndarray) -> bool:
    """Whether stack_slices would do nothing to these slices but order them: no two at
    one position, no gantry tilt, uniform steps (a reader may then stack them its own
    way, radfusion.dicom.volume's block-reduced one)."""
    normal = np.cross(row_dir, col_dir)
    order = np.argsort(positions @ normal, kind="stable")
    positions = positions[order]
    along = positions @ normal
    if len(along) == 1:
        return True
    steps = np.diff(along)
    if not np.all(steps >= SAME_POSITION_MM):
        return False
    return not _tilted(positions, along, normal) and _uniform(steps)


def _tilted(positions: np.ndarray, along: np.ndarray, normal: np.ndarray) -> bool:
    return _drift(positions, along, normal).max() > 0.01 * float(np.linalg.norm(positions[-1] - positions[0])) + 1e-3


def _drift(positions: np.ndarray, along: np.ndarray, normal: np.ndarray) -> np.ndarray:
    """How far each slice's origin lies off the normal through the first one's, and the
    sideways offsets themselves."""
    return np.linalg.norm(_sideways(positions, along, normal), axis=1)


def _sideways(positions: np.ndarray, along: np.ndarray, normal: np.ndarray) -> np.ndarray:
    return (positions - positions[0]) - np.outer(along - along[0], normal)


def _uniform(steps: np.ndarray) -> bool:
    typical = float(np.median(steps))
    return bool(np.max(np.abs(steps - typical)) <= UNIFORM_TOLERANCE * typical)


def check_slice_spacing(positions: np.ndarray, row_dir: np.ndarray, col_dir: np.ndarray) -> None:
    """The typical step between distinct slice positions along the normal lies within
    BOUNDS.slice_spacing_mm (a series of one position has none to check)."""
    along = np.sort(positions @ np.cross(row_dir, col_dir))
    steps = np.diff(along)
    steps = steps[~(steps < SAME_POSITION_MM)]  # NaN/inf steps stay, and fail below
    if not steps.size:
        return
    typical = float(np.median(steps))
    low, high = BOUNDS.slice_spacing_mm
    if not (math.isfinite(typical) and low <= typical <= high):
        raise GeometryError(f"slice spacing {typical:.4g} mm is outside {low:g}-{high:g} mm")


def _drop_duplicates(order, along, slices, policy: GeometryPolicy, corrections: list[str]) -> list[int]:
    kept = [order[0]]
    dropped = 0
    for index in order[1:]:
        if along[index] - along[kept[-1]] >= SAME_POSITION_MM:
            kept.append(index)
            continue
        if policy.drop_identical_duplicates and np.array_equal(slices[index], slices[kept[-1]]):
            dropped += 1
            continue
        raise GeometryError(
            f"duplicate slice positions with different images in one series (at {along[index]:.2f} mm along the normal)"
        )
    if dropped:
        corrections.append(f"dropped {dropped} duplicate slice(s): same position, same pixels")
    return kept


def _correct_tilt(voxels, positions, along, normal, row_dir, col_dir, pixel_spacing, policy, corrections):
    if not _tilted(positions, along, normal):
        return voxels
    sideways = _sideways(positions, along, normal)
    drift = _drift(positions, along, normal)
    tilt = math.degrees(math.atan2(float(drift[-1]), float(along[-1] - along[0])))
    if policy.max_tilt_degrees <= 0 or tilt > policy.max_tilt_degrees:
        raise GeometryError(
            f"slices are sheared (gantry tilt {tilt:.1f} degrees): positions drift off the slice normal"
            f" (limit {policy.max_tilt_degrees:g} degrees)"
        )
    # Slice k's pixel (r, c) lies at p_k + c*dc*row_dir + r*dr*col_dir; on the corrected
    # grid it must lie at p_k - sideways_k + ...: a shift of sideways_k in pixels.
    dr, dc = pixel_spacing
    shifts = np.stack([sideways @ col_dir / dr, sideways @ row_dir / dc], axis=1)
    out = np.empty_like(voxels)
    for k in range(len(voxels)):
        out[k] = ndimage.shift(voxels[k], shifts[k], order=1, mode="nearest")
    corrections.append(
        f"gantry tilt of {tilt:.1f} degrees corrected: slices shifted in-plane by up to {drift.max():.1f} mm"
    )
    return out


def _uniform_along_normal(voxels, along, policy: GeometryPolicy, corrections: list[str]) -> tuple[np.ndarray, float]:
    steps = np.diff(along)
    typical = float(np.median(steps))
    if _uniform(steps):
        return voxels, typical
    if steps.max() > policy.max_gap_factor * typical * (1 + UNIFORM_TOLERANCE):
        raise GeometryError(
            f"non-uniform slice spacing ({steps.min():.2f}-{steps.max():.2f} mm): missing slices or gaps"
            f" wider than {policy.max_gap_factor:g} slices"
        )
    n_out = round((along[-1] - along[0]) / typical) + 1
    grid = np.linspace(along[0], along[-1], n_out)
    below = np.clip(np.searchsorted(along, grid, side="right") - 1, 0, len(along) - 2)
    weight = ((grid - along[below]) / (along[below + 1] - along[below])).astype(np.float32)[:, None, None]
    resampled = voxels[below] * (1 - weight) + voxels[below + 1] * weight
    spacing = float(grid[1] - grid[0])
    corrections.append(
        f"slice steps {steps.min():.2f}-{steps.max():.2f} mm resampled onto a uniform {spacing:.2f} mm grid"
        f" ({len(along)} -> {n_out} slices)"
    )
    return resampled.astype(np.float32), spacing
