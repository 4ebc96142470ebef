"""The fusion network lives in training/fusion/; this module keeps the import path
other code and checkpoints use (``radfusion.training.model.FusionNet``, ``NetworkConfig``, ``LogitModel``)."""

from __future__ import annotations

from radfusion.training.fusion import (
    FUSIONS,
    IMAGE_ENCODERS,
    FusionNet,
    LogitModel,
    NetworkConfig,
    build_image_encoder,
    omics_encoder,
)

__all__ = [
    "FUSIONS",
    "IMAGE_ENCODERS",
    "FusionNet",
    "LogitModel",
    "NetworkConfig",
    "build_image_encoder",
    "omics_encoder",
]
