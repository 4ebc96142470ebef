"""Scoring a patients table without images (serving/scoring/table.py): one row per
patient of the tables the model uses, numbers and imputation accounts equal to
radfusion.predictor.Predictor fed the same values, the missing-data policy's work
counted in every row (imputed values, blocks over their cap fed as absent, unseen
levels), per-patient errors as rows, and a run interrupted mid-way finished by the
same call with nothing lost or duplicated."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from radfusion.contract import ModelContract
from radfusion.genomics import load_genomics_table, row_as_mapping
from radfusion.predictor import Predictor
from radfusion.preprocess import fit_clinical_spec
from radfusion.serving.patients import PatientTableError
from radfusion.serving.scoring import table as table_scoring
from radfusion.serving.scoring.rows import TIMING_COLUMNS, output_schema
from radfusion.serving.scoring.table import score_table
from radfusion.serving.scoring.writer import parts_dir
from tests.support.clinical_models import read_clinical_csv

TOL = 1e-6
COVARIATES = ["age", "sex", "site"]
N_FEW = 3  # expression values one patient lacks: imputed
N_MANY = 60  # of 100 expression genes: over the block's cap (0.5), the block is fed as absent


@pytest.fixture(scope="module")
def patients(tiny_cohort: Path) -> dict[str, str]:
    """Patients by role: with genomics (few values missing, most of the expression block
    missing, age missing, an unseen sex) and without (clinical only, too little of it)."""
    genomics = load_genomics_table(tiny_cohort / "genomics.parquet")
    clinical = read_clinical_csv(tiny_cohort / "clinical.csv")
    with_genes = sorted(genomics.index)
    without = sorted(set(clinical.index) - set(with_genes))
    assert len(with_genes) >= 4 and len(without) == 2
    return {
        "few_genes": with_genes[0],
        "most_genes": with_genes[1],
        "no_age": with_genes[2],
        "unseen_sex": with_genes[3],
        "clinical_only": without[0],
        "too_little": without[1],
    }


@pytest.fixture(scope="module")
def tables(tiny_cohort: Path, patients, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The tiny cohort's tables with the gaps a hospital export has."""
    folder = tmp_path_factory.mktemp("patient_tables")
    genomics = load_genomics_table(tiny_cohort / "genomics.parquet")
    expression = [c for c in genomics.columns if not c.endswith(("_mut", "_cn"))]
    genomics.loc[patients["few_genes"], expression[:N_FEW]] = np.nan
    genomics.loc[patients["most_genes"], expression[-N_MANY:]] = np.nan
    genomics.reset_index().to_parquet(folder / "genomics.parquet", index=False)
    clinical = read_clinical_csv(tiny_cohort / "clinical.csv")
    clinical["age"] = clinical["age"].astype(float)
    clinical.loc[patients["no_age"], "age"] = np.nan
    clinical.loc[patients["unseen_sex"], "sex"] = "X"
    clinical.loc[patients["too_little"], ["age", "site"]] = np.nan  # 2 of 3: over the cap
    clinical.reset_index().to_csv(folder / "clinical.csv", index=False)
    return folder / "genomics.parquet", folder / "clinical.csv"


