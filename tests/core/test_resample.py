"""Resampling to the model grid (radfusion.preprocess.resample): the toy cohorts'
geometries (zoom factors 0.6-1.3) give exactly what scipy's linear zoom gives, so no
trained model's input changes; a real CT (0.7 mm pixels to an 8 mm grid) is reduced by
block means first, so fine detail averages out instead of aliasing, and the grid it
lands on is still the one grid_to_patient describes."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from radfusion.contract import ImageGeometry
from radfusion.dicom.volume import Volume
from radfusion.preprocess import _crop_or_pad, grid_to_patient, preprocess_image, resample

AXIAL = np.array([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
AXIAL_FLIPPED = np.array([[0.0, 0.0, 1.0], [0.0, -1.0, 0.0], [-1.0, 0.0, 0.0]])
WINDOW = (-150.0, 250.0)


def _volume(voxels: np.ndarray, spacing, direction=AXIAL) -> Volume:
    return Volume(voxels.astype(np.float32), tuple(spacing), (-30.0, 12.0, -80.0), direction, "CT", [])


def _geometry(shape, spacing) -> ImageGeometry:
    return ImageGeometry(target_shape=shape, target_spacing=spacing, window=WINDOW, min_slices=1)


def _plain_zoom(volume: Volume, geometry: ImageGeometry) -> np.ndarray:
    """preprocess_image as it was before the anti-aliased reduction: canonical, scipy's
    linear zoom of the whole volume, centre crop/pad, window."""
    vol = volume.canonical()
    factors = [s / t for s, t in zip(vol.spacing, geometry.target_spacing, strict=True)]
    zoomed = ndimage.zoom(vol.voxels, factors, order=1, mode="nearest", grid_mode=True)
    low, high = geometry.window
    fitted = _crop_or_pad(zoomed, geometry.target_shape, fill=low)
    return ((np.clip(fitted, low, high) - low) / (high - low))[np.newaxis].astype(np.float32)


# ------------------------------------------------------------------ toy geometry: unchanged


@pytest.mark.parametrize("seed", range(6))
def test_toy_cohort_geometry_is_bit_identical_to_the_plain_zoom(seed: int) -> None:
    """The demo and evidence cohorts: 5.6-6.4 mm pixels, 4.5-5.5 mm slices, 5 x 8 x 8
    or 5 x 9 x 9 mm grids, either orientation."""
    rng = np.random.default_rng(seed)
    slices, size = int(rng.integers(24, 40)), 64
    spacing = (rng.uniform(4.5, 5.5), *(rng.uniform(5.6, 6.4),) * 2)
    target = (5.0, 8.0, 8.0) if seed % 2 else (5.0, 9.0, 9.0)
    direction = AXIAL if seed < 3 else AXIAL_FLIPPED
    volume = _volume(rng.uniform(-1100, 1500, (slices, size, size)), spacing, direction)
    geometry = _geometry((32, 48, 48), target)
    factors = [s / t for s, t in zip(spacing, target, strict=True)]
    assert all(0.6 < f < 1.3 for f in factors)
    assert np.array_equal(preprocess_image(volume, geometry), _plain_zoom(volume, geometry))


def test_a_factor_of_one_half_is_still_the_plain_zoom() -> None:
    voxels = np.random.default_rng(0).normal(size=(10, 40, 40)).astype(np.float32)
    factors = [1.0, 0.5, 0.5]
    assert np.array_equal(
        resample(voxels, factors), ndimage.zoom(voxels, factors, order=1, mode="nearest", grid_mode=True)
    )


# ------------------------------------------------------------------ real size: anti-aliased


def test_a_fine_checkerboard_reduces_to_its_mean_not_to_aliased_stripes() -> None:
    """+-100 HU around 50 HU alternating every 0.7 mm voxel, to an 8 mm grid: the plain
    zoom samples it into stripes of up to the full amplitude; block means give 50 HU."""
    z, y, x = np.indices((40, 256, 256))
    voxels = 50.0 + 100.0 * np.where((z + y + x) % 2, 1.0, -1.0)
    volume = _volume(voxels, (1.0, 0.7, 0.7))
    geometry = _geometry((8, 22, 22), (5.0, 8.0, 8.0))
    mean = (50.0 - WINDOW[0]) / (WINDOW[1] - WINDOW[0])
    ours = preprocess_image(volume, geometry)
    assert np.abs(ours - mean).max() < 0.005  # under 2 HU
    aliased = _plain_zoom(volume, geometry)
    assert np.abs(aliased - mean).max() > 0.1  # the plain zoom's stripes: tens of HU


def test_where_the_grid_divides_evenly_the_reduction_is_the_block_mean() -> None:
    voxels = np.random.default_rng(1).normal(0.0, 100.0, (20, 96, 96)).astype(np.float32)
    reference = voxels.astype(np.float64).reshape(5, 4, 12, 8, 12, 8).mean(axis=(1, 3, 5))
    ours = resample(voxels, [0.25, 0.125, 0.125])
    assert ours.shape == reference.shape
    assert np.allclose(ours, reference, atol=1e-3)


def test_on_smooth_anatomy_it_agrees_with_a_gaussian_prefiltered_zoom() -> None:
    """Structures a few centimetres across (what an 8 mm grid can hold) come out as a
    Gaussian anti-aliasing filter (sigma = (1/factor - 1) / 2 voxels) plus the zoom
    gives them, to within a few HU of a 300 HU contrast."""
    z, y, x = np.indices((60, 256, 256)).astype(np.float64)
    voxels = 100.0 * np.sin(2 * np.pi * y * 0.7 / 100.0) * np.cos(2 * np.pi * x * 0.7 / 120.0)
    voxels += 50.0 * np.sin(2 * np.pi * z / 40.0)
    factors = [1.0 / 5.0, 0.7 / 8.0, 0.7 / 8.0]
    ours = resample(voxels.astype(np.float32), factors)
    sigma = [(1 / f - 1) / 2 for f in factors]
    prefiltered = ndimage.gaussian_filter(voxels, sigma, mode="nearest")
    reference = ndimage.zoom(prefiltered, factors, order=1, mode="nearest", grid_mode=True)
    assert ours.shape == reference.shape == (12, 22, 22)
    inner = (slice(1, -1),) * 3  # the edges: each filter extends the volume its own way
    assert np.abs(ours[inner] - reference[inner]).max() < 6.0


@pytest.mark.parametrize("direction", [AXIAL, AXIAL_FLIPPED], ids=["axial", "axial-flipped-rows-and-slices"])
def test_grid_to_patient_stays_exact_at_real_size(direction: np.ndarray) -> None:
    """Voxels holding their own patient coordinate, 0.7 mm pixels and 1 mm slices to a
    5 x 8 x 8 mm grid (block means of 5 and 11 x 11): block means and linear
    interpolation keep a linear function, so every grid voxel away from the edges holds
    the coordinate grid_to_patient gives it."""
    shape, spacing = (70, 200, 190), (1.0, 0.7, 0.75)
    origin = np.array([-30.0, 12.0, -80.0])
    geometry = ImageGeometry(target_shape=(12, 16, 16), target_spacing=(5.0, 8.0, 8.0), window=(-1000.0, 1000.0))
    index = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), axis=-1).astype(float)
    position = origin + (index * spacing) @ direction.T
    blocks = [int(1 / (s / t)) for s, t in zip(spacing, geometry.target_spacing, strict=True)]
    for axis in range(3):
        volume = Volume(position[..., axis].astype(np.float32), spacing, tuple(origin), direction, "CT", [])
        grid = preprocess_image(volume, geometry)[0] * 2000.0 - 1000.0
        affine = grid_to_patient(volume, geometry)
        inverse = np.linalg.inv(volume.canonical().affine)
        checked = 0
        for g in np.ndindex(grid.shape):
            patient = affine @ np.array([*g, 1.0])
            source = (inverse @ patient)[:3]
            # Both neighbouring blocks inside the volume: a block away from each edge.
            inside = [k <= s <= n - 1 - 2 * k for s, n, k in zip(source, shape, blocks, strict=True)]
            if all(inside):
                assert grid[g] == pytest.approx(patient[axis], abs=2e-2), (axis, g)
                checked += 1
        assert checked > 0.5 * grid.size  # the grid lies within the volume but for its edges
