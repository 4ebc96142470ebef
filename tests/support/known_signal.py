"""An ONNX model with a known signal (named genes, a lesion region) exported as a
trained model is, so explanations and treatment ranking can be checked against truth."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from radfusion.contract import ImageGeometry, ModelContract, OmicsBlock
from tests.support.dicom_series import (
    ORIGIN_XYZ,
    SPACING_ZYX,
)

GENES = [f"G{i}" for i in range(10)]

MUTATIONS = ["G0_mut", "G1_mut"]

# Logit of "responder" = sum(weight * z) + IMAGE_WEIGHT * sum(relu(image - BRIGHT)).
GENE_WEIGHTS = {"G3": 1.5, "G7": -2.0, "G1_mut": 1.0}

IMAGE_WEIGHT = 1.0

BRIGHT = 0.8  # windowed intensity; soft tissue (40 HU) is 0.475, the lesion (240 HU) 0.975

TEMPERATURE = 2.0

GEOMETRY = ImageGeometry(
    spatial_dims=3, target_shape=(8, 16, 16), target_spacing=(6.0, 8.0, 8.0), window=(-150.0, 250.0), min_slices=4
)

# The patient grid of test_dicom_reading (SPACING_ZYX, ORIGIN_XYZ): 12 x 60 x 40 voxels
# span 60 x 120 x 120 mm; a bright box of 3 x 10 x 8 voxels (15 x 20 x 24 mm).
VOLUME_SHAPE = (12, 60, 40)

LESION = (slice(6, 9), slice(12, 22), slice(24, 32))


class KnownSignalNet(nn.Module):
    """Two logits: 0 and a score linear in the genes and in bright-voxel mass. The
    image term is gated by its presence bit like FusionNet's embeddings. Optionally a
    treatment effect: the clinical column ``column`` (one-hot) adds ``gain``
    times the feature ``interaction`` (an index into genomics) plus ``shift``."""

    def __init__(self, gene_weights: np.ndarray, treatment: dict | None = None):
        super().__init__()
        self.register_buffer("w", torch.tensor(gene_weights, dtype=torch.float32))
        self.treatment = treatment

    def forward(self, image, genomics, clinical, presence):
        bright = torch.relu(image - BRIGHT).sum(dim=(1, 2, 3, 4)) * presence[:, 0]
        score = (genomics * self.w).sum(dim=1) + IMAGE_WEIGHT * bright
        if self.treatment is not None:
            t = self.treatment
            on = clinical[:, t["column"]]
            score = score + on * (t["gain"] * genomics[:, t["interaction"]] + t["shift"])
        return torch.stack([torch.zeros_like(score), score], dim=1)


def known_signal_contract(**changes) -> ModelContract:
    expression = OmicsBlock(features=GENES, mean=[1.0] * len(GENES), std=[2.0] * len(GENES), name="expression")
    mutation = OmicsBlock(features=MUTATIONS, mean=[0.2, 0.3], std=[0.4, 0.5], name="mutation")
    fields = dict(
        name="known-signal",
        version="0.0.1-test",
        task="classification:response",
        labels=["non-responder", "responder"],
        positive_label="responder",
        image=GEOMETRY,
        omics=[expression, mutation],
        trained_modalities=["image", "genomics"],
        may_be_missing=["image", "genomics"],
        temperature=TEMPERATURE,
    )
    return ModelContract(**{**fields, **changes})


def gene_weight_vector(contract: ModelContract, weights: dict[str, float]) -> np.ndarray:
    return np.array([weights.get(f, 0.0) for f in contract.genomics.features], dtype=np.float32)


def export_known_signal(path: Path, contract: ModelContract, weights: dict[str, float], treatment=None) -> Path:
    from radfusion.training.export import export_onnx

    net = KnownSignalNet(gene_weight_vector(contract, weights), treatment=treatment).eval()
    export_onnx(net, contract, path)
    return path


def lesion_volume() -> np.ndarray:
    hu = np.full(VOLUME_SHAPE, 40, dtype=np.int16)
    hu[LESION] = 240
    return hu


def lesion_centre_mm() -> np.ndarray:
    """Patient (x, y, z) of the box centre, from the grid definition alone."""
    centre_zyx = [(s.start + s.stop - 1) / 2 for s in LESION]
    return np.array([ORIGIN_XYZ[2 - a] + centre_zyx[a] * SPACING_ZYX[a] for a in (2, 1, 0)])


def raw_genes(seed: int = 0) -> dict[str, float]:
    rng = np.random.default_rng(seed)
    values = {g: float(v) for g, v in zip(GENES, rng.normal(1.0, 3.0, len(GENES)), strict=True)}
    values.update({"G0_mut": 0.0, "G1_mut": 1.0})
    return values
