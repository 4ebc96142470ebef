"""LightningModule: the fusion network, modality dropout, loss and metrics. The data
module's contract pieces (gene panel, geometry, labels, cohort hash) are stored in
every checkpoint so export needs nothing but the checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import ModelCheckpoint
from torchmetrics.classification import BinaryAUROC, MulticlassAUROC

from training.model import FusionNet

CONTRACT_KEY = "radfusion_contract"


class FusionModule(L.LightningModule):
    def __init__(
        self,
        n_genes: int,
        n_classes: int = 2,
        modalities: tuple[str, ...] = ("image", "genomics"),
        spatial_dims: int = 3,
        image_encoder: str = "densenet",
        image_widths: tuple[int, ...] = (16, 8),
        embed_dim: int = 64,
        genomics_hidden: int = 16,
        genomics_dropout: float = 0.5,
        dropout: float = 0.3,
        modality_dropout: float = 0.25,
        lr: float = 1e-3,
        weight_decay: float = 1e-2,
        model_name: str = "radfusion-response",
    ):
        super().__init__()
        self.save_hyperparameters()
        self.net = FusionNet(
            n_genes=n_genes,
            n_classes=n_classes,
            modalities=modalities,
            spatial_dims=spatial_dims,
            image_encoder=image_encoder,
            image_widths=image_widths,
            embed_dim=embed_dim,
            genomics_hidden=genomics_hidden,
            genomics_dropout=genomics_dropout,
            dropout=dropout,
        )
        self.val_auroc = BinaryAUROC() if n_classes == 2 else MulticlassAUROC(num_classes=n_classes)
        self.contract_parts: dict[str, Any] = {}

    def forward(self, image, genomics, presence):
        return self.net(image, genomics, presence)

    def _presence(self, batch: dict) -> torch.Tensor:
        """Presence limited to the modalities this model uses."""
        keep = torch.tensor(
            [m in self.hparams.modalities for m in ("image", "genomics")], dtype=batch["presence"].dtype, device=self.device
        )
        return batch["presence"] * keep

    def _modality_dropout(self, presence: torch.Tensor) -> torch.Tensor:
        """Hide one modality of some fully observed cases, so the model learns to
        predict from whatever subset a hospital can supply."""
        p = self.hparams.modality_dropout
        if p <= 0 or len(self.hparams.modalities) < 2:
            return presence
        both = presence.sum(dim=1) == 2
        drop = both & (torch.rand(len(presence), device=presence.device) < p)
        which = torch.randint(0, 2, (len(presence),), device=presence.device)
        presence = presence.clone()
        presence[drop, which[drop]] = 0
        return presence

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        presence = self._modality_dropout(self._presence(batch))
        logits = self(batch["image"], batch["genomics"], presence)
        loss = F.cross_entropy(logits, batch["label"])
        self.log("train/loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(logits))
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        logits = self(batch["image"], batch["genomics"], self._presence(batch))
        loss = F.cross_entropy(logits, batch["label"])
        probs = torch.softmax(logits, dim=-1)
        self.val_auroc.update(probs[:, 1] if self.hparams.n_classes == 2 else probs, batch["label"])
        self.log("val/loss", loss, prog_bar=True, batch_size=len(logits))

    def on_validation_epoch_end(self) -> None:
        self.log("val/auroc", self.val_auroc.compute(), prog_bar=True)
        self.val_auroc.reset()

    def configure_optimizers(self):
        optimizer = torch.optim.AdamW(self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, self.trainer.max_epochs or 1))
        return {"optimizer": optimizer, "lr_scheduler": scheduler}

    def configure_callbacks(self):
        # Best checkpoint by validation AUROC, plus last.ckpt for resuming.
        return [
            ModelCheckpoint(
                dirpath=Path(self.trainer.default_root_dir) / "checkpoints",
                filename="best",
                monitor="val/auroc",
                mode="max",
                save_last=True,
            )
        ]

    def on_fit_start(self) -> None:
        dm = self.trainer.datamodule
        self.contract_parts = {
            "gene_panel": {
                "features": dm.gene_panel.features,
                "mean": dm.gene_panel.mean,
                "std": dm.gene_panel.std,
            },
            "geometry": {
                "target_shape": list(dm.geometry.target_shape),
                "target_spacing": list(dm.geometry.target_spacing),
                "window": list(dm.geometry.window),
                "modalities": list(dm.geometry.modalities),
                "min_slices": dm.geometry.min_slices,
            },
            "labels": dm.labels,
            "target": dm.hparams.target,
            "cohort_hash": dm.cohort_hash,
        }

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        parts = dict(self.contract_parts)
        metric = self.trainer.callback_metrics.get("val/auroc")
        if metric is not None:
            parts["val_auroc"] = float(metric)
        checkpoint[CONTRACT_KEY] = parts

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.contract_parts = checkpoint.get(CONTRACT_KEY, {})
