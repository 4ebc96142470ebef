"""Hostile and damaged input through the core reading path, built from real DICOM by
byte mutation: series written here with pydicom (tests/support/dicom_series.py),
pydicom's shipped files and the tiny synthetic cohort.

What must hold whatever the bytes: discovery returns and records why it skipped a
file (never the library's message); read_study_image and prepare_case raise only
RadfusionInputError subclasses, with the kind that says what is wrong and the file's
position ("file 5 of 9") instead of its name; header values outside the physical
bounds are refused before any pixel is decoded, and numbers that stop being finite
once converted to float32 are refused by name."""

from __future__ import annotations

import io
import shutil
import struct
import time
import tracemalloc
import warnings
import zipfile
import zlib
from collections import Counter
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import DeflatedExplicitVRLittleEndian

from radfusion.contract import ClinicalSpec, ImageGeometry, ModelContract, OmicsBlock
from radfusion.dicom import find_studies
from radfusion.dicom.sources import list_inputs, read_dataset
from radfusion.errors import RadfusionInputError
from radfusion.predictor import prepare_case
from radfusion.preprocess import (
    OmicsInput,
    build_inputs,
    preprocess_clinical,
    preprocess_omics,
    resampled_voxels,
)
from radfusion.study import read_study_image
from tests.support.dicom_series import ground_truth, input_outcome, write_series

pytestmark = pytest.mark.filterwarnings("ignore")  # pydicom warns about every damaged value it meets

GEOMETRY = ImageGeometry(target_shape=(9, 5, 4), target_spacing=(5.0, 2.0, 3.0), window=(-400.0, 0.0), min_slices=4)
VICTIM = 4  # the damaged file: the fifth of nine, in the folder's (sorted) order
UNREADABLE = "not a readable DICOM file: "


def _series(folder: Path, n: int = 9) -> list[Path]:
    """A 9-slice axial CT series; its files in sorted order (the order read in)."""
    paths, _ = write_series(folder, ground_truth((n, 5, 4)))
    return sorted(paths)


# ------------------------------------------------------------------ byte mutations


def _element(data: bytes, group: int, elem: int) -> int:
    """Offset of the explicit-VR element (group, elem) in the dataset (after the meta)."""
    return data.index(struct.pack("<HH", group, elem), 132 + 12)


def unknown_vr(data: bytes, group: int, elem: int) -> bytes:
    """Two bytes flipped: the element's VR becomes one no standard defines."""
    at = _element(data, group, elem)
    return data[: at + 4] + b"QQ" + data[at + 6 :]


def nested(data: bytes, depth: int = 5000) -> bytes:
    """A sequence nested ``depth`` deep (undefined lengths) before SOPClassUID."""
    opening = b"\x08\x00\x15\x11SQ\x00\x00\xff\xff\xff\xff" + b"\xfe\xff\x00\xe0\xff\xff\xff\xff"
    closing = b"\xfe\xff\x0d\xe0\x00\x00\x00\x00" + b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
    at = _element(data, 0x0008, 0x0016)
    return data[:at] + opening * depth + closing * depth + data[at:]


def deflate_claim(path: Path) -> bytes:
    """The meta header claims Deflated Explicit VR; what follows does not inflate."""
    ds = pydicom.dcmread(path)
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    buffer = io.BytesIO()
    buffer.write(b"\0" * 128 + b"DICM")
    write_file_meta_info(buffer, ds.file_meta, enforce_standard=True)
    return buffer.getvalue() + bytes(range(256)) * 4


def text_value(data: bytes, group: int, elem: int, value: bytes) -> bytes:
    """A text element's value replaced (padded to even length), its length fixed."""
    at = _element(data, group, elem)
    (length,) = struct.unpack("<H", data[at + 6 : at + 8])
    value += b" " * (len(value) % 2)
    return data[: at + 6] + struct.pack("<H", len(value)) + value + data[at + 8 + length :]


def rows_as_ul(data: bytes, rows: int) -> bytes:
    """Rows (US, at most 65535) rewritten as a 4-byte UL holding ``rows``."""
    at = _element(data, 0x0028, 0x0010)
    return data[:at] + b"\x28\x00\x10\x00UL\x04\x00" + struct.pack("<I", rows) + data[at + 10 :]


