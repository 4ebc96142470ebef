"""DICOM reading on series written here with pydicom: slice ordering, orientation to
canonical (z, y, x), series selection, rejected geometry, storage variants (RLE,
signed/unsigned, multi-frame) and a whole study through read_study_image.

Every series is cut from one ground-truth patient-space array G[z, y, x] whose values
are all different, so a volume that comes back in canonical orientation must equal G
voxel for voxel, whatever the acquisition plane, slice order or file names."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import (
    RLELossless,
    generate_uid,
)

from radfusion.dicom import find_studies, load_volume, read_header, select_series
from radfusion.dicom.geometry import GeometryPolicy
from radfusion.dicom.series import SelectionRules
from radfusion.errors import (
    GeometryError,
    NoImageSeriesError,
    RadfusionInputError,
    UnsupportedPixelDataError,
    WrongModalityError,
)
from radfusion.study import read_study_image
from tests.support.dicom_series import (
    AXIAL,
    AXIAL_REVERSED,
    CORONAL,
    ORIGIN_XYZ,
    SAGITTAL,
    SPACING_ZYX,
    ct_slice,
    cut_slices,
    enhanced_ct,
    ground_truth,
    write_series,
)


def _canonical_direction() -> np.ndarray:
    # columns: patient directions of the (z, y, x) array axes
    return np.array([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])


# ------------------------------------------------------------------ slice order and orientation


def test_shuffled_files_with_random_names_are_ordered_by_position(tmp_path: Path) -> None:
    G = ground_truth((7, 5, 4))
    paths, _ = write_series(tmp_path, G, rng=np.random.default_rng(3))
    names = sorted(p.name for p in paths)
    z_by_name = [float(pydicom.dcmread(tmp_path / n).ImagePositionPatient[2]) for n in names]
    assert z_by_name != sorted(z_by_name)  # neither names nor write order give the order
    volume = load_volume(paths)
    assert volume.shape == (7, 5, 4)
    for k in range(7):
        assert np.array_equal(volume.voxels[k], G[k]), k
    assert volume.spacing == pytest.approx((5.0, 2.0, 3.0))
    assert volume.origin == pytest.approx(ORIGIN_XYZ)
    # sop uids follow the slice order (InstanceNumber k+1 was written for slice k)
    uid_of = {int(ds.InstanceNumber): str(ds.SOPInstanceUID) for ds in map(pydicom.dcmread, paths)}
    assert volume.sop_uids == [uid_of[k + 1] for k in range(7)]
    assert volume.voxels.dtype == np.float32


@pytest.mark.parametrize(
    "orientation, native_shape",
    [(AXIAL, (6, 5, 4)), (AXIAL_REVERSED, (6, 5, 4)), (SAGITTAL, (4, 6, 5)), (CORONAL, (5, 6, 4))],
    ids=["axial", "axial-reversed-normal", "sagittal", "coronal"],
)
def test_every_acquisition_plane_reaches_canonical_zyx(tmp_path: Path, orientation, native_shape) -> None:
    G = ground_truth((6, 5, 4))
    paths, _ = write_series(tmp_path, G, orientation)
    volume = load_volume(paths)
    assert volume.shape == native_shape  # (slices, rows, cols) of the acquisition
    canonical = volume.canonical()
    assert canonical.shape == G.shape
    assert np.array_equal(canonical.voxels, G.astype(np.float32))
    assert canonical.spacing == pytest.approx(SPACING_ZYX)
    assert canonical.origin == pytest.approx(ORIGIN_XYZ)
    assert np.allclose(canonical.direction, _canonical_direction())
    assert canonical.voxels.flags["C_CONTIGUOUS"]


def test_reversed_normal_series_is_stored_top_down_before_canonical(tmp_path: Path) -> None:
    """Sorting is along the slice normal (-z here), so the raw volume runs from the
    highest z down; canonical() turns it round."""
    G = ground_truth((6, 5, 4))
    volume = load_volume(write_series(tmp_path, G, AXIAL_REVERSED)[0])
    assert np.array_equal(volume.voxels[0], np.flipud(G[-1]))  # rows along -y
    assert volume.origin[2] == pytest.approx(ORIGIN_XYZ[2] + 5 * 5.0)


# ------------------------------------------------------------------ rejected geometry


def _axial_slices(n: int = 6) -> tuple[np.ndarray, np.ndarray, dict]:
    """Pixels and positions of an n-slice axial series, for tests that then break it."""
    pixels, positions, _ = cut_slices(ground_truth((n, 5, 4)), *AXIAL)
    common = dict(study_uid=generate_uid(), series_uid=generate_uid())
    return pixels, positions.copy(), common


def _write(tmp_path: Path, datasets: list[Dataset]) -> list[Path]:
    paths = []
    for i, ds in enumerate(datasets):
        path = tmp_path / f"{i:03d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def test_duplicate_positions_with_different_images_are_rejected(tmp_path: Path) -> None:
    pixels, positions, common = _axial_slices()
    positions[3] = positions[2]
    paths = _write(
        tmp_path,
        [ct_slice(p, q, number=i + 1, **common) for i, (p, q) in enumerate(zip(pixels, positions, strict=True))],
    )
    with pytest.raises(GeometryError, match="duplicate slice positions with different images"):
        load_volume(paths)


def test_missing_slice_is_rejected_as_a_gap_when_gaps_may_not_be_filled(tmp_path: Path) -> None:
    """Strict policy; the default fills it (test_dicom_geometry.py)."""
    pixels, positions, common = _axial_slices(n=8)
    keep = [k for k in range(8) if k != 4]
    paths = _write(tmp_path, [ct_slice(pixels[k], positions[k], number=k + 1, **common) for k in keep])
    with pytest.raises(GeometryError, match=r"non-uniform slice spacing \(5\.00-10\.00 mm\): missing slices or gaps"):
        load_volume(paths, GeometryPolicy(max_gap_factor=1.0))


def test_gantry_tilt_shear_is_rejected_when_tilt_may_not_be_corrected(tmp_path: Path) -> None:
    pixels, positions, common = _axial_slices()
    positions[:, 1] += np.arange(len(positions)) * 1.5  # y drifts 1.5 mm per 5 mm slice
    paths = _write(
        tmp_path,
        [ct_slice(p, q, number=i + 1, **common) for i, (p, q) in enumerate(zip(pixels, positions, strict=True))],
    )
    with pytest.raises(GeometryError, match="sheared \\(gantry tilt 16\\.7 degrees\\)"):
        load_volume(paths, GeometryPolicy(max_tilt_degrees=0))


def test_mixed_orientations_are_rejected(tmp_path: Path) -> None:
    pixels, positions, common = _axial_slices()
    datasets = [ct_slice(p, q, number=i + 1, **common) for i, (p, q) in enumerate(zip(pixels, positions, strict=True))]
    datasets[2].ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 0.9962, -0.0872]  # tilted 5 degrees
    with pytest.raises(GeometryError, match="mixed slice orientations"):
        load_volume(_write(tmp_path, datasets))


def test_mixed_slice_sizes_and_spacings_are_rejected(tmp_path: Path) -> None:
    pixels, positions, common = _axial_slices()
    sizes = [ct_slice(p, q, number=i + 1, **common) for i, (p, q) in enumerate(zip(pixels, positions, strict=True))]
    sizes[1] = ct_slice(pixels[1][:, :3], positions[1], number=2, **common)
    (tmp_path / "sizes").mkdir()
    with pytest.raises(GeometryError, match="slices of different sizes"):
        load_volume(_write(tmp_path / "sizes", sizes))
    spacings = [ct_slice(p, q, number=i + 1, **common) for i, (p, q) in enumerate(zip(pixels, positions, strict=True))]
    spacings[4].PixelSpacing = [2.0, 3.5]
    (tmp_path / "spacings").mkdir()
    with pytest.raises(GeometryError, match="slices with different PixelSpacing"):
        load_volume(_write(tmp_path / "spacings", spacings))


# ------------------------------------------------------------------ storage variants


def test_rle_compressed_series_reads_identically(tmp_path: Path) -> None:
    G = ground_truth((6, 5, 4))
    plain_paths, _ = write_series(tmp_path / "plain", G)
    rle_paths = []
    (tmp_path / "rle").mkdir()
    for path in plain_paths:
        ds = pydicom.dcmread(path)
        ds.compress(RLELossless, ds.pixel_array)
        out = tmp_path / "rle" / path.name
        ds.save_as(out, enforce_file_format=True)
        rle_paths.append(out)
    assert pydicom.dcmread(rle_paths[0]).file_meta.TransferSyntaxUID == RLELossless
    plain, rle = load_volume(plain_paths), load_volume(rle_paths)
    assert np.array_equal(plain.voxels, rle.voxels)
    assert np.array_equal(rle.voxels, G.astype(np.float32))
    assert rle.spacing == plain.spacing and rle.origin == plain.origin


@pytest.mark.parametrize("intercept", [-1024.0, -1000.0, -2048.0])
def test_signed_and_unsigned_storage_give_the_same_hu(tmp_path: Path, intercept: float) -> None:
    G = ground_truth((5, 5, 4))
    signed_paths, _ = write_series(tmp_path / "s", G, signed=True, intercept=0.0)
    unsigned_paths, _ = write_series(tmp_path / "u", G, signed=False, intercept=intercept)
    stored = pydicom.dcmread(unsigned_paths[0])
    assert stored.PixelRepresentation == 0 and stored.pixel_array.min() >= 0
    signed, unsigned = load_volume(signed_paths), load_volume(unsigned_paths)
    assert np.array_equal(signed.voxels, unsigned.voxels)
    assert np.array_equal(unsigned.voxels, G.astype(np.float32))


def test_rescale_slope_is_applied(tmp_path: Path) -> None:
    G = ground_truth((5, 5, 4))
    paths, _ = write_series(tmp_path, G, signed=True, intercept=0.0)
    for path in paths:  # store 2 * (HU - 10) with slope 0.5 and intercept 10
        ds = pydicom.dcmread(path)
        raw = ds.pixel_array.astype(np.int16)
        ds.RescaleSlope = 0.5
        ds.RescaleIntercept = 10.0
        ds.PixelData = (raw * 2).astype(np.int16).tobytes()
        ds.save_as(path, enforce_file_format=True)
    assert np.array_equal(load_volume(paths).voxels, G.astype(np.float32) + 10.0)


def test_enhanced_multiframe_ct_is_read_in_hu_and_position_order(tmp_path: Path) -> None:
    """Enhanced CT carries its rescale in PixelValueTransformationSequence, not at the
    top level: HU must still come out, with frames ordered by position."""
    G = ground_truth((6, 5, 4))
    pixels, positions, _ = cut_slices(G, *AXIAL)
    shuffle = np.array([3, 0, 5, 1, 4, 2])
    path = tmp_path / "enhanced.dcm"
    enhanced_ct(pixels[shuffle], positions[shuffle]).save_as(path, enforce_file_format=True)
    volume = load_volume([path])
    assert volume.shape == G.shape
    assert np.array_equal(volume.voxels, G.astype(np.float32))
    assert volume.spacing == pytest.approx(SPACING_ZYX)
    assert volume.origin == pytest.approx(ORIGIN_XYZ)
    header = read_header(path)
    assert header.n_frames == 6
    assert select_series([header], min_slices=6).reason == "CT series with 6 slices"


def test_enhanced_multiframe_with_per_frame_rescale(tmp_path: Path) -> None:
    G = ground_truth((6, 5, 4))
    pixels, positions, _ = cut_slices(G, *AXIAL)
    shuffle = np.array([5, 2, 0, 4, 1, 3])
    intercepts = [-1024.0, -1000.0, -900.0, -1100.0, -800.0, -1024.0]
    path = tmp_path / "enhanced.dcm"
    enhanced_ct(pixels[shuffle], positions[shuffle], per_frame_intercepts=intercepts).save_as(
        path, enforce_file_format=True
    )
    assert np.array_equal(load_volume([path]).voxels, G.astype(np.float32))


def test_multiframe_without_functional_groups_is_rejected(tmp_path: Path) -> None:
    G = ground_truth((4, 5, 4))
    path = tmp_path / "mf.dcm"
    enhanced_ct(G, np.zeros((4, 3)), functional_groups=False, modality="MR").save_as(path, enforce_file_format=True)
    with pytest.raises(UnsupportedPixelDataError, match="without functional groups has no slice geometry"):
        load_volume([path])


def test_series_of_several_multiframe_files_is_rejected_not_crashed(tmp_path: Path) -> None:
    G = ground_truth((6, 5, 4))
    pixels, positions, _ = cut_slices(G, *AXIAL)
    paths = []
    for i, part in enumerate((slice(0, 3), slice(3, 6))):
        path = tmp_path / f"part{i}.dcm"
        enhanced_ct(pixels[part], positions[part]).save_as(path, enforce_file_format=True)
        paths.append(path)
    with pytest.raises(UnsupportedPixelDataError, match="multi-frame"):
        load_volume(paths)


@pytest.mark.filterwarnings("ignore:Invalid value for VR IS")
def test_malformed_number_of_frames_is_a_corrupt_file_not_a_crash(tmp_path: Path) -> None:
    G = ground_truth((1, 5, 4))
    ds = ct_slice(G[0], ORIGIN_XYZ, study_uid=generate_uid(), series_uid=generate_uid(), number=1)
    ds.NumberOfFrames = "11"
    path = tmp_path / "bad.dcm"
    ds.save_as(path, enforce_file_format=True)
    # patch the value to an IS that is not an integer, as in pydicom's badVR.dcm
    element = b"\x28\x00\x08\x00IS\x02\x00"
    data = path.read_bytes()
    assert data.count(element + b"11") == 1
    path.write_bytes(data.replace(element + b"11", element + b"1A"))
    with pytest.raises(RadfusionInputError) as info:
        load_volume([path])
    assert info.value.kind == "corrupt_dicom"
    assert info.value.message == "file 1 of 1: invalid NumberOfFrames"
    # discovery skips such a file instead of failing the folder
    assert find_studies(tmp_path).skipped == [(path, "not a readable DICOM file: invalid NumberOfFrames")]


# ------------------------------------------------------------------ discovery and selection


def test_selection_skips_localizer_and_short_series_and_says_why(tmp_path: Path) -> None:
    study = generate_uid()
    G = ground_truth((9, 5, 4))
    _, main_uid = write_series(tmp_path / "main", G, study_uid=study)
    _, short_uid = write_series(tmp_path / "short", ground_truth((2, 5, 4)), study_uid=study)
    _, scout_uid = write_series(
        tmp_path / "scout", ground_truth((1, 5, 4)), study_uid=study, image_type=("ORIGINAL", "PRIMARY", "LOCALIZER")
    )
    # a longer series of derived images (e.g. MPR) must not win on slice count
    _, derived_uid = write_series(
        tmp_path / "derived", ground_truth((12, 5, 4)), study_uid=study, image_type=("DERIVED", "SECONDARY", "AXIAL")
    )
    (tmp_path / "notes.txt").write_text("not DICOM")
    discovery = find_studies(tmp_path)
    assert list(discovery.studies) == [study]
    assert discovery.skipped == [(tmp_path / "notes.txt", "not a readable DICOM file: InvalidDicomError")]
    headers = discovery.studies[study].instances
    assert len(headers) == 9 + 2 + 1 + 12
    choice = select_series(headers, modalities=("CT",), min_slices=4)
    assert choice.series_uid == main_uid
    assert choice.reason == "CT series with 9 slices"
    assert {p.parent.name for p in (h.path for h in choice.instances)} == {"main"}
    assert choice.rejected == {
        short_uid: "only 2 slice(s), fewer than 4",
        scout_uid: "localizer image type (localizer/scout/derived)",
        derived_uid: "derived image type (localizer/scout/derived)",
    }


def test_among_candidates_most_slices_then_thinnest_wins_when_asked(tmp_path: Path) -> None:
    """The "most_slices" preference; the default "thinnest" is in test_dicom_selection.py."""
    most = SelectionRules(min_slices=4, prefer="most_slices")
    study = generate_uid()
    _, thick = write_series(tmp_path / "a", ground_truth((8, 5, 4)), study_uid=study)
    _, longer = write_series(tmp_path / "b", ground_truth((10, 5, 4)), study_uid=study)
    headers = find_studies(tmp_path).studies[study].instances
    choice = select_series(headers, rules=most)
    assert choice.series_uid == longer
    assert choice.reason == "CT series with 10 slices, most slices, then thinnest of 2 candidates"
    assert choice.rejected == {}
    # same count: the thinner slices win
    for path in (tmp_path / "a").iterdir():
        ds = pydicom.dcmread(path)
        ds.SliceThickness = 1.0
        ds.save_as(path, enforce_file_format=True)
    _, also_ten_thin = write_series(tmp_path / "c", ground_truth((10, 5, 4)), study_uid=study)
    for path in (tmp_path / "c").iterdir():
        ds = pydicom.dcmread(path)
        ds.SliceThickness = 2.0
        ds.save_as(path, enforce_file_format=True)
    headers = find_studies(tmp_path).studies[study].instances
    assert select_series(headers, rules=most).series_uid == also_ten_thin
    # the default prefers the 1 mm series even though it has fewer slices
    assert select_series(headers, min_slices=4).series_uid == thick


def test_only_short_or_localizer_series_raise_no_image_series(tmp_path: Path) -> None:
    study = generate_uid()
    write_series(tmp_path / "short", ground_truth((2, 5, 4)), study_uid=study)
    write_series(
        tmp_path / "scout", ground_truth((1, 5, 4)), study_uid=study, image_type=("ORIGINAL", "PRIMARY", "LOCALIZER")
    )
    headers = find_studies(tmp_path).studies[study].instances
    with pytest.raises(NoImageSeriesError) as info:
        select_series(headers, min_slices=8)
    assert info.value.message == (
        "no usable image series (localizer image type (localizer/scout/derived); only 2 slice(s), fewer than 8)"
    )


def test_mr_only_study_is_wrong_modality_for_a_ct_model(tmp_path: Path) -> None:
    study = generate_uid()
    write_series(tmp_path, ground_truth((9, 5, 4)), study_uid=study, modality="MR")
    headers = find_studies(tmp_path).studies[study].instances
    with pytest.raises(WrongModalityError) as info:
        select_series(headers, modalities=("CT",), min_slices=4)
    assert info.value.kind == "wrong_modality" and info.value.http_status == 422
    assert info.value.message == "study has modality ['MR'], model accepts ['CT']"
    # the same study is fine for a model that accepts MR
    assert select_series(headers, modalities=("CT", "MR"), min_slices=4).reason == "MR series with 9 slices"


def test_find_studies_groups_by_study_whatever_the_folders(tmp_path: Path) -> None:
    a, b = generate_uid(), generate_uid()
    write_series(tmp_path / "x" / "1", ground_truth((3, 5, 4)), study_uid=a)
    write_series(tmp_path / "x" / "2", ground_truth((4, 5, 4)), study_uid=b)
    write_series(tmp_path / "y", ground_truth((2, 5, 4)), study_uid=a)
    (tmp_path / "y" / ".hidden").write_bytes(b"ignored")
    (tmp_path / "y" / "empty.dcm").write_bytes(b"")
    discovery = find_studies(tmp_path)
    assert {uid: len(s.instances) for uid, s in discovery.studies.items()} == {a: 5, b: 4}
    assert [p.name for p, _ in discovery.skipped] == ["empty.dcm"]
    assert discovery.studies[a].patient_id == "TEST0001"


# ------------------------------------------------------------------ a whole study


def test_read_study_image_on_a_synthetic_study(tiny_cohort: Path, tiny_contract) -> None:
    truth = json.loads((tiny_cohort / "truth.json").read_text())
    patient = truth["patients"][0]
    discovery = find_studies(tiny_cohort / "dicom")
    folders = {
        h.path.relative_to(tiny_cohort / "dicom").parts[0]
        for h in discovery.studies[patient["study_instance_uid"]].instances
    }
    assert len(folders) == 1
    study = read_study_image(tiny_cohort / "dicom" / folders.pop(), tiny_contract.image)
    assert study.image.shape == (1, *tiny_contract.image.target_shape) == (1, 8, 16, 16)
    assert study.image.dtype == np.float32
    assert study.image.min() >= 0.0 and study.image.max() <= 1.0
    assert study.image.min() == 0.0 and study.image.max() > 0.5  # air and tissue both present
    assert study.study_uid == patient["study_instance_uid"]
    assert study.series_uid == patient["main_series_instance_uid"]  # not the localizer
    assert study.patient_id == patient["patient_id"]
    assert study.series_reason == "CT series with 10 slices"
    assert len(study.sop_uids) == 10 and study.skipped == []
