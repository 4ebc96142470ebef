"""Block means: the anti-aliasing step of resampling to the model grid, shared by the
volume reader (which reduces each slice as it is decoded, so a real-size series never
exists at full resolution in float32) and radfusion.preprocess (which reduces what the
reader did not).

An axis resampled by a factor below ANTIALIAS_BELOW (0.7 mm pixels to an 8 mm grid:
0.09) is first averaged over blocks of k = floor(1 / factor) voxels, counted from the
axis' first voxel; a partial last block is padded with the edge voxel, as the zoom's
"nearest" mode extends an edge. Axes resampled by a factor of at least one half (every
toy cohort's) are never reduced."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

# An axis resampled by a factor below this is block-averaged first (anti-aliasing).
ANTIALIAS_BELOW = 0.5


def zoom_factors(shape: Sequence[int], spacing: Sequence[float], target_spacing: Sequence[float]) -> list[float]:
    """Resampling factors of a canonical (z, y, x) volume to ``target_spacing``: spacing
    over target, 1 along the slice axis of a lone slice (nothing to interpolate)."""
    factors = [float(s) / float(t) for s, t in zip(spacing, target_spacing, strict=True)]
    if shape[0] == 1:
        factors[0] = 1.0
    return factors


def block_size(factor: float) -> int:
    """Voxels averaged into one before an axis is resampled by ``factor``."""
    return max(1, math.floor(1.0 / factor)) if 0 < factor < ANTIALIAS_BELOW else 1


def block_mean(voxels: np.ndarray, axis: int, k: int) -> np.ndarray:
    """float32 means of ``k`` consecutive voxels along ``axis``, from its first voxel;
    a partial last block padded with the last voxel."""
    n = voxels.shape[axis]
    full, rest = divmod(n, k)
    moved = np.moveaxis(voxels, axis, 0)
    out = np.empty((full + (rest > 0), *moved.shape[1:]), dtype=np.float32)
    if full:
        np.sum(moved[: full * k].reshape(full, k, *moved.shape[1:]), axis=1, dtype=np.float32, out=out[:full])
    if rest:
        np.sum(moved[full * k :], axis=0, dtype=np.float32, out=out[full])
        out[full] += (k - rest) * moved[-1]
    out /= np.float32(k)
    return np.moveaxis(out, 0, axis)
