"""The saliency map as a DICOM Parametric Map on the source series' geometry
(radfusion.serving.reports.saliency_map): written, validated by dciodvfy, read back by
highdicom, its frames checked against the source slices one by one, and its maximum
found where the model-grid saliency peaks, for the synthetic study's axial series, an
oblique series with other spacings, an enhanced multi-frame image and the real ONNX
model's saliency."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid

from radfusion.contract import ImageGeometry
from radfusion.dicom import find_studies, load_volume
from radfusion.errors import GeometryError, UnsupportedPixelDataError
from radfusion.explain import ExplainSettings, case_image_saliency
from radfusion.predictor import prepare_case
from radfusion.preprocess import grid_to_patient
from radfusion.runtime import OnnxModel
from radfusion.serving.reports.saliency_map import (
    MAP_SERIES_NUMBER,
    build_saliency_map,
    saliency_values,
    source_frames,
)
from radfusion.serving.reports.sr import SR_SERIES_NUMBER, new_uid
from tests.support.dicom_series import ct_slice, enhanced_ct
from tests.support.validators import assert_dciodvfy_valid

PARAMETRIC_MAP = "1.2.840.10008.5.1.4.1.1.30"


def _headers(paths) -> list[pydicom.Dataset]:
    return [pydicom.dcmread(p, stop_before_pixels=True) for p in paths]


def _blob(shape, centre, sigma: float = 1.0) -> np.ndarray:
    """A Gaussian on the model grid peaking at ``centre`` (grid index)."""
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), axis=-1)
    return np.exp(-((grid - np.asarray(centre)) ** 2).sum(-1) / (2 * sigma**2)).astype(np.float32)


def _written(pm, tmp_path: Path) -> pydicom.Dataset:
    assert_dciodvfy_valid(pm, tmp_path)  # writes it, then 0 errors
    return pydicom.dcmread(tmp_path / f"{pm.SOPInstanceUID}.dcm")


def _pixel_mm(ds: pydicom.Dataset, frame: int, row: int, col: int) -> np.ndarray:
    """Patient position of a pixel centre of a frame of the map, from the map's own
    geometry (what a viewer uses)."""
    shared = ds.SharedFunctionalGroupsSequence[0]
    iop = np.asarray(shared.PlaneOrientationSequence[0].ImageOrientationPatient, dtype=float)
    dr, dc = (float(v) for v in shared.PixelMeasuresSequence[0].PixelSpacing)
    position = ds.PerFrameFunctionalGroupsSequence[frame].PlanePositionSequence[0].ImagePositionPatient
    return np.asarray(position, dtype=float) + col * dc * iop[:3] + row * dr * iop[3:]


def _voxel_diagonal(spacing) -> float:
    return math.sqrt(sum(s * s for s in spacing))


def _assert_frames_follow_the_source(ds: pydicom.Dataset, headers: list[pydicom.Dataset]) -> None:
    """One frame per source slice, each referencing its slice, at its position, with
    its orientation and spacing."""
    by_uid = {h.SOPInstanceUID: h for h in headers}
    assert int(ds.NumberOfFrames) == len(headers)
    assert (ds.Rows, ds.Columns) == (headers[0].Rows, headers[0].Columns)
    shared = ds.SharedFunctionalGroupsSequence[0]
    np.testing.assert_allclose(
        shared.PlaneOrientationSequence[0].ImageOrientationPatient, headers[0].ImageOrientationPatient, atol=1e-6
    )
    np.testing.assert_allclose(shared.PixelMeasuresSequence[0].PixelSpacing, headers[0].PixelSpacing, rtol=1e-6)
    referenced_uids = []
    for frame in ds.PerFrameFunctionalGroupsSequence:
        (referenced,) = frame.DerivationImageSequence[0].SourceImageSequence
        referenced_uids.append(referenced.ReferencedSOPInstanceUID)
        source = by_uid[referenced.ReferencedSOPInstanceUID]
        position = frame.PlanePositionSequence[0].ImagePositionPatient
        np.testing.assert_allclose(position, source.ImagePositionPatient, atol=1e-4)
    assert sorted(referenced_uids) == sorted(by_uid)
    assert ds.FrameOfReferenceUID == headers[0].FrameOfReferenceUID
    assert ds.StudyInstanceUID == headers[0].StudyInstanceUID
    assert ds.SeriesInstanceUID != headers[0].SeriesInstanceUID
    (series,) = ds.ReferencedSeriesSequence
    assert series.SeriesInstanceUID == headers[0].SeriesInstanceUID
    assert {i.ReferencedSOPInstanceUID for i in series.ReferencedInstanceSequence} == {
        h.SOPInstanceUID for h in headers
    }


def _assert_peak_where_grid_peaks(ds, headers, affine, centre, grid_spacing) -> None:
    values = saliency_values(ds)
    k, r, c = np.unravel_index(int(np.argmax(values)), values.shape)
    found = _pixel_mm(ds, k, r, c)
    expected = (np.asarray(affine) @ np.append(centre, 1.0))[:3]
    frames = source_frames(headers)
    slice_step = float(np.median(np.diff(frames.positions @ np.cross(frames.row_dir, frames.col_dir))))
    allowed = _voxel_diagonal((slice_step, *frames.pixel_spacing)) + _voxel_diagonal(grid_spacing)
    assert np.linalg.norm(found - expected) <= allowed, (found, expected, allowed)
    assert values.max() > 0.5  # the blob's peak (1.0) is sampled close by, not smoothed away


@pytest.fixture(scope="module")
def scored_series(tiny_cohort: Path, tiny_contract):
    """The headers and grid affine of the first synthetic study's scored series."""
    study = sorted(find_studies(tiny_cohort / "dicom").studies.values(), key=lambda s: s.patient_id)[0]
    paths = [h.path for h in study.instances]
    case = prepare_case(tiny_contract, paths, None)
    scored = set(case.study.sop_uids)
    headers = [h for h in _headers(paths) if h.SOPInstanceUID in scored]
    return case, headers


