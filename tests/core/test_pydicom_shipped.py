"""The DICOM reader against every file pydicom ships in its package folder.

The files are found with rglob in ``pydicom/data/test_files`` (never through
pydicom.data.get_testdata_file, which downloads what is not shipped). Every CT or MR
file with pixel data must appear in SHIPPED_CT_MR with its expected outcome, so a new
file or a changed outcome fails the test; every other file must at worst be rejected
with a RadfusionInputError, never crash the reader.

Why each outcome is right:

* All uncompressed, RLE, JPEG-LS and JPEG 2000 CT/MR files read (pyjpegls and
  pylibjpeg-openjpeg are installed): the MR_small* family holds one image in seven
  transfer syntaxes and must give identical voxels.
* 693_J2KI.dcm is lossy JPEG 2000 CT (NEMA CT1_J2KI): ~21% of it is the scanner's
  outside-field padding smeared by lossy coding, hence a minimum near -4000 HU; the
  centre is soft tissue. Only the pixels still exactly at its PixelPaddingValue
  (-2000 stored, 0.19%) are recognised as padding and become air (-1024 HU): padding
  is an exact stored value by definition, so a lossy codec defeats it.
* J2K_pixelrep_mismatch.dcm has an unsigned J2K codestream but PixelRepresentation 1
  (pydicom issue 1149); pydicom's sign correction must give its -2000 padding value,
  not a wrapped positive number.
* MR_truncated.dcm lacks the last 62 bytes of pixel data: corrupt_dicom.
* dicomdirtests CT2N/6293 and 6924 are localizers (SliceThickness 650 mm): a single
  file still reads as a one-slice volume; select_series is what keeps localizers out.
  Sagittal and coronal MR slices come out as (16, 16, 1) / (16, 1, 16) in (z, y, x).
* No multi-frame CT or MR file is shipped (the multi-frame files are RTDOSE, SC, US);
  multi-frame CT/MR is covered with generated files in test_dicom_reading.py.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.pixels import apply_modality_lut

from radfusion.dicom import find_studies, load_volume
from radfusion.errors import RadfusionInputError

TEST_FILES = Path(pydicom.__file__).parent / "data" / "test_files"

# relative path -> canonical (z, y, x) shape when it reads, else the error kind
SHIPPED_CT_MR: dict[str, tuple[int, int, int] | str] = {
    "693_J2KI.dcm": (1, 512, 512),
    "CT_small.dcm": (1, 128, 128),
    "J2K_pixelrep_mismatch.dcm": (1, 512, 512),
    "MR_small.dcm": (1, 64, 64),
    "MR_small_RLE.dcm": (1, 64, 64),
    "MR_small_bigendian.dcm": (1, 64, 64),
    "MR_small_expb.dcm": (1, 64, 64),
    "MR_small_implicit.dcm": (1, 64, 64),
    "MR_small_jp2klossless.dcm": (1, 64, 64),
    "MR_small_jpeg_ls_lossless.dcm": (1, 64, 64),
    "MR_small_padded.dcm": (1, 64, 64),
    "MR_truncated.dcm": "corrupt_dicom",
    "dicomdirtests/77654033/CT2/17106": (1, 16, 16),
    "dicomdirtests/77654033/CT2/17136": (1, 16, 16),
    "dicomdirtests/77654033/CT2/17166": (1, 16, 16),
    "dicomdirtests/77654033/CT2/17196": (1, 16, 16),
    "dicomdirtests/98892001/CT2N/6293": (16, 16, 1),
    "dicomdirtests/98892001/CT2N/6924": (16, 1, 16),
    "dicomdirtests/98892001/CT5N/2062": (1, 16, 16),
    "dicomdirtests/98892001/CT5N/2392": (1, 16, 16),
    "dicomdirtests/98892001/CT5N/2693": (1, 16, 16),
    "dicomdirtests/98892001/CT5N/3023": (1, 16, 16),
    "dicomdirtests/98892001/CT5N/3353": (1, 16, 16),
    "dicomdirtests/98892003/MR1/15820": (16, 16, 1),
    "dicomdirtests/98892003/MR1/4919": (16, 16, 1),
    "dicomdirtests/98892003/MR1/5641": (16, 16, 1),
    "dicomdirtests/98892003/MR2/15970": (16, 16, 1),
    "dicomdirtests/98892003/MR2/4950": (16, 1, 16),
    "dicomdirtests/98892003/MR2/4981": (1, 16, 16),
    "dicomdirtests/98892003/MR2/5011": (16, 16, 1),
    "dicomdirtests/98892003/MR2/6273": (1, 16, 16),
    "dicomdirtests/98892003/MR2/6605": (16, 16, 1),
    "dicomdirtests/98892003/MR2/6935": (16, 1, 16),
    "dicomdirtests/98892003/MR700/4467": (16, 16, 1),
    "dicomdirtests/98892003/MR700/4528": (16, 1, 16),
    "dicomdirtests/98892003/MR700/4558": (16, 1, 16),
    "dicomdirtests/98892003/MR700/4588": (16, 1, 16),
    "dicomdirtests/98892003/MR700/4618": (16, 16, 1),
    "dicomdirtests/98892003/MR700/4648": (16, 16, 1),
    "dicomdirtests/98892003/MR700/4678": (16, 16, 1),
    "examples_overlay.dcm": (1, 300, 484),
}

MR_SMALL_FAMILY = [name for name in SHIPPED_CT_MR if name.startswith("MR_small") and name.endswith(".dcm")]


def _all_files() -> list[Path]:
    return sorted(p for p in TEST_FILES.rglob("*") if p.is_file())


def _header(path: Path) -> pydicom.Dataset | None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return pydicom.dcmread(path, stop_before_pixels=True, force=True)
    except Exception:  # noqa: BLE001 - anything unparsable is simply not a CT/MR image
        return None


def _ct_mr_image_files() -> dict[str, Path]:
    found = {}
    for path in _all_files():
        ds = _header(path)
        if ds is None or str(ds.get("Modality", "")) not in ("CT", "MR"):
            continue
        if ds.get("Rows") and ds.get("Columns"):
            found[path.relative_to(TEST_FILES).as_posix()] = path
    return found


def _outcome(path: Path):
    try:
        return load_volume([path]).canonical()
    except RadfusionInputError as exc:
        return exc


def test_the_table_lists_exactly_the_shipped_ct_and_mr_images() -> None:
    assert TEST_FILES.is_dir()
    assert sorted(_ct_mr_image_files()) == sorted(SHIPPED_CT_MR)
    assert len(SHIPPED_CT_MR) == 41 and len(MR_SMALL_FAMILY) == 8


@pytest.mark.parametrize("name", sorted(SHIPPED_CT_MR))
def test_shipped_ct_mr_outcome(name: str) -> None:
    expected = SHIPPED_CT_MR[name]
    path = TEST_FILES / name
    outcome = _outcome(path)
    if isinstance(expected, str):
        assert isinstance(outcome, RadfusionInputError), f"{name} read but should be {expected}"
        assert outcome.kind == expected
        return
    assert not isinstance(outcome, Exception), f"{name}: {outcome.kind}: {outcome.message}"
    assert outcome.shape == expected
    assert outcome.voxels.dtype == np.float32 and np.all(np.isfinite(outcome.voxels))
    assert all(s > 0 for s in outcome.spacing)
    # canonical only reorders voxels: the values are the modality LUT of the stored
    # pixels, with stored padding values turned into air for CT
    ds = pydicom.dcmread(path)
    assert outcome.modality == ds.Modality
    expected = apply_modality_lut(ds.pixel_array, ds).astype(np.float32)
    if "PixelPaddingValue" in ds and ds.Modality == "CT":
        expected[ds.pixel_array == int(ds.PixelPaddingValue)] = -1024.0
    assert np.array_equal(np.sort(outcome.voxels.ravel()), np.sort(expected.ravel()))


def test_ct_small_voxels_are_hu_in_place() -> None:
    ds = pydicom.dcmread(TEST_FILES / "CT_small.dcm")
    assert [float(v) for v in ds.ImageOrientationPatient] == [1, 0, 0, 0, 1, 0]  # axial: no reorientation
    slope, intercept = float(ds.RescaleSlope), float(ds.RescaleIntercept)
    assert (slope, intercept) == (1.0, -1024.0)
    volume = load_volume([TEST_FILES / "CT_small.dcm"]).canonical()
    expected = ds.pixel_array.astype(np.float64) * slope + intercept
    assert np.array_equal(volume.voxels[0], expected.astype(np.float32))
    assert (volume.voxels.min(), volume.voxels.max()) == (-896.0, 1167.0)
    assert volume.spacing == pytest.approx((5.0, 0.661468, 0.661468))
    assert volume.origin == pytest.approx((-158.135803, -179.035797, -75.699997))


def test_j2k_sign_mismatch_gives_the_negative_padding_value() -> None:
    volume = load_volume([TEST_FILES / "J2K_pixelrep_mismatch.dcm"]).canonical()
    assert volume.voxels.min() == -2000.0 and volume.voxels.max() == 1896.0
    assert np.mean(volume.voxels == -2000.0) > 0.1  # the outside-FOV ring


def test_lossy_j2k_ct_is_plausible_hu() -> None:
    voxels = load_volume([TEST_FILES / "693_J2KI.dcm"]).canonical().voxels
    assert -4100 < voxels.min() < -2900 and voxels.max() < 2000
    stored = pydicom.dcmread(TEST_FILES / "693_J2KI.dcm").pixel_array
    assert np.count_nonzero(stored == -2000) == 494  # exact padding survives lossy coding here only
    assert np.all(voxels[0][stored == -2000] == -1024.0)
    assert -200 < float(np.median(voxels[0, 200:300, 200:300])) < 200  # soft tissue in the centre


def test_every_lossless_encoding_of_mr_small_gives_identical_voxels() -> None:
    reference = load_volume([TEST_FILES / "MR_small.dcm"]).canonical()
    for name in MR_SMALL_FAMILY:
        volume = load_volume([TEST_FILES / name]).canonical()
        assert np.array_equal(volume.voxels, reference.voxels), name
        assert volume.spacing == reference.spacing and volume.origin == reference.origin, name
    assert (reference.voxels.min(), reference.voxels.max()) == (127.0, 2145.0)


def test_truncated_mr_is_reported_as_corrupt_with_the_byte_counts() -> None:
    outcome = _outcome(TEST_FILES / "MR_truncated.dcm")
    assert isinstance(outcome, RadfusionInputError)
    assert outcome.message.startswith("file 1 of 1: pixel data cannot be decoded (ValueError)")
    assert "8130 vs 8192 bytes" in outcome.message


def test_reader_never_raises_anything_but_input_errors_on_any_shipped_file() -> None:
    """All ~170 files, DICOM or not, any modality: a Volume or a RadfusionInputError."""
    kinds: dict[str, int] = {}
    files = _all_files()
    assert len(files) > 150
    for path in files:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                load_volume([path]).canonical()
                kinds["read"] = kinds.get("read", 0) + 1
            except RadfusionInputError as exc:
                kinds[exc.kind] = kinds.get(exc.kind, 0) + 1
    # badVR.dcm (NumberOfFrames "1A") used to escape as a bare ValueError
    assert set(kinds) <= {"read", "corrupt_dicom", "geometry_rejected", "unsupported_pixel_data"}
    assert kinds["read"] == 40 + 3  # the CT/MR table's reads plus three single-frame RTDOSE
    # Every colour image (32) says it is colour and 3 multi-frame RTDOSE lack functional
    # groups; the two files whose codestreams no installed decoder accepts (12-bit JPEG
    # with a bad scan header, a J2K file without a header) also lack an orientation,
    # which is checked before any pixel is decoded.
    assert kinds["unsupported_pixel_data"] == 32 + 3


def test_discovery_over_the_whole_folder_does_not_raise() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        discovery = find_studies(TEST_FILES)
    skipped = {p.relative_to(TEST_FILES).as_posix() for p, _ in discovery.skipped}
    assert {"README.txt", "test1.json", "zipMR.gz", "crayons.icc", "dicomdirtests/README.txt"} <= skipped
    assert "badVR.dcm" in skipped  # its NumberOfFrames cannot be parsed
    found = {h.path.relative_to(TEST_FILES).as_posix() for s in discovery.studies.values() for h in s.instances}
    assert {"CT_small.dcm", "MR_small.dcm", "dicomdirtests/77654033/CT2/17106"} <= found
