"""radfusion.limits: the physical bounds accept every real series we have (pydicom's
shipped CT/MR files, the synthetic cohort), the study budget is spent before each
piece of work (files, stored bytes, decoded bytes, voxels, seconds) through
read_study_image and prepare_case, and the zip-bomb ratio spares real DICOM."""

from __future__ import annotations

import time
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pydicom
import pytest
from scipy import ndimage

from radfusion.contract import ImageGeometry, ModelContract
from radfusion.dicom.checks import check_instance, pixel_spacing, rescale
from radfusion.dicom.sources import list_inputs, read_dataset
from radfusion.errors import RadfusionInputError, StudyOverBudgetError
from radfusion.limits import BOUNDS, GIB, MAX_ZIP_RATIO, ZIP_RATIO_MIN_BYTES, StudyBudget
from radfusion.predictor import prepare_case
from radfusion.preprocess import resampled_voxels
from radfusion.study import read_study_image
from tests.support.dicom_series import ct_slice, ground_truth, input_outcome, write_series

TEST_FILES = Path(pydicom.__file__).parent / "data" / "test_files"
GEOMETRY = ImageGeometry(target_shape=(9, 5, 4), target_spacing=(5.0, 2.0, 3.0), window=(-400.0, 0.0), min_slices=4)


# ------------------------------------------------------------------ the clock


def test_each_check_passes_at_its_limit_and_refuses_beyond_it() -> None:
    clock = StudyBudget(max_files=10, max_bytes=GIB, max_decoded_bytes=2 * GIB, max_voxels=1000).start()
    clock.check_files(10)
    clock.check_stored(GIB)
    clock.check_decoded(2 * GIB)
    clock.check_voxels(1000)
    clock.check_time("file 1 of 1")
    refusals = {
        "files": lambda: clock.check_files(11),
        "stored": lambda: clock.check_stored(GIB + 1024**2 * 11),
        "decoded": lambda: clock.check_decoded(3 * GIB),
        "voxels": lambda: clock.check_voxels(1001),
    }
    messages = {}
    for name, check in refusals.items():
        with pytest.raises(RadfusionInputError) as info:
            check()
        # what the study holds is upload_too_large, what reading it costs study_over_budget
        expected = "upload_too_large" if name in ("files", "stored") else "study_over_budget"
        assert info.value.kind == expected and info.value.http_status == 413
        messages[name] = info.value.message
    assert messages == {
        "files": "study holds 11 files; at most 10",
        "stored": "study files hold 1.01 GiB; at most 1.00 GiB",
        "decoded": "series would decode to 3.00 GiB; at most 2.00 GiB",
        "voxels": "resampling would produce 1,001 voxels; at most 1,000",
    }
    late = StudyBudget(max_seconds=0.01).start()
    time.sleep(0.02)
    with pytest.raises(StudyOverBudgetError, match=r"more than 0.01 s to read \(stopped at resampling\)"):
        late.check_time("resampling")


# ------------------------------------------------------------------ the budget reaches the reader


@pytest.fixture
def series(tmp_path: Path) -> Path:
    write_series(tmp_path / "s", ground_truth((9, 5, 4)))
    return tmp_path / "s"


def _stored(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.iterdir())


def test_the_study_budget_is_spent_before_each_piece_of_work(series: Path) -> None:
    assert read_study_image(series, GEOMETRY, budget=StudyBudget()).image.shape == (1, 9, 5, 4)
    decoded = 9 * 5 * 4 * 4  # float32 values of the chosen series
    fits = StudyBudget(max_files=9, max_bytes=_stored(series), max_decoded_bytes=decoded, max_voxels=180)
    assert read_study_image(series, GEOMETRY, budget=fits).image.shape == (1, 9, 5, 4)
    refused = {
        "files": StudyBudget(max_files=8),
        "stored": StudyBudget(max_bytes=_stored(series) - 1),
        "decoded": StudyBudget(max_decoded_bytes=decoded - 1),
        "voxels": StudyBudget(max_voxels=179),
        "seconds": StudyBudget(max_seconds=0.0),
    }
    outcomes = {
        name: input_outcome(lambda b=budget: read_study_image(series, GEOMETRY, budget=b))
        for name, budget in refused.items()
    }
    assert outcomes["files"] == "upload_too_large: study holds 9 files; at most 8"
    assert outcomes["stored"].startswith("upload_too_large: study files hold 0.00 GiB")
    assert outcomes["decoded"].startswith("study_over_budget: series would decode to")
    assert outcomes["voxels"] == "study_over_budget: resampling would produce 180 voxels; at most 179"
    assert outcomes["seconds"] == (
        "study_over_budget: study took more than 0 s to read (stopped at header of file 1 of 9)"
    )


