"""The read path on real-size slices (512 x 512, 0.7 mm pixels, whose pixel data is
left in the file until decoded): each file is read once, slices decoded in place on
threads give the volume one thread gives, read for a model grid they are reduced as
they are decoded to exactly what the full-resolution volume gives (in every
orientation) without the full volume in memory, JPEG 2000 and JPEG-LS slices give the
HU the uncompressed ones do, native pixel data read without pydicom's decoder the
values pydicom gives, and a damaged slice among many still fails the study with its
position."""

from __future__ import annotations

import struct
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataelem import DataElement
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    generate_uid,
)

from radfusion.contract import ImageGeometry
from radfusion.dicom import load_volume
from radfusion.dicom import pixels as dicom_pixels
from radfusion.dicom import sources as dicom_sources
from radfusion.dicom import volume as dicom_volume
from radfusion.dicom.geometry import GeometryPolicy
from radfusion.preprocess import grid_to_patient, preprocess_image
from radfusion.study import read_study_image
from tests.support.dicom_series import (
    AXIAL,
    AXIAL_REVERSED,
    CORONAL,
    SAGITTAL,
    ct_slice,
    input_outcome,
    write_series,
)

SIZE = 512
PIXEL_MM = 0.7
GEOMETRY = ImageGeometry(target_shape=(8, 48, 48), target_spacing=(5.0, 8.0, 8.0), window=(-150.0, 250.0), min_slices=4)


def _hu(n: int) -> np.ndarray:
    """A body-like volume: air around a disc of soft tissue with bone and noise."""
    rng = np.random.default_rng(n)
    y, x = np.indices((SIZE, SIZE)) - SIZE / 2
    body = np.where(x**2 + y**2 < (0.4 * SIZE) ** 2, 40.0, -1000.0)
    bone = np.where((x - 60) ** 2 + y**2 < 30**2, 900.0, 0.0)
    return np.stack([body + bone + rng.integers(-20, 20, (SIZE, SIZE)) for _ in range(n)]).astype(np.int16)


def _write(folder: Path, hu: np.ndarray, syntax=ExplicitVRLittleEndian) -> list[Path]:
    """Axial 1 mm slices, written in shuffled order; the paths in sorted (read) order."""
    folder.mkdir(parents=True)
    study_uid, series_uid = generate_uid(), generate_uid()
    order = np.random.default_rng(0).permutation(len(hu))
    for k in order:
        ds = ct_slice(
            hu[k],
            (-180.0, -180.0, float(k)),
            pixel_spacing=(PIXEL_MM, PIXEL_MM),
            study_uid=study_uid,
            series_uid=series_uid,
            number=int(k) + 1,
            signed=False,
            intercept=-1024.0,
        )
        if syntax != ExplicitVRLittleEndian:
            ds.compress(syntax, ds.pixel_array)
        ds.save_as(folder / f"{int(k):03d}.dcm", enforce_file_format=True)
    return sorted(folder.iterdir())


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory) -> tuple[np.ndarray, list[Path]]:
    hu = _hu(24)
    return hu, _write(tmp_path_factory.mktemp("real") / "plain", hu)


def test_each_file_is_read_once_and_its_pixels_only_when_decoded(plain, monkeypatch) -> None:
    _, paths = plain
    reads: list[Path] = []
    dcmread, read_body = dicom_sources.pydicom.dcmread, dicom_sources._read_body

    def counted(read):
        def reading(path, *args, **kwargs):
            reads.append(Path(path))
            return read(path, *args, **kwargs)

        return reading

    monkeypatch.setattr(dicom_sources.pydicom, "dcmread", counted(dcmread))
    monkeypatch.setattr(dicom_sources, "_read_body", counted(read_body))
    study = read_study_image(paths[0].parent, GEOMETRY)
    assert sorted(reads) == paths  # once each: the volume reader takes the datasets discovery read
    assert study.image.shape == (1, 8, 48, 48)


def _pydicom_test_files() -> list[Path]:
    from pydicom.data import get_testdata_files

    return [Path(f) for f in get_testdata_files()]


