"""Fusion models: shared encoders (encoders.py), fusion strategies (strategies.py)
and the network that joins them (net.py)."""

from __future__ import annotations

from radfusion.training.fusion.encoders import IMAGE_ENCODERS, build_image_encoder, omics_encoder
from radfusion.training.fusion.net import FusionNet, LogitModel, NetworkConfig
from radfusion.training.fusion.strategies import FUSIONS, build_fusion

__all__ = [
    "FUSIONS",
    "IMAGE_ENCODERS",
    "FusionNet",
    "LogitModel",
    "NetworkConfig",
    "build_fusion",
    "build_image_encoder",
    "omics_encoder",
]