def _rewrite(path: Path, **values) -> None:
    ds = pydicom.dcmread(path)
    for keyword, value in values.items():
        setattr(ds, keyword, value)
    ds.save_as(path, enforce_file_format=True)


# ------------------------------------------------------------------ discovery survives any bytes


def _pixel_offset(data: bytes) -> int:
    return data.index(b"\xe0\x7f\x10\x00")


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (
            lambda p: unknown_vr(p.read_bytes(), 0x0020, 0x000D),
            "an unknown value representation or encoding (NotImplementedError)",
        ),
        (lambda p: nested(p.read_bytes()), "elements nested too deeply (RecursionError)"),
        (deflate_claim, "deflated data that cannot be inflated (zlib.error)"),
        (lambda p: p.read_bytes()[:64], "InvalidDicomError"),  # inside the preamble
        (lambda p: p.read_bytes()[:200], "InvalidDicomError"),  # inside the meta header
        (lambda p: p.read_bytes()[: _element(p.read_bytes(), 0x0020, 0x000D)], "InvalidDicomError"),  # no study
        (
            lambda p: p.read_bytes()[: _element(p.read_bytes(), 0x0028, 0x0010)],
            "an image without Rows/Columns (truncated or damaged header)",
        ),
    ],
    ids=["unknown-vr", "nested-5000", "deflate-claim", "cut-preamble", "cut-meta", "cut-before-uid", "cut-before-rows"],
)
def test_a_file_the_parser_cannot_survive_is_skipped_and_the_study_still_read(tmp_path: Path, mutate, reason) -> None:
    paths = _series(tmp_path / "s")
    paths[VICTIM].write_bytes(mutate(paths[VICTIM]))
    discovery = find_studies(tmp_path)
    assert discovery.skipped == [(paths[VICTIM], UNREADABLE + reason)]
    assert sum(len(s.instances) for s in discovery.studies.values()) == 8
    study = read_study_image(tmp_path / "s", GEOMETRY)  # the slice is missing: the gap is filled, and said
    assert study.image.shape == (1, 9, 5, 4) and len(study.sop_uids) == 8
    assert study.skipped == [f"{paths[VICTIM].name}: {UNREADABLE}{reason}"]
    assert any("resampled onto a uniform" in c for c in study.corrections)


def test_a_study_whose_only_file_breaks_the_parser_is_corrupt_and_says_why(tmp_path: Path) -> None:
    [path] = _series(tmp_path, n=1)
    path.write_bytes(nested(path.read_bytes()))
    assert input_outcome(lambda: read_study_image(tmp_path, GEOMETRY)) == (
        "corrupt_dicom: no readable DICOM instances; 1 unreadable file: file 1 of 1: elements nested too deeply"
        " (RecursionError)"
    )


def test_an_unreadable_main_series_is_named_when_no_usable_series_is_left(tmp_path: Path) -> None:
    main = _series(tmp_path / "a-main")
    study_uid = str(pydicom.dcmread(main[0]).StudyInstanceUID)
    write_series(
        tmp_path / "b-scout",
        ground_truth((1, 5, 4)),
        study_uid=study_uid,
        image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"),
    )
    for path in main[:3]:
        path.write_bytes(deflate_claim(path))
    for path in main[3:]:
        path.write_bytes(path.read_bytes()[:200])
    outcome = input_outcome(lambda: read_study_image(tmp_path, GEOMETRY))
    assert outcome == (
        "no_image_series: no usable image series (localizer image type (localizer/scout/derived)); 9 unreadable"
        " files: file 1 of 10: deflated data that cannot be inflated (zlib.error); file 2 of 10: deflated data"
        " that cannot be inflated (zlib.error); file 3 of 10: deflated data that cannot be inflated (zlib.error);"
        " file 4 of 10:"
        " InvalidDicomError; file 5 of 10: InvalidDicomError; file 6 of 10: InvalidDicomError; file 7 of 10:"
        " InvalidDicomError; file 8 of 10: InvalidDicomError; file 9 of 10: InvalidDicomError"
    )
    assert "a-main" not in outcome and main[0].name not in outcome


