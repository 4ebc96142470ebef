"""A simple chest CT phantom in Hounsfield units, with one lesion.

Anatomy is defined in millimetres relative to the field of view, so it looks the
same whatever the pixel spacing; the lesion's size is in millimetres too, so the
imaging phenotype survives resampling (to ~8 mm pixels and 5 mm slices).

Volumes are indexed (slice, row, col): slice along +z (inferior to superior),
row along +y (anterior to posterior), col along +x (right to left), matching an
axial series with ImageOrientationPatient [1,0,0,0,1,0] sorted by z.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from radfusion.synth.study_spec import StudySpec

AIR_HU = -1000.0
FAT_HU = -100.0
SOFT_TISSUE_HU = 40.0
LUNG_HU = -850.0
BONE_HU = 700.0
NOISE_STD_HU = 10.0
LESION_EDGE_MM = 2.0  # width of the partial-volume ramp at the lesion border
LESION_MARGIN_MM = 4.0  # soft tissue kept between the lesion and anything else


@dataclass(frozen=True)
class Phantom:
    """The rendered volume and where its lesion ended up."""

    hu: np.ndarray  # (slices, rows, cols) int16 Hounsfield units
    lesion_voxel: tuple[int, int, int]  # (slice, row, col) of the lesion centre
    lesion_semi_axes_mm: tuple[float, float, float]  # (z, y, x)
    lesion_fully_in_soft_tissue: bool


def _grid_mm(spec: StudySpec) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Broadcastable coordinates: z from the bottom slice, y and x from the FOV centre."""
    ps, dz = spec.pixel_spacing_mm, spec.slice_spacing_mm
    z = (np.arange(spec.n_slices) * dz)[:, None, None]
    y = ((np.arange(spec.rows) - (spec.rows - 1) / 2) * ps)[None, :, None]
    x = ((np.arange(spec.cols) - (spec.cols - 1) / 2) * ps)[None, None, :]
    return z, y, x


def _tissue_labels(spec: StudySpec, rng: np.random.Generator) -> tuple[np.ndarray, float]:
    """Label volume (0 air, 1 fat, 2 soft tissue, 3 lung, 4 bone) and the soft-tissue HU."""
    z, y, x = _grid_mm(spec)
    fov_x, fov_y = spec.cols * spec.pixel_spacing_mm, spec.rows * spec.pixel_spacing_mm
    length = max((spec.n_slices - 1) * spec.slice_spacing_mm, 1.0)
    bx, by = rng.uniform(-10, 10), rng.uniform(-8, 8)
    ax, ay = rng.uniform(0.37, 0.43) * fov_x, rng.uniform(0.26, 0.31) * fov_y
    fat = min(rng.uniform(8.0, 15.0), 0.15 * ay)
    shape = (spec.n_slices, spec.rows, spec.cols)

    labels = np.zeros(shape, dtype=np.uint8)
    body = ((x - bx) / ax) ** 2 + ((y - by) / ay) ** 2 <= 1.0
    inner = ((x - bx) / (ax - fat)) ** 2 + ((y - by) / (ay - fat)) ** 2 <= 1.0
    labels[np.broadcast_to(body, shape)] = 1
    labels[np.broadcast_to(inner, shape)] = 2

    for side in (-1.0, 1.0):  # lungs: ellipsoids in the upper part of the scan
        lx, ly = bx + side * rng.uniform(0.42, 0.50) * ax, by - rng.uniform(0.0, 0.1) * ay
        sx, sy = rng.uniform(0.28, 0.34) * ax, rng.uniform(0.55, 0.65) * ay
        zc, sz = rng.uniform(0.65, 0.75) * length, rng.uniform(0.45, 0.55) * length
        lung = ((x - lx) / sx) ** 2 + ((y - ly) / sy) ** 2 + ((z - zc) / sz) ** 2 <= 1.0
        labels[lung] = 3

    vertebra_r = rng.uniform(13.0, 17.0) * min(1.0, fov_y / 384.0)
    vy = by + ay - fat - vertebra_r - rng.uniform(8.0, 14.0)
    vertebra = (x - bx) ** 2 + (y - vy) ** 2 <= vertebra_r**2
    labels[np.broadcast_to(vertebra, shape)] = 4
    return labels, SOFT_TISSUE_HU + rng.uniform(-4.0, 4.0)


