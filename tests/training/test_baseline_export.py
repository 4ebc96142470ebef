"""A linear classical baseline exported in the network's place (issue 16: where the
network loses to it on a cohort): `radfusion export --model coxnet` on a checkpoint
trained on scikit-survival's breast_cancer cohort (its gaps and rare level untouched)
writes an ONNX model under the checkpoint's contract whose risk on every held-out
patient is the scikit-survival model's own prediction, scored by the same Predictor
and table scorer as the network; a logistic baseline gives the scikit-learn model's
probabilities; a non-linear baseline is refused by name."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from radfusion.predictor import Predictor
from tests.support.paths import CONFIGS
from tests.support.real_cohorts import write_cohort

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from radfusion.training.cli import main

    root = tmp_path_factory.mktemp("baseline_export")
    cohort = write_cohort("breast_cancer", root / "cohort")
    configs = ["trainer/cpu.yaml", "model/fusion_cpu.yaml", "experiment/survival_cox.yaml"]
    main(
        [
            "fit",
            *[a for c in configs for a in ("--config", str(CONFIGS / c))],
            *cohort.cli_args(),
            "--trainer.default_root_dir",
            str(root / "run"),
            "--trainer.max_epochs",
            "1",
        ]
    )
    return root / "run" / "checkpoints" / "best.ckpt"


def test_exported_coxnet_scores_as_scikit_survival_does(checkpoint: Path, tmp_path: Path) -> None:
    from radfusion.cli import main as radfusion
    from radfusion.serving.scoring.table import score_table
    from radfusion.training.checkpoints import load_datamodule, load_module
    from radfusion.training.cv.arrays import outcome_of, table_inputs
    from radfusion.training.cv.baselines import make_baseline

    model = tmp_path / "coxnet.onnx"
    radfusion(["export", "--checkpoint", str(checkpoint), "--out", str(model), "--no-register", "--model", "coxnet"])
    report = json.loads(model.with_suffix(".export.json").read_text())
    assert report["baseline"]["baseline"] == "coxnet" and report["onnx_max_abs_diff"] <= 1e-4

    dm = load_datamodule(checkpoint)
    dm.setup()
    inputs = table_inputs(load_module(checkpoint).net, dm.modalities)
    train, test = dm.records["train"] + dm.records["val"], dm.records["test"]
    expected = make_baseline("coxnet").fit(inputs.of(train), outcome_of(train)).predict(inputs.of(test))

    predictor = Predictor.load(model, device="cpu")
    contract = predictor.contract
    assert contract.name.endswith("-coxnet") and contract.metrics == {}
    assert contract.feature_importance  # which features matter, for a lab's panel check
    cohort = checkpoint.parents[2] / "cohort"
    out = tmp_path / "scores.parquet"
    summary = score_table(
        model, out, genomics=cohort / "genomics.parquet", clinical=cohort / "clinical.csv", progress=False
    )
    assert summary["failed"] == 0
    rows = pd.read_parquet(out).set_index("patient_id")
    got = rows.loc[[r["patient_id"] for r in test], "risk_score"].to_numpy()
    # risk_score is the exported log-hazard (the Cox model's linear predictor), float32.
    np.testing.assert_allclose(got, expected, atol=1e-4 * max(1.0, float(np.ptp(expected))))
    assert np.std(expected) > 0.1  # a real model, not a constant


def test_non_linear_baseline_is_refused_by_name(checkpoint: Path, tmp_path: Path) -> None:
    from radfusion.cli import main as radfusion

    with pytest.raises(SystemExit, match="only linear baselines"):
        radfusion(["export", "--checkpoint", str(checkpoint), "--out", str(tmp_path / "m.onnx"), "--model", "rsf"])
    assert not list(tmp_path.iterdir())


def test_logistic_baseline_logits_are_scikit_learns_probabilities() -> None:
    from radfusion.training.cv.affine import fit_affine_baseline
    from radfusion.training.cv.arrays import features_of, outcome_of
    from radfusion.training.cv.baselines import make_baseline

    rng = np.random.default_rng(3)
    n, genes, covariates = 160, 12, 3

    def record(i: int) -> dict:
        g = rng.normal(size=genes).astype(np.float32)
        c = rng.normal(size=covariates).astype(np.float32)
        absent = i % 7 == 0  # some patients lack the omics profile: zeros and a 0 bit
        if absent:
            g[:] = 0.0
        label = int(g[0] - c[1] + rng.normal() > 0)
        presence = np.array([0.0, 0.0 if absent else 1.0, 1.0], dtype=np.float32)
        return {"genomics": g, "clinical": c, "presence": presence, "label": label, "time": 0.0, "event": 0}

    records = [record(i) for i in range(n)]
    parts = {"train": records[:120], "val": [], "test": records[120:]}

    names = ["image", "expression", "clinical"]
    # What fit_affine_baseline reads from a network and a data module.
    net = SimpleNamespace(modality_names=names, omics_sizes={"expression": genes}, uses=lambda m: m != "image")
    data = SimpleNamespace(modalities=names, n_classes=2, records=parts)

    module, chosen = fit_affine_baseline("logistic", net, "classification", data)
    test = records[120:]
    batch = {k: torch.as_tensor(np.stack([r[k] for r in test])) for k in ("genomics", "clinical", "presence")}
    logits = module(torch.zeros(len(test), 1), batch["genomics"], batch["clinical"], batch["presence"])
    probability = torch.softmax(logits, dim=1).numpy()

    x_train = features_of(records[:120], True, True, [1])
    reference = make_baseline("logistic").fit(x_train, outcome_of(records[:120]))
    expected = reference.predict(features_of(test, True, True, [1]))
    np.testing.assert_allclose(probability, expected, atol=1e-5)
    assert chosen["features"] == genes + 1 + covariates and chosen["patients"] == 120


def test_a_treatment_ranking_network_keeps_its_own_model() -> None:
    """A linear baseline has one treatment effect for every patient: exporting it for a
    model that ranks treatments by patient is refused, by name."""
    from radfusion.training.cv.affine import BaselineExportError, fit_affine_baseline

    net = SimpleNamespace(treatment_effect=object(), modality_names=["image", "clinical"], omics_sizes={})
    with pytest.raises(BaselineExportError, match="same treatment effect"):
        fit_affine_baseline("logistic", net, "classification", SimpleNamespace(modalities=["image", "clinical"]))
