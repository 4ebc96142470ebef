"""Tests for the synthetic radiogenomic cohort generator (radfusion.synth).

Small cohorts (16 patients, 20 slices of 48 x 48) are written once per module
and shared; the statistical design is checked on larger cohorts drawn with
`simulate_patients`, which writes nothing.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
from pydicom.uid import UID, CTImageStorage, ExplicitVRLittleEndian, RLELossless

from radfusion.synth import generate_cohort, plan_studies, simulate_patients
from radfusion.synth.gene_symbols import GENE_SYMBOLS, gene_panel
from radfusion.synth.genomics_model import DRIVER_MODULE, SUBTYPE_SHIFTS
from radfusion.synth.render import render_study

N_PATIENTS = 16
SMALL = dict(
    n_patients=N_PATIENTS, n_genes=300, n_slices=20, rows=48, cols=48, rle_fraction=0.25, genomics_missing_fraction=0.15
)
TABLE_FILES = ("genomics.csv", "genomics.parquet", "clinical.csv", "clinical.parquet", "truth.json", "cohort.json")
MUTATION_COLUMNS = ["TP53_mut", "KRAS_mut", "EGFR_mut", "PIK3CA_mut", "BRAF_mut"]
CLINICAL_COLUMNS = ["patient_id", "treatment", "response", "survival_months", "event", "subtype", "sex", "age", "site"]


def auroc(score: np.ndarray, label: np.ndarray) -> float:
    """Rank-based AUROC (Mann-Whitney U), ties counted half."""
    score, label = np.asarray(score, float), np.asarray(label).astype(bool)
    order = np.argsort(score, kind="mergesort")
    ranks = np.empty(len(score))
    sorted_scores = score[order]
    i = 0
    while i < len(score):  # average ranks over ties
        j = i
        while j + 1 < len(score) and sorted_scores[j + 1] == sorted_scores[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    n_pos, n_neg = label.sum(), (~label).sum()
    return float((ranks[label].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def test_auroc_helper_on_known_cases() -> None:
    assert auroc(np.array([0.1, 0.2, 0.8, 0.9]), np.array([0, 0, 1, 1])) == 1.0
    assert auroc(np.array([0.9, 0.8, 0.2, 0.1]), np.array([0, 0, 1, 1])) == 0.0
    assert auroc(np.array([0.5, 0.5, 0.5, 0.5]), np.array([0, 1, 0, 1])) == 0.5
    assert auroc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1])) == 0.75


# ---------------------------------------------------------------- fixtures


@dataclass
class Instance:
    path: Path
    ds: pydicom.Dataset


@pytest.fixture(scope="module")
def cohort_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_cohort(tmp_path_factory.mktemp("synth_a"), seed=3, workers=1, **SMALL)


@pytest.fixture(scope="module")
def same_seed_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same seed rendered by 2 worker processes: must not change a byte."""
    return generate_cohort(tmp_path_factory.mktemp("synth_b"), seed=3, workers=2, **SMALL)


@pytest.fixture(scope="module")
def other_seed_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_cohort(tmp_path_factory.mktemp("synth_c"), seed=4, workers=1, **SMALL)


@pytest.fixture(scope="module")
def truth(cohort_dir: Path) -> dict:
    return json.loads((cohort_dir / "truth.json").read_text())


@pytest.fixture(scope="module")
def instances(cohort_dir: Path) -> list[Instance]:
    return [Instance(p, pydicom.dcmread(p)) for p in sorted((cohort_dir / "dicom").rglob("*")) if p.is_file()]


@pytest.fixture(scope="module")
def by_series(instances: list[Instance]) -> dict[tuple[str, str], list[Instance]]:
    series: dict[tuple[str, str], list[Instance]] = defaultdict(list)
    for inst in instances:
        series[(inst.ds.StudyInstanceUID, inst.ds.SeriesInstanceUID)].append(inst)
    return series


def _hu(ds: pydicom.Dataset) -> np.ndarray:
    return ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)


def _main_volume(insts: list[Instance]) -> tuple[np.ndarray, list[Instance]]:
    ordered = sorted(insts, key=lambda i: float(i.ds.ImagePositionPatient[2]))
    return np.stack([_hu(i.ds) for i in ordered]), ordered