def test_header_values_that_do_not_parse_are_absent_or_refused(tmp_path: Path) -> None:
    paths = _series(tmp_path / "s")
    data = paths[VICTIM].read_bytes()
    data = text_value(data, 0x0020, 0x0011, b"abc")  # SeriesNumber (IS)
    data = text_value(data, 0x0018, 0x0050, b"x")  # SliceThickness (DS)
    data = text_value(data, 0x0020, 0x0037, b"1\\0")  # ImageOrientationPatient: 2 values
    paths[VICTIM].write_bytes(data)
    discovery = find_studies(tmp_path)
    assert discovery.skipped == []
    header = next(h for s in discovery.studies.values() for h in s.instances if h.path == paths[VICTIM])
    assert (header.series_number, header.slice_thickness, header.orientation) == (None, None, None)
    assert header.malformed == ("SeriesNumber", "SliceThickness", "ImageOrientationPatient")
    # harmless for the choice of series; the volume reader needs the orientation
    assert input_outcome(lambda: read_study_image(tmp_path / "s", GEOMETRY)) == (
        "geometry_rejected: file 5 of 9: ImageOrientationPatient holds 2 values, not 6"
    )


def test_a_zero_size_image_is_skipped_with_a_reason(tmp_path: Path) -> None:
    paths = _series(tmp_path / "s")
    _rewrite(paths[VICTIM], Rows=0)
    assert find_studies(tmp_path).skipped == [
        (paths[VICTIM], UNREADABLE + "an image without Rows/Columns (truncated or damaged header)")
    ]


# ------------------------------------------------------------------ zip archives and DICOMDIR


def _zip(folder: Path, archive: Path) -> list[zipfile.ZipInfo]:
    archive.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(folder.iterdir()):
            zf.write(path, f"study/{path.name}")
    with zipfile.ZipFile(archive) as zf:
        return zf.infolist()


