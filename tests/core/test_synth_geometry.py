"""radfusion synth at the size of real studies: a physical field of view, pixel spacing
and slice thickness as options, the "clinical" preset (JPEG 2000 and JPEG-LS among its
transfer syntaxes, a slice count drawn per patient), and the historic cohorts unchanged.

"Unchanged" is checked as invariants, not as stored hashes: the historic geometry's
ranges are exactly the literals the generator drew from before (so every draw is the
same), and the demo's options plan the same studies, and write the same bytes, as the
plain historic call."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless, JPEGLSLossless, RLELossless

from radfusion.cli.demo import SYNTH_GEOMETRY
from radfusion.errors import UserError
from radfusion.synth import generate_cohort, plan_studies, simulate_patients
from radfusion.synth.phantom import phenotype_strides, render_phantom
from radfusion.synth.presets import synth_options
from radfusion.synth.random_streams import PHANTOM, STUDY_SPEC, stream
from radfusion.synth.study_spec import _dates, pixel_spacing_range, slice_thickness_range
from tests.support.dicom_series import main_series
from tests.support.validators import dciodvfy_errors


def _specs(options: dict, n: int = 6, seed: int = 3) -> list:
    keys = ("n_slices", "rows", "cols", "rle_fraction", "pixel_spacing_mm", "slice_thickness_mm")
    keys += ("j2k_fraction", "jpegls_fraction")
    return plan_studies(simulate_patients(n, seed=seed), **{k: options[k] for k in keys})


def _cli(*args: str | int) -> dict:
    """synth_options for command-line words (what `radfusion synth` passes on)."""
    words = [str(a) for a in args]
    given: dict = {}
    preset = None
    for flag, value in zip(words[::2], words[1::2], strict=True):
        if flag == "--preset":
            preset = value
        else:
            given[flag.removeprefix("--").replace("-", "_")] = value
    for name in ("size",):
        if name in given:
            given[name] = int(given[name])
    for name in ("rle_fraction", "j2k_fraction", "jpegls_fraction"):
        if name in given:
            given[name] = float(given[name])
    return synth_options(preset, **given)


# ---------------------------------------------------------------- the historic geometry


def test_historic_ranges_are_the_literals_drawn_before() -> None:
    # rng.uniform(low, high) draws the same number for the same (low, high): these must be
    # the very floats the generator used before it took spacings as options.
    assert pixel_spacing_range(6.0) == (5.6, 6.4)
    assert slice_thickness_range(5.0) == (4.5, 5.5)
    assert _cli("--size", 64)["pixel_spacing_mm"] == 6.0  # 384 mm / 64
    assert _cli()["slice_thickness_mm"] == 5.0


def test_default_draws_are_the_historic_draws() -> None:
    """Each study's spacings are the historic draws from its own stream, in the same order."""
    patients = simulate_patients(5, seed=9)
    for spec, patient in zip(_specs(_cli(), n=5, seed=9), patients.patients, strict=True):
        rng = stream(9, STUDY_SPEC, patient.index)
        _dates(patient.age, rng)
        assert spec.pixel_spacing_mm == round(float(rng.uniform(5.6, 6.4)), 4)
        assert spec.slice_spacing_mm == round(float(rng.uniform(4.5, 5.5)), 4)
        assert spec.n_slices == 32 and (spec.rows, spec.cols) == (64, 64)
        assert phenotype_strides(spec) == (1, 1, 1)  # the volume rendered as it always was


@pytest.mark.parametrize(("size", "low", "high"), [(64, 5.6, 6.4), (128, 2.8, 3.2), (512, 0.7, 0.8), (48, 7.46, 8.54)])
def test_the_field_of_view_is_physical(size: int, low: float, high: float) -> None:
    specs = _specs(_cli("--size", size, "--slices", 8))
    for spec in specs:
        assert low <= spec.pixel_spacing_mm <= high
        assert 4.5 <= spec.slice_spacing_mm <= 5.5
        assert 358 <= spec.cols * spec.pixel_spacing_mm <= 410  # 384 mm +- 1/15


