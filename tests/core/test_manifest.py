"""`radfusion cohort build` on a small synthetic cohort, checked against truth.json: the
planted missing-genomics share, the main series chosen per patient, omics values equal
to the released table; then a messier copy (a second study for one patient, a study
too short to use, unmapped and duplicate samples, a sample without a study, a patient
without outcome) where every problem must show up in the report; and training reading
the manifest."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
from pydicom.uid import generate_uid

from radfusion.cli import main
from radfusion.cohort_manifest import load_manifest
from radfusion.genomics import load_genomics_table

COHORT = dict(n_patients=20, seed=7, n_genes=30, n_slices=10, rows=32, cols=32, rle_fraction=0.25)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from radfusion.synth import generate_cohort

    return generate_cohort(tmp_path_factory.mktemp("manifest_cohort"), workers=1, **COHORT)


@pytest.fixture(scope="module")
def truth(cohort: Path) -> dict:
    return json.loads((cohort / "truth.json").read_text())


def build(cohort: Path, out: Path, capsys: pytest.CaptureFixture, **override: str) -> tuple[dict, str]:
    omics = cohort / "omics"
    args = {
        "--dicom": cohort / "dicom",
        "--clinical": cohort / "clinical.csv",
        "--sample-map": omics / "sample_map.csv",
        "--expression": omics / "expression.tsv",
        "--maf": omics / "mutations.maf",
        "--cnv": omics / "copy_number.seg",
        "--genes": omics / "genes.bed",
        "--out": out,
        **override,
    }
    main(["cohort", "build", *[str(v) for pair in args.items() for v in pair if str(v)]])
    return json.loads((out / "report.json").read_text()), capsys.readouterr().out


def test_report_shows_the_planted_missing_genomics_share(cohort: Path, truth: dict, tmp_path: Path, capsys) -> None:
    report, printed = build(cohort, tmp_path / "m", capsys)
    without = sorted(p["patient_id"] for p in truth["patients"] if not p["has_genomics"])
    assert len(without) == round(0.15 * COHORT["n_patients"])  # 3 of 20, planted
    assert report["genomics_missing"] == {
        "patients": 3,
        "of_patients_with_image": 20,
        "share": 0.15,
        "patient_ids": without,
    }
    assert report["modality_patterns"] == {"image+expression+mutation+copy_number": 17, "image only": 3}
    assert "without genomics: 3 of 20 patients with a study (15.0%)" in printed
    assert not any(p["patient_id"] in printed for p in truth["patients"])  # counts only on screen
    assert report["studies"]["found"] == 20 and report["studies"]["rejected"] == []
    assert report["unmapped_samples"] == {"expression": [], "mutation": [], "copy_number": []}
    assert report["patients_without_outcome"]["patient_ids"] == []
    assert report["duplicates"]["studies"] == {}

    # --json: the same counts for a script, still without an identifier.
    _, printed = build(cohort, tmp_path / "j", capsys, **{"--json": ""})
    counts = json.loads(printed)
    assert counts["genomics_missing"] == {"patients": 3, "of_patients_with_image": 20, "share": 0.15}
    assert counts["studies"]["found"] == 20 and counts["studies"]["rejected"] == 0
    assert counts["modality_patterns"] == report["modality_patterns"] and counts["patients_without_outcome"] == 0
    assert not any(p["patient_id"] in printed for p in truth["patients"])


def test_manifest_holds_the_true_main_series_and_the_released_omics(
    cohort: Path, truth: dict, tmp_path: Path, capsys
) -> None:
    build(cohort, tmp_path / "m", capsys)
    manifest = load_manifest(tmp_path / "m")
    table = manifest.table
    for patient in truth["patients"]:
        row = table.loc[patient["patient_id"]]
        assert row["series_uid"] == patient["main_series_instance_uid"]
        assert row["study_uid"] == patient["study_instance_uid"]
        assert len(row["files"]) == COHORT["n_slices"]  # the localizer is not part of it
        assert "localizer" in row["selection"]  # the record says why the other series lost
        assert bool(row["has_expression"]) == patient["has_genomics"]
        assert row["response"] == patient["response"]
    released = load_genomics_table(cohort / "genomics.parquet")
    joined = manifest.genomics.loc[released.index]
    same = [c for c in released.columns if c in joined.columns]
    assert len(same) == COHORT["n_genes"] + sum(1 for c in released.columns if c.endswith("_mut") and released[c].any())
    np.testing.assert_array_equal(joined[same].to_numpy(), released[same].to_numpy())  # bit for bit
    cn = joined[[c for c in joined.columns if c.endswith("_cn")]]
    assert cn.shape[1] == COHORT["n_genes"] and np.isfinite(cn.to_numpy()).all() and cn.to_numpy().std() > 0.01


def _copy_series(files: list[Path], out: Path, patient_id: str, keep: int) -> None:
    """A new study (new UIDs) holding the first ``keep`` slices of a series."""
    out.mkdir(parents=True)
    study, series = generate_uid(), generate_uid()
    for i, path in enumerate(sorted(files)[:keep]):
        ds = pydicom.dcmread(path)
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = study, series, generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.PatientID = patient_id
        ds.save_as(out / f"{i}.dcm")


def test_messy_cohort_problems_all_reported(cohort: Path, truth: dict, tmp_path: Path, capsys) -> None:
    messy = tmp_path / "messy"
    shutil.copytree(cohort, messy, ignore=shutil.ignore_patterns(".radfusion"))
    build(cohort, tmp_path / "clean", capsys)
    clean = load_manifest(tmp_path / "clean").table
    genomic = [p["patient_id"] for p in truth["patients"] if p["has_genomics"]]
    p_dup, p_sample = genomic[0], genomic[1]
    main_files = [cohort / "dicom" / f for f in clean.loc[p_dup, "files"]]
    _copy_series(main_files, messy / "dicom" / "zz_second", p_dup, keep=9)  # fewer slices: not kept
    _copy_series(main_files, messy / "dicom" / "zz_short", "RFP_SHORT", keep=3)  # too few slices
    (messy / "dicom" / "README.txt").write_text("not DICOM")

    expression = pd.read_csv(messy / "omics" / "expression.tsv", sep="\t", index_col=0)
    kept_sample = clean.loc[p_sample, "expression_sample"]
    expression["EXTRA-SAMPLE"] = expression[kept_sample] + 1.0  # a second sample of p_sample
    expression["ORPHAN"] = 1.0  # in no sample map
    expression["NOSTUDY"] = 2.0  # a patient without a study or clinical row
    expression.loc[expression.index[0], "NOSTUDY"] = np.nan
    expression.to_csv(messy / "omics" / "expression.tsv", sep="\t")
    with open(messy / "omics" / "sample_map.csv", "a") as handle:
        handle.write(f"EXTRA-SAMPLE,{p_sample}\nNOSTUDY,RFP_NOSTUDY\n")
    clinical = pd.read_csv(messy / "clinical.csv", dtype={"patient_id": str})
    clinical.loc[clinical["patient_id"] == genomic[2], "response"] = np.nan
    clinical.to_csv(messy / "clinical.csv", index=False)

    report, printed = build(messy, tmp_path / "m", capsys)
    table = load_manifest(tmp_path / "m").table
    assert report["studies"]["found"] == 22 and report["studies"]["kept"] == 20
    [rejected] = report["studies"]["rejected"]
    assert rejected["patient_id"] == "RFP_SHORT" and rejected["kind"] == "no_image_series"
    assert "only 3 slice(s), fewer than 8" in rejected["reason"]
    assert report["studies"]["skipped_files_by_reason"] == {"not a readable DICOM file: InvalidDicomError": 1}
    assert report["duplicates"]["studies"][p_dup]["kept"] == clean.loc[p_dup, "study_uid"]
    assert table.loc[p_dup, "study_uid"] == clean.loc[p_dup, "study_uid"]
    assert report["duplicates"]["expression"] == {p_sample: {"kept": kept_sample, "dropped": ["EXTRA-SAMPLE"]}}
    assert table.loc[p_sample, "expression_sample"] == kept_sample
    assert report["unmapped_samples"]["expression"] == ["ORPHAN"]
    assert report["samples_without_study"]["expression"] == ["NOSTUDY"]
    assert table.loc["RFP_NOSTUDY", "modalities"] == "expression only"
    first_gene = str(pd.read_csv(messy / "omics" / "expression.tsv", sep="\t", index_col=0).index[0])
    assert report["omics"]["expression"]["samples_with_nonfinite_values"] == [
        {"sample_id": "NOSTUDY", "nan": [first_gene], "patient_id": "RFP_NOSTUDY"}
    ]
    assert report["patients_without_outcome"]["patient_ids"] == sorted([genomic[2], "RFP_NOSTUDY"])
    assert report["genomics_missing"]["share"] == 0.15  # still 3 of the 20 imaged patients
    for line in (
        "studies: 22 found, 20 kept, 1 rejected",
        "samples not in the sample map: 1",
        "samples without a study: 1",
        "samples with NaN/inf values: 1",
        "patients with several samples (first in the map kept): 1",
        "patients without outcome (response): 2",
        "patients with several studies (one kept): 1",
    ):
        assert line in printed


def test_cohort_build_refuses_omics_without_a_sample_map(cohort: Path, tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="need a sample map"):
        main(
            [
                "cohort",
                "build",
                "--dicom",
                str(cohort / "dicom"),
                "--clinical",
                str(cohort / "clinical.csv"),
                "--expression",
                str(cohort / "omics" / "expression.tsv"),
                "--out",
                str(tmp_path / "m"),
            ]
        )


def test_training_reads_the_manifest(cohort: Path, truth: dict, tmp_path: Path, capsys) -> None:
    from radfusion.training.data import RadfusionDataModule

    build(cohort, tmp_path / "m", capsys)
    data = RadfusionDataModule(
        str(tmp_path / "work"),
        manifest=str(tmp_path / "m"),
        target_shape=(8, 16, 16),
        target_spacing=(6.0, 12.0, 12.0),
        batch_size=4,
        cache="none",
        augment=False,
    )
    assert data.modalities == ["image", "expression", "mutation", "copy_number"]
    assert data.omics_sizes["copy_number"] == COHORT["n_genes"]
    data.setup("fit")
    records = [r for part in ("train", "val", "test") for r in data.records[part]]
    assert len(records) == COHORT["n_patients"]
    has_genomics = {p["patient_id"]: p["has_genomics"] for p in truth["patients"]}
    for record in records:
        assert record["presence"].tolist() == [1.0] + [float(has_genomics[record["patient_id"]])] * 3
        assert len(record["image"]) == COHORT["n_slices"]
    item = data.datasets["train"][0]
    assert tuple(item["image"].shape) == (1, 8, 16, 16) and float(item["image"].max()) > 0


def test_panel_check_names_the_genes_a_model_needs_and_the_cohort_lacks(cohort: Path, tmp_path: Path, capsys) -> None:
    from radfusion.cohort_manifest.build import panel_check
    from radfusion.cohort_manifest.report import summary_text
    from radfusion.contract import ImageGeometry, ModelContract, OmicsBlock

    build(cohort, tmp_path / "m", capsys)
    genomics = load_manifest(tmp_path / "m").genomics
    blocks = [
        OmicsBlock(features=["TP53", "NOTAGENE1", "NOTAGENE2"], mean=[0.0] * 3, std=[1.0] * 3, name="expression"),
        OmicsBlock(features=["TP53_cn", "ZZZ_cn"], mean=[0.0] * 2, std=[1.0] * 2, name="copy_number", max_imputed=1.0),
    ]
    contract = ModelContract(
        name="m",
        version="0",
        task="classification:response",
        labels=["no", "yes"],
        positive_label="yes",
        image=ImageGeometry(),
        omics=blocks,
        trained_modalities=["image", "genomics"],
        may_be_missing=["genomics"],
        cohort_hash="x",
    )
    check = panel_check(contract, genomics)
    assert check == {
        "expression": {"panel": 3, "missing": ["NOTAGENE1", "NOTAGENE2"], "mismatch": True},
        "copy_number": {"panel": 2, "missing": ["ZZZ_cn"], "mismatch": False},  # imputation allowed
    }
    report = json.loads((tmp_path / "m" / "report.json").read_text())
    text = summary_text({**report, "panel_check": check})
    assert "model panel expression: MISMATCH, 2 of 3 features missing: NOTAGENE1, NOTAGENE2" in text