@pytest.fixture(scope="module")
def model(tiny_cohort: Path, tiny_contract: ModelContract, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A genomics + clinical model (no image encoder) that may miss either group."""
    from radfusion.training.export import export_onnx
    from tests.support.tiny import tiny_net

    spec = fit_clinical_spec(
        read_clinical_csv(tiny_cohort / "clinical.csv"), ["age"], ["sex", "site"], min_level_count=2
    )
    contract = ModelContract(
        **{
            **tiny_contract.__dict__,
            "name": "tiny-tables",
            "clinical": spec,
            "trained_modalities": ["genomics", "clinical"],
            "may_be_missing": ["genomics", "clinical"],
        }
    )
    path = tmp_path_factory.mktemp("table_model") / "tables.onnx"
    export_onnx(tiny_net(contract, seed=5), contract, path)
    return path


@pytest.fixture(scope="module")
def scored(model: Path, tables, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, pd.DataFrame, Path]:
    genomics, clinical = tables
    out = tmp_path_factory.mktemp("table_scores") / "scores.parquet"
    summary = score_table(model, out, genomics=genomics, clinical=clinical, device="cpu", progress=False, batch_size=4)
    return summary, pd.read_parquet(out).set_index("patient_id"), out


def test_one_row_per_patient_equal_to_the_predictor(scored, model: Path, tables, tiny_cohort: Path) -> None:
    summary, rows, out = scored
    genomics, clinical = load_genomics_table(tables[0]), read_clinical_csv(tables[1])
    assert sorted(rows.index) == sorted(set(genomics.index) | set(clinical.index)) and len(rows) == 10
    assert rows["study_instance_uid"].isna().all() and (rows["n_instances"] == 0).all()
    predictor = Predictor.load(model, device="cpu")
    assert pq.read_schema(out).names == output_schema(predictor.contract).names  # an archive run's schema
    compared = 0
    for patient, row in rows.iterrows():
        if pd.notna(row["error"]):
            continue
        genes = row_as_mapping(genomics, patient)
        covariates = clinical.loc[patient, COVARIATES].to_dict()
        expected = predictor.predict([predictor.prepare(None, genes, covariates)])[0]
        assert row["modalities_used"].split("+") == expected["modalities_used"]
        assert row["prob_responder"] == pytest.approx(expected["probabilities"]["responder"], abs=TOL)
        assert row["imputed_features"] == expected["imputation"]["imputed_features"]
        assert row["absent_blocks"] == ",".join(expected["imputation"]["absent_blocks"])
        assert json.loads(row["imputation"]) == expected["imputation"]["blocks"]
        compared += 1
    assert compared == summary["scored"] == 9


def test_imputed_counts_are_the_gaps_in_the_tables(scored, tables) -> None:
    """Counted from the tables themselves: every NaN in a block that was fed."""
    _, rows, _ = scored
    genomics, clinical = load_genomics_table(tables[0]), read_clinical_csv(tables[1])
    ok = rows[rows["error"].isna()]
    for patient, row in ok.iterrows():
        fed = row["modalities_used"].split("+")
        gaps = int(clinical.loc[patient, COVARIATES].isna().sum()) if "clinical" in fed else 0
        if patient in genomics.index:
            for block, features in (("expression", genomics.columns[:100]), ("mutation", genomics.columns[100:])):
                gaps += int(genomics.loc[patient, features].isna().sum()) if block in fed else 0
        assert row["imputed_features"] == gaps, patient
    assert ok["imputed_features"].sum() == N_FEW + 1  # the three genes and the age


def test_the_policy_at_work_is_in_the_rows(scored, patients) -> None:
    summary, rows, _ = scored
    few = rows.loc[patients["few_genes"]]
    assert few["imputed_features"] == N_FEW and few["modalities_used"] == "expression+mutation+clinical"
    assert json.loads(few["imputation"])["expression"] == {"imputed": N_FEW, "of": 100, "treated_as_absent": False}

    most = rows.loc[patients["most_genes"]]
    assert most["absent_blocks"] == "expression" and most["modalities_used"] == "mutation+clinical"
    assert json.loads(most["imputation"])["expression"] == {"imputed": N_MANY, "of": 100, "treated_as_absent": True}
    assert most["imputed_features"] == 0  # nothing of the absent block counts as imputed

    unseen = rows.loc[patients["unseen_sex"]]
    assert json.loads(unseen["imputation"])["clinical"]["unseen_levels"] == ["sex"]
    assert rows.loc[patients["clinical_only"], "modalities_used"] == "clinical"
    assert rows.loc[patients["clinical_only"], "genomics_source"] == "patient not in the genomics table"

    too_little = rows.loc[patients["too_little"]]
    assert (
        too_little["error"].startswith("no_modality: ")
        and "clinical was given with 2 of 3 missing" in (too_little["error"])
    )
    assert pd.isna(too_little["prob_responder"]) and too_little["imputed_features"] == 0

    assert (summary["patients"], summary["scored"], summary["failed"]) == (10, 9, 1)
    assert summary["failed_by_reason"] == {"no_modality": 1}
    assert summary["patients_imputed"] == 2 and summary["imputed_features"] == N_FEW + 1
    assert summary["absent_blocks"] == {"expression": 1} and summary["unseen_levels"] == {"sex": 1}
    assert summary["genomics_source"] == {"genomics table": 8, "patient not in the genomics table": 2}


def test_an_interrupted_run_is_finished_by_the_same_call(
    scored, model: Path, tables, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, reference, _ = scored
    out = tmp_path / "resume.parquet"
    args = dict(genomics=tables[0], clinical=tables[1], device="cpu", progress=False, batch_size=3, chunk_size=3)
    real_infer, calls = table_scoring._infer, []

    def interrupted(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        real_infer(*a, **k)

    monkeypatch.setattr(table_scoring, "_infer", interrupted)
    with pytest.raises(KeyboardInterrupt):
        score_table(model, out, **args)
    assert not out.exists() and len(list(parts_dir(out).glob("part-*.parquet"))) == 1  # the first batch, committed
    monkeypatch.setattr(table_scoring, "_infer", real_infer)

    summary = score_table(model, out, **args)
    assert (summary["taken_from_earlier_runs"], summary["processed_this_run"]) == (3, 7)
    rows = pd.read_parquet(out).set_index("patient_id")
    assert rows.index.is_unique and not parts_dir(out).exists()
    pd.testing.assert_frame_equal(
        rows.drop(columns=list(TIMING_COLUMNS)), reference.drop(columns=list(TIMING_COLUMNS)), atol=TOL
    )
    again = score_table(model, out, **args)
    assert (again["taken_from_earlier_runs"], again["processed_this_run"]) == (10, 0)


def test_a_fusion_model_that_may_miss_its_image_is_scored_from_the_genomics_table(
    tiny_onnx_model: Path, tiny_cohort: Path, tables, tmp_path: Path, caplog
) -> None:
    out = tmp_path / "fusion.parquet"
    with caplog.at_level("WARNING", logger="radfusion.serving.patients"):
        summary = score_table(
            tiny_onnx_model,
            out,
            genomics=tiny_cohort / "genomics.parquet",
            clinical=tables[1],
            device="cpu",
            progress=False,
        )
    assert "the model takes no clinical input" in caplog.text
    rows = pd.read_parquet(out)
    assert (summary["patients"], summary["failed"]) == (8, 0)  # the genomics table's patients
    assert set(rows["modalities_used"]) == {"expression+mutation"}
    assert rows["series_instance_uid"].isna().all()


def test_what_a_table_cannot_score_is_refused_before_anything_is_written(
    tiny_onnx_model: Path, model: Path, tables, tmp_path: Path
) -> None:
    from radfusion.contract import read_contract_from_onnx, write_contract_to_onnx

    needs_image = tmp_path / "needs_image.onnx"
    needs_image.write_bytes(tiny_onnx_model.read_bytes())
    contract = read_contract_from_onnx(tiny_onnx_model)
    write_contract_to_onnx(needs_image, ModelContract(**{**contract.__dict__, "may_be_missing": ["genomics"]}))
    with pytest.raises(PatientTableError, match="requires an image for every case: score it on an archive"):
        score_table(needs_image, tmp_path / "a.parquet", genomics=tables[0], device="cpu", progress=False)
    with pytest.raises(PatientTableError, match="needs the model's genomics or clinical table"):
        score_table(model, tmp_path / "b.parquet", device="cpu", progress=False)
    assert not list(tmp_path.glob("*.parts")) and not list(tmp_path.glob("*.parquet"))


def test_the_command_scores_tables_without_an_archive(scored, model: Path, tables, tmp_path: Path) -> None:
    from radfusion.cli import main

    genomics, clinical = tables
    out = tmp_path / "cli.parquet"
    tables_args = ["--genomics", str(genomics), "--clinical", str(clinical)]
    main(["score", "--model", str(model), *tables_args, "--out", str(out), "--device", "cpu"])
    rows = pd.read_parquet(out).set_index("patient_id").sort_index()
    expected = scored[1].sort_index()
    assert rows.index.tolist() == expected.index.tolist()
    assert rows["imputed_features"].tolist() == expected["imputed_features"].tolist()