def test_demo_options_plan_and_write_the_historic_cohort(tmp_path: Path) -> None:
    """The demo's synth options (--pixel-spacing 6 at 48 pixels) give what the plain
    historic call gives: the same studies, the same bytes in every file."""
    demo = _cli(*SYNTH_GEOMETRY)
    assert demo["pixel_spacing_mm"] == 6.0 and (demo["rows"], demo["n_slices"]) == (48, 16)
    historic = dict(n_slices=16, rows=48, cols=48, rle_fraction=0.25)  # generate_cohort's defaults otherwise
    assert _specs(demo) == plan_studies(simulate_patients(6, seed=3), **historic)
    common = dict(n_patients=4, seed=5, n_genes=24, workers=1)
    a = generate_cohort(tmp_path / "demo", **common, **{**demo, "n_slices": 8})
    b = generate_cohort(tmp_path / "historic", **common, **{**historic, "n_slices": 8})
    files_a = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files_a == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    assert len(files_a) > 4 * 9
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files_a)


# ---------------------------------------------------------------- options


def test_clinical_preset_and_overrides() -> None:
    clinical = _cli("--preset", "clinical")
    assert (clinical["rows"], clinical["cols"], clinical["n_slices"]) == (512, 512, (150, 400))
    assert clinical["pixel_spacing_mm"] == (0.6, 0.8) and clinical["slice_thickness_mm"] == (1.0, 2.5)
    assert (clinical["rle_fraction"], clinical["j2k_fraction"], clinical["jpegls_fraction"]) == (0.1, 0.3, 0.3)
    # explicit options win; a smaller size keeps the preset's field of view
    small = _cli("--preset", "clinical", "--size", 128, "--slices", 12, "--jpegls-fraction", 0.5)
    assert small["pixel_spacing_mm"] == (2.4, 3.2) and small["n_slices"] == 12 and small["jpegls_fraction"] == 0.5
    assert _cli("--preset", "clinical", "--pixel-spacing", "0.5-0.55")["pixel_spacing_mm"] == (0.5, 0.55)
    assert _cli("--preset", "clinical", "--fov-mm", 256)["pixel_spacing_mm"] == 0.5
    assert _cli("--size", 100, "--fov-mm", 350, "--slice-thickness", 2)["pixel_spacing_mm"] == 3.5
    assert _cli("--slices", "20-30")["n_slices"] == (20, 30)


@pytest.mark.parametrize(
    ("words", "says"),
    [
        (("--slices", 3), "--slices must be at least 8, not 3"),
        (("--slices", "30-20"), "--slices 30-20 is an empty range"),
        (("--slices", "many"), "--slices takes a number or a LOW-HIGH range"),
        (("--size", 16), "--size must be at least 24"),
        (("--pixel-spacing", "0"), "--pixel-spacing must be above 0"),
        (("--pixel-spacing", 1, "--fov-mm", 300), "both set the pixel spacing"),
        (("--j2k-fraction", 0.5, "--jpegls-fraction", 0.5), "add up to 1.25"),
        (("--rle-fraction", 1.5), "--rle-fraction must be within [0, 1]"),
    ],
)
def test_wrong_options_name_the_option(words: tuple, says: str) -> None:
    with pytest.raises(UserError) as raised:
        _cli(*words)
    assert says in raised.value.problem


# ---------------------------------------------------------------- the clinical preset, shrunk


CLINICAL_SMALL = ("--preset", "clinical", "--slices", "12-16", "--size", 128)


@pytest.fixture(scope="module")
def clinical_small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    options = _cli(*CLINICAL_SMALL)
    return generate_cohort(tmp_path_factory.mktemp("clinical"), n_patients=10, seed=4, n_genes=24, workers=2, **options)