def test_prepare_case_takes_the_budget_too(series: Path) -> None:
    contract = ModelContract(
        name="t", version="1", task="classification:response", labels=["no", "yes"], image=GEOMETRY, omics=[]
    )
    assert prepare_case(contract, series, None).inputs.modalities_used == ["image"]
    assert input_outcome(lambda: prepare_case(contract, series, None, budget=StudyBudget(max_files=3))) == (
        "upload_too_large: study holds 9 files; at most 3"
    )


@pytest.mark.parametrize(
    ("shape", "factors"),
    [((9, 5, 4), [1.0, 1.0, 1.0]), ((10, 32, 32), [5 / 6, 6 / 12, 6 / 12]), ((7, 13, 11), [2.5, 0.3, 1.7])],
)
def test_the_voxel_count_is_the_one_zoom_produces(shape, factors) -> None:
    """Counted before resampling; it must be what ndimage.zoom then allocates."""
    zoomed = ndimage.zoom(np.zeros(shape, np.float32), factors, order=1, mode="nearest", grid_mode=True)
    assert resampled_voxels(shape, factors) == zoomed.size


# ------------------------------------------------------------------ bounds spare real series


def _shipped_ct_mr_images() -> list[Path]:
    found = []
    for path in sorted(p for p in TEST_FILES.rglob("*") if p.is_file()):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ds = pydicom.dcmread(path, stop_before_pixels=True)
        except Exception:  # noqa: BLE001 - not DICOM, or not readable: not a real series to spare
            continue
        if str(ds.get("Modality", "")) in ("CT", "MR") and ds.get("Rows"):
            found.append(path)
    return found


def test_every_shipped_ct_and_mr_image_is_within_the_bounds() -> None:
    images = _shipped_ct_mr_images()
    assert len(images) >= 40
    spacings, slopes = [], []
    for path in images:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(path)
        if path.name == "MR_truncated.dcm":
            continue  # its header is sound; only its pixel data is cut
        check_instance(ds)
        spacings += pixel_spacing(ds)
        slopes.append(rescale(ds)[0])
    low, high = BOUNDS.pixel_spacing_mm
    assert low < min(spacings) and max(spacings) < high
    assert (min(spacings), max(spacings)) == pytest.approx((0.3125, 1.367188))
    assert set(slopes) == {1.0}


def test_the_synthetic_cohort_is_within_the_bounds(tiny_cohort: Path) -> None:
    files, _ = list_inputs(tiny_cohort / "dicom")
    assert len(files) > 100
    for path in files:
        check_instance(read_dataset(path))


# ------------------------------------------------------------------ the zip-bomb ratio spares real DICOM


def test_real_series_deflate_far_below_the_zip_bomb_ratio(tiny_cohort: Path, tmp_path: Path) -> None:
    archive = tmp_path / "cohort.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in list_inputs(tiny_cohort / "dicom")[0][:40]:
            zf.write(path, path.relative_to(tiny_cohort).as_posix())
    with zipfile.ZipFile(archive) as zf:
        ratios = [i.file_size / i.compress_size for i in zf.infolist()]
    assert max(ratios) < MAX_ZIP_RATIO / 10


def test_a_blank_full_size_slice_is_not_taken_for_a_zip_bomb(tmp_path: Path) -> None:
    """A 512 x 512 slice of air deflates ~1000 times but is small: below
    ZIP_RATIO_MIN_BYTES the ratio is not held against it."""
    slice_ = ct_slice(np.full((512, 512), -1024.0), (0.0, 0.0, 0.0), study_uid="1.2.3", series_uid="1.2.3.4", number=1)
    slice_.save_as(tmp_path / "air.dcm", enforce_file_format=True)
    archive = tmp_path / "air.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.write(tmp_path / "air.dcm", "air.dcm")
        info = zf.getinfo("air.dcm")
    assert info.file_size / info.compress_size > MAX_ZIP_RATIO and info.file_size < ZIP_RATIO_MIN_BYTES
    assert read_dataset(archive / "air.dcm").Rows == 512
