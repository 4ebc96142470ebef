"""The training side end to end on a small synthetic cohort: LightningCLI training with
the project's real configs, checkpoint contents, evaluation, export with the parity
check, and the exported model answering through the serving runtime."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from radfusion.contract import read_contract_from_onnx
from radfusion.predictor import Predictor
from tests.support.paths import PROJECT_ROOT as ROOT
from tests.support.tiny_training import train_tiny

pytestmark = pytest.mark.slow

CONFIGS = ROOT / "configs"


def _train(cohort: Path, out: Path, *extra: str) -> Path:
    return train_tiny(cohort, out, *extra, batch_size=4)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    from radfusion.synth import generate_cohort

    out = tmp_path_factory.mktemp("pipeline_cohort")
    generate_cohort(out, n_patients=30, seed=3, n_genes=60, n_slices=12, rows=32, cols=32, workers=1)
    return out


@pytest.fixture(scope="module")
def trained(cohort, tmp_path_factory) -> Path:
    return _train(cohort, tmp_path_factory.mktemp("fusion"))


def test_checkpoint_carries_the_contract_pieces(trained, cohort):
    state = torch.load(trained, map_location="cpu", weights_only=False)
    parts = state["radfusion_contract"]
    genomics = pd.read_parquet(cohort / "genomics.parquet").set_index("patient_id")
    assert [b["name"] for b in parts["omics"]] == ["expression", "mutation"]
    features = [f for b in parts["omics"] for f in b["features"]]
    assert sorted(features) == sorted(genomics.columns)
    assert all(f.endswith("_mut") for f in parts["omics"][1]["features"])
    assert parts["geometry"]["target_shape"] == [8, 16, 16]
    assert parts["labels"] == ["non-responder", "responder"]
    assert len(parts["cohort_hash"]) == 16
    assert 0.0 <= parts["val_auroc"] <= 1.0
    # Panel statistics come from the training split only, not the whole table.
    mean = np.asarray([m for b in parts["omics"] for m in b["mean"]])
    assert not np.allclose(mean, genomics[features].mean().to_numpy())
    assert (trained.parent / "last.ckpt").exists()


def test_export_cli_checks_parity_and_registers(trained, tmp_path):
    out = tmp_path / "model.onnx"
    env = {**os.environ, "BENTOML_HOME": str(tmp_path / "bentoml"), "BENTOML_DO_NOT_TRACK": "True"}
    subprocess.run(
        [sys.executable, "-m", "radfusion.cli", "export", "--checkpoint", str(trained), "--out", str(out)],
        check=True,
        cwd=ROOT,
        env=env,
        capture_output=True,
    )
    report = json.loads(out.with_suffix(".export.json").read_text())
    assert report["onnx_max_abs_diff"] <= 1e-4
    contract = read_contract_from_onnx(out)
    assert contract.version == report["version"]
    assert contract.trained_modalities == ["image", "genomics"]
    assert report["bento_tag"] == f"{contract.name}:{contract.version}"
    stored = tmp_path / "bentoml" / "models" / contract.name / contract.version / "model.onnx"
    assert stored.read_bytes() == out.read_bytes()
    # Conformal sets calibrated on the test split, their coverage cross-fitted within it.
    from radfusion.training.checkpoints import load_datamodule

    dm = load_datamodule(trained)
    dm.setup()
    spec = contract.conformal
    assert spec is not None and spec.coverage == 0.9
    assert sum(spec.calibration_counts) == len(dm.records["test"])
    for n, threshold in zip(spec.calibration_counts, spec.thresholds, strict=True):
        assert (threshold is None) == (math.ceil((n + 1) * 0.9) > n)
    assert report["conformal"]["test"]["cases"] == len(dm.records["test"])


def test_exported_model_matches_pytorch_through_the_serving_path(trained, cohort, tmp_path):
    """Same study through predictor (core preprocessing + ORT) and through the training
    data path + PyTorch: one preprocessing definition means the same probabilities."""
    from radfusion.training.checkpoints import (
        build_contract,
        load_datamodule,
        load_module,
    )
    from radfusion.training.export import export_onnx

    module = load_module(trained)
    path = tmp_path / "m.onnx"
    export_onnx(module.net, build_contract(module, trained), path)
    dm = load_datamodule(trained)
    record = dm.records["test"][0]
    predictor = Predictor.load(path, device="cpu")
    genes = pd.read_parquet(cohort / "genomics.parquet").set_index("patient_id")
    mapping = genes.loc[record["patient_id"]].to_dict() if record["patient_id"] in genes.index else None
    case = predictor.prepare([cohort / "dicom" / f for f in record["image"]], mapping)
    served = predictor.predict([case])[0]["probabilities"]["responder"]
    item = dm.datasets["test"][0]
    with torch.no_grad():
        inputs = [torch.as_tensor(item[k])[None] for k in ("image", "genomics", "clinical", "presence")]
        logits = module(*inputs)
    assert served == pytest.approx(float(torch.softmax(logits, -1)[0, 1]), abs=1e-4)


def test_evaluate_reports_each_model_and_presence_pattern(trained, cohort, tmp_path):
    from radfusion.training.evaluate import evaluate

    image_only = _train(cohort, tmp_path / "image_only", "--config", str(CONFIGS / "experiment" / "image_only.yaml"))
    results = evaluate({"fusion": trained, "image_only": image_only}, tmp_path)
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved == json.loads(json.dumps(results))
    assert saved["image_only"]["modalities"] == ["image"]
    assert "auroc_genomics_only" not in saved["image_only"]  # it cannot use genomics
    for name in ("fusion", "image_only"):
        assert math.isnan(saved[name]["auroc"]) or 0.0 <= saved[name]["auroc"] <= 1.0
    assert saved["fusion"]["n_observed"] == _n_test(cohort)
    assert "| fusion |" in (tmp_path / "metrics.md").read_text()


def _n_test(cohort: Path) -> int:
    from radfusion.training.folds import split_patients

    clinical = pd.read_csv(cohort / "clinical.csv").set_index("patient_id")
    split = split_patients(clinical, (0.6, 0.2, 0.2), 0, "response")
    return int((split == "test").sum())


def test_discrete_survival_model_exports_and_serves_survival_probabilities(cohort, tmp_path):
    """A survival model exports with its task and interval edges in the contract, and
    serving answers with a risk score and S(t) at each edge, equal to PyTorch's."""
    from radfusion.training.checkpoints import load_datamodule, load_module
    from radfusion.training.export import export
    from radfusion.training.tasks import discrete_risk, survival_curve

    checkpoint = _train(
        cohort,
        tmp_path / "survival",
        "--config",
        str(CONFIGS / "experiment" / "survival_discrete.yaml"),
        "--model.task.time_intervals",
        "4",
    )
    report = export(checkpoint, tmp_path / "survival.onnx")
    assert report["onnx_max_abs_diff"] <= 1e-4
    contract = read_contract_from_onnx(tmp_path / "survival.onnx")
    module = load_module(checkpoint)
    assert contract.task == "survival:discrete" and len(contract.time_bins) == 4
    assert contract.time_bins == pytest.approx(module.task.edges.tolist())
    assert "val_cindex" in contract.metrics
    dm = load_datamodule(checkpoint)
    item = dm.datasets["test"][0]
    record = dm.records["test"][0]
    genes = pd.read_parquet(cohort / "genomics.parquet").set_index("patient_id")
    mapping = genes.loc[record["patient_id"]].to_dict() if record["patient_id"] in genes.index else None
    predictor = Predictor.load(tmp_path / "survival.onnx", device="cpu")
    served = predictor.predict([predictor.prepare([cohort / "dicom" / f for f in record["image"]], mapping)])[0]
    with torch.no_grad():
        logits = module(*[torch.as_tensor(item[k])[None] for k in ("image", "genomics", "clinical", "presence")])
    assert "probabilities" not in served
    assert served["risk_score"] == pytest.approx(float(discrete_risk(logits)[0]), abs=1e-4)
    assert list(served["survival_probabilities"].values()) == pytest.approx(
        survival_curve(logits.numpy())[0].tolist(), abs=1e-4
    )
    # The evidence checks the held-out curves' calibration (not a classifier's ECE).
    from radfusion.training.evidence.run import run_evidence
    from radfusion.training.report.build import sections

    ev = run_evidence(module, dm, saliency_cases=1, ablation_cases=4)
    assert ev.calibration is None and ev.subgroups is None
    d = ev.survival_calibration["d_calibration"]
    assert d["n"] == len(dm.records["test"]) and 0.0 <= d["p_value"] <= 1.0
    assert sum(d["bin_shares"]) == pytest.approx(1.0)
    assert [h["horizon"] for h in ev.survival_calibration["horizons"]] == list(module.task.horizons)
    titles = [title for title, _ in sections(ev, module, dm, tmp_path, checkpoint)]
    assert "Calibration of the survival curves" in titles and "Calibration" not in titles


def test_a_baseline_exported_from_an_image_network_needs_no_image(trained, cohort, tmp_path):
    """`radfusion export --model logistic` on the image + genomics network: the contract
    says the model is trained on genomics only, so a case without a study is scored
    (the network's contract would refuse it)."""
    from radfusion.cli import main as radfusion

    out = tmp_path / "logistic.onnx"
    radfusion(["export", "--checkpoint", str(trained), "--out", str(out), "--no-register", "--model", "logistic"])
    predictor = Predictor.load(out, device="cpu")
    assert predictor.contract.trained_modalities == ["genomics"] and predictor.contract.conformal is None
    genes = pd.read_parquet(cohort / "genomics.parquet").set_index("patient_id")
    case = predictor.prepare(None, genes.iloc[0].to_dict())
    (answer,) = predictor.predict([case])
    assert sum(answer["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
    assert answer["modalities_used"] == [b.name for b in predictor.contract.omics]