def test_a_corrupt_zip_member_is_skipped_and_a_broken_archive_too(tmp_path: Path) -> None:
    _series(tmp_path / "files")
    archive = tmp_path / "in" / "study.zip"
    info = _zip(tmp_path / "files", archive)[VICTIM]
    data = bytearray(archive.read_bytes())
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    for i in range(start + 5, start + info.compress_size - 5, 7):
        data[i] ^= 0x5A
    archive.write_bytes(bytes(data))
    discovery = find_studies(tmp_path / "in")
    assert discovery.skipped == [
        (archive / info.filename, UNREADABLE + "deflated data that cannot be inflated (zlib.error)")
    ]
    assert sum(len(s.instances) for s in discovery.studies.values()) == 8
    assert read_study_image(archive, GEOMETRY).image.shape == (1, 9, 5, 4)

    archive.write_bytes(bytes(data[: len(data) // 2]))  # the central directory is gone
    discovery = find_studies(tmp_path / "in")
    assert discovery.studies == {} and discovery.skipped == [(archive, UNREADABLE + "InvalidDicomError")]


def test_a_zip_bomb_member_is_refused_before_it_is_inflated(tmp_path: Path) -> None:
    archive = tmp_path / "bomb.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("study/huge.dcm", bytes(64 * 1024**2))  # 64 MiB of zeros, ~65 KB stored
    assert archive.stat().st_size < 100_000
    tracemalloc.start()
    try:
        discovery = find_studies(archive)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    [(path, reason)] = discovery.skipped
    assert path == archive / "study/huge.dcm"
    assert reason == UNREADABLE + "a zip member would expand 1,029 times (at most 200): refused"
    assert peak < 2 * 1024**2  # nothing near the 64 MiB was inflated


def test_zip_members_are_read_under_a_byte_bound(tmp_path: Path) -> None:
    paths = _series(tmp_path / "files")
    archive = tmp_path / "study.zip"
    info = _zip(tmp_path / "files", archive)[0]
    member = archive / info.filename
    assert read_dataset(member).Rows == 5
    assert read_dataset(member, stop_before_pixels=True).Rows == 5
    with pytest.raises(RadfusionInputError) as refused:
        read_dataset(member, max_bytes=info.file_size - 1)
    assert refused.value.kind == "upload_too_large"
    assert (
        refused.value.message
        == f"a zip member declares {info.file_size:,} bytes; the study may take {info.file_size - 1:,} more"
    )
    assert read_dataset(member, max_bytes=info.file_size).SOPInstanceUID == pydicom.dcmread(paths[0]).SOPInstanceUID
    # the budget of read_study_image takes the members' declared sizes, before any is read
    over = input_outcome(lambda: read_study_image(archive, GEOMETRY, budget=_budget(max_bytes=info.file_size * 8)))
    assert over.startswith("upload_too_large: study files hold")


def test_a_damaged_dicomdir_is_skipped_and_the_walk_goes_on(tmp_path: Path) -> None:
    media = tmp_path / "media"
    shutil.copytree(Path(pydicom.__file__).parent / "data" / "test_files" / "dicomdirtests", media)
    (media / "DICOMDIR").write_bytes((media / "DICOMDIR").read_bytes()[:400])
    discovery = find_studies(media)
    assert (media / "DICOMDIR", "unreadable DICOMDIR: unreadable (OSError)") in discovery.skipped
    assert sum(len(s.instances) for s in discovery.studies.values()) == 31  # the walk still finds them all
    # an index that points outside its media folder is refused, not followed
    outside = pydicom.dcmread(Path(pydicom.__file__).parent / "data" / "test_files" / "dicomdirtests" / "DICOMDIR")
    record = next(r for r in outside.DirectoryRecordSequence if "ReferencedFileID" in r)
    record.ReferencedFileID = ["..", "..", "elsewhere"]
    (tmp_path / "cd").mkdir()
    outside.save_as(tmp_path / "cd" / "DICOMDIR")
    files, skipped = list_inputs(tmp_path / "cd" / "DICOMDIR")
    assert (tmp_path / "cd" / "DICOMDIR", "DICOMDIR lists a file outside its media folder") in skipped
    assert not any(".." in p.parts for p in files)


# ------------------------------------------------------------------ the volume reader names file and kind


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (
            lambda p: unknown_vr(p.read_bytes(), 0x0028, 0x0030),  # PixelSpacing: read only with the pixels
            "corrupt_dicom: file 5 of 9: an unknown value representation or encoding (NotImplementedError)",
        ),
        (
            lambda p: p.read_bytes()[:-20],
            "corrupt_dicom: file 5 of 9: pixel data cannot be decoded (ValueError): 20 vs 40 bytes",
        ),
        (
            lambda p: text_value(p.read_bytes(), 0x0028, 0x1053, b"0"),
            "invalid_value: file 5 of 9: RescaleSlope 0 is not usable: its magnitude must lie in 1e-06-1e+06",
        ),
        (
            lambda p: text_value(p.read_bytes(), 0x0028, 0x1053, b"inf"),
            "invalid_value: file 5 of 9: RescaleSlope is not a finite number",
        ),
        (
            lambda p: text_value(p.read_bytes(), 0x0028, 0x1052, b"-1e300"),
            "invalid_value: file 5 of 9: RescaleIntercept -1e+300 is not usable: beyond ±1e+07",
        ),
        (lambda p: rows_as_ul(p.read_bytes(), 70000), "corrupt_dicom: file 5 of 9: Rows 70000 is outside 1-4096"),
        (
            lambda p: text_value(p.read_bytes(), 0x0028, 0x0030, b"nan\\2"),
            "geometry_rejected: file 5 of 9: missing or invalid PixelSpacing",
        ),
        (
            lambda p: text_value(p.read_bytes(), 0x0028, 0x0030, b"0.001\\0.001"),
            "geometry_rejected: file 5 of 9: PixelSpacing 0.001 x 0.001 mm is outside 0.005-30 mm",
        ),
        (
            lambda p: text_value(p.read_bytes(), 0x0020, 0x0032, b"1e999\\0\\0"),
            "geometry_rejected: file 5 of 9: ImagePositionPatient is not finite",
        ),
    ],
    ids=[
        "unknown-vr",
        "cut-pixels",
        "slope-0",
        "slope-inf",
        "intercept",
        "rows-70000",
        "spacing-nan",
        "spacing-tiny",
        "position-inf",
    ],
)
def test_a_damaged_file_of_the_chosen_series_fails_the_study_with_its_kind_and_position(
    tmp_path: Path, mutate, expected: str
) -> None:
    paths = _series(tmp_path / "s")
    paths[VICTIM].write_bytes(mutate(paths[VICTIM]))
    assert find_studies(tmp_path).skipped == []  # the header discovery reads is intact
    assert input_outcome(lambda: read_study_image(tmp_path / "s", GEOMETRY)) == expected
    contract = ModelContract(
        name="t", version="1", task="classification:response", labels=["no", "yes"], image=GEOMETRY, omics=[]
    )
    assert input_outcome(lambda: prepare_case(contract, tmp_path / "s", None)) == expected


def test_a_frame_count_beyond_the_bounds_is_refused_from_the_header(tmp_path: Path) -> None:
    paths = _series(tmp_path / "s")
    paths[VICTIM].write_bytes(text_value(_with_frames(paths[VICTIM]), 0x0028, 0x0008, b"2147483647"))
    assert input_outcome(lambda: read_study_image(tmp_path / "s", GEOMETRY)) == (
        "corrupt_dicom: file 5 of 9: NumberOfFrames 2147483647 is outside 1-10000"
    )


def _with_frames(path: Path) -> bytes:
    _rewrite(path, NumberOfFrames=1)
    return path.read_bytes()


def test_a_rescale_slope_of_zero_is_refused_never_replaced(tmp_path: Path) -> None:
    """It used to become 1: the image was read as if nothing were wrong."""
    paths = _series(tmp_path / "s")
    for path in paths:
        _rewrite(path, RescaleSlope=0)
    with pytest.raises(RadfusionInputError) as info:
        read_study_image(tmp_path / "s", GEOMETRY)
    assert info.value.kind == "invalid_value" and "RescaleSlope" in info.value.message


# ------------------------------------------------------------------ cost bounded before the work


def _budget(**limits):
    from radfusion.limits import StudyBudget

    return StudyBudget(**limits)


def _peak(run) -> tuple[str, int, float]:
    """(outcome, peak bytes allocated, seconds) of ``run``."""
    tracemalloc.start()
    started = time.perf_counter()
    try:
        outcome = input_outcome(run)
        return outcome, tracemalloc.get_traced_memory()[1], time.perf_counter() - started
    finally:
        tracemalloc.stop()


def test_a_pixel_spacing_of_2000_mm_fails_fast_on_the_geometry_bound(tmp_path: Path) -> None:
    """The 45 KB study that used to cost 1.4 GB and 33 s."""
    for path in _series(tmp_path / "s"):
        _rewrite(path, PixelSpacing=[2000.0, 2000.0])
    assert sum(p.stat().st_size for p in (tmp_path / "s").iterdir()) < 50_000
    would_be = resampled_voxels((9, 5, 4), [5.0 / 5.0, 2000.0 / 2.0, 2000.0 / 3.0])
    assert would_be > 100_000_000  # 0.4 GB of float32 had the resampler been asked
    outcome, peak, seconds = _peak(lambda: read_study_image(tmp_path / "s", GEOMETRY))
    assert outcome == "geometry_rejected: file 1 of 9: PixelSpacing 2000 x 2000 mm is outside 0.005-30 mm"
    assert peak < 8 * 1024**2 and seconds < 10


def test_a_plausible_but_huge_resampling_is_refused_before_zoom_runs(tmp_path: Path) -> None:
    """Plausible headers, a model grid of 0.02 mm: the resampled volume would hold
    2250 x 500 x 600 voxels (2.7 GB of float32); refused on max_voxels first."""
    _series(tmp_path / "s")
    fine = ImageGeometry(target_shape=(9, 5, 4), target_spacing=(0.02, 0.02, 0.02), window=(-400.0, 0.0), min_slices=4)
    outcome, peak, seconds = _peak(lambda: read_study_image(tmp_path / "s", fine))
    assert outcome == "study_over_budget: resampling would produce 675,000,000 voxels; at most 268,435,456"
    assert peak < 8 * 1024**2 and seconds < 10
    # a smaller budget refuses a study the default takes
    assert read_study_image(tmp_path / "s", GEOMETRY).image.shape == (1, 9, 5, 4)
    assert input_outcome(lambda: read_study_image(tmp_path / "s", GEOMETRY, budget=_budget(max_voxels=179))) == (
        "study_over_budget: resampling would produce 180 voxels; at most 179"
    )


# ------------------------------------------------------------------ numbers finite where they are used


PANEL = OmicsBlock(name="expression", features=["TP53", "EGFR", "KRAS"], mean=[5.0, 3.0, 1.0], std=[2.0, 0.5, 3.0])


BEYOND = (
    "invalid_value: expression block: 1 of 3 genomic values are not finite in float32 (beyond ±3.4e38 once"
    " normalised): EGFR"
)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (1e39, BEYOND),  # finite in float64: it used to reach the model as inf
        (-1e308, BEYOND),
        (3.0e38, BEYOND),  # representable, but z = (3e38 - 3) / 0.5 is not
        (1.0e38, "read"),
        (float("inf"), "invalid_value: expression block: 1 genes have values that are not finite numbers: EGFR"),
        (10**400, "invalid_value: expression block: 1 genes have values that are not finite numbers: EGFR"),
        # Not one number: the value is refused by name, not taken for a panel mismatch.
        ([1, 2], "invalid_value: expression block: 1 genes have values that are not finite numbers: EGFR"),
        ([], "invalid_value: expression block: 1 genes have values that are not finite numbers: EGFR"),
        ({"a": 1}, "invalid_value: expression block: 1 genes have values that are not finite numbers: EGFR"),
        ("abc", "invalid_value: expression block: 1 genes have values that are not finite numbers: EGFR"),
    ],
)
def test_genomic_values_beyond_float32_are_named(value, expected: str) -> None:
    contract = ModelContract(
        name="t", version="1", task="classification:response", labels=["no", "yes"], image=GEOMETRY, omics=[PANEL]
    )
    assert input_outcome(lambda: prepare_case(contract, None, {"TP53": 1.0, "EGFR": value, "KRAS": 2.0})) == expected