def test_a_whole_read_gives_what_dcmread_gives_for_pydicoms_own_files(monkeypatch) -> None:
    """read_plain_dataset reads a body from where the meta header it parsed itself ends:
    on every file pydicom ships, the dataset, meta header, preamble and encoding
    dcmread gives, or the same kind of error."""
    fast: list[Path] = []
    read_body = dicom_sources._read_body
    monkeypatch.setattr(dicom_sources, "_read_body", lambda path, *a: fast.append(path) or read_body(path, *a))
    compared = 0
    for path in _pydicom_test_files():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                theirs, their_error = pydicom.dcmread(path, defer_size=64 * 1024), None
            except Exception as exc:  # noqa: BLE001 - the kind of error is compared
                theirs, their_error = None, type(exc)
            try:
                ours, our_error = dicom_sources.read_plain_dataset(path, defer_size=64 * 1024), None
            except Exception as exc:  # noqa: BLE001
                ours, our_error = None, type(exc)
            if ours is None and our_error is None:
                continue  # deflated: read_dataset's, under its bound
            assert our_error == their_error, path.name
            if theirs is None:
                continue
            assert ours == theirs and ours.file_meta == theirs.file_meta, path.name
            assert ours.file_meta.original_encoding == theirs.file_meta.original_encoding, path.name
            assert (ours.preamble, ours.filename, ours.original_encoding) == (
                theirs.preamble,
                theirs.filename,
                theirs.original_encoding,
            ), path.name
            compared += 1
    assert compared > 150 and len(fast) > 150, (compared, len(fast))


def test_a_command_set_after_the_meta_header_is_left_to_dcmread(tmp_path: Path, plain, monkeypatch) -> None:
    _, paths = plain
    data = paths[0].read_bytes()
    meta = dicom_sources._peek_meta(paths[0])
    assert meta is not None and meta.body_group == 8
    # (0000,0000) CommandGroupLength, implicit VR little endian, as group 0000 always is.
    command = struct.pack("<HHII", 0, 0, 4, 0)
    odd = tmp_path / "command.dcm"
    odd.write_bytes(data[: meta.end] + command + data[meta.end :])
    monkeypatch.setattr(dicom_sources, "_read_body", lambda *a: pytest.fail("read past a command set"))
    ours = dicom_sources.read_plain_dataset(odd, defer_size=64 * 1024)
    assert ours is not None and ours == pydicom.dcmread(odd, defer_size=64 * 1024)


def test_values_converted_at_once_are_those_pydicom_converts_on_use() -> None:
    from radfusion.dicom.discover import _KEPT_TAGS, _convert_at_once

    checked = 0
    for path in _pydicom_test_files():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                ours, theirs = pydicom.dcmread(path), pydicom.dcmread(path)
            except Exception:  # noqa: BLE001 - files pydicom itself cannot read
                continue
            _convert_at_once(ours)
            for tag in (t for t in _KEPT_TAGS if t in theirs):
                checked += isinstance(ours.get_item(tag, keep_deferred=True), DataElement)
                assert ours[tag] == theirs[tag], (path.name, tag)
    assert checked > 1000, checked


def test_native_pixel_data_is_decoded_in_the_calling_thread(plain) -> None:
    _, paths = plain
    datasets = [pydicom.dcmread(p) for p in paths]
    assert dicom_volume.decode_threads(datasets) == 1
    datasets[3].file_meta.TransferSyntaxUID = pydicom.uid.JPEG2000Lossless
    assert dicom_volume.decode_threads(datasets) == dicom_volume.READ_THREADS


def test_threads_decode_in_place_what_one_thread_decodes(plain, monkeypatch) -> None:
    hu, paths = plain
    monkeypatch.setattr(dicom_volume, "decode_threads", lambda _: 4)
    threaded = load_volume(paths)
    monkeypatch.setattr(dicom_volume, "decode_threads", lambda _: 1)
    serial = load_volume(paths)
    reversed_order = load_volume(paths[::-1])
    assert threaded.voxels.dtype == np.float32
    assert np.array_equal(threaded.voxels, hu.astype(np.float32))
    assert np.array_equal(serial.voxels, threaded.voxels) and np.array_equal(reversed_order.voxels, threaded.voxels)
    assert serial.sop_uids == threaded.sop_uids == reversed_order.sop_uids
    assert [pydicom.dcmread(p).SOPInstanceUID for p in paths] == threaded.sop_uids  # 000.dcm is the lowest slice


