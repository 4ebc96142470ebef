"""Shared fixtures: a tiny synthetic cohort and a real (untrained) ONNX fusion model
built for it. Both are session-scoped and written once under pytest's tmp folder.

Add generic fixtures here; keep test-specific ones in their test modules."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# BentoML phones home unless told not to; no test may reach the network.
os.environ.setdefault("BENTOML_DO_NOT_TRACK", "True")

TINY_COHORT = dict(n_patients=10, seed=7, n_genes=100, n_slices=10, rows=32, cols=32, rle_fraction=0.25)
# The synthetic studies have ~5 mm slices and ~6 mm pixels: 10 x 32 x 32 voxels span
# ~50 x 192 x 192 mm, which this grid covers (8 x 6 mm, 16 x 12 mm).
TINY_TARGET_SHAPE = (8, 16, 16)
TINY_TARGET_SPACING = (6.0, 12.0, 12.0)


@pytest.fixture(scope="session")
def tiny_cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 10-patient synthetic cohort: out/dicom/**, genomics.parquet, clinical.csv, truth.json.
    Some patients have no genomics (the generator's default missing fraction)."""
    from radfusion.synth import generate_cohort

    out = tmp_path_factory.mktemp("tiny_cohort")
    generate_cohort(out, workers=1, **TINY_COHORT)
    return out


@pytest.fixture(scope="session")
def tiny_contract(tiny_cohort: Path):
    """The model contract for the tiny cohort: its genomics columns as the gene panel
    (training-style mean/std), a small image grid, labels non-responder/responder."""
    from radfusion.contract import GenePanel, ImageGeometry, ModelContract
    from radfusion.genomics import feature_columns, load_genomics_table
    from radfusion.preprocess import fit_gene_panel

    table = load_genomics_table(tiny_cohort / "genomics.parquet")
    panel: GenePanel = fit_gene_panel(table, feature_columns(table))
    return ModelContract(
        name="tiny-fusion",
        version="0.0.1-test",
        task="classification:response",
        labels=["non-responder", "responder"],
        positive_label="responder",
        image=ImageGeometry(
            spatial_dims=3,
            target_shape=TINY_TARGET_SHAPE,
            target_spacing=TINY_TARGET_SPACING,
            window=(-150.0, 250.0),
            modalities=("CT",),
            min_slices=4,
        ),
        genomics=panel,
        trained_modalities=["image", "genomics"],
        may_be_missing=["image", "genomics"],
        cohort_hash="tiny",
    )


@pytest.fixture(scope="session")
def tiny_onnx_model(tmp_path_factory: pytest.TempPathFactory, tiny_contract) -> Path:
    """A real ONNX fusion model (untrained, seeded weights) with the contract embedded,
    exported by training.export exactly as `radfusion export` does."""
    import torch

    from training.export import export_onnx
    from training.model import FusionNet

    torch.manual_seed(0)
    net = FusionNet(
        n_genes=len(tiny_contract.genomics.features),
        n_classes=len(tiny_contract.labels),
        modalities=tuple(tiny_contract.trained_modalities),
        image_encoder="resnet",
        image_widths=(4, 4, 8, 8),
        embed_dim=16,
        genomics_hidden=32,
    ).eval()
    path = tmp_path_factory.mktemp("tiny_model") / "model.onnx"
    export_onnx(net, tiny_contract, path)
    return path


@pytest.fixture(scope="session")
def bentoml_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A private BentoML home (model store, bentos) for tests that run BentoML."""
    return tmp_path_factory.mktemp("bentoml_home")