def test_a_clinical_covariate_beyond_float32_is_named() -> None:
    spec = ClinicalSpec(numeric={"age": [60.0, 0.5]}, categorical={"sex": ["F", "M"]})
    with pytest.raises(RadfusionInputError) as info:
        preprocess_clinical({"age": 1e39, "sex": "F"}, spec)
    assert info.value.kind == "invalid_value"
    assert info.value.message == (
        "1 of 3 clinical covariates are not finite in float32 (beyond ±3.4e38 once normalised): age"
    )
    assert preprocess_clinical({"age": 61.0, "sex": "M"}, spec).values.tolist() == [2.0, 0.0, 1.0]


def test_the_model_inputs_are_checked_once_more_where_they_are_built() -> None:
    contract = ModelContract(
        name="t", version="1", task="classification:response", labels=["no", "yes"], image=GEOMETRY, omics=[PANEL]
    )
    assert preprocess_omics({"TP53": 1.0, "EGFR": 3.0, "KRAS": 1.0}, [PANEL]).values.tolist() == [-2.0, 0.0, 0.0]
    bad = OmicsInput(np.array([0.0, np.inf, 0.0], np.float32), ["expression"])
    with pytest.raises(RadfusionInputError) as info:
        build_inputs(contract, None, bad)
    assert info.value.kind == "invalid_value" and info.value.message.endswith(": EGFR")
    image = np.full((1, 9, 5, 4), np.nan, np.float32)
    with pytest.raises(RadfusionInputError, match="image holds values that are not finite"):
        build_inputs(contract, image, None)