def _main_series_of(by_series: dict, patient: dict) -> list[Instance]:
    return by_series[(patient["study_instance_uid"], patient["main_series_instance_uid"])]


# ---------------------------------------------------------------- determinism


def _file_bytes_by_uid(root: Path) -> dict[str, bytes]:
    out = {}
    for p in (root / "dicom").rglob("*.dcm"):
        out[str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID)] = p.read_bytes()
    return out


def test_same_seed_gives_identical_bytes_for_any_worker_count(cohort_dir: Path, same_seed_dir: Path) -> None:
    for name in TABLE_FILES:
        assert (cohort_dir / name).read_bytes() == (same_seed_dir / name).read_bytes(), name
    a, b = _file_bytes_by_uid(cohort_dir), _file_bytes_by_uid(same_seed_dir)
    assert len(a) == N_PATIENTS * (SMALL["n_slices"] + 1)
    assert a.keys() == b.keys()
    assert all(a[uid] == b[uid] for uid in a)
    paths_a = sorted(str(p.relative_to(cohort_dir)) for p in (cohort_dir / "dicom").rglob("*.dcm"))
    paths_b = sorted(str(p.relative_to(same_seed_dir)) for p in (same_seed_dir / "dicom").rglob("*.dcm"))
    assert paths_a == paths_b


def test_different_seed_gives_different_cohort(cohort_dir: Path, other_seed_dir: Path) -> None:
    for name in ("genomics.csv", "clinical.csv", "truth.json"):
        assert (cohort_dir / name).read_bytes() != (other_seed_dir / name).read_bytes()
    uids_a = set(_file_bytes_by_uid(cohort_dir))
    uids_b = set(_file_bytes_by_uid(other_seed_dir))
    assert len(uids_a) == len(uids_b) == N_PATIENTS * 21
    assert not uids_a & uids_b
    ta = json.loads((cohort_dir / "truth.json").read_text())
    tb = json.loads((other_seed_dir / "truth.json").read_text())
    assert ta["driver_genes"] != tb["driver_genes"] or ta["driver_weights"] != tb["driver_weights"]


# ---------------------------------------------------------------- DICOM content


REQUIRED = (
    "PatientID",
    "PatientName",
    "PatientBirthDate",
    "PatientSex",
    "PatientAge",
    "StudyDate",
    "StudyTime",
    "AccessionNumber",
    "Modality",
    "Manufacturer",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SOPInstanceUID",
    "FrameOfReferenceUID",
    "ImagePositionPatient",
    "ImageOrientationPatient",
    "PixelSpacing",
    "RescaleSlope",
    "RescaleIntercept",
    "InstanceNumber",
    "WindowCenter",
    "WindowWidth",
    "KVP",
    "ImageType",
    "SeriesDescription",
)


def test_every_file_is_a_valid_ct_image(instances: list[Instance], cohort_dir: Path) -> None:
    clinical = pd.read_csv(cohort_dir / "clinical.csv").set_index("patient_id")
    assert len(instances) == N_PATIENTS * 21
    sops = set()
    for inst in instances:
        ds = inst.ds
        assert inst.path.read_bytes()[128:132] == b"DICM"
        assert ds.SOPClassUID == CTImageStorage
        assert ds.file_meta.MediaStorageSOPClassUID == CTImageStorage
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        assert ds.file_meta.TransferSyntaxUID in (ExplicitVRLittleEndian, RLELossless)
        missing = [k for k in REQUIRED if k not in ds]
        assert not missing, missing
        for key in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "FrameOfReferenceUID"):
            assert UID(ds[key].value).is_valid, key
        sops.add(ds.SOPInstanceUID)
        assert ds.Modality == "CT" and ds.PhotometricInterpretation == "MONOCHROME2"
        assert ds.BitsAllocated == 16 and ds.BitsStored in (12, 16) and ds.HighBit == ds.BitsStored - 1
        assert float(ds.RescaleSlope) == 1.0
        # unsigned storage carries the -1024 intercept, signed storage none
        assert float(ds.RescaleIntercept) == (0.0 if ds.PixelRepresentation == 1 else -1024.0)
        assert re.fullmatch(r"[A-Za-z]+\^[A-Za-z]+", str(ds.PatientName))
        row = clinical.loc[ds.PatientID]
        assert ds.PatientSex == row["sex"] and ds.PatientAge == f"{row['age']:03d}Y"
        assert ds.InstitutionName == row["site"]
        born = dt.datetime.strptime(ds.PatientBirthDate, "%Y%m%d").date()
        seen = dt.datetime.strptime(ds.StudyDate, "%Y%m%d").date()
        age = seen.year - born.year - ((seen.month, seen.day) < (born.month, born.day))
        assert age == row["age"]
        ps = [float(v) for v in ds.PixelSpacing]
        if "LOCALIZER" not in ds.ImageType:
            assert ps[0] == ps[1] and 5.6 <= ps[0] <= 6.4
            assert 4.5 <= float(ds.SliceThickness) <= 5.5
            assert float(ds.SpacingBetweenSlices) == float(ds.SliceThickness)
            assert (ds.Rows, ds.Columns) == (SMALL["rows"], SMALL["cols"])
    assert len(sops) == len(instances)  # SOP Instance UIDs unique across the cohort