def _place_lesion(
    spec: StudySpec, labels: np.ndarray, reach_mm: float, rng: np.random.Generator
) -> tuple[tuple[int, int, int], bool]:
    """A random voxel at least `reach_mm` (plus a margin) from any non-soft tissue
    and from the first and last slice; the best available voxel if none is.

    At the default geometry (32 x 64 x 64, ~6 mm pixels) every lesion fits; only
    much smaller test volumes fall back, which truth.json records as
    lesion_fully_in_soft_tissue = false.
    """
    sampling = (spec.slice_spacing_mm, spec.pixel_spacing_mm, spec.pixel_spacing_mm)
    dist = ndimage.distance_transform_edt(labels == 2, sampling=sampling)
    k = np.arange(spec.n_slices)
    to_end = np.minimum(k, spec.n_slices - 1 - k) * spec.slice_spacing_mm
    room = np.minimum(dist - LESION_MARGIN_MM, to_end[:, None, None] - LESION_EDGE_MM)
    candidates = np.argwhere(room >= reach_mm)
    if len(candidates) == 0:
        best = np.unravel_index(int(np.argmax(room)), room.shape)
        return (int(best[0]), int(best[1]), int(best[2])), False
    k, r, c = candidates[rng.integers(len(candidates))]
    return (int(k), int(r), int(c)), True


def _smooth_noise(shape: tuple[int, ...], sigma: tuple[float, ...], rng: np.random.Generator) -> np.ndarray:
    """Gaussian-smoothed white noise rescaled to unit standard deviation."""
    field = ndimage.gaussian_filter(rng.standard_normal(shape), sigma=sigma)
    return field / max(float(field.std()), 1e-12)


def render_phantom(spec: StudySpec, rng: np.random.Generator) -> Phantom:
    """Render the study's HU volume with its lesion and scanner noise."""
    labels, soft_hu = _tissue_labels(spec, rng)
    levels = np.array([AIR_HU, FAT_HU, soft_hu, LUNG_HU, BONE_HU])
    hu = levels[labels]

    semi = spec.lesion_radius_mm * np.clip(np.exp(rng.normal(0.0, 0.08, 3)), 0.85, 1.18)
    semi = semi * (spec.lesion_radius_mm**3 / semi.prod()) ** (1 / 3)  # same volume as the sphere
    (k, r, c), inside = _place_lesion(spec, labels, float(semi.max()), rng)

    z, y, x = _grid_mm(spec)
    q = np.sqrt(
        ((z - z[k, 0, 0]) / semi[0]) ** 2 + ((y - y[0, r, 0]) / semi[1]) ** 2 + ((x - x[0, 0, c]) / semi[2]) ** 2
    )
    border_mm = (q - 1.0) * spec.lesion_radius_mm
    weight = np.clip(0.5 - border_mm / LESION_EDGE_MM, 0.0, 1.0)
    texture = spec.lesion_texture_std_hu * _smooth_noise(hu.shape, (0.5, 0.8, 0.8), rng)
    lesion_hu = soft_hu + spec.lesion_contrast_hu + texture
    hu = (1.0 - weight) * hu + weight * lesion_hu

    hu += NOISE_STD_HU * _smooth_noise(hu.shape, (0.0, 0.6, 0.6), rng)
    hu = np.clip(np.rint(hu), -1024, 3071).astype(np.int16)
    return Phantom(hu, (k, r, c), (float(semi[0]), float(semi[1]), float(semi[2])), inside)


def localizer_image(hu: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """A coronal projection (mean HU along y), superior at the top, as (rows, cols).

    Only a plausible-looking scout: readers must recognise and skip it.
    """
    projection = hu.astype(np.float64).mean(axis=1)[::-1]  # (slices, cols), top = superior
    src_rows = np.minimum((np.arange(rows) * projection.shape[0]) // rows, projection.shape[0] - 1)
    src_cols = np.minimum((np.arange(cols) * projection.shape[1]) // cols, projection.shape[1] - 1)
    return np.rint(projection[np.ix_(src_rows, src_cols)]).astype(np.int16)