# ------------------------------------------------------------------ a seeded mutation corpus


def _mutate(data: bytes, rng: np.random.Generator) -> bytes:
    """One of: cut at a random offset, flip 1-8 random bytes anywhere, or flip 1-4
    bytes of the header (where the parser, not the decoder, meets them)."""
    choice = rng.integers(3)
    if choice == 0:
        return data[: int(rng.integers(0, len(data)))]
    out = bytearray(data)
    span = len(data) if choice == 1 else _pixel_offset(data)
    for _ in range(int(rng.integers(1, 9 if choice == 1 else 5))):
        out[int(rng.integers(0, span))] = int(rng.integers(0, 256))
    return bytes(out)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_seeded_mutations_of_a_real_study_read_or_fail_with_a_specific_kind(
    tmp_path: Path, tiny_cohort: Path, tiny_contract, seed: int
) -> None:
    """50 mutations per seed (200 in all) of one file of a synthetic study: each either
    reads or fails with a RadfusionInputError, unprocessable in at most 1% of cases;
    discovery never raises."""
    study = tmp_path / "study"
    shutil.copytree(sorted((tiny_cohort / "dicom").iterdir())[seed], study)
    files = sorted(p for p in study.rglob("*") if p.is_file())
    originals = {p: p.read_bytes() for p in files}
    rng = np.random.default_rng(seed)
    outcomes: Counter[str] = Counter()
    for _ in range(50):
        victim = files[int(rng.integers(len(files)))]
        victim.write_bytes(_mutate(originals[victim], rng))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            find_studies(study)  # never raises
            try:
                read_study_image(study, tiny_contract.image)
                outcomes["read"] += 1
            except RadfusionInputError as exc:
                outcomes[exc.kind] += 1
        victim.write_bytes(originals[victim])
    assert sum(outcomes.values()) == 50
    assert outcomes["unprocessable_study"] <= 0.01 * 50, outcomes
    assert outcomes["read"] > 0 and len(outcomes) > 1, outcomes  # the corpus really damages files


