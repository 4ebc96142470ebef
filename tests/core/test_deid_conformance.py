"""De-identification keeps every object as valid as it was, checked by the standard's own
tools: dciodvfy finds no error in a de-identified file that the original lacked (every
pydicom shipped file that deid writes: SR, SEG, RT, Enhanced included, under each dates
choice and with every option), a synthetic CT/MR series and radfusion's prediction SR
come out with 0 errors, and dsrdump and highdicom read every de-identified SR that they
read before."""

from __future__ import annotations

import csv
import re
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import highdicom as hd
import pydicom
import pytest

from radfusion.deid.keys import DeidKey
from radfusion.deid.options import Dates, DeidOptions
from radfusion.deid.run import deidentify_tree
from tests.support.validators import assert_dciodvfy_valid, dciodvfy_errors, dsrdump

KEY = DeidKey.from_text("radfusion-test-key-conformance-01")
# pydicom's shipped files (test files, character set and palette files), listed from the
# folder: get_testdata_files("*") also asks the network for the downloadable ones (and
# waits for it to time out here). The enhanced multi-frame objects pydicom ships no file
# for are built by highdicom below (Segmentation, Parametric Map) and by the tests' own
# Enhanced CT builder.
SHIPPED = Path(pydicom.__file__).parent / "data"
OPTION_SETS = {
    "modified dates": DeidOptions(),
    "no dates option": DeidOptions(dates=Dates.REMOVED),
    "every option": DeidOptions(
        dates=Dates.FULL,
        patient_characteristics=True,
        device_identity=True,
        institution_identity=True,
        clean_descriptors=True,
        clean_structured_content=True,
    ),
}


def _normalised(errors: list[str]) -> set[str]:
    """Error messages without their numbers and UIDs (those change by design)."""
    return {re.sub(r"\s+", " ", re.sub(r"\d[\d.]*", "#", e)) for e in errors}


def _deidentify_each(files: list[Path], work: Path, options: DeidOptions) -> list[tuple[Path, Path]]:
    """Each file in its own run: pydicom's files share SOP Instance UIDs, which one run
    rightly refuses as duplicates."""
    pairs = []
    for i, path in enumerate(files):
        src = work / "in" / str(i)
        src.mkdir(parents=True)
        shutil.copy(path, src / path.name)
        summary = deidentify_tree(src, work / "out" / str(i), KEY, options=options)
        with open(summary.report, newline="") as f:
            for row in csv.DictReader(f):
                if row["status"] == "written":
                    pairs.append((path, work / "out" / str(i) / row["output"]))
    return pairs


@pytest.fixture(scope="module")
def shipped_files() -> list[Path]:
    return sorted(p for p in SHIPPED.rglob("*") if p.is_file() and p.suffix not in (".py", ".pyc", ".json"))


@pytest.mark.parametrize("option_set", list(OPTION_SETS))
def test_deid_adds_no_dciodvfy_error_to_any_shipped_file(shipped_files, tmp_path, option_set):
    if shutil.which("dciodvfy") is None:
        pytest.skip("dicom3tools (dciodvfy) is not installed")
    pairs = _deidentify_each(shipped_files, tmp_path, OPTION_SETS[option_set])
    written = {pydicom.dcmread(out, stop_before_pixels=True).SOPClassUID.name for _, out in pairs}
    assert len(pairs) >= 140
    for kind in ("Comprehensive SR", "Segmentation Storage", "RT Plan Storage", "12-lead ECG"):
        assert any(kind in name for name in written), kind

    def added(pair):
        original, out = pair
        before, after = dciodvfy_errors(original), dciodvfy_errors(out)
        return original.name, len(before), sorted(_normalised(after) - _normalised(before))

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(added, pairs))
    assert sum(n for _, n, _ in results) > 0  # the validator ran and found the originals' own errors
    assert [(name, new) for name, _, new in results if new] == []


def test_deidentified_synthetic_ct_and_mr_have_no_dciodvfy_error(tmp_path):
    from radfusion.synth import generate_cohort

    generate_cohort(tmp_path / "synth", n_patients=2, seed=11, n_genes=24, n_slices=8, rows=24, cols=24, workers=1)
    summary = deidentify_tree(tmp_path / "synth" / "dicom", tmp_path / "out", KEY)
    outputs = sorted((tmp_path / "out").rglob("*.dcm"))
    assert summary.written == len(outputs) >= 8 and summary.failed == 0
    assert {pydicom.dcmread(p, stop_before_pixels=True).Modality for p in outputs} >= {"CT"}
    for path in outputs:
        assert_dciodvfy_valid(path)


def _readers(path: Path) -> dict[str, bool]:
    done = subprocess.run(["dsrdump", str(path)], capture_output=True, text=True, errors="replace", timeout=60)
    try:
        hd.sr.srread(path)
        highdicom_reads = True
    except (AttributeError, ValueError, RuntimeError, KeyError, TypeError):
        highdicom_reads = False
    return {"dsrdump": done.returncode == 0, "highdicom": highdicom_reads}