# ------------------------------------------------------------------ reduced as decoded

# SPACING_ZYX of the series cut by tests.support.dicom_series is (5, 2, 3) mm: this grid
# shrinks every axis by more than half (blocks of 2, 4 and 3), none of them evenly.
REDUCING = ImageGeometry(target_shape=(5, 7, 6), target_spacing=(12.0, 8.0, 9.0), window=(-400.0, 1600.0))


@pytest.mark.parametrize(
    "orientation", [AXIAL, AXIAL_REVERSED, SAGITTAL, CORONAL], ids=["axial", "reversed", "sag", "cor"]
)
def test_slices_reduced_as_they_are_decoded_give_what_the_full_volume_gives(tmp_path: Path, orientation) -> None:
    G = (np.random.default_rng(3).normal(0, 300, (11, 23, 17))).astype(np.int16)
    paths, _ = write_series(tmp_path, G, orientation)
    full = load_volume(paths)
    reduced = load_volume(paths, target_spacing=REDUCING.target_spacing)
    assert reduced.blocks != (1, 1, 1) and reduced.voxels.size < full.voxels.size
    assert reduced.shape == full.shape and reduced.spacing == full.spacing and reduced.origin == full.origin
    assert np.array_equal(reduced.direction, full.direction) and reduced.sop_uids == full.sop_uids
    ours, theirs = preprocess_image(reduced, REDUCING), preprocess_image(full, REDUCING)
    if orientation in (AXIAL, AXIAL_REVERSED):  # the blocks summed in the same order
        assert np.array_equal(ours, theirs)
    else:  # the slice axis reduced last, not in order of block size: float32 rounding apart
        np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-6)
    assert np.array_equal(grid_to_patient(reduced, REDUCING), grid_to_patient(full, REDUCING))


def test_a_series_to_repair_is_read_at_full_resolution_for_the_grid_too(tmp_path: Path) -> None:
    """A missing slice is interpolated at full resolution before any reduction."""
    G = (np.random.default_rng(4).normal(0, 300, (12, 23, 17))).astype(np.int16)
    paths, _ = write_series(tmp_path, G)
    by_position = sorted(paths, key=lambda p: float(pydicom.dcmread(p).ImagePositionPatient[2]))
    by_position[5].unlink()
    kept = [p for p in paths if p.exists()]
    volume = load_volume(kept, GeometryPolicy(), target_spacing=REDUCING.target_spacing)
    assert volume.blocks == (1, 1, 1) and volume.corrections
    assert np.array_equal(preprocess_image(volume, REDUCING), preprocess_image(load_volume(kept), REDUCING))


def test_a_real_size_study_is_never_held_at_full_resolution(plain) -> None:
    import tracemalloc

    hu, paths = plain
    tracemalloc.start()
    try:
        read_study_image(paths[0].parent, GEOMETRY)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    full_float32 = hu.size * 4
    assert peak < 0.3 * full_float32, (peak, full_float32)


@pytest.mark.parametrize("syntax", [JPEG2000Lossless, JPEGLSLossless], ids=["jpeg2000", "jpeg-ls"])
def test_compressed_real_size_slices_give_the_hu_of_uncompressed_ones(tmp_path: Path, plain, syntax) -> None:
    hu, paths = plain
    compressed = _write(tmp_path / "c", hu[:6], syntax)
    assert pydicom.dcmread(compressed[0]).file_meta.TransferSyntaxUID == syntax
    assert np.array_equal(load_volume(compressed).voxels, load_volume(paths[:6]).voxels)
    assert np.array_equal(
        read_study_image(tmp_path / "c", GEOMETRY).image,
        read_study_image(_copy(paths[:6], tmp_path / "p"), GEOMETRY).image,
    )


def _copy(paths: list[Path], folder: Path) -> Path:
    folder.mkdir()
    for path in paths:
        (folder / path.name).write_bytes(path.read_bytes())
    return folder