def test_a_deflated_file_is_inflated_no_further_than_the_byte_bound(tmp_path: Path) -> None:
    """pydicom inflates a Deflated body whole before parsing it: a few kilobytes of
    zeros behind a deflated meta header become gigabytes. Read under a bound, the file
    is refused once the bound is reached, and a header read inflates only the header."""
    source = pydicom.dcmread(_series(tmp_path / "files")[0])
    source.file_meta.TransferSyntaxUID = pydicom.uid.DeflatedExplicitVRLittleEndian
    deflated = tmp_path / "deflated.dcm"
    source.save_as(deflated, enforce_file_format=True)
    assert read_dataset(deflated).Rows == 5  # a real deflated file reads as before
    bomb = tmp_path / "bomb.dcm"
    raw = deflated.read_bytes()
    body = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    padding = b"\x09\x00\x10\x00UN\x00\x00" + struct.pack("<I", 512 * 1024**2)  # a 512 MiB private element
    zeros = body.compress(padding) + b"".join(body.compress(bytes(1024**2)) for _ in range(512)) + body.flush()
    meta_end = 132 + 12 + struct.unpack("<I", raw[140:144])[0]  # FileMetaInformationGroupLength
    bomb.write_bytes(raw[:meta_end] + zeros)
    assert bomb.stat().st_size < 1024**2
    tracemalloc.start()
    try:
        with pytest.raises(RadfusionInputError) as refused:
            read_dataset(bomb, max_bytes=64 * 1024**2)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert refused.value.kind == "upload_too_large"
    assert peak < 100 * 1024**2  # not the 512 MiB pydicom would have inflated


def test_copies_of_one_slice_are_no_volume(tmp_path: Path) -> None:
    """Six files of the same slice (new SOP UIDs, same position) pass the series' slice
    count, but once the duplicates are dropped one position is left: refused, not scored."""
    source = _series(tmp_path / "files")[0]
    copies = tmp_path / "copies"
    copies.mkdir()
    for i in range(6):
        ds = pydicom.dcmread(source)
        ds.SOPInstanceUID = pydicom.uid.generate_uid()
        ds.InstanceNumber = i + 1
        ds.save_as(copies / f"{i}.dcm")
    assert input_outcome(lambda: read_study_image(copies, GEOMETRY)) == (
        "geometry_rejected: only 1 distinct slice position(s) in the chosen series once duplicates are dropped;"
        " at least 4"
    )


def test_a_series_smaller_than_one_voxel_of_the_model_grid_is_geometry_rejected(tmp_path: Path) -> None:
    """PixelSpacing 0.006 mm is within the physical bounds, but 4 columns of it are
    0.024 mm, less than one 3 mm voxel: a geometry the model cannot see, said so."""
    folder = tmp_path / "tiny"
    folder.mkdir()
    for path in _series(tmp_path / "files"):
        ds = pydicom.dcmread(path)
        ds.PixelSpacing = [0.006, 0.006]
        ds.save_as(folder / path.name)
    assert input_outcome(lambda: read_study_image(folder, GEOMETRY)) == (
        "geometry_rejected: the series spans less than one voxel of the model grid along an axis"
    )