def test_each_study_has_one_localizer_and_one_main_series(by_series: dict, truth: dict) -> None:
    studies: dict[str, list[list[Instance]]] = defaultdict(list)
    for (study, _), insts in by_series.items():
        studies[study].append(insts)
    assert len(studies) == N_PATIENTS
    assert {p["study_instance_uid"] for p in truth["patients"]} == set(studies)
    descriptions = set()
    for series_list in studies.values():
        assert len(series_list) == 2
        localizer = [s for s in series_list if len(s) == 1]
        main = [s for s in series_list if len(s) == SMALL["n_slices"]]
        assert len(localizer) == 1 and len(main) == 1
        loc = localizer[0][0].ds
        assert list(loc.ImageType) == ["ORIGINAL", "PRIMARY", "LOCALIZER"]
        assert [float(v) for v in loc.ImageOrientationPatient] == [1, 0, 0, 0, 0, -1]
        assert any(w in loc.SeriesDescription for w in ("Topogram", "Scout", "Surview", "Scanogram"))
        volume, ordered = _main_volume(main[0])
        first = ordered[0].ds
        descriptions.add(first.SeriesDescription)
        assert "5" in first.SeriesDescription
        assert {tuple(i.ds.ImageType) for i in ordered} == {("ORIGINAL", "PRIMARY", "AXIAL")}
        assert {tuple(float(v) for v in i.ds.ImageOrientationPatient) for i in ordered} == {
            (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
        }
        assert len({i.ds.FrameOfReferenceUID for i in ordered} | {loc.FrameOfReferenceUID}) == 1
        assert len({i.ds.BitsStored for i in ordered} | {loc.BitsStored}) == 1
        z = np.array([float(i.ds.ImagePositionPatient[2]) for i in ordered])
        assert np.allclose(np.diff(z), float(first.SpacingBetweenSlices), atol=1e-3)
        assert [int(i.ds.InstanceNumber) for i in ordered] == list(range(1, SMALL["n_slices"] + 1))
        assert volume.shape == (SMALL["n_slices"], SMALL["rows"], SMALL["cols"])
        # air at the corners, bone present, nothing outside the CT range
        assert np.all(volume[:, 0, 0] < -950) and volume.max() > 600 and volume.min() >= -1024
    assert len(descriptions) >= 2  # series descriptions vary between studies


def test_storage_mixes_signed_unsigned_and_rle(by_series: dict, truth: dict) -> None:
    syntaxes, signedness = {}, {}
    for (study, _), insts in by_series.items():
        syntaxes.setdefault(study, set()).update(i.ds.file_meta.TransferSyntaxUID for i in insts)
        signedness.setdefault(study, set()).update(i.ds.PixelRepresentation for i in insts)
    assert all(len(s) == 1 for s in syntaxes.values())  # one transfer syntax per study
    n_rle = sum(RLELossless in s for s in syntaxes.values())
    assert n_rle == round(SMALL["rle_fraction"] * N_PATIENTS) == 4
    assert sum(1 in s for s in signedness.values()) == N_PATIENTS // 2
    assert sum(p["storage"]["rle"] for p in truth["patients"]) == 4
    # RLE studies decode to full volumes with the same tissue values as the others
    for (study, _), insts in by_series.items():
        if RLELossless in syntaxes[study] and len(insts) > 1:
            volume, _ = _main_volume(insts)
            assert volume.shape == (SMALL["n_slices"], SMALL["rows"], SMALL["cols"])
            assert -1024 <= volume.min() < -950 and 600 < volume.max() < 1000


def test_file_names_and_write_order_reveal_nothing(
    by_series: dict, cohort_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    depths = set()
    for insts in by_series.values():
        for inst in insts:
            rel = inst.path.relative_to(cohort_dir / "dicom")
            assert re.fullmatch(r"[0-9a-f]{8}\.dcm", rel.name)
            assert all(re.fullmatch(r"[0-9a-f]{4,6}", part) for part in rel.parts[:-1])
            depths.add(len(rel.parts))
        if len(insts) > 1:
            z_by_name = [float(i.ds.ImagePositionPatient[2]) for i in sorted(insts, key=lambda i: i.path.name)]
            assert z_by_name != sorted(z_by_name) and z_by_name != sorted(z_by_name, reverse=True)
    assert len(depths) >= 2  # folder depth varies between studies

    # the order files are written in is shuffled too
    written: list[int] = []
    original = pydicom.Dataset.save_as

    def recording_save_as(self: pydicom.Dataset, *args: object, **kwargs: object) -> None:
        written.append(int(self.InstanceNumber) if "LOCALIZER" not in self.ImageType else 0)
        original(self, *args, **kwargs)

    monkeypatch.setattr(pydicom.Dataset, "save_as", recording_save_as)
    spec = plan_studies(simulate_patients(2, seed=3), n_slices=20, rows=48, cols=48, rle_fraction=0.0)[0]
    render_study(spec, tmp_path)
    assert sorted(written) == list(range(21))  # 0 marks the localizer
    axial = [n for n in written if n]
    assert axial != sorted(axial) and axial != sorted(axial, reverse=True)


def test_lesion_at_truth_location_with_truth_contrast(by_series: dict, truth: dict) -> None:
    measured, expected = [], []
    for patient in truth["patients"]:
        volume, ordered = _main_volume(_main_series_of(by_series, patient))
        k, r, c = patient["lesion_centre_voxel"]
        ds = ordered[k].ds
        ps, dz = float(ds.PixelSpacing[0]), float(ds.SpacingBetweenSlices)
        # truth's millimetre centre is the DICOM position of the centre voxel
        ipp = np.array([float(v) for v in ds.ImagePositionPatient])
        assert np.allclose(patient["lesion_centre_mm"], ipp + np.array([c * ps, r * ps, 0.0]), atol=1e-3)
        zz, yy, xx = np.meshgrid(
            np.arange(volume.shape[0]) * dz,
            np.arange(volume.shape[1]) * ps,
            np.arange(volume.shape[2]) * ps,
            indexing="ij",
        )
        dist = np.sqrt((zz - k * dz) ** 2 + (yy - r * ps) ** 2 + (xx - c * ps) ** 2)
        radius = patient["lesion_radius_mm"]
        assert 8.0 <= radius <= 36.0  # clip(20 + 5 z_img, 8, 36)
        # Only large lesions may not fit this small (20 x 48 x 48) volume: measured on
        # 12 seeds x 16 patients, every lesion up to 23 mm sat fully in soft tissue and
        # every lesion up to 28 mm lay at least a radius from the top/bottom slices.
        if radius <= 20.0:
            assert patient["lesion_fully_in_soft_tissue"]
        if radius <= 26.0:
            assert radius <= min(k, volume.shape[0] - 1 - k) * dz
        core = volume[dist <= max(0.5 * radius, 0.5 * ps)]
        shell = volume[(dist >= radius + 5) & (dist <= radius + 12)]
        surrounding = float(np.median(shell))
        assert 25.0 <= surrounding <= 55.0  # the lesion sits in soft tissue (~40 HU)
        contrast = patient["lesion_contrast_hu"]
        noise = np.hypot(10.0, patient["lesion_texture_std_hu"])
        excess = float(core.mean()) - surrounding
        assert abs(excess - contrast) <= 3.0 * noise / np.sqrt(min(len(core), 4)) + 5.0
        assert volume[k, r, c] - surrounding > contrast - 3.5 * noise
        measured.append(excess)
        expected.append(contrast)
    # measured on 12 seeds: correlation 0.92-0.99, mean offset within 3.2 HU
    assert np.corrcoef(measured, expected)[0, 1] > 0.85
    assert abs(np.mean(measured) - np.mean(expected)) < 6.0


# ---------------------------------------------------------------- tables


def test_genomics_table_columns_values_and_missing_share(cohort_dir: Path, truth: dict) -> None:
    csv = pd.read_csv(cohort_dir / "genomics.csv")
    parquet = pd.read_parquet(cohort_dir / "genomics.parquet")
    pd.testing.assert_frame_equal(csv, parquet, check_exact=False, rtol=0, atol=1e-12)
    genes = gene_panel(300)
    assert list(csv.columns) == ["patient_id", *genes, *MUTATION_COLUMNS]
    assert genes == list(GENE_SYMBOLS[:300])  # real symbols only at the default size
    assert len(csv) == N_PATIENTS - round(0.15 * N_PATIENTS) == 14
    assert csv["patient_id"].is_unique
    with_genomics = {p["patient_id"] for p in truth["patients"] if p["has_genomics"]}
    assert set(csv["patient_id"]) == with_genomics
    values = csv[genes].to_numpy()
    assert values.dtype == np.float64 and values.min() >= 0.0 and values.max() < 16.0
    assert 3.0 < values.mean() < 7.0  # log2(TPM+1)-like scale
    for column in MUTATION_COLUMNS:
        assert csv[column].dtype == np.int64 and set(csv[column]) <= {0, 1}
    # truth mutation flags agree with the table
    by_id = {p["patient_id"]: p for p in truth["patients"]}
    for _, row in csv.iterrows():
        assert row["EGFR_mut"] == by_id[row["patient_id"]]["mutations"]["EGFR"]


def test_gene_panel_uses_real_symbols_then_placeholders() -> None:
    assert len(GENE_SYMBOLS) >= 300 and len(set(GENE_SYMBOLS)) == len(GENE_SYMBOLS)
    assert all(re.fullmatch(r"[A-Z][A-Z0-9]*", g) for g in GENE_SYMBOLS)
    assert {"TP53", "EGFR", "KRAS", "MKI67", "CD274"} <= set(GENE_SYMBOLS)
    panel = gene_panel(len(GENE_SYMBOLS) + 3)
    assert panel[-3:] == [f"GENE{i:04d}" for i in range(len(GENE_SYMBOLS) + 1, len(GENE_SYMBOLS) + 4)]
    assert gene_panel(50) == panel[:50]
    cohort = simulate_patients(30, seed=1, n_genes=400)
    assert cohort.expression.shape == (30, 400) and cohort.genes[-1] == "GENE0400"


def test_clinical_table_columns_and_domains(cohort_dir: Path, truth: dict) -> None:
    csv = pd.read_csv(cohort_dir / "clinical.csv")
    parquet = pd.read_parquet(cohort_dir / "clinical.parquet")
    pd.testing.assert_frame_equal(csv, parquet, check_exact=False, rtol=0, atol=1e-12)
    assert list(csv.columns) == CLINICAL_COLUMNS
    assert len(csv) == N_PATIENTS and csv["patient_id"].is_unique
    assert set(csv["treatment"]) <= {"chemo", "targeted"}
    assert set(csv["response"]) <= {0, 1} and set(csv["event"]) <= {0, 1}
    assert set(csv["subtype"]) <= {"S1", "S2", "S3"} and set(csv["sex"]) <= {"M", "F"}
    assert set(csv["site"]) <= {"site_A", "site_B", "site_C", "site_D"}
    assert csv["age"].between(30, 90).all() and csv["age"].dtype == np.int64
    assert (csv["survival_months"] > 0).all() and (csv["survival_months"] <= 120).all()
    # truth and clinical agree patient by patient
    assert list(csv["patient_id"]) == [p["patient_id"] for p in truth["patients"]]
    assert list(csv["response"]) == [p["response"] for p in truth["patients"]]
    summary = json.loads((cohort_dir / "cohort.json").read_text())
    assert summary["n_patients"] == N_PATIENTS and summary["seed"] == 3
    assert summary["response_rate"] == pytest.approx(csv["response"].mean())
    assert summary["fraction_with_genomics"] == pytest.approx(14 / 16)
    assert summary["n_rle_studies"] == 4
    assert sum(summary["subtype_counts"].values()) == N_PATIENTS
    assert summary["treatment_counts"] == csv["treatment"].value_counts().to_dict()


def test_truth_records_model_and_per_patient_fields(truth: dict) -> None:
    assert truth["seed"] == 3 and truth["parameters"]["n_patients"] == N_PATIENTS
    # twelve driver genes, half up- and half down-weighted
    assert len(truth["driver_genes"]) == 12 == len(set(truth["driver_genes"]))
    assert set(truth["driver_genes"]) <= set(gene_panel(300))
    weights = np.array(truth["driver_weights"])
    assert (weights > 0).sum() == 6 and (weights < 0).sum() == 6
    assert np.all((np.abs(weights) >= 0.7) & (np.abs(weights) <= 1.2))
    assert truth["outcome_model"]["b0"] == -0.55
    assert truth["outcome_model"]["coef_image_score"] == truth["outcome_model"]["coef_genomic_score"] == 4.0
    assert truth["interaction"]["gene"] == "EGFR_mut" and truth["interaction"]["treatment"] == "targeted"
    assert truth["interaction"]["logit_effect"] == {"targeted": 2.5, "chemo": -1.5}
    for p in truth["patients"]:
        expected_radius = float(np.clip(20 + 5 * p["image_score"], 8, 36))
        assert p["lesion_radius_mm"] == pytest.approx(expected_radius, abs=1e-5)
        assert p["lesion_contrast_hu"] == pytest.approx(np.clip(80 + 25 * p["image_score"], 30, 160), abs=1e-4)
        egfr = p["mutations"]["EGFR"]
        assert p["best_treatment"] == ("targeted" if egfr else "chemo")
        logit = -0.55 + 4.0 * p["image_score"] + 4.0 * p["genomic_score"]
        logit += egfr * (2.5 if p["treatment"] == "targeted" else -1.5)
        assert p["response_probability"] == pytest.approx(1 / (1 + np.exp(-logit)), abs=1e-5)
        assert p["subtype"] in ("S1", "S2", "S3") and isinstance(p["has_genomics"], bool)


def test_genomic_score_is_the_driver_weighted_sum_in_the_table(cohort_dir: Path, truth: dict) -> None:
    """Recompute z_gen from the released table: standardize drivers, weight, sum."""
    cohort = simulate_patients(400, seed=3)
    drivers = cohort.panel.driver_genes
    assert drivers == simulate_patients(N_PATIENTS, seed=3).panel.driver_genes == truth["driver_genes"]
    x = cohort.expression[:, cohort.panel.driver_idx]
    z = (x - x.mean(0)) / x.std(0)
    recomputed = z @ cohort.panel.driver_weights
    true = np.array([p.genomic_score for p in cohort.patients])
    assert np.corrcoef(recomputed, true)[0, 1] > 0.99
    assert abs(true.mean()) < 0.15 and 0.85 < true.std() < 1.15


# ---------------------------------------------------------------- statistical design


def test_expression_has_module_and_subtype_structure() -> None:
    cohort = simulate_patients(600, seed=5)
    corr = np.corrcoef(cohort.expression.T)
    module = cohort.panel.module_of
    same = (module[:, None] == module[None, :]) & (module[:, None] >= 0) & ~np.eye(len(module), dtype=bool)
    other = (module[:, None] != module[None, :]) & (module[:, None] >= 0) & (module[None, :] >= 0)
    assert np.abs(corr[same]).mean() > 0.25
    assert np.abs(corr[other]).mean() < 0.06
    # the driver program: the 12 drivers load 0.85 on one shared factor with the sign
    # of their weights, so each pair correlates at about 0.85**2 = 0.72 with that sign
    # (measured on 10 seeds: mean 0.71-0.74, no pair below 0.66)
    idx, w = cohort.panel.driver_idx, cohort.panel.driver_weights
    signed = (corr[np.ix_(idx, idx)] * np.sign(np.outer(w, w)))[~np.eye(12, dtype=bool)]
    assert abs(signed.mean() - 0.85**2) < 0.04 and signed.min() > 0.6
    assert set(np.flatnonzero(module == DRIVER_MODULE)) == set(idx)
    # nothing outside the program tracks it (measured: |r| <= 0.19 on 10 seeds)
    others = np.setdiff1d(np.arange(len(module)), idx)
    assert np.abs(corr[np.ix_(idx, others)]).max() < 0.3
    # subtype S1 shifts module 0 up (see SUBTYPE_SHIFTS)
    subtype = np.array([p.subtype for p in cohort.patients])
    genes0 = np.flatnonzero(module == 0)
    z = (cohort.expression - cohort.expression.mean(0)) / cohort.expression.std(0)
    shift = z[subtype == "S1"][:, genes0].mean() - z[subtype == "S2"][:, genes0].mean()
    assert SUBTYPE_SHIFTS[0, 0] > 0 and shift > 0.5
    # subtype does not carry the genomic score: each subtype's mean z_gen is within
    # 3.5 standard errors of 0 (a fixed 0.2 bound failed on 1 of 10 seeds by chance)
    z_gen = np.array([p.genomic_score for p in cohort.patients])
    for s in ("S1", "S2", "S3"):
        members = z_gen[subtype == s]
        assert abs(members.mean()) < 3.5 * members.std() / np.sqrt(len(members)), s


def test_fused_true_scores_predict_response_far_better_than_either() -> None:
    """Design: true-score AUROC about 0.82 for each modality alone, 0.97 together.
    Measured on 12 seeds x 4000 patients: fused 0.966-0.972, each alone 0.805-0.825,
    gap at least 0.14; at 400 patients (8 seeds) fused >= 0.958, alone <= 0.854."""
    cohort = simulate_patients(4000, seed=11, genomics_missing_fraction=0.15)
    z_img = np.array([p.image_score for p in cohort.patients])
    z_gen = np.array([p.genomic_score for p in cohort.patients])
    y = np.array([p.response for p in cohort.patients])
    both, img, gen = auroc(z_img + z_gen, y), auroc(z_img, y), auroc(z_gen, y)
    assert both >= 0.95
    assert 0.78 <= img <= 0.85 and 0.78 <= gen <= 0.85
    assert both - max(img, gen) >= 0.12
    assert 0.40 <= y.mean() <= 0.50
    assert abs(np.corrcoef(z_img, z_gen)[0, 1]) < 0.05
    # the same holds on a 400-patient cohort (the lead's scale) for a fixed seed
    small = simulate_patients(400, seed=0)
    zi = np.array([p.image_score for p in small.patients])
    zg = np.array([p.genomic_score for p in small.patients])
    ys = np.array([p.response for p in small.patients])
    fused, alone = auroc(zi + zg, ys), max(auroc(zi, ys), auroc(zg, ys))
    assert fused >= 0.93 and alone <= 0.88 and fused - alone >= 0.09


def test_outcome_interaction_survival_and_censoring() -> None:
    cohort = simulate_patients(4000, seed=12)
    P = cohort.patients
    egfr = np.array([p.mutations["EGFR"] for p in P])
    targeted = np.array([p.treatment == "targeted" for p in P])
    y = np.array([p.response for p in P])
    event = np.array([p.event for p in P])
    months = np.array([p.survival_months for p in P])
    assert 0.22 <= egfr.mean() <= 0.28 and 0.46 <= targeted.mean() <= 0.54
    kras = np.array([p.mutations["KRAS"] for p in P])
    assert not np.any(egfr & kras) and 0.17 <= kras.mean() <= 0.23
    # EGFR mutation adds exactly 4.0 to the targeted-vs-chemo logit (+2.5 vs -1.5) and
    # nothing without it; with the strong score terms that is ~0.26 in probability
    # (0.24-0.28 on 12 seeds)
    p_t = np.array([p.p_targeted for p in P])
    p_c = np.array([p.p_chemo for p in P])
    mut = egfr == 1
    exact = mut & (p_c > 1e-6) & (p_t < 1 - 1e-6)  # logits of p near 0/1 lose precision
    logit_gap = np.log(p_t[exact] / (1 - p_t[exact])) - np.log(p_c[exact] / (1 - p_c[exact]))
    assert exact.sum() > 0.9 * mut.sum() and np.allclose(logit_gap, 4.0, atol=1e-6)
    assert np.all(p_t[mut] >= p_c[mut])
    assert np.array_equal(p_t[~mut], p_c[~mut])
    assert 0.22 <= (p_t - p_c)[mut].mean() <= 0.30
    # responses are drawn from the probability of the treatment given: in each
    # EGFR x treatment group the response rate is within 4 standard errors of it
    p_given = np.array([p.response_probability for p in P])
    assert np.array_equal(p_given, np.where(targeted, p_t, p_c))
    for group in ((mut & targeted), (mut & ~targeted), (~mut & targeted), (~mut & ~targeted)):
        se = np.sqrt(np.sum(p_given[group] * (1 - p_given[group]))) / group.sum()
        assert abs(y[group].mean() - p_given[group].mean()) < 4 * se
    # observed: mutants respond better to targeted therapy, wild-types do not care
    gap_mut = y[mut & targeted].mean() - y[mut & ~targeted].mean()
    gap_wt = y[~mut & targeted].mean() - y[~mut & ~targeted].mean()
    assert gap_mut > 0.12 and abs(gap_wt) < 0.06  # 4000 patients, 12 seeds: 0.20-0.30 and |gap| <= 0.023
    assert np.mean([p.best_treatment == "targeted" for p in P]) == pytest.approx(egfr.mean())
    # ~30% censored; responders live longer among patients with similar scores
    assert 0.26 <= 1 - event.mean() <= 0.34
    z = np.array([p.image_score + p.genomic_score for p in P])
    mid = np.abs(z) < 0.5
    assert np.median(months[mid & (y == 1)]) > np.median(months[mid & (y == 0)])
    # higher scores raise the hazard: the top quartile dies sooner
    top, bottom = z > np.quantile(z, 0.75), z < np.quantile(z, 0.25)
    assert np.median(months[top]) < np.median(months[bottom])
    # has_genomics share is exact
    assert sum(not p.has_genomics for p in P) == 600


# ---------------------------------------------------------------- guard rails


def test_refuses_foreign_folder_and_replaces_its_own(tmp_path: Path) -> None:
    foreign = tmp_path / "foreign"
    (foreign / "dicom").mkdir(parents=True)
    (foreign / "dicom" / "keep.txt").write_text("not ours")
    with pytest.raises(FileExistsError):
        generate_cohort(foreign, n_patients=2, n_slices=8, rows=32, cols=32)
    assert (foreign / "dicom" / "keep.txt").exists()

    ours = tmp_path / "ours"
    generate_cohort(ours, n_patients=3, seed=1, n_slices=8, rows=32, cols=32)
    generate_cohort(ours, n_patients=2, seed=2, n_slices=8, rows=32, cols=32)
    assert len(list((ours / "dicom").rglob("*.dcm"))) == 2 * 9  # nothing stale left behind
    assert len(pd.read_csv(ours / "clinical.csv")) == 2


@pytest.mark.parametrize(
    "bad",
    [
        dict(n_patients=0),
        dict(rle_fraction=1.5),
        dict(genomics_missing_fraction=-0.1),
        dict(workers=0),
        dict(n_genes=5),
        dict(rows=8),
        dict(seed=-1),
    ],
)
def test_rejects_bad_parameters(tmp_path: Path, bad: dict) -> None:
    args = dict(n_patients=2, n_slices=8, rows=32, cols=32) | bad
    with pytest.raises(ValueError):
        generate_cohort(tmp_path / "x", **args)