@pytest.mark.parametrize("option_set", ["modified dates", "every option"])
def test_shipped_srs_stay_readable(shipped_files, tmp_path, option_set):
    if shutil.which("dsrdump") is None:
        pytest.skip("dcmtk (dsrdump) is not installed")
    srs = [p for p in shipped_files if p.suffix == ".dcm" and _is_sr(p)]
    pairs = _deidentify_each(srs, tmp_path, OPTION_SETS[option_set])
    assert len(pairs) >= 3
    read_before = 0
    for original, out in pairs:
        before, after = _readers(original), _readers(out)
        read_before += sum(before.values())
        assert {k for k, ok in before.items() if ok} <= {k for k, ok in after.items() if ok}, original.name
        assert_no_dummy_structure(pydicom.dcmread(out))
    assert read_before >= 1


def _is_sr(path: Path) -> bool:
    try:
        return pydicom.dcmread(path, stop_before_pixels=True).get("Modality") == "SR"
    except Exception:  # noqa: BLE001 - non-DICOM files in the folder
        return False


def assert_no_dummy_structure(ds: pydicom.Dataset) -> None:
    """Value Type, Relationship Type and codes are never dummies."""
    for elem in ds.iterall():
        if elem.keyword in ("ValueType", "RelationshipType", "CodeValue", "CodingSchemeDesignator"):
            assert elem.value != "DEIDENTIFIED", elem


@pytest.fixture(scope="module")
def prediction_sr(tiny_cohort, tiny_contract, tmp_path_factory) -> Path:
    import numpy as np

    from radfusion.dicom import find_studies
    from radfusion.prediction import Prediction
    from radfusion.serving.reports.sr import build_prediction_sr, new_uid, read_evidence

    study = sorted(find_studies(tiny_cohort / "dicom").studies.values(), key=lambda s: s.patient_id)[0]
    evidence = read_evidence([h.path for h in study.instances][:3])
    prediction = Prediction.from_outputs(tiny_contract, np.array([0.2, 0.8]))
    facts = {"modalities_used": ["image"], "genomics_source": "patient not in the genomics table"}
    sr = build_prediction_sr(tiny_contract, prediction, facts, evidence, new_uid(), new_uid(), version=1)
    folder = tmp_path_factory.mktemp("prediction_sr")
    sr.save_as(folder / "sr.dcm", enforce_file_format=True)
    return folder / "sr.dcm"


@pytest.mark.parametrize("option_set", ["modified dates", "no dates option", "every option"])
def test_deidentified_prediction_sr_is_valid_and_readable(prediction_sr, tmp_path, option_set):
    assert_dciodvfy_valid(prediction_sr)  # the input is valid: every error would be deid's
    ((_, out),) = _deidentify_each([prediction_sr], tmp_path, OPTION_SETS[option_set])
    assert_dciodvfy_valid(out)
    assert "CONTAINER" in dsrdump(out)
    parsed = hd.sr.srread(out)
    original = pydicom.dcmread(prediction_sr)
    ds = pydicom.dcmread(out)
    assert_no_dummy_structure(ds)
    assert parsed.SOPInstanceUID != original.SOPInstanceUID and parsed.PatientID != original.PatientID
    # The content tree keeps its shape and its codes: value and relationship types,
    # concept names and values, numbers.
    assert _content_shape(ds) == _content_shape(original) and len(_content_shape(ds)) > 20


def _content_shape(ds: pydicom.Dataset) -> list[tuple[str, str]]:
    wanted = ("ValueType", "RelationshipType", "CodeValue", "CodingSchemeDesignator", "NumericValue")
    return [(e.keyword, str(e.value)) for item in ds.ContentSequence for e in item.iterall() if e.keyword in wanted]


