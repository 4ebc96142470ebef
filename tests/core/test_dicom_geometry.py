"""Geometry repair on series written here: missing slices and uneven spacing resampled
onto a uniform grid, gantry tilt corrected by in-plane shifts, exact duplicate slices
dropped, each repair recorded; beyond the policy's limits, a specific GeometryError.

The ground truth is linear along z (test_dicom_reading.ground_truth), so linear
interpolation between slices must give it back exactly: a repaired volume is compared
voxel for voxel, not "close enough"."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pydicom.uid import generate_uid

from radfusion.contract import ImageGeometry
from radfusion.dicom import GeometryPolicy, load_volume
from radfusion.errors import GeometryError
from radfusion.study import read_study_image
from tests.support.dicom_series import (
    AXIAL,
    ORIGIN_XYZ,
    ct_slice,
    cut_slices,
    enhanced_ct,
    ground_truth,
)


def _write(folder: Path, pixels, positions, **kwargs) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    common = dict(study_uid=generate_uid(), series_uid=generate_uid(), pixel_spacing=(2.0, 3.0))
    paths = []
    for i, (p, q) in enumerate(zip(pixels, positions, strict=True)):
        path = folder / f"{i:03d}.dcm"
        ct_slice(p, q, number=i + 1, **common, **kwargs).save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def test_one_missing_slice_is_filled_by_interpolation_and_recorded(tmp_path: Path) -> None:
    G = ground_truth((8, 5, 4))
    pixels, positions, _ = cut_slices(G, *AXIAL)
    keep = [k for k in range(8) if k != 4]
    volume = load_volume(_write(tmp_path, pixels[keep], positions[keep]))
    assert volume.shape == G.shape
    assert np.array_equal(volume.voxels, G.astype(np.float32))  # slice 4 = mean of 3 and 5
    assert volume.spacing == pytest.approx((5.0, 2.0, 3.0))
    assert volume.origin == pytest.approx(ORIGIN_XYZ)
    assert volume.corrections == ["slice steps 5.00-10.00 mm resampled onto a uniform 5.00 mm grid (7 -> 8 slices)"]
    assert len(volume.sop_uids) == 7  # the instances used, not the grid


def test_a_gap_wider_than_the_limit_is_rejected(tmp_path: Path) -> None:
    G = ground_truth((9, 5, 4))
    pixels, positions, _ = cut_slices(G, *AXIAL)
    keep = [0, 1, 2, 6, 7, 8]  # three slices missing: a 20 mm step
    paths = _write(tmp_path, pixels[keep], positions[keep])
    with pytest.raises(GeometryError, match=r"\(5\.00-20\.00 mm\): missing slices or gaps wider than 2 slices"):
        load_volume(paths)
    assert load_volume(paths, GeometryPolicy(max_gap_factor=4.0)).shape == G.shape


def test_uneven_spacing_is_resampled_onto_a_uniform_grid(tmp_path: Path) -> None:
    """Slices at z = 0, 5, 10, 16, 20, 25 mm holding a value linear in z."""
    z = np.array([0.0, 5.0, 10.0, 16.0, 20.0, 25.0])
    base = ground_truth((1, 5, 4))[0].astype(np.float64)
    pixels = np.stack([base + 28.0 * t for t in z])  # 140 HU per 5 mm
    positions = np.array([[ORIGIN_XYZ[0], ORIGIN_XYZ[1], ORIGIN_XYZ[2] + t] for t in z])
    volume = load_volume(_write(tmp_path, pixels, positions))
    expected = np.stack([base + 28.0 * t for t in np.arange(6) * 5.0]).astype(np.float32)
    assert volume.shape == (6, 5, 4)
    assert np.allclose(volume.voxels, expected, atol=1e-3)
    assert volume.spacing[0] == pytest.approx(5.0)
    assert volume.corrections == ["slice steps 4.00-6.00 mm resampled onto a uniform 5.00 mm grid (6 -> 6 slices)"]


def test_gantry_tilt_is_corrected_by_shifting_slices_back_onto_the_normal(tmp_path: Path) -> None:
    """Slice k starts 2 mm (one row) further along y, so its row r shows G[k, r + k]:
    the tilted acquisition of the same anatomy. Correction must give G back."""
    G = ground_truth((6, 12, 4))
    _, positions, _ = cut_slices(G, *AXIAL)
    positions[:, 1] += np.arange(6) * 2.0
    tilted = np.stack([np.concatenate([G[k, k:], np.repeat(G[k, -1:], k, axis=0)]) for k in range(6)])
    paths = _write(tmp_path, tilted, positions)
    volume = load_volume(paths)
    assert volume.corrections == ["gantry tilt of 21.8 degrees corrected: slices shifted in-plane by up to 10.0 mm"]
    assert volume.spacing == pytest.approx((5.0, 2.0, 3.0))
    assert volume.origin == pytest.approx(ORIGIN_XYZ)
    # rows 5.. lie inside every slice's field of view; above them the edge is repeated
    assert np.array_equal(volume.voxels[:, 5:], G[:, 5:].astype(np.float32))
    with pytest.raises(GeometryError, match=r"gantry tilt 21\.8 degrees.*\(limit 20 degrees\)"):
        load_volume(paths, GeometryPolicy(max_tilt_degrees=20))


def test_exact_duplicate_slices_are_dropped_and_recorded(tmp_path: Path) -> None:
    G = ground_truth((6, 5, 4))
    pixels, positions, _ = cut_slices(G, *AXIAL)
    again = [0, 1, 2, 2, 3, 4, 5, 5]
    volume = load_volume(_write(tmp_path, pixels[again], positions[again]))
    assert np.array_equal(volume.voxels, G.astype(np.float32))
    assert volume.corrections == ["dropped 2 duplicate slice(s): same position, same pixels"]
    assert len(volume.sop_uids) == 6
    with pytest.raises(GeometryError, match="duplicate slice positions with different images"):
        load_volume(sorted(tmp_path.iterdir()), GeometryPolicy(drop_identical_duplicates=False))


def test_affine_maps_voxel_indices_to_patient_positions(tmp_path: Path) -> None:
    G = ground_truth((6, 5, 4))
    pixels, positions, _ = cut_slices(G, *AXIAL)
    volume = load_volume(_write(tmp_path, pixels, positions))
    for k in range(6):
        assert volume.affine @ np.array([k, 0, 0, 1.0]) == pytest.approx([*positions[k], 1.0])
    # one row down is +2 mm in y, one column right +3 mm in x
    assert volume.affine @ np.array([0, 1, 1, 1.0]) == pytest.approx(
        [ORIGIN_XYZ[0] + 3, ORIGIN_XYZ[1] + 2, ORIGIN_XYZ[2], 1]
    )
    assert np.allclose(volume.canonical().affine, volume.affine)  # axial: already canonical


def test_multiframe_with_a_missing_frame_is_repaired_too(tmp_path: Path) -> None:
    G = ground_truth((7, 5, 4))
    pixels, positions, _ = cut_slices(G, *AXIAL)
    keep = [5, 0, 6, 2, 1, 4]  # frame 3 missing, frames shuffled
    path = tmp_path / "enhanced.dcm"
    enhanced_ct(pixels[keep], positions[keep]).save_as(path, enforce_file_format=True)
    volume = load_volume([path])
    assert np.array_equal(volume.voxels, G.astype(np.float32))
    assert volume.corrections == ["slice steps 5.00-10.00 mm resampled onto a uniform 5.00 mm grid (6 -> 7 slices)"]


def test_study_image_reports_corrections_and_honours_the_contract_limits(tmp_path: Path) -> None:
    G = ground_truth((10, 5, 4))
    pixels, positions, _ = cut_slices(G, *AXIAL)
    keep = [k for k in range(10) if k != 6]
    _write(tmp_path, pixels[keep], positions[keep])
    geometry = ImageGeometry(
        target_shape=(10, 5, 4), target_spacing=(5.0, 2.0, 3.0), window=(-400.0, 0.0), min_slices=4
    )
    study = read_study_image(tmp_path, geometry)
    assert study.corrections == ["slice steps 5.00-10.00 mm resampled onto a uniform 5.00 mm grid (9 -> 10 slices)"]
    assert study.selection["n_slices"] == 9
    strict = ImageGeometry(**{**geometry.__dict__, "max_gap_factor": 1.0})
    with pytest.raises(GeometryError):
        read_study_image(tmp_path, strict)