@pytest.mark.parametrize(
    ("bits", "stored", "signed"),
    [(16, 16, 0), (16, 16, 1), (16, 12, 0), (16, 12, 1), (8, 8, 0), (8, 7, 1), (32, 32, 1), (32, 20, 0)],
)
def test_native_pixel_data_reads_as_pydicom_decodes_it(bits: int, stored: int, signed: int) -> None:
    """Unused high bits set to garbage, as some scanners leave them: cleared (or the
    sign extended) exactly as pydicom's correct_unused_bits does."""
    rng = np.random.default_rng(bits + stored + signed)
    values = rng.integers(0, 2**bits, (7, 9), dtype=np.uint64).astype(f"<u{bits // 8}")
    ds = ct_slice(np.zeros((7, 9)), (0.0, 0.0, 0.0), study_uid="1.2", series_uid="1.2.3", number=1)
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, stored, stored - 1, signed
    ds.PixelData = values.tobytes() + (b"\0" if values.nbytes % 2 else b"")
    ours = dicom_pixels._native_values(ds)
    assert ours is not None
    theirs = ds.pixel_array
    assert ours.dtype == theirs.dtype and np.array_equal(ours, theirs)


@pytest.mark.parametrize(("bits", "stored", "signed"), [(16, 12, 1), (16, 12, 0), (16, 16, 1), (8, 7, 0)])
def test_deferred_pixel_data_is_read_from_the_file_as_pydicom_decodes_it(
    tmp_path: Path, bits: int, stored: int, signed: int
) -> None:
    """A slice whose pixel data the header read left in the file, its values within
    the stored bits (the usual case, where the high bits need no clearing): read from
    the file into the thread's buffer, the dataset never holding the bytes, and the
    values pydicom decodes."""
    low, high = (-(2 ** (stored - 1)), 2 ** (stored - 1)) if signed else (0, 2**stored)
    values = np.random.default_rng(stored + signed).integers(low, high, (256, 256))
    ds = ct_slice(np.zeros((256, 256)), (0.0, 0.0, 0.0), study_uid="1.2", series_uid="1.2.3", number=1)
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, stored, stored - 1, signed
    ds.PixelData = values.astype(f"<{'i' if signed else 'u'}{bits // 8}").tobytes()
    for syntax in (ExplicitVRLittleEndian, ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian):
        ds.file_meta.TransferSyntaxUID = syntax
        path = tmp_path / f"{syntax.name}.dcm"
        ds.save_as(path, enforce_file_format=True)
        deferred = pydicom.dcmread(path, defer_size=1024)
        ours = dicom_pixels._native_values(deferred)
        # Read from the file, not kept; a deflated body (whose offsets are into the
        # inflated stream) pydicom reads.
        kept = deferred.get_item("PixelData", keep_deferred=True).value
        assert (kept is not None) == (syntax == DeflatedExplicitVRLittleEndian), syntax.name
        theirs = pydicom.dcmread(path).pixel_array
        assert ours is not None and ours.dtype == theirs.dtype and np.array_equal(ours, theirs), syntax.name
        assert np.array_equal(ours, values)


def test_native_pixel_data_of_the_wrong_length_is_left_to_pydicom(plain) -> None:
    _, paths = plain
    ds = pydicom.dcmread(paths[0])
    ds.PixelData = ds.PixelData[:-2]
    assert dicom_pixels._native_values(ds) is None


def _unknown_vr(data: bytes, group: int, elem: int) -> bytes:
    """The explicit VR of element (group, elem) replaced by one no standard defines."""
    at = data.index(struct.pack("<HH", group, elem), 132 + 12)
    return data[: at + 4] + b"QQ" + data[at + 6 :]


@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        (
            lambda data: data[:-4000],  # cut inside the pixel data, which discovery leaves in the file
            "corrupt_dicom: file 17 of 24: pixel data cannot be decoded (ValueError): 520288 vs 524288 bytes",
        ),
        (
            lambda data: _unknown_vr(data, 0x0028, 0x0030),  # PixelSpacing: the whole read fails, the header one not
            "corrupt_dicom: file 17 of 24: an unknown value representation or encoding (NotImplementedError)",
        ),
    ],
    ids=["cut-in-pixels", "unknown-vr"],
)
def test_a_damaged_slice_among_many_fails_the_study_with_its_position(tmp_path: Path, plain, damage, expected) -> None:
    _, paths = plain
    folder = _copy(paths, tmp_path / "s")
    victim = sorted(folder.iterdir())[16]
    victim.write_bytes(damage(victim.read_bytes()))
    assert input_outcome(lambda: read_study_image(folder, GEOMETRY)) == expected
