"""Pixel values on series written here: MONOCHROME1, pixel padding, compressed
transfer syntaxes (JPEG-LS and JPEG 2000 through pydicom's encoders, JPEG baseline
through Pillow, 12-bit JPEG extended from a file pydicom ships), and MR next to CT
under the contract's accepted modalities."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.encaps import encapsulate
from pydicom.uid import JPEG2000Lossless, JPEGBaseline8Bit, JPEGLSLossless, generate_uid

from radfusion.contract import ImageGeometry
from radfusion.dicom import load_volume
from radfusion.errors import WrongModalityError
from radfusion.study import read_study_image
from tests.support.dicom_series import (
    AXIAL,
    ORIGIN_XYZ,
    ct_slice,
    cut_slices,
    ground_truth,
    write_series,
)

TEST_FILES = Path(pydicom.__file__).parent / "data" / "test_files"


def _rewrite(paths: list[Path], change) -> None:
    for path in paths:
        ds = pydicom.dcmread(path)
        change(ds)
        ds.save_as(path, enforce_file_format=True)


def test_monochrome1_mr_reads_like_the_same_picture_in_monochrome2(tmp_path: Path) -> None:
    """MONOCHROME1 stores the picture inverted; inverting over the stored range (not
    each slice's own min/max) gives the MONOCHROME2 values back for every slice."""
    G = ground_truth((6, 5, 4))
    paths, _ = write_series(tmp_path, G, modality="MR", signed=False, intercept=-1024.0)

    def to_monochrome1(ds: pydicom.Dataset) -> None:
        ds.PhotometricInterpretation = "MONOCHROME1"
        ds.PixelData = (65535 - ds.pixel_array.astype(np.int64)).astype(np.uint16).tobytes()

    _rewrite(paths, to_monochrome1)
    volume = load_volume(paths)
    assert volume.modality == "MR"
    assert np.array_equal(volume.voxels, G.astype(np.float32))


def test_monochrome1_ct_keeps_its_hounsfield_units(tmp_path: Path) -> None:
    G = ground_truth((6, 5, 4))
    paths, _ = write_series(tmp_path, G)
    _rewrite(paths, lambda ds: setattr(ds, "PhotometricInterpretation", "MONOCHROME1"))
    assert np.array_equal(load_volume(paths).voxels, G.astype(np.float32))


@pytest.mark.parametrize("modality, fill", [("CT", -1024.0), ("MR", 0.0)])
def test_pixel_padding_becomes_air_for_ct_and_zero_otherwise(tmp_path: Path, modality: str, fill: float) -> None:
    G = ground_truth((6, 5, 4)).astype(np.int32)
    padded = G.copy()
    padded[:, 0, :] = -2000  # outside the field of view, one value
    padded[:, -1, :] = -1600  # a second value inside PixelPaddingRangeLimit
    paths, _ = write_series(tmp_path, padded, modality=modality)

    def with_value(ds: pydicom.Dataset) -> None:
        ds.add_new("PixelPaddingValue", "SS", -2000)  # SS: the storage is signed

    _rewrite(paths, with_value)
    voxels = load_volume(paths).voxels
    assert np.all(voxels[:, 0, :] == fill)
    assert np.all(voxels[:, -1, :] == -1600.0)  # not padding without a range limit
    assert np.array_equal(voxels[:, 1:-1], G[:, 1:-1].astype(np.float32))

    def with_range(ds: pydicom.Dataset) -> None:
        ds.add_new("PixelPaddingRangeLimit", "SS", -1500)

    _rewrite(paths, with_range)
    voxels = load_volume(paths).voxels
    assert np.all(voxels[:, 0, :] == fill) and np.all(voxels[:, -1, :] == fill)


@pytest.mark.parametrize("syntax", [JPEGLSLossless, JPEG2000Lossless], ids=["jpeg-ls", "jpeg2000"])
def test_lossless_compressed_series_read_identically(tmp_path: Path, syntax) -> None:
    G = ground_truth((4, 32, 32))  # openjpeg refuses images smaller than 32 x 32
    paths, _ = write_series(tmp_path, G, signed=False, intercept=-1024.0)
    _rewrite(paths, lambda ds: ds.compress(syntax, ds.pixel_array))
    assert pydicom.dcmread(paths[0]).file_meta.TransferSyntaxUID == syntax
    volume = load_volume(paths)
    assert np.array_equal(volume.voxels, G.astype(np.float32))
    assert volume.origin == pytest.approx(ORIGIN_XYZ)


def test_jpeg_baseline_series_reads_within_the_lossy_error(tmp_path: Path) -> None:
    """8-bit JPEG baseline (Pillow's encoder): HU = 8 * stored - 1024."""
    rng = np.random.default_rng(0)
    stored = np.clip(rng.normal(120, 30, size=(6, 32, 32)), 0, 255).astype(np.uint8)
    stored = np.round(np.stack([np.kron(s[::4, ::4], np.ones((4, 4))) for s in stored])).astype(
        np.uint8
    )  # smooth blocks
    _, positions, _ = cut_slices(ground_truth((6, 32, 32)), *AXIAL)
    common = dict(study_uid=generate_uid(), series_uid=generate_uid(), pixel_spacing=(2.0, 3.0))
    paths = []
    for k in range(6):
        ds = ct_slice(np.zeros((32, 32)), positions[k], number=k + 1, signed=False, intercept=-1024.0, **common)
        buffer = io.BytesIO()
        Image.fromarray(stored[k], mode="L").save(buffer, format="JPEG", quality=95)
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
        ds.RescaleSlope = 8.0
        ds.PixelData = encapsulate([buffer.getvalue()])
        ds["PixelData"].VR = "OB"
        ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
        ds.save_as(tmp_path / f"{k}.dcm", enforce_file_format=True)
        paths.append(tmp_path / f"{k}.dcm")
    voxels = load_volume(paths).voxels
    expected = stored.astype(np.float32) * 8 - 1024
    error = np.abs(voxels - expected)
    assert error.max() <= 8 * 8  # within 8 grey levels anywhere
    assert error.mean() <= 8 * 1.0  # about one grey level on average


def test_shipped_12_bit_jpeg_extended_reads_as_a_ct_slice(tmp_path: Path) -> None:
    """JPGExtended.dcm (JPEG process 2/4, 12 bit) is NM; given CT geometry it must
    decode through pylibjpeg-libjpeg to the same pixels pydicom gives."""
    ds = pydicom.dcmread(TEST_FILES / "JPGExtended.dcm")
    ds.Modality = "CT"
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.ImagePositionPatient = [0, 0, 0]
    ds.PixelSpacing = [1, 1]
    ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
    del ds.NumberOfFrames
    path = tmp_path / "jpeg-extended.dcm"
    ds.save_as(path, enforce_file_format=True)
    volume = load_volume([path])
    expected = pydicom.dcmread(path).pixel_array.astype(np.float32) - 1024
    assert volume.shape == (1, *expected.shape) == (1, 1024, 256)
    assert np.array_equal(volume.voxels[0], expected)
    assert expected.std() > 0  # a real picture, not a blank decode


def test_mr_study_reads_under_an_mr_contract_and_is_refused_under_a_ct_one(tmp_path: Path) -> None:
    G = ground_truth((9, 5, 4))
    write_series(tmp_path, G, modality="MR")
    mr = ImageGeometry(
        target_shape=(9, 5, 4), target_spacing=(5.0, 2.0, 3.0), window=(-400.0, 0.0), modalities=("MR",), min_slices=4
    )
    study = read_study_image(tmp_path, mr)
    assert study.selection["modality"] == "MR" and study.image.shape == (1, 9, 5, 4)
    with pytest.raises(WrongModalityError, match=r"study has modality \['MR'\], model accepts \['CT'\]"):
        read_study_image(tmp_path, ImageGeometry(**{**mr.__dict__, "modalities": ("CT",)}))