@pytest.fixture(scope="module")
def enhanced_objects(tiny_cohort, tiny_contract, tmp_path_factory) -> list[Path]:
    """Enhanced multi-frame objects pydicom ships no file for: a highdicom Segmentation and
    radfusion's saliency Parametric Map of a synthetic CT series, and an Enhanced CT."""
    import highdicom as hd
    import numpy as np

    from radfusion.dicom import find_studies
    from radfusion.serving.reports.saliency_map import build_saliency_map
    from radfusion.serving.reports.sr import new_uid
    from tests.support.dicom_series import enhanced_ct

    folder = tmp_path_factory.mktemp("enhanced")
    study = sorted(find_studies(tiny_cohort / "dicom").studies.values(), key=lambda s: s.patient_id)[0]
    by_series: dict[str, list] = {}
    for header in study.instances:
        by_series.setdefault(header.series_uid, []).append(header)
    series = max(by_series.values(), key=len)  # the axial series, not the localizer
    images = sorted((pydicom.dcmread(h.path) for h in series), key=lambda d: float(d.ImagePositionPatient[2]))
    mask = np.zeros((len(images), images[0].Rows, images[0].Columns), dtype=bool)
    mask[:, 4:10, 4:10] = True
    segment = hd.seg.SegmentDescription(
        segment_number=1,
        segment_label="lesion",
        segmented_property_category=hd.sr.CodedConcept("49755003", "SCT", "Morphologically Altered Structure"),
        segmented_property_type=hd.sr.CodedConcept("4147007", "SCT", "Mass"),
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
    )
    seg = hd.seg.Segmentation(
        source_images=images,
        pixel_array=mask,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[segment],
        series_instance_uid=new_uid(),
        series_number=99,
        sop_instance_uid=new_uid(),
        instance_number=1,
        manufacturer="radfusion tests",
        manufacturer_model_name="deid conformance",
        software_versions="1",
        device_serial_number="SN-0001",
    )
    # The map of a blob at the series' centre, on a grid that is the series itself.
    first, last = (np.array(d.ImagePositionPatient, float) for d in (images[0], images[-1]))
    rows, cols = float(images[0].PixelSpacing[0]), float(images[0].PixelSpacing[1])
    affine = np.eye(4)
    affine[:3, 0] = (last - first) / max(len(images) - 1, 1)
    affine[:3, 1], affine[:3, 2], affine[:3, 3] = (0, rows, 0), (cols, 0, 0), first
    grid = np.indices(mask.shape).astype(float)
    centre = [(n - 1) / 2 for n in mask.shape]
    saliency = np.exp(-sum((g - c) ** 2 for g, c in zip(grid, centre, strict=True)) / 8.0).astype(np.float32)
    pm = build_saliency_map(saliency, affine, images, new_uid(), new_uid(), tiny_contract)
    ct = enhanced_ct(np.zeros((4, 8, 8), dtype=np.float32), np.array([[0.0, 0.0, 5.0 * k] for k in range(4)]))
    paths = []
    for name, ds in (("seg.dcm", seg), ("pm.dcm", pm), ("enhanced_ct.dcm", ct)):
        ds.PatientName, ds.PatientID = "Marker^Enhanced", "ENH-MARKER-0001"
        ds.save_as(folder / name, enforce_file_format=True)
        paths.append(folder / name)
    return paths


@pytest.mark.parametrize("option_set", list(OPTION_SETS))
def test_deid_adds_no_dciodvfy_error_to_enhanced_objects(enhanced_objects, tmp_path, option_set):
    pairs = _deidentify_each(enhanced_objects, tmp_path, OPTION_SETS[option_set])
    assert len(pairs) == len(enhanced_objects)
    for original, out in pairs:
        new = _normalised(dciodvfy_errors(out)) - _normalised(dciodvfy_errors(original))
        assert not new, (original.name, sorted(new))
        ds = pydicom.dcmread(out)
        assert "Marker" not in str(ds.PatientName) and ds.PatientID != "ENH-MARKER-0001"
    # The two objects radfusion's tools build are valid to begin with: every error would be deid's.
    for original, out in pairs[:2]:
        assert dciodvfy_errors(original) == [] and dciodvfy_errors(out) == [], original.name


def test_an_optional_sequence_with_items_keeps_them(tiny_cohort, tmp_path):
    """Referenced Study Sequence (X/Z, Type 3, 1-n items when present) is neither emptied
    nor left identifying: its item stays, its UID remapped (pydicom-data's
    JPGLosslessP14SV1_1s_1f_8b.dcm gained two dciodvfy errors when it was emptied)."""
    from radfusion.dicom import find_studies

    study = sorted(find_studies(tiny_cohort / "dicom").studies.values(), key=lambda s: s.patient_id)[0]
    ds = pydicom.dcmread(study.instances[0].path)
    item = pydicom.Dataset()
    item.ReferencedSOPClassUID = "1.2.840.10008.3.1.2.3.1"  # Detached Study Management
    item.ReferencedSOPInstanceUID = "1.2.826.0.1.3680043.8.498.4242"
    ds.ReferencedStudySequence = [item]
    (tmp_path / "in").mkdir()
    ds.save_as(tmp_path / "in" / "ct.dcm", enforce_file_format=True)
    assert_dciodvfy_valid(tmp_path / "in" / "ct.dcm")
    ((_, out),) = _deidentify_each([tmp_path / "in" / "ct.dcm"], tmp_path / "work", OPTION_SETS["modified dates"])
    assert_dciodvfy_valid(out)
    (kept,) = pydicom.dcmread(out).ReferencedStudySequence
    assert kept.ReferencedSOPInstanceUID.startswith("2.25.") and "4242" not in kept.ReferencedSOPInstanceUID
