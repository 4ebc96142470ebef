"""`radfusion cv` end to end on a real bundled cohort (clinical only, no dicom/ folder):
the network and every default baseline on the same stratified folds, the table with
per-fold paired differences, the out-of-fold predictions."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from radfusion.cli import main as radfusion
from radfusion.training.folds import assign_folds
from tests.support.paths import CONFIGS
from tests.support.real_cohorts import write_cohort

FOLDS = 3
BASELINES = ["coxnet", "cox_ridge", "rsf"]


@pytest.mark.slow
def test_radfusion_cv_scores_the_network_and_every_baseline_on_the_same_folds(tmp_path) -> None:
    cohort = write_cohort("veterans", tmp_path / "veterans")
    out = tmp_path / "cv"
    configs = [CONFIGS / "trainer" / "cpu.yaml", CONFIGS / "model" / "fusion_cpu.yaml"]
    configs.append(CONFIGS / "experiment" / "survival_cox.yaml")
    radfusion(
        [
            "cv",
            *[a for c in configs for a in ("--config", str(c))],
            *cohort.cli_args(),
            "--trainer.max_epochs",
            "3",
            "--folds",
            str(FOLDS),
            "--workers",
            "2",
            "--out",
            str(out),
        ]
    )
    summary = json.loads((out / "cv.json").read_text())
    models = summary["models"]
    assert list(models) == ["radfusion", *BASELINES]
    assert (summary["task"], summary["metric"], summary["folds"], summary["n_patients"]) == (
        "survival_cox",
        "cindex",
        FOLDS,
        137,
    )
    deep = models["radfusion"]["per_fold"]
    for name in BASELINES:
        m = models[name]
        assert len(m["per_fold"]) == FOLDS and m["seconds"] > 0
        assert m["paired_difference"]["per_fold"] == pytest.approx(np.subtract(deep, m["per_fold"]).tolist())
        low, high = m["ci95"]
        assert low < m["mean"] < high
    # Karnofsky score and cell type carry most of the signal: every model ranks well above chance.
    assert min(m["mean"] for m in models.values()) > 0.6, {n: m["mean"] for n, m in models.items()}
    # The network's fold metric is `radfusion evaluate`'s c-index of the same predictions.
    assert deep == pytest.approx([e["cindex"] for e in models["radfusion"]["evaluate"]])
    best = max(BASELINES, key=lambda n: models[n]["mean"])
    assert summary["best_baseline"] == best
    assert summary["deep_vs_best_classical"] == pytest.approx(models[best]["paired_difference"]["mean"])
    slowest = max(models[n]["seconds"] for n in BASELINES)
    assert summary["cv_seconds_ratio"] == pytest.approx(models["radfusion"]["seconds"] / slowest)

    # Every model predicted exactly the patients of each fold that radfusion.training.folds deals.
    predictions = pd.read_csv(out / "predictions.csv", dtype={"patient_id": str})
    table = pd.read_csv(cohort.path / "clinical.csv", dtype={"patient_id": str}).set_index("patient_id")
    dealt = assign_folds(table, FOLDS, 0, "event")
    for (fold, model), rows in predictions.groupby(["fold", "model"]):
        assert set(rows["patient_id"]) == set(dealt.index[dealt == fold]), (fold, model)
    assert set(predictions["model"]) == {"radfusion", *BASELINES} and len(predictions) == 4 * 137

    text = (out / "cv.md").read_text()
    for name in BASELINES:
        assert f"| {name} |" in text and f"| radfusion − {name} |" in text
    # Parallel folds log to their own run folders.
    assert all((out / f"r0-f{k}" / "train.log").exists() for k in range(FOLDS))