def test_map_on_the_scored_series_is_valid_and_follows_its_slices(scored_series, tiny_contract, tmp_path: Path):
    case, headers = scored_series
    shape = tiny_contract.image.target_shape
    centre = (4.0, 9.0, 6.0)
    pm = build_saliency_map(
        _blob(shape, centre), case.study.grid_affine, headers, new_uid(), new_uid(), tiny_contract, instance_number=2
    )
    ds = _written(pm, tmp_path)
    assert ds.SOPClassUID == PARAMETRIC_MAP and ds.Modality == "OT"
    assert ds.SeriesNumber == MAP_SERIES_NUMBER != SR_SERIES_NUMBER and ds.InstanceNumber == 2
    assert ds.PatientID == headers[0].PatientID and ds.PatientName == headers[0].PatientName
    assert ds.ContentLabel == "SALIENCY" and ds.ContentQualification == "RESEARCH"
    read = hd.pm.ParametricMap.from_dataset(ds)
    assert read.SOPInstanceUID == pm.SOPInstanceUID
    _assert_frames_follow_the_source(ds, headers)
    _assert_peak_where_grid_peaks(ds, headers, case.study.grid_affine, centre, tiny_contract.image.target_spacing)


def _oblique_series(folder: Path) -> list[Path]:
    """A coronal-like series turned 20 degrees about the body axis: 14 slices 4 mm
    apart, 24 x 20 pixels of 2.5 x 1.5 mm, origin off-centre."""
    angle = math.radians(20)
    row_dir = (math.cos(angle), math.sin(angle), 0.0)
    col_dir = (0.0, 0.0, -1.0)
    normal = np.cross(row_dir, col_dir)
    study_uid, series_uid, frame_uid = generate_uid(), generate_uid(), generate_uid()
    rng = np.random.default_rng(3)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for k in rng.permutation(14):  # written in shuffled order
        position = np.array([-20.0, 35.0, 60.0]) + 4.0 * k * normal
        hu = rng.integers(-100, 200, size=(24, 20)).astype(np.int16)
        ds = ct_slice(
            hu,
            position,
            (row_dir, col_dir),
            (2.5, 1.5),
            study_uid=study_uid,
            series_uid=series_uid,
            number=int(k) + 1,
            image_type=("ORIGINAL", "PRIMARY", "OTHER"),
        )
        ds.FrameOfReferenceUID = frame_uid  # one frame of reference for the series
        ds.PatientName = "Oblique^Test"
        paths.append(folder / f"{k:03d}.dcm")
        ds.save_as(paths[-1], enforce_file_format=True)
    return paths


def test_oblique_series_with_other_spacings(tiny_contract, tmp_path: Path):
    paths = _oblique_series(tmp_path / "oblique")
    # A grid smaller than the series along two axes (cropped) and larger along one (padded).
    geometry = ImageGeometry(target_shape=(10, 12, 12), target_spacing=(3.0, 4.0, 2.0), min_slices=4)
    affine = grid_to_patient(load_volume(paths), geometry)
    headers = _headers(paths)
    centre = (6.0, 4.0, 7.0)
    pm = build_saliency_map(_blob(geometry.target_shape, centre), affine, headers, new_uid(), new_uid(), tiny_contract)
    ds = _written(pm, tmp_path)
    _assert_frames_follow_the_source(ds, headers)
    _assert_peak_where_grid_peaks(ds, headers, affine, centre, geometry.target_spacing)
    # Pixels outside the model grid carry no saliency: exactly 0.
    values = saliency_values(ds)
    frames = source_frames(headers)
    inverse = np.linalg.inv(affine)
    outside = 0
    for k in range(len(headers)):
        for r, c in ((0, 0), (23, 19), (12, 0), (0, 10)):
            index = (inverse @ np.append(_pixel_mm(ds, k, r, c), 1.0))[:3]
            if np.any(index < -0.5) or np.any(index > np.asarray(geometry.target_shape) - 0.5):
                outside += 1
                assert values[k, r, c] == 0.0
    assert outside > 0 and frames.rows == 24