def test_clinical_studies_decode_to_the_phantom(clinical_small: Path) -> None:
    truth = json.loads((clinical_small / "truth.json").read_text())
    summary = json.loads((clinical_small / "cohort.json").read_text())
    specs = _specs(_cli(*CLINICAL_SMALL), n=10, seed=4)
    by_patient = main_series(clinical_small)
    syntaxes = {}
    for spec, patient in zip(specs, truth["patients"], strict=True):
        main = by_patient[spec.patient_id]
        assert len(main) == spec.n_slices == patient["n_slices"] and 12 <= spec.n_slices <= 16
        syntaxes[spec.patient_id] = {str(ds.file_meta.TransferSyntaxUID) for ds in main}
        assert syntaxes[spec.patient_id] == {spec.transfer_syntax}
        for ds in main:
            assert 2.4 <= float(ds.PixelSpacing[0]) == float(ds.PixelSpacing[1]) <= 3.2  # 0.6-0.8 mm x 512/128
            assert 1.0 <= float(ds.SliceThickness) == float(ds.SpacingBetweenSlices) <= 2.5
            assert "1.75" in ds.SeriesDescription  # the nominal thickness, not "5mm" or "5.0"
            assert not re.search(r"(^|[^.\d])5(mm|\.0)", ds.SeriesDescription)
        decoded = np.stack([ds.pixel_array.astype(np.int32) + int(ds.RescaleIntercept) for ds in main])
        expected = render_phantom(spec, stream(spec.seed, PHANTOM, spec.index)).hu
        assert np.array_equal(decoded, expected), (spec.patient_id, spec.compression)
    counts = {ts: sum(ts in s for s in syntaxes.values()) for ts in (RLELossless, JPEG2000Lossless, JPEGLSLossless)}
    assert counts == {RLELossless: 1, JPEG2000Lossless: 3, JPEGLSLossless: 3}  # exact shares of 10
    assert sum(ExplicitVRLittleEndian in s for s in syntaxes.values()) == 3
    assert (summary["n_jpeg2000_studies"], summary["n_jpegls_studies"], summary["n_rle_studies"]) == (3, 3, 1)
    assert summary["n_dicom_files"] == sum(len(s) + 1 for s in by_patient.values())
    assert truth["parameters"]["n_slices"] == [12, 16] and truth["parameters"]["pixel_spacing_mm"] == [2.4, 3.2]


def test_one_file_of_each_transfer_syntax_passes_dciodvfy(clinical_small: Path) -> None:
    first: dict[str, Path] = {}
    for path in sorted((clinical_small / "dicom").rglob("*.dcm")):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        first.setdefault(str(ds.file_meta.TransferSyntaxUID), path)
    assert set(first) == {ExplicitVRLittleEndian, RLELossless, JPEG2000Lossless, JPEGLSLossless}
    errors = {syntax: dciodvfy_errors(path) for syntax, path in first.items()}
    assert {syntax: found for syntax, found in errors.items() if found} == {}


# ---------------------------------------------------------------- anatomy in millimetres


def test_anatomy_and_lesion_keep_their_millimetres_at_clinical_pixels() -> None:
    """At ~0.7 mm pixels the body is most of a ~350 mm field of view and the lesion the
    size truth gives it, in millimetres: its core carries the contrast, 3 mm past its
    largest semi-axis the soft tissue is back."""
    options = _cli("--preset", "clinical", "--slices", 60, "--slice-thickness", 2.5)
    spec = next(s for s in _specs(options, n=8, seed=1) if s.lesion_radius_mm >= 15 and s.lesion_texture_std_hu <= 10)
    strides = phenotype_strides(spec)
    assert strides[0] == 2 and 8 <= strides[1] == strides[2] <= 10  # ~5 x 6 x 6 mm
    phantom = render_phantom(spec, stream(spec.seed, PHANTOM, spec.index))
    hu = phantom.hu.astype(np.float64)
    ps, dz = spec.pixel_spacing_mm, spec.slice_spacing_mm
    k, r, c = phantom.lesion_voxel
    fov = spec.cols * ps
    assert 307 <= fov <= 410
    body = np.flatnonzero((hu[k] > -500).any(axis=0))
    assert 0.7 * fov <= (body[-1] - body[0] + 1) * ps <= 0.9 * fov  # 2 x (0.37-0.43) of the field of view
    z = (np.arange(spec.n_slices) - k)[:, None, None] * dz
    y = (np.arange(spec.rows) - r)[None, :, None] * ps
    x = (np.arange(spec.cols) - c)[None, None, :] * ps
    dist = np.sqrt(z**2 + y**2 + x**2)
    core = hu[dist <= 0.5 * spec.lesion_radius_mm]
    outside = max(phantom.lesion_semi_axes_mm) + 3.0
    shell = hu[(dist >= outside) & (dist <= outside + 6.0)]
    soft = float(np.median(shell))
    assert 25.0 <= soft <= 55.0  # soft tissue around it, no lesion left
    # the texture (smooth on a ~6 mm grain) moves a core's mean by about its std
    assert abs(float(core.mean()) - soft - spec.lesion_contrast_hu) <= 5.0 + spec.lesion_texture_std_hu
    assert phantom.lesion_fully_in_soft_tissue
