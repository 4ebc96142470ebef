"""radfusion synth --sites: N cohorts from one shared biology that differ as hospitals do
(scanner, noise, HU offset, slice thickness, response rate, gene panel, a modality), each
an ordinary cohort folder, every difference recorded in sites.json.

Three sites of 24 patients (8 slices of 32 x 32) are written once for the module; the
outcome rates are compared on larger draws of `simulate_patients`, which writes nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from radfusion.errors import UserError
from radfusion.synth import generate_cohort, plan_studies, simulate_patients
from radfusion.synth import outcome_model as om
from radfusion.synth.genomics_model import MUTATION_GENES
from radfusion.synth.phantom import NOISE_STD_HU, render_phantom
from radfusion.synth.random_streams import PATIENTS, PHANTOM, stream
from radfusion.synth.sites import SITES_FILE, draw_site, generate_sites
from tests.support.dicom_series import main_series
from tests.support.validators import dciodvfy_errors

SEED = 8  # its three sites' response shifts lie at least 0.5 log-odds apart (checked below)
N_PATIENTS = 24
N_GENES = 60
MISSING = 0.2
GEOMETRY = dict(n_slices=8, rows=32, cols=32, rle_fraction=0.25)
WITHOUT_OMICS = 3
COHORT_FILES = ("clinical.csv", "clinical.parquet", "truth.json", "cohort.json")
OMICS_FILES = ("expression.tsv", "mutations.maf", "copy_number.seg", "genes.bed", "sample_map.csv")


@pytest.fixture(scope="module")
def sites_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sites")
    generate_sites(
        out,
        3,
        N_PATIENTS,
        SEED,
        N_GENES,
        missing_genes=MISSING,
        without_omics=[WITHOUT_OMICS],
        workers=1,
        slice_thickness_mm=5.0,
        **GEOMETRY,
    )
    return out


@pytest.fixture(scope="module")
def sites(sites_dir: Path) -> list[dict]:
    return json.loads((sites_dir / SITES_FILE).read_text())["sites"]


def _profile(k: int):
    return draw_site(SEED, k, n_genes=N_GENES, slice_thickness_mm=5.0, missing_genes=MISSING, omics=k != WITHOUT_OMICS)


def _truth(sites_dir: Path, k: int) -> dict:
    return json.loads((sites_dir / f"site-{k}" / "truth.json").read_text())


# ---------------------------------------------------------------- folders and identity


def test_each_site_is_an_ordinary_cohort_folder(sites_dir: Path, sites: list[dict]) -> None:
    assert [s["folder"] for s in sites] == ["site-1", "site-2", "site-3"]
    for k in (1, 2, 3):
        folder = sites_dir / f"site-{k}"
        assert all((folder / name).is_file() for name in COHORT_FILES)
        assert (folder / "dicom").is_dir() and any((folder / "dicom").rglob("*.dcm"))
        clinical = pd.read_csv(folder / "clinical.csv")
        assert len(clinical) == N_PATIENTS and set(clinical["site"]) == {f"site-{k}"}
        assert json.loads((folder / "cohort.json").read_text())["n_dicom_files"] == N_PATIENTS * (
            sites[k - 1]["n_slices"] + 1
        )
    for k in (1, 2):
        folder = sites_dir / f"site-{k}"
        assert (folder / "genomics.csv").is_file() and (folder / "genomics.parquet").is_file()
        assert all((folder / "omics" / name).is_file() for name in OMICS_FILES)


def test_the_site_without_omics_has_no_genomics_at_all(sites_dir: Path, sites: list[dict]) -> None:
    folder = sites_dir / f"site-{WITHOUT_OMICS}"
    assert not any((folder / name).exists() for name in ("genomics.csv", "genomics.parquet", "omics"))
    assert sites[WITHOUT_OMICS - 1]["omics"] is False and sites[WITHOUT_OMICS - 1]["dropped_genes"] == []
    truth = _truth(sites_dir, WITHOUT_OMICS)
    assert not any(p["has_genomics"] for p in truth["patients"])
    assert json.loads((folder / "cohort.json").read_text())["fraction_with_genomics"] == 0


def test_ids_uids_and_study_folders_differ_across_sites(sites_dir: Path) -> None:
    ids, uids, folders = [], [], []
    for k in (1, 2, 3):
        clinical = pd.read_csv(sites_dir / f"site-{k}" / "clinical.csv")
        assert all(pid.startswith(f"S{k}-") for pid in clinical["patient_id"])
        ids.append(set(clinical["patient_id"]))
        uids.append({p["study_instance_uid"] for p in _truth(sites_dir, k)["patients"]})
        folders.append({p.name for p in (sites_dir / f"site-{k}" / "dicom").iterdir()})
        assert len(ids[-1]) == len(uids[-1]) == len(folders[-1]) == N_PATIENTS
    for a in range(3):
        for b in range(a + 1, 3):
            assert not ids[a] & ids[b] and not uids[a] & uids[b] and not folders[a] & folders[b]


def test_sites_json_records_the_drawn_profiles(sites: list[dict]) -> None:
    for k, entry in enumerate(sites, start=1):
        assert {key: entry[key] for key in _profile(k).record()} == _profile(k).record()
        assert 0.7 <= entry["noise_scale"] <= 1.6 and -20 <= entry["hu_offset"] <= 20
        assert -2 <= entry["response_shift"] <= 2 and entry["n_patients"] == N_PATIENTS
    # up to four sites get four different vendors and four different thicknesses
    assert len({s["manufacturer"] for s in sites}) == 3
    assert len({s["slice_thickness_mm"] for s in sites}) == 3
    # a site's draws do not depend on how many sites there are
    assert draw_site(SEED, 2, n_genes=N_GENES, missing_genes=MISSING) == _profile(2)


# ---------------------------------------------------------------- scanners and pixels


def test_scanner_tags_and_slice_thickness_match_sites_json(sites_dir: Path, sites: list[dict]) -> None:
    for k, entry in enumerate(sites, start=1):
        series = main_series(sites_dir / f"site-{k}")
        assert len(series) == N_PATIENTS
        centre = entry["slice_thickness_mm"]
        for main in series.values():
            assert len(main) == entry["n_slices"]
            ds = main[0]
            assert (ds.Manufacturer, ds.ManufacturerModelName) == (entry["manufacturer"], entry["model"])
            assert ds.ConvolutionKernel == entry["kernel"] and ds.InstitutionName == entry["name"]
            assert 0.9 * centre <= float(ds.SliceThickness) <= 1.1 * centre  # drawn within 10% of it
        # thinner slices, more of them: every site's scans cover about the same length
        assert 30 <= entry["n_slices"] * centre <= 50


def test_noise_and_offset_show_in_the_pixels(sites_dir: Path, sites: list[dict]) -> None:
    """A written study minus the same phantom rendered without noise and offset: its mean
    is the site's HU offset, its sd the site's noise sd (10 HU x the scale)."""
    stats = []
    for k, entry in enumerate(sites, start=1):
        profile = _profile(k)
        cohort = simulate_patients(N_PATIENTS, SEED, N_GENES, 0.15, site=profile)
        n_slices = entry["n_slices"]
        geometry = {**GEOMETRY, "n_slices": n_slices, "slice_thickness_mm": entry["slice_thickness_mm"]}
        spec = plan_studies(cohort, **geometry)[0]
        assert (spec.noise_scale, spec.hu_offset) == (entry["noise_scale"], entry["hu_offset"])
        main = main_series(sites_dir / f"site-{k}")[spec.patient_id]
        written = np.stack([ds.pixel_array.astype(np.int32) + int(ds.RescaleIntercept) for ds in main])
        assert np.array_equal(written, render_phantom(spec, stream(SEED, PHANTOM, 0, k)).hu)
        clean = render_phantom(replace(spec, noise_scale=0.0, hu_offset=0.0), stream(SEED, PHANTOM, 0, k)).hu
        body = clean > -900  # nothing clipped there
        diff = (written - clean)[body].astype(np.float64)
        assert abs(diff.mean() - entry["hu_offset"]) < 1.0
        assert abs(diff.std() - NOISE_STD_HU * entry["noise_scale"]) < 0.15 * NOISE_STD_HU * entry["noise_scale"]
        stats.append(diff.std())
    # the noisiest site by sites.json is the noisiest in its pixels
    assert int(np.argmax(stats)) == int(np.argmax([s["noise_scale"] for s in sites]))


def test_one_file_per_site_passes_dciodvfy(sites_dir: Path) -> None:
    first = {k: next(iter(sorted((sites_dir / f"site-{k}" / "dicom").rglob("*.dcm")))) for k in (1, 2, 3)}
    errors = {k: dciodvfy_errors(path) for k, path in first.items()}
    assert {k: found for k, found in errors.items() if found} == {}


# ---------------------------------------------------------------- outcomes and genes


def test_response_rate_follows_the_shift_and_the_effects_are_shared(sites_dir: Path, sites: list[dict]) -> None:
    shifts = [s["response_shift"] for s in sites]
    assert min(abs(a - b) for i, a in enumerate(shifts) for b in shifts[i + 1 :]) >= 0.5  # SEED's draws
    for k, entry in enumerate(sites, start=1):
        truth = _truth(sites_dir, k)
        assert truth["outcome_model"]["site_logit_shift"] == entry["response_shift"]
        assert truth["outcome_model"]["coef_image_score"] == om.COEF_IMAGE
        for p in truth["patients"]:  # the shared model with this site's intercept
            expected = om.response_probability(
                np.array(p["image_score"]),
                np.array(p["genomic_score"]),
                np.array(p["mutations"]["EGFR"]),
                np.array(p["treatment"]),
                entry["response_shift"],
            )
            assert abs(float(expected) - p["response_probability"]) < 1e-5
    # over many patients the response rates are ordered as the shifts
    rates = [
        np.mean([p.response for p in simulate_patients(3000, SEED, N_GENES, site=_profile(k)).patients])
        for k in (1, 2, 3)
    ]
    assert list(np.argsort(rates)) == list(np.argsort(shifts))
    assert max(rates) - min(rates) > 0.04


def test_missing_genes_are_absent_not_empty(sites_dir: Path, sites: list[dict]) -> None:
    full = pd.read_csv(sites_dir / "site-1" / "genomics.csv")
    panel = [c for c in full.columns if c != "patient_id" and not c.endswith("_mut")]
    assert len(panel) == N_GENES and sites[0]["dropped_genes"] == []
    drivers = set(_truth(sites_dir, 1)["driver_genes"])
    dropped = sites[1]["dropped_genes"]
    kept = drivers | set(MUTATION_GENES)  # every site measures these
    assert len(dropped) == round(MISSING * (N_GENES - len(kept))) and not set(dropped) & kept
    site2 = sites_dir / "site-2"
    genomics = pd.read_parquet(site2 / "genomics.parquet")
    assert list(genomics.columns) == [c for c in full.columns if c not in dropped]
    assert not genomics.isna().any().any()
    expression = pd.read_csv(site2 / "omics" / "expression.tsv", sep="\t", index_col=0)
    assert list(expression.index) == [g for g in panel if g not in dropped]
    bed = pd.read_csv(site2 / "omics" / "genes.bed", sep="\t", header=None)
    assert not set(bed[3]) & set(dropped) and len(bed) == N_GENES - len(dropped)
    maf = pd.read_csv(site2 / "omics" / "mutations.maf", sep="\t", comment="#")
    assert not set(maf["Hugo_Symbol"]) & set(dropped)


def test_all_sites_share_one_biology(sites_dir: Path) -> None:
    truths = [_truth(sites_dir, k) for k in (1, 2, 3)]
    document = json.loads((sites_dir / SITES_FILE).read_text())
    for key in ("driver_genes", "driver_weights", "interaction"):
        assert all(t[key] == truths[0][key] for t in truths)
    assert document["driver_genes"] == truths[0]["driver_genes"]
    # the same seed's single cohort has the same panel
    assert simulate_patients(4, SEED, N_GENES).panel.driver_genes == truths[0]["driver_genes"]
    # ... but each site has patients of its own
    scores = [{round(p["image_score"], 6) for p in t["patients"]} for t in truths]
    assert not scores[0] & scores[1]


# ---------------------------------------------------------------- the default and mistakes


def test_the_single_cohort_keeps_its_streams_and_ids() -> None:
    assert (
        stream(5, PATIENTS, 0, site=0).random()
        == np.random.default_rng(np.random.SeedSequence([5, PATIENTS, 0])).random()
    )
    assert stream(5, PATIENTS, 0, site=1).random() != stream(5, PATIENTS, 0).random()
    cohort = simulate_patients(3, seed=5, n_genes=24)
    assert cohort.site is None and all(p.patient_id.startswith("RFP") for p in cohort.patients)
    assert cohort.measured_genes == cohort.genes


def test_rerun_replaces_its_sites_and_refuses_foreign_folders(tmp_path: Path) -> None:
    tiny = dict(n_genes=24, n_slices=8, rows=24, cols=24, workers=1)
    generate_sites(tmp_path, 3, 2, 0, without_images=[2], **tiny)
    assert not (tmp_path / "site-2" / "dicom").exists()
    generate_sites(tmp_path, 2, [2, 3], 0, **tiny)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["site-1", "site-2", SITES_FILE]
    assert (tmp_path / "site-2" / "dicom").is_dir()
    assert len(pd.read_csv(tmp_path / "site-2" / "clinical.csv")) == 3
    (tmp_path / "site-3").mkdir()
    (tmp_path / "site-3" / "notes.txt").write_text("someone else's\n")
    with pytest.raises(UserError, match="was not written by radfusion synth"):
        generate_sites(tmp_path, 3, 2, 0, **tiny)


@pytest.mark.parametrize(
    ("kwargs", "says"),
    [
        (dict(without_omics=[4]), "names site 4, not one of 1..3"),
        (dict(without_omics=[2], without_images=[2]), "neither images nor omics"),
        (dict(n_patients=[2, 2]), "2 patient counts for 3 sites"),
        (dict(missing_genes=1.0), "--site-missing-genes must be within"),
    ],
)
def test_wrong_site_options_are_refused(tmp_path: Path, kwargs: dict, says: str) -> None:
    with pytest.raises(UserError, match=says):
        generate_sites(tmp_path, 3, **{"n_patients": 2, **kwargs})


def test_a_site_without_images_writes_no_dicom_folder(tmp_path: Path) -> None:
    profile = replace(_profile(1), images=False)
    out = generate_cohort(tmp_path, n_patients=3, seed=1, n_genes=24, n_slices=8, rows=24, cols=24, site=profile)
    assert not (out / "dicom").exists() and (out / "genomics.parquet").exists()
    truth = json.loads((out / "truth.json").read_text())
    assert all("study_instance_uid" not in p for p in truth["patients"])


def test_radfusion_synth_sites_on_the_command_line(tmp_path: Path) -> None:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("RADFUSION_")}
    words = ["synth", "--sites", "2", "--patients", "3", "--genes", "24", "--slices", "8", "--size", "24"]
    words += ["--workers", "1", "--site-without-images", "2", "--out", str(tmp_path / "sites")]
    done = subprocess.run(
        [sys.executable, "-m", "radfusion.cli", *words],
        cwd=tmp_path,
        env=environ,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr
    printed = json.loads(done.stdout)
    assert printed["n_sites"] == 2 and [s["images"] for s in printed["sites"]] == [True, False]
    root = tmp_path / "sites"
    assert json.loads((root / SITES_FILE).read_text())["n_sites"] == 2
    assert (root / "site-1" / "dicom").is_dir() and not (root / "site-2" / "dicom").exists()
    assert (root / "site-2" / "genomics.parquet").is_file()
    assert len(pd.read_csv(root / "site-1" / "clinical.csv")) == 3
    wrong = subprocess.run(
        [sys.executable, "-m", "radfusion.cli", "synth", "--site-without-omics", "1", "--out", str(tmp_path / "x")],
        cwd=tmp_path,
        env=environ,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert wrong.returncode == 1 and "need --sites" in wrong.stderr
