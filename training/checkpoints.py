"""Load a trained checkpoint together with the data module it was trained on, and
turn its stored contract pieces into a ModelContract."""

from __future__ import annotations

import datetime as dt
import hashlib
from importlib import metadata
from pathlib import Path

import torch

from radfusion.contract import GenePanel, ImageGeometry, ModelContract
from training.data import RadfusionDataModule
from training.module import FusionModule


def load_module(checkpoint: Path | str) -> FusionModule:
    module = FusionModule.load_from_checkpoint(str(checkpoint), map_location="cpu", weights_only=False)
    module.eval()
    return module


def load_datamodule(checkpoint: Path | str) -> RadfusionDataModule:
    """The data module exactly as configured for training (same split, same panel)."""
    state = torch.load(str(checkpoint), map_location="cpu", weights_only=False)
    # LightningCLI adds private keys (e.g. "_instantiator") beside the real arguments.
    hparams = {k: v for k, v in state["datamodule_hyper_parameters"].items() if not k.startswith("_")}
    hparams["augment"] = False
    dm = RadfusionDataModule(**hparams)
    dm.setup("test")
    return dm


def _version_of(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "absent"


def build_contract(module: FusionModule, checkpoint: Path | str) -> ModelContract:
    parts = module.contract_parts
    if not parts:
        raise ValueError("checkpoint carries no radfusion contract (was it trained with radfusion train?)")
    digest = hashlib.sha256(Path(checkpoint).read_bytes()).hexdigest()[:8]
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d%H%M%S")
    modalities = list(module.hparams.modalities)
    labels = list(parts["labels"])
    return ModelContract(
        name=module.hparams.model_name,
        version=f"{stamp}-{digest}",
        task=f"classification:{parts['target']}",
        labels=labels,
        positive_label=labels[-1] if len(labels) == 2 else None,
        image=ImageGeometry(
            spatial_dims=module.hparams.spatial_dims,
            target_shape=tuple(parts["geometry"]["target_shape"]),
            target_spacing=tuple(parts["geometry"]["target_spacing"]),
            window=tuple(parts["geometry"]["window"]),
            modalities=tuple(parts["geometry"]["modalities"]),
            min_slices=parts["geometry"]["min_slices"],
        ),
        genomics=GenePanel(**parts["gene_panel"]),
        trained_modalities=modalities,
        may_be_missing=modalities if len(modalities) > 1 else [],
        cohort_hash=parts["cohort_hash"],
        metrics={"val_auroc": parts["val_auroc"]} if "val_auroc" in parts else {},
        versions={p: _version_of(p) for p in ("radfusion", "torch", "monai", "lightning", "onnx", "onnxruntime")},
    )
