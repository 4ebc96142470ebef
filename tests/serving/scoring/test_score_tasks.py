"""The scorer's columns follow the model's task (radfusion.prediction): a Cox model
writes a risk score and no prob_* column, a discrete-time model its survival curve, a
multi-label model its predicted set; values equal radfusion.predictor.Predictor's on the
same study, and a NaN output is that study's error row, never a NaN in the output."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from radfusion.dicom import find_studies
from radfusion.genomics import load_genomics_table, row_as_mapping
from radfusion.prediction import prob_column
from radfusion.predictor import Predictor
from radfusion.serving.scoring import inference
from radfusion.serving.scoring.score import score_archive
from tests.support.task_models import export_task_model

TOL = 1e-5


@pytest.fixture(scope="module")
def models(tiny_contract, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("task_models")
    return {
        task: export_task_model(tiny_contract, task, folder)
        for task in ("survival:cox", "survival:discrete", "multilabel:drugs")
    }


def predictor_answers(model: Path, tiny_cohort: Path) -> dict[str, dict]:
    """Predictor (the HTTP service's path) on every study of the tiny cohort, by study UID."""
    predictor = Predictor.load(model, device="cpu")
    table = load_genomics_table(tiny_cohort / "genomics.parquet")
    studies = find_studies(tiny_cohort / "dicom").studies
    cases = [
        predictor.prepare([h.path for h in s.instances], row_as_mapping(table, s.patient_id)) for s in studies.values()
    ]
    return dict(zip(studies, predictor.predict(cases), strict=True))


def test_cox_model_scored_by_radfusion_score_writes_a_risk_column(
    models, tiny_cohort: Path, tmp_path: Path, capsys
) -> None:
    from radfusion.cli import main

    out = tmp_path / "cox.parquet"
    main(
        [
            "score",
            "--archive",
            str(tiny_cohort / "dicom"),
            "--genomics",
            str(tiny_cohort / "genomics.parquet"),
            "--model",
            str(models["survival:cox"]),
            "--out",
            str(out),
            "--device",
            "cpu",
            "--workers",
            "1",
        ]
    )
    assert '"failed": 0' in capsys.readouterr().out
    schema = pq.read_schema(out)
    assert "risk_score" in schema.names and str(schema.field("risk_score").type) == "double"
    assert not [n for n in schema.names if n.startswith(("prob_", "predicted_", "survival_"))]
    rows = pd.read_parquet(out).set_index("study_instance_uid")
    expected = predictor_answers(models["survival:cox"], tiny_cohort)
    assert len(rows) == len(expected) == 10 and rows["error"].isna().all()
    for uid, answer in expected.items():
        assert list(answer)[:1] == ["risk_score"] and "probabilities" not in answer
        assert rows.loc[uid, "risk_score"] == pytest.approx(answer["risk_score"], abs=TOL)
        assert rows.loc[uid, "modalities_used"].split("+") == answer["modalities_used"]
    assert rows["risk_score"].std() > 0  # a real score per study, not one constant


def test_discrete_survival_writes_the_curve_at_each_time_bin(models, tiny_cohort: Path, tmp_path: Path) -> None:
    out = tmp_path / "discrete.parquet"
    score_archive(
        tiny_cohort / "dicom",
        models["survival:discrete"],
        out,
        genomics=tiny_cohort / "genomics.parquet",
        device="cpu",
        progress=False,
        workers=0,
    )
    rows = pd.read_parquet(out).set_index("study_instance_uid")
    curve = ["survival_12", "survival_24", "survival_36"]
    assert not [c for c in rows.columns if c.startswith("prob_")]
    for uid, answer in predictor_answers(models["survival:discrete"], tiny_cohort).items():
        assert rows.loc[uid, curve].tolist() == pytest.approx(list(answer["survival_probabilities"].values()), abs=TOL)
        assert rows.loc[uid, "risk_score"] == pytest.approx(answer["risk_score"], abs=TOL)
    values = rows[curve].to_numpy()
    assert np.all(np.diff(values, axis=1) <= 0) and np.all((values > 0) & (values < 1))


def test_multilabel_writes_the_predicted_set(models, tiny_cohort: Path, tmp_path: Path) -> None:
    out = tmp_path / "multilabel.parquet"
    score_archive(
        tiny_cohort / "dicom",
        models["multilabel:drugs"],
        out,
        genomics=tiny_cohort / "genomics.parquet",
        device="cpu",
        progress=False,
        workers=0,
    )
    assert str(pq.read_schema(out).field("predicted_labels").type) == "list<element: string>"
    rows = pd.read_parquet(out).set_index("study_instance_uid")
    assert "predicted_label" not in rows.columns
    for uid, answer in predictor_answers(models["multilabel:drugs"], tiny_cohort).items():
        assert list(rows.loc[uid, "predicted_labels"]) == answer["predicted_labels"]
        for label, p in answer["probabilities"].items():
            assert rows.loc[uid, prob_column(label)] == pytest.approx(p, abs=TOL)


def test_a_nan_output_is_the_study_error_row(models, tiny_cohort: Path, tmp_path: Path, monkeypatch) -> None:
    """One study's output is NaN: its row says so; the rest of its batch is scored."""
    real_run = inference.run_inputs
    calls = {"n": 0}

    def nan_for_first_case(model, inputs):
        outputs = np.array(real_run(model, inputs), dtype=np.float32)
        if calls["n"] == 0:
            outputs[0, 0] = np.nan
        calls["n"] += 1
        return outputs

    monkeypatch.setattr(inference, "run_inputs", nan_for_first_case)
    out = tmp_path / "nan.parquet"
    summary = score_archive(
        tiny_cohort / "dicom",
        models["survival:cox"],
        out,
        genomics=tiny_cohort / "genomics.parquet",
        device="cpu",
        batch_size=4,
        progress=False,
        workers=0,
    )
    rows = pd.read_parquet(out)
    failed = rows[rows["error"].notna()]
    assert len(failed) == 1 and failed["error"].iloc[0].startswith("non_finite_output: ")
    assert pd.isna(failed["risk_score"].iloc[0])
    assert summary["failed_by_reason"] == {"non_finite_output": 1}
    assert rows["risk_score"].notna().sum() == 9 and np.isfinite(rows["risk_score"].dropna()).all()
