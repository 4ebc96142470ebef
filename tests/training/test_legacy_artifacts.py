"""A radfusion 0.1 checkpoint (flat hyper-parameters: ``lr``, ``embed_dim``, ``task`` as
a string ...) still loads, evaluates and exports: its hyper-parameters are migrated
into today's network / task / optimiser configs, and the exported model answers as
the ONNX file 0.1 exported from the same checkpoint (tests/data/legacy)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.support.paths import LEGACY

CHECKPOINT = LEGACY / "fusion-0.1.0.ckpt"
LEGACY_ONNX = LEGACY / "fusion-0.1.0.onnx"


def test_flat_hyper_parameters_migrate_into_the_configs():
    from radfusion.training.checkpoints import load_module
    from radfusion.training.model import NetworkConfig
    from radfusion.training.module import OptimiserConfig
    from radfusion.training.tasks import TaskConfig

    flat = torch.load(str(CHECKPOINT), map_location="cpu", weights_only=False)["hyper_parameters"]
    assert "embed_dim" in flat and "network" not in flat  # really the old shape
    module = load_module(CHECKPOINT)
    assert module.network_config == NetworkConfig(
        modalities=("image", "genomics"), image_encoder="resnet", image_widths=(4, 4, 8, 8), embed_dim=16
    )
    assert module.task_config == TaskConfig(kind="classification", time_intervals=8, horizons=(12.0, 24.0, 36.0))
    assert module.optimiser_config == OptimiserConfig()
    assert module.model_name == "radfusion-response" and module.hparams.modality_dropout == 0.5


def test_contract_of_a_legacy_checkpoint():
    from radfusion.runtime import OnnxModel
    from radfusion.training.checkpoints import build_contract, load_module

    contract = build_contract(load_module(CHECKPOINT), CHECKPOINT)
    legacy = OnnxModel(LEGACY_ONNX, device="cpu").contract
    assert contract.name == legacy.name and contract.task == legacy.task and contract.labels == legacy.labels
    assert contract.trained_modalities == legacy.trained_modalities == ["image", "genomics"]
    assert contract.image == legacy.image and contract.cohort_hash == legacy.cohort_hash
    assert [b.features for b in contract.omics] == [b.features for b in legacy.omics]


@pytest.fixture(scope="module")
def legacy_cohort(tiny_cohort):
    """The legacy checkpoint was trained on the tiny cohort (same generator settings,
    same patients; regenerated files get new DICOM UIDs, so not the same hash)."""
    from radfusion.training.checkpoints import load_datamodule

    dm = load_datamodule(CHECKPOINT, cohort_dir=tiny_cohort)
    assert len(dm.records["train"]) + len(dm.records["val"]) + len(dm.records["test"]) == 10
    return tiny_cohort


def test_legacy_checkpoint_evaluates(legacy_cohort):
    from radfusion.training.checkpoints import load_datamodule, load_module
    from radfusion.training.evaluate import evaluate_checkpoint, predict_split

    result = evaluate_checkpoint(CHECKPOINT, cohort_dir=legacy_cohort)
    assert result["modalities"] == ["image", "genomics"] and result["task"] == "classification"
    assert result["fusion"] == "late" and "auroc" in result  # NaN on a 2-patient test split
    predicted = predict_split(load_module(CHECKPOINT), load_datamodule(CHECKPOINT, legacy_cohort), "test")
    assert len(predicted["label"]) == 2 and torch.isfinite(predicted["outputs"]).all()


def test_legacy_checkpoint_exports_the_legacy_model(legacy_cohort, tmp_path):
    from radfusion.runtime import OnnxModel
    from radfusion.training.export import export

    out = tmp_path / "model.onnx"
    report = export(CHECKPOINT, out, cohort_dir=legacy_cohort)
    assert report["onnx_max_abs_diff"] <= report["parity_tolerance"]
    new, old = OnnxModel(out, device="cpu"), OnnxModel(LEGACY_ONNX, device="cpu")
    # The calibration is today's: the prior on log T keeps this tiny validation split (two
    # patients) from driving the temperature to the search bound where the legacy export put it.
    assert old.contract.temperature == pytest.approx(20.0, rel=1e-3)
    assert 0.5 < new.contract.temperature < 2.0
    g = np.random.default_rng(0)
    shape = (6, 1, *old.contract.image.target_shape)
    image = g.random(shape, dtype=np.float32)
    genomics = g.standard_normal((6, len(old.contract.genomics.features))).astype(np.float32)
    clinical = np.zeros((6, old.contract.clinical_width), dtype=np.float32)
    presence = np.ones((6, len(old.contract.modalities)), dtype=np.float32)
    presence[3:, 1:] = 0.0  # genomics absent for half of them
    # The same network: the logits differ by the calibration's level (one shift per output) only.
    difference = new.logits(image, genomics, clinical, presence) - old.logits(image, genomics, clinical, presence)
    assert np.max(np.abs(difference - difference.mean(axis=0))) <= 1e-5
