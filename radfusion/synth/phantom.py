"""A simple chest CT phantom in Hounsfield units, with one lesion.

Anatomy is defined in millimetres relative to the field of view, so it looks the
same whatever the pixel spacing; the lesion's size is in millimetres too, so the
imaging phenotype survives resampling (to ~8 mm pixels and 5 mm slices).

Volumes are indexed (slice, row, col): slice along +z (inferior to superior),
row along +y (anterior to posterior), col along +x (right to left), matching an
axial series with ImageOrientationPatient [1,0,0,0,1,0] sorted by z.

The lesion is placed, and its texture drawn, on the "phenotype grid": every n-th
voxel along each axis, n chosen so that its voxels are about the historic 5 x 6 x 6
mm. At historic spacings that grid is the volume itself (n = 1), and the volume is
rendered exactly as it always was; at clinical spacings (0.7 mm pixels, 1-2.5 mm
slices) it keeps the texture's grain in millimetres, so it survives resampling, and
the distance transform cheap. The lesion is blended in over its bounding box only
(the blend leaves every voxel outside it as it was), so a 300-slice 512 x 512 volume
renders in seconds.
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
PHENOTYPE_VOXEL_MM = (5.0, 6.0, 6.0)  # (z, y, x): the phenotype grid's voxels are about this
TEXTURE_SIGMA = (0.5, 0.8, 0.8)  # the lesion texture's smoothing, in phenotype-grid voxels
NOISE_SIGMA = (0.0, 0.6, 0.6)  # the scanner noise's, in voxels (in-plane only)


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

    # Body, fat and vertebra are the same in every slice: drawn once as a plane.
    body = ((x - bx) / ax) ** 2 + ((y - by) / ay) ** 2 <= 1.0
    inner = ((x - bx) / (ax - fat)) ** 2 + ((y - by) / (ay - fat)) ** 2 <= 1.0
    plane = np.zeros(shape[1:], dtype=np.uint8)
    plane[body[0]] = 1
    plane[inner[0]] = 2
    labels = np.broadcast_to(plane, shape).copy()

    for side in (-1.0, 1.0):  # lungs: ellipsoids in the upper part of the scan
        lx, ly = bx + side * rng.uniform(0.42, 0.50) * ax, by - rng.uniform(0.0, 0.1) * ay
        sx, sy = rng.uniform(0.28, 0.34) * ax, rng.uniform(0.55, 0.65) * ay
        zc, sz = rng.uniform(0.65, 0.75) * length, rng.uniform(0.45, 0.55) * length
        in_plane = (((x - lx) / sx) ** 2 + ((y - ly) / sy) ** 2)[0]
        along = ((z - zc) / sz)[:, 0, 0] ** 2
        for k in np.flatnonzero(along <= 1.0):  # slice by slice: no volume of floats
            labels[k][in_plane + along[k] <= 1.0] = 3

    vertebra_r = rng.uniform(13.0, 17.0) * min(1.0, fov_y / 384.0)
    vy = by + ay - fat - vertebra_r - rng.uniform(8.0, 14.0)
    vertebra = (x - bx) ** 2 + (y - vy) ** 2 <= vertebra_r**2
    labels[:, vertebra[0]] = 4
    return labels, SOFT_TISSUE_HU + rng.uniform(-4.0, 4.0)


def phenotype_strides(spec: StudySpec) -> tuple[int, int, int]:
    """Every how many voxels (slice, row, col) the phenotype grid takes: 1 at historic
    spacings (4.5-5.5 mm slices, 5.6-6.4 mm pixels), 9 for 0.7 mm pixels."""
    dz, ps = spec.slice_spacing_mm, spec.pixel_spacing_mm
    size_z, size_y, size_x = PHENOTYPE_VOXEL_MM
    return (max(1, round(size_z / dz)), max(1, round(size_y / ps)), max(1, round(size_x / ps)))


def _place_lesion(
    spec: StudySpec, labels: np.ndarray, reach_mm: float, rng: np.random.Generator
) -> tuple[tuple[int, int, int], bool]:
    """A random voxel of the phenotype grid at least `reach_mm` (plus a margin) from
    any non-soft tissue and from the first and last slice; the best available voxel
    if none is.

    At the default geometry (32 x 64 x 64, ~6 mm pixels) every lesion fits; only
    much smaller test volumes fall back, which truth.json records as
    lesion_fully_in_soft_tissue = false. On a coarser grid than the volume, distances
    measured between grid points may miss up to a grid cell of the nearest other
    tissue: that cell's diagonal is added to the margin (nothing at stride 1).
    """
    strides = phenotype_strides(spec)
    sz, sy, sx = strides
    dz, ps = spec.slice_spacing_mm, spec.pixel_spacing_mm
    sampling = (sz * dz, sy * ps, sx * ps)
    dist = ndimage.distance_transform_edt(labels[::sz, ::sy, ::sx] == 2, sampling=sampling)
    k = np.arange(0, spec.n_slices, sz)
    to_end = np.minimum(k, spec.n_slices - 1 - k) * dz
    slack = float(np.sqrt(((sz - 1) * dz) ** 2 + ((sy - 1) * ps) ** 2 + ((sx - 1) * ps) ** 2))
    room = np.minimum(dist - LESION_MARGIN_MM - slack, to_end[:, None, None] - LESION_EDGE_MM)
    candidates = np.argwhere(room >= reach_mm)
    if len(candidates) == 0:
        best = np.unravel_index(int(np.argmax(room)), room.shape)
        return (int(best[0]) * sz, int(best[1]) * sy, int(best[2]) * sx), False
    k, r, c = candidates[rng.integers(len(candidates))]
    return (int(k) * sz, int(r) * sy, int(c) * sx), True


def _lesion_box(spec: StudySpec, centre: tuple[int, int, int], semi_mm: np.ndarray) -> tuple[slice, slice, slice]:
    """The voxels the lesion's blend can touch (weight > 0 needs q < 1 + edge / 2R, so
    each offset under semi * (1 + edge / 2R)), with a voxel to spare on each side."""
    reach = semi_mm * (1.0 + LESION_EDGE_MM / (2.0 * spec.lesion_radius_mm))
    spacing = (spec.slice_spacing_mm, spec.pixel_spacing_mm, spec.pixel_spacing_mm)
    shape = (spec.n_slices, spec.rows, spec.cols)
    box = []
    for c, r, d, n in zip(centre, reach, spacing, shape, strict=True):
        half = int(np.ceil(r / d)) + 1
        box.append(slice(max(c - half, 0), min(c + half + 1, n)))
    return box[0], box[1], box[2]


def _lesion_texture(spec: StudySpec, box: tuple[slice, slice, slice], rng: np.random.Generator) -> np.ndarray:
    """Unit-variance smooth noise over the whole phenotype grid (the same draws as ever),
    read at the lesion box's voxels: the grid's own values at stride 1, a cubic spline
    through them on a coarser grid."""
    strides = phenotype_strides(spec)
    shape = (spec.n_slices, spec.rows, spec.cols)
    field = _smooth_noise(tuple(len(range(0, n, s)) for n, s in zip(shape, strides, strict=True)), TEXTURE_SIGMA, rng)
    if strides == (1, 1, 1):
        return field[box]
    axes = [np.arange(b.start, b.stop) / s for b, s in zip(box, strides, strict=True)]
    return ndimage.map_coordinates(field, np.meshgrid(*axes, indexing="ij"), order=3, mode="nearest")


def _smooth_noise(shape: tuple[int, ...], sigma: tuple[float, ...], rng: np.random.Generator) -> np.ndarray:
    """Gaussian-smoothed white noise rescaled to unit standard deviation."""
    field = ndimage.gaussian_filter(rng.standard_normal(shape), sigma=sigma)
    field /= max(float(field.std()), 1e-12)
    return field


def render_phantom(spec: StudySpec, rng: np.random.Generator) -> Phantom:
    """Render the study's HU volume with its lesion and scanner noise."""
    labels, soft_hu = _tissue_labels(spec, rng)
    levels = np.array([AIR_HU, FAT_HU, soft_hu, LUNG_HU, BONE_HU])
    hu = levels[labels]

    semi = spec.lesion_radius_mm * np.clip(np.exp(rng.normal(0.0, 0.08, 3)), 0.85, 1.18)
    semi = semi * (spec.lesion_radius_mm**3 / semi.prod()) ** (1 / 3)  # same volume as the sphere
    (k, r, c), inside = _place_lesion(spec, labels, float(semi.max()), rng)
    del labels

    box = _lesion_box(spec, (k, r, c), semi)
    z, y, x = _grid_mm(spec)
    zb, yb, xb = z[box[0]], y[:, box[1]], x[:, :, box[2]]
    q = np.sqrt(
        ((zb - z[k, 0, 0]) / semi[0]) ** 2 + ((yb - y[0, r, 0]) / semi[1]) ** 2 + ((xb - x[0, 0, c]) / semi[2]) ** 2
    )
    border_mm = (q - 1.0) * spec.lesion_radius_mm
    weight = np.clip(0.5 - border_mm / LESION_EDGE_MM, 0.0, 1.0)
    texture = spec.lesion_texture_std_hu * _lesion_texture(spec, box, rng)
    lesion_hu = soft_hu + spec.lesion_contrast_hu + texture
    hu[box] = (1.0 - weight) * hu[box] + weight * lesion_hu

    noise = _smooth_noise(hu.shape, NOISE_SIGMA, rng)
    noise *= NOISE_STD_HU * spec.noise_scale  # a site's scanner: noisier or smoother
    hu += noise
    del noise
    if spec.hu_offset:  # a site's calibration offset, over the whole volume
        hu += spec.hu_offset
    np.rint(hu, out=hu)
    np.clip(hu, -1024, 3071, out=hu)
    return Phantom(hu.astype(np.int16), (k, r, c), (float(semi[0]), float(semi[1]), float(semi[2])), inside)


def localizer_image(hu: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """A coronal projection (mean HU along y), superior at the top, as (rows, cols).

    Only a plausible-looking scout: readers must recognise and skip it.
    """
    projection = hu.astype(np.float64).mean(axis=1)[::-1]  # (slices, cols), top = superior
    src_rows = np.minimum((np.arange(rows) * projection.shape[0]) // rows, projection.shape[0] - 1)
    src_cols = np.minimum((np.arange(cols) * projection.shape[1]) // cols, projection.shape[1] - 1)
    return np.rint(projection[np.ix_(src_rows, src_cols)]).astype(np.int16)
