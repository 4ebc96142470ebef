"""The scorer's treatment columns: for a model with a treatment covariate every row
carries the recommendation, why, and the ranking, exactly as /predict's
rank_treatments gives them (the same radfusion.treatment code), with the benefit
intervals where the contract has draws; a patient without clinical covariates gets
the reason instead. Scored from tables by the real table scorer and a real ONNX model
with a known treatment effect (tests/support/known_treatment.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from radfusion.predictor import Predictor
from tests.support.known_treatment import (
    clinical_contract,
    export_treatment_model,
    genes_with_mutation,
    with_known_benefit,
)


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    contract = with_known_benefit(clinical_contract(), spread=0.3, n=200)
    return export_treatment_model(tmp_path_factory.mktemp("treatment_score") / "model.onnx", contract)


def test_every_row_carries_the_ranking_that_predict_gives(model: Path, tmp_path: Path) -> None:
    from radfusion.serving.scoring.table import score_table

    mutations = {"p1": 1.0, "p2": 0.0, "p3": 0.6, "p4": 1.0}
    genomics = pd.DataFrame([genes_with_mutation(v) for v in mutations.values()], index=list(mutations))
    genomics.index.name = "patient_id"
    genomics.to_parquet(tmp_path / "genomics.parquet")
    clinical = pd.DataFrame(
        {"patient_id": ["p1", "p2", "p3"], "age": [67, 55, 71], "sex": ["F", "M", "F"], "treatment": ["chemo"] * 3}
    )  # p4 has no clinical row: no treatment to rank
    clinical.to_csv(tmp_path / "clinical.csv", index=False)
    out = tmp_path / "scores.parquet"
    summary = score_table(model, out, tmp_path / "genomics.parquet", tmp_path / "clinical.csv", progress=False)
    assert summary["failed"] == 0
    rows = pd.read_parquet(out).set_index("patient_id")

    predictor = Predictor.load(model, device="cpu")
    for pid in ("p1", "p2", "p3"):
        covariates = clinical.set_index("patient_id").loc[pid].to_dict()
        case = predictor.prepare(None, genomics.loc[pid].to_dict(), covariates)
        answer = predictor.rank_treatments(case)
        assert rows.loc[pid, "recommended_treatment"] == answer["recommended"]
        assert rows.loc[pid, "treatment_reason"] == answer["reason"]
        ranking = json.loads(rows.loc[pid, "treatment_ranking"])
        assert [r["treatment"] for r in ranking] == [r["treatment"] for r in answer["ranking"]]
        for got, want in zip(ranking, answer["ranking"], strict=True):
            assert got["response_probability"] == pytest.approx(want["response_probability"], abs=1e-6)
            assert got.get("benefit_interval") == pytest.approx(want.get("benefit_interval"), abs=1e-6)
    # The mutated patient is switched with a confident benefit; the wild type stays.
    assert rows.loc["p1", "recommended_treatment"] == "targeted"
    assert rows.loc["p2", "recommended_treatment"] == "chemo"
    assert rows.loc["p4", "recommended_treatment"] is None
    assert rows.loc["p4", "treatment_reason"].startswith("no clinical covariates")
    assert rows.loc["p4", "treatment_ranking"] is None