def test_enhanced_multiframe_source(tiny_contract, tmp_path: Path):
    positions = np.array([[-40.0, 25.0, -120.0 + 5.0 * k] for k in range(6)])
    source = enhanced_ct(np.zeros((6, 5, 4), dtype=np.float32), positions)
    source.FrameOfReferenceUID = generate_uid()
    source.PatientID, source.PatientName = "MF0001", "Multi^Frame"
    source.PatientSex = "U"  # invalid for the VR: normalised to empty, never copied raw
    source.StudyDate = "2020-03-04"
    path = tmp_path / "enhanced.dcm"
    source.save_as(path, enforce_file_format=True)
    header = pydicom.dcmread(path, stop_before_pixels=True)
    geometry = ImageGeometry(target_shape=(6, 5, 4), target_spacing=(5.0, 2.0, 3.0), min_slices=4)
    affine = grid_to_patient(load_volume([path]), geometry)
    centre = (3.0, 2.0, 1.0)
    pm = build_saliency_map(_blob(geometry.target_shape, centre), affine, [header], new_uid(), new_uid(), tiny_contract)
    ds = _written(pm, tmp_path)
    assert int(ds.NumberOfFrames) == 6 and ds.PatientSex == "" and ds.StudyDate == "20200304"
    referenced_frames = []
    for frame in ds.PerFrameFunctionalGroupsSequence:
        (referenced,) = frame.DerivationImageSequence[0].SourceImageSequence
        assert referenced.ReferencedSOPInstanceUID == source.SOPInstanceUID
        referenced_frames.append(int(referenced.ReferencedFrameNumber))
        np.testing.assert_allclose(
            frame.PlanePositionSequence[0].ImagePositionPatient, positions[referenced_frames[-1] - 1], atol=1e-4
        )
    assert sorted(referenced_frames) == [1, 2, 3, 4, 5, 6]
    # The grid is the series itself here: the blob's grid peak is a source pixel.
    values = saliency_values(ds)
    k, r, c = np.unravel_index(int(np.argmax(values)), values.shape)
    np.testing.assert_allclose(_pixel_mm(ds, k, r, c), (affine @ np.append(centre, 1.0))[:3], atol=1e-6)
    assert values.max() == pytest.approx(1.0, abs=1e-4)


def test_sources_without_usable_geometry_are_refused(scored_series, tiny_contract):
    case, headers = scored_series
    saliency = np.zeros(tiny_contract.image.target_shape, dtype=np.float32)
    turned = [copy.deepcopy(h) for h in headers]
    turned[1].ImageOrientationPatient = [0.0, 1.0, 0.0, 0.0, 0.0, -1.0]
    with pytest.raises(GeometryError, match="mixed slice orientations"):
        build_saliency_map(saliency, case.study.grid_affine, turned, new_uid(), new_uid(), tiny_contract)
    missing = [copy.deepcopy(h) for h in headers]
    del missing[0].PixelSpacing
    with pytest.raises(GeometryError, match="PixelSpacing"):
        build_saliency_map(saliency, case.study.grid_affine, missing, new_uid(), new_uid(), tiny_contract)
    frames = [copy.deepcopy(h) for h in headers[:2]]
    for ds in frames:
        ds.NumberOfFrames = 3
    with pytest.raises(UnsupportedPixelDataError, match="one multi-frame image"):
        build_saliency_map(saliency, case.study.grid_affine, frames, new_uid(), new_uid(), tiny_contract)


def test_the_models_saliency_on_the_source(scored_series, tiny_onnx_model: Path, tmp_path: Path):
    """The real ONNX model's occlusion saliency: the map's maximum equals the grid
    map's and lies within a grid voxel of where the grid map reaches it."""
    case, headers = scored_series
    model = OnnxModel(tiny_onnx_model, device="cpu")
    settings = ExplainSettings(max_windows=64)
    found = case_image_saliency(model.logits, model.contract, case.inputs, settings)
    assert found is not None and len(found.effects) <= 64
    grid = found.voxel_map
    assert np.ptp(grid) > 0  # the untrained model still responds to the image
    pm = build_saliency_map(grid, case.study.grid_affine, headers, new_uid(), new_uid(), model.contract)
    ds = _written(pm, tmp_path)
    values = saliency_values(ds)
    step = float(np.ptp([min(0.0, grid.min()), max(0.0, grid.max())])) / 65535
    assert values.max() == pytest.approx(float(grid.max()), abs=2 * step)
    k, r, c = np.unravel_index(int(np.argmax(values)), values.shape)
    index = (np.linalg.inv(case.study.grid_affine) @ np.append(_pixel_mm(ds, k, r, c), 1.0))[:3]
    at_max = np.argwhere(grid >= grid.max() - 2 * step)
    assert np.min(np.linalg.norm(at_max - index, axis=1)) <= math.sqrt(3), (index, at_max)


def test_no_image_no_saliency(scored_series, tiny_onnx_model: Path):
    case, _ = scored_series
    model = OnnxModel(tiny_onnx_model, device="cpu")
    inputs = case.inputs
    without = type(inputs)(inputs.image, inputs.genomics, inputs.clinical, inputs.presence, ["expression"])
    assert case_image_saliency(model.logits, model.contract, without) is None
