"""The archive scorer with a model that takes clinical covariates: covariates joined by
PatientID from a clinical table, rows equal to radfusion.predictor.Predictor fed the
same values, a missing covariate imputed and counted in the row, a patient without a
row (or with an empty one) scored without the block where the contract allows it and
an error row where it does not, and tables that cannot serve the model refused before
any study is read."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from radfusion.dicom import find_studies
from radfusion.genomics import load_genomics_table, row_as_mapping
from radfusion.prediction import prob_column
from radfusion.predictor import Predictor
from radfusion.serving.scoring.rows import TIMING_COLUMNS
from radfusion.serving.scoring.score import PatientTableError, score_archive
from tests.support.clinical_models import clinical_models, read_clinical_csv

TOL = 1e-5


@pytest.fixture(scope="module")
def models(tiny_cohort: Path, tiny_contract, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return clinical_models(tiny_cohort, tiny_contract, tmp_path_factory.getbasetemp() / "clinical_models")


@pytest.fixture(scope="module")
def patients(tiny_cohort: Path) -> dict[str, str]:
    """Patients by role, one study each: dropped from the clinical table, with an empty
    row, with age missing, and the rest."""
    ids = sorted(s.patient_id for s in find_studies(tiny_cohort / "dicom").studies.values())
    return {"absent": ids[0], "empty": ids[1], "no_age": ids[2], "kept": ids[3]}


@pytest.fixture(scope="module")
def clinical_table(tiny_cohort: Path, patients, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """clinical.csv as a hospital might export it: one patient missing, one empty row,
    one value missing, covariate columns in another order, outcome columns kept."""
    table = read_clinical_csv(tiny_cohort / "clinical.csv").drop(index=patients["absent"])
    table.loc[patients["empty"], ["age", "sex", "treatment"]] = np.nan
    table.loc[patients["no_age"], "age"] = np.nan
    path = tmp_path_factory.mktemp("clinical") / "clinical.csv"
    table[["site", "sex", "treatment", "age", "response"]].reset_index().to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def scored(tiny_cohort: Path, models, clinical_table: Path, tmp_path_factory: pytest.TempPathFactory):
    """Through the command, with one worker process: PatientData crosses a process boundary."""
    from radfusion.cli import main

    out = tmp_path_factory.mktemp("scores") / "clinical.parquet"
    main(
        [
            "score",
            "--archive",
            str(tiny_cohort / "dicom"),
            "--model",
            str(models[0]),
            "--out",
            str(out),
            "--genomics",
            str(tiny_cohort / "genomics.parquet"),
            "--clinical",
            str(clinical_table),
            "--device",
            "cpu",
            "--workers",
            "1",
            "--batch-size",
            "4",
        ]
    )
    return pd.read_parquet(out).set_index("patient_id")


def test_covariates_are_joined_by_patient_and_rows_equal_the_predictor(
    scored, models, patients, tiny_cohort: Path, clinical_table: Path
) -> None:
    rows = scored
    assert len(rows) == 10
    # The missing age takes its training median (the contract's missing-data policy),
    # and the row says so: 1 of the 3 covariates imputed, the block still fed.
    no_age = rows.loc[patients["no_age"]]
    assert pd.isna(no_age["error"]) and no_age["clinical_source"] == "clinical table"
    assert no_age["imputed_features"] == 1 and no_age["absent_blocks"] == ""
    assert json.loads(no_age["imputation"])["clinical"] == {"imputed": 1, "of": 3, "treated_as_absent": False}

    ok = rows
    assert ok["error"].isna().all()
    assert ok.loc[patients["absent"], "clinical_source"] == "patient not in the clinical table"
    assert ok.loc[patients["empty"], "clinical_source"] == "no values in the clinical table"
    with_clinical = ok.drop(index=[patients["absent"], patients["empty"]])
    assert (with_clinical["clinical_source"] == "clinical table").all() and len(with_clinical) == 8
    assert (with_clinical.drop(index=patients["no_age"])["imputed_features"] == 0).all()
    assert all(m.endswith("+clinical") for m in with_clinical["modalities_used"])
    assert not any("clinical" in ok.loc[patients[p], "modalities_used"] for p in ("absent", "empty"))

    genomics = load_genomics_table(tiny_cohort / "genomics.parquet")
    has_genes = ok.index.isin(genomics.index)
    assert has_genes.any() and not has_genes.all()
    assert set(ok.loc[has_genes, "genomics_source"]) == {"genomics table"}
    assert set(ok.loc[~has_genes, "genomics_source"]) == {"patient not in the genomics table"}

    predictor = Predictor.load(models[0], device="cpu")
    table = read_clinical_csv(clinical_table)
    studies = {s.patient_id: s for s in find_studies(tiny_cohort / "dicom").studies.values()}
    for patient, row in ok.iterrows():
        covariates = table.loc[patient].to_dict() if row["clinical_source"] == "clinical table" else None
        case = predictor.prepare(
            [h.path for h in studies[patient].instances], row_as_mapping(genomics, patient), covariates
        )
        expected = predictor.predict([case])[0]
        assert row["modalities_used"].split("+") == expected["modalities_used"]
        for label, p in expected["probabilities"].items():
            assert row[prob_column(label)] == pytest.approx(p, abs=TOL)


def test_the_covariates_change_the_answer(scored, models, patients, tiny_cohort: Path) -> None:
    """The clinical block reaches the model: the patient scored without it gets another
    answer when given the covariates of clinical.csv (so the join is not a no-op)."""
    predictor = Predictor.load(models[0], device="cpu")
    study = next(s for s in find_studies(tiny_cohort / "dicom").studies.values() if s.patient_id == patients["absent"])
    covariates = read_clinical_csv(tiny_cohort / "clinical.csv").loc[patients["absent"]].to_dict()
    genes = row_as_mapping(load_genomics_table(tiny_cohort / "genomics.parquet"), patients["absent"])
    given = predictor.predict([predictor.prepare([h.path for h in study.instances], genes, covariates)])[0]
    scored_without = scored.loc[patients["absent"], "prob_responder"]
    assert abs(given["probabilities"]["responder"] - scored_without) > 1e-4


def test_without_a_clinical_table_no_study_uses_the_block(models, tiny_cohort: Path, tmp_path: Path) -> None:
    out = tmp_path / "no_clinical.parquet"
    summary = score_archive(
        tiny_cohort / "dicom",
        models[0],
        out,
        genomics=tiny_cohort / "genomics.parquet",
        device="cpu",
        progress=False,
        workers=0,
    )
    rows = pd.read_parquet(out)
    assert (summary["scored"], summary["failed"]) == (10, 0)
    assert summary["clinical_source"] == {"no clinical table given": 10}
    assert not rows["modalities_used"].str.contains("clinical").any()


def test_a_model_that_requires_clinical_fails_only_the_patient_without_a_row(
    models, patients, tiny_cohort: Path, clinical_table: Path, tmp_path: Path
) -> None:
    strict = models[1]
    with pytest.raises(PatientTableError, match="the model requires clinical input: give a clinical table"):
        score_archive(tiny_cohort / "dicom", strict, tmp_path / "none.parquet", device="cpu", progress=False, workers=0)
    assert not (tmp_path / "none.parquet.parts").exists()  # refused before anything was written

    out = tmp_path / "strict.parquet"
    summary = score_archive(
        tiny_cohort / "dicom", strict, out, clinical=clinical_table, device="cpu", progress=False, workers=0
    )
    rows = pd.read_parquet(out).set_index("patient_id")
    assert summary["failed_by_reason"] == {"patient_data_missing": 2}
    assert rows.loc[patients["absent"], "error"] == (
        "patient_data_missing: the model requires clinical (patient not in the clinical table)"
    )
    assert rows.loc[patients["empty"], "error"] == (
        "patient_data_missing: the model requires clinical (no values in the clinical table)"
    )
    # Refused before the study was read: no series, no time spent decoding.
    assert pd.isna(rows.loc[patients["absent"], "series_instance_uid"])
    assert rows["prob_responder"].notna().sum() == 8  # the patient without an age: imputed


def test_tables_that_cannot_serve_the_model_are_refused(
    models, patients, tiny_cohort: Path, clinical_table: Path, tmp_path: Path
) -> None:
    table = pd.read_csv(clinical_table, dtype={"patient_id": str})
    no_age = tmp_path / "no_age.csv"
    table.drop(columns=["age"]).to_csv(no_age, index=False)
    with pytest.raises(PatientTableError, match=r"no_age\.csv lacks the model's column\(s\): age"):
        score_archive(
            tiny_cohort / "dicom", models[0], tmp_path / "a.parquet", clinical=no_age, device="cpu", progress=False
        )

    twice = tmp_path / "twice.parquet"
    pd.concat([table, table.iloc[:2]]).to_parquet(twice)
    with pytest.raises(PatientTableError, match=r"twice\.parquet lists 2 patient\(s\) more than once") as raised:
        score_archive(
            tiny_cohort / "dicom", models[0], tmp_path / "b.parquet", clinical=twice, device="cpu", progress=False
        )
    assert table["patient_id"].iloc[0] not in str(raised.value)  # counts, never identifiers


def test_a_changed_clinical_table_does_not_resume_silently(
    models, tiny_cohort: Path, clinical_table: Path, tmp_path: Path
) -> None:
    from radfusion.serving.scoring.score import ResumeError

    out = tmp_path / "resume.parquet"
    args = dict(device="cpu", progress=False, workers=0)
    score_archive(tiny_cohort / "dicom", models[0], out, clinical=clinical_table, **args)
    again = score_archive(tiny_cohort / "dicom", models[0], out, clinical=clinical_table, **args)
    assert again["taken_from_earlier_runs"] == 10 and again["processed_this_run"] == 0
    changed = tmp_path / "changed.csv"
    changed.write_text(clinical_table.read_text().replace(",F,", ",M,"))
    with pytest.raises(ResumeError, match="clinical_sha256"):
        score_archive(tiny_cohort / "dicom", models[0], out, clinical=changed, **args)


def test_results_do_not_depend_on_workers_or_batch(
    scored, models, tiny_cohort: Path, clinical_table: Path, tmp_path: Path
) -> None:
    out = tmp_path / "inline.parquet"
    score_archive(
        tiny_cohort / "dicom",
        models[0],
        out,
        genomics=tiny_cohort / "genomics.parquet",
        clinical=clinical_table,
        device="cpu",
        progress=False,
        workers=0,
        batch_size=1,
    )
    inline = pd.read_parquet(out).set_index("patient_id").drop(columns=list(TIMING_COLUMNS))
    pd.testing.assert_frame_equal(inline.sort_index(), scored.drop(columns=list(TIMING_COLUMNS)).sort_index(), atol=TOL)


def test_a_model_without_a_clinical_block_ignores_the_table_and_says_so(
    tiny_onnx_model: Path, tiny_cohort: Path, clinical_table: Path, tmp_path: Path, caplog
) -> None:
    out = tmp_path / "ignored.parquet"
    with caplog.at_level("WARNING", logger="radfusion.serving.patients"):
        summary = score_archive(
            tiny_cohort / "dicom",
            tiny_onnx_model,
            out,
            clinical=clinical_table,
            device="cpu",
            progress=False,
            workers=0,
        )
    assert "the model takes no clinical input: the clinical table is not used" in caplog.text
    assert summary["clinical_source"] == {"not used by the model": 10}
    assert summary["genomics_source"] == {"no genomics table given": 10}
    assert not pd.read_parquet(out)["modalities_used"].str.contains("clinical").any()
