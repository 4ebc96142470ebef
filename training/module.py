"""LightningModule: the fusion network, modality dropout, loss and metrics. The data
module's contract pieces (gene panel, geometry, labels, cohort hash) are stored in
every checkpoint so export needs nothing but the checkpoint."""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from torch import nn

from radfusion.training.evaluation_mode import batchnorm_layers, fit_output_shift, recompute_batchnorm_statistics
from radfusion.training.model import FusionNet, NetworkConfig
from radfusion.training.tasks import DiscreteHazardTask, TaskConfig

CONTRACT_KEY = "radfusion_contract"
# What the tasks' losses read from a batch besides the outputs.
TARGET_KEYS = ("label", "time", "event")
CHECKPOINT_CHOICES = ("best", "last")


@dataclass(frozen=True)
class OptimiserConfig:
    """AdamW with a cosine schedule over the epochs (YAML ``model.optimiser``)."""

    lr: float = 1e-3
    weight_decay: float = 1e-2
    # The treatment x omics term's feature weights are L1-penalised (interaction_l1,
    # per unit of the mean training loss) and learn at their own rate, because a linear
    # effect of several log-odds is out of reach at lr in a few hundred steps.
    interaction_l1: float = 0.005
    interaction_lr: float = 0.03
    # The linear path's weights (model.network.linear_path): an elastic-net penalty per
    # unit of the mean training loss (for Cox, per event) instead of weight decay, and
    # their own learning rate: a penalised Cox fit converges in a few hundred whole-cohort
    # steps at 0.02, not at lr. Defaults: configs/experiment/small_cohort.yaml's, measured
    # on issue 16's 198-patient cohort (L2 0.2-1.0 within 0.003 c-index of each other).
    linear_l2: float = 0.5
    linear_l1: float = 0.0
    linear_lr: float = 0.02

    @classmethod
    def coerce(cls, value: OptimiserConfig | Mapping[str, Any] | None) -> OptimiserConfig:
        """The config from itself, a mapping (a checkpoint's or YAML's), or None (defaults)."""
        if value is None:
            return cls()
        if isinstance(value, cls):
            return value
        return cls(**dict(value))


# Where each hyper-parameter of a flat (radfusion 0.1) checkpoint went.
_TASK_KEYS = {"task": "kind", "time_intervals": "time_intervals", "horizons": "horizons"}
_OPTIMISER_KEYS = tuple(f.name for f in dataclasses.fields(OptimiserConfig))


def migrate_hparams(hparams: Mapping[str, Any]) -> dict[str, Any]:
    """A checkpoint's hyper-parameters in today's shape. radfusion 0.1 saved them flat
    (``lr``, ``embed_dim``, ``task`` as a string ...): they are sorted into the
    ``network``, ``task`` and ``optimiser`` configs; today's pass through unchanged.
    Private keys (LightningCLI's ``_instantiator``) are kept."""
    hparams = dict(hparams)
    if "network" in hparams or "optimiser" in hparams:
        return hparams
    network = {k: hparams.pop(k) for k in NetworkConfig.field_names() if k in hparams}
    task = {new: hparams.pop(old) for old, new in _TASK_KEYS.items() if old in hparams}
    optimiser = {k: hparams.pop(k) for k in _OPTIMISER_KEYS if k in hparams}
    return {**hparams, "network": network, "task": task, "optimiser": optimiser}


class FusionModule(L.LightningModule):
    """Trains a FusionNet for one task. The data-derived sizes (``omics_sizes``,
    ``n_clinical``, ``n_classes``) are linked from the data module by the CLI; the
    rest is three configs (YAML ``model.network``, ``model.task``, ``model.optimiser``)
    and the training regime below."""

    def __init__(
        self,
        omics_sizes: dict[str, int],
        n_clinical: int = 0,
        n_classes: int = 2,
        network: NetworkConfig = NetworkConfig(),
        task: TaskConfig = TaskConfig(),
        optimiser: OptimiserConfig = OptimiserConfig(),
        model_name: str = "radfusion-response",
        # Share of training cases (with two or more modality groups) that lose one group.
        modality_dropout: float = 0.25,
        # Weight of the unimodal losses: a linear head on each of the image's and each
        # omics block's embedding predicts the target alone, so an encoder is not left
        # under-trained while another modality carries the fused output (the modality
        # imbalance of Wang et al. 2020, "What makes training multi-modal classification
        # networks hard?"). Training only: the heads are not part of the exported network.
        unimodal_loss: float = 0.0,
        # Training batches (as evaluation sees them) over which the BatchNorm statistics
        # are recomputed before each validation and the output shift refitted for each
        # new best checkpoint (training/evaluation_mode.py); 0: moving averages, no shift.
        evaluation_batches: int = 20,
        # The treatment's one-hot clinical columns: filled from the data module's
        # treatment levels when training starts (network.treatment_interaction).
        treatment_columns: tuple[int, ...] = (),
        # Which weights checkpoints/best.ckpt holds: "best", those of the epoch with the
        # best validation metric; "last", those after the last epoch (a fixed training
        # length, so no validation part is needed: at 100-500 patients a validation
        # part is too small to choose by and too large to leave out of training).
        checkpoint: str = "best",
    ):
        super().__init__()
        if checkpoint not in CHECKPOINT_CHOICES:
            raise ValueError(f"checkpoint must be one of {CHECKPOINT_CHOICES}, not {checkpoint!r}")
        self.save_hyperparameters()
        # LightningCLI saves the configs as it parsed them (mappings), the constructor as given.
        self.network_config = NetworkConfig.coerce(network)
        self.task_config = TaskConfig.coerce(task)
        self.optimiser_config = OptimiserConfig.coerce(optimiser)
        self.task = self.task_config.build(n_classes)
        self.net = FusionNet(omics_sizes, n_clinical, self.task.n_outputs, self.network_config, treatment_columns)
        self.unimodal_heads = nn.ModuleDict(
            {
                name: nn.Linear(self.network_config.embed_dim, self.task.n_outputs)
                for name in self.net.modality_names
                if name != "clinical" and self.net.uses(name)
            }
            if unimodal_loss > 0
            else {}
        )
        self.contract_parts: dict[str, Any] = {}
        self._best_monitored = float("-inf")  # the validation metric of the best checkpoint so far

    @property
    def model_name(self) -> str:
        return self.hparams.model_name

    def setup(self, stage: str) -> None:
        if not self.network_config.treatment_interaction or self.net.treatment_effect is not None:
            return
        spec = self.trainer.datamodule.clinical
        if spec is None or not spec.treatment:
            raise ValueError("model.network.treatment_interaction needs a treatment covariate (data.treatment)")
        # Reference (the first level, the standard of care) first.
        columns = spec.treatment_columns
        self.hparams.treatment_columns = tuple(columns)  # saved, so a checkpoint rebuilds the term
        self.net.add_treatment_interaction(columns, self.network_config.interaction_blocks)
        train = self.trainer.datamodule.records["train"]
        self.net.treatment_effect.set_reference(
            torch.as_tensor(np.stack([r["genomics"] for r in train])),
            torch.as_tensor(np.stack([r["presence"] for r in train])),
        )

    def forward(self, image, genomics, clinical, presence):
        return self.net(image, genomics, clinical, presence)

    def _presence(self, batch: dict) -> torch.Tensor:
        """Presence limited to the modalities this model uses."""
        keep = torch.tensor(self.net.used_mask(), dtype=batch["presence"].dtype, device=self.device)
        return batch["presence"] * keep

    def _dropout_groups(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(groups, modalities) membership: the image, all omics blocks together (a
        hospital has a sequencing report or not), the clinical covariates; and which
        groups are primary (image, omics) rather than covariates."""
        used = torch.tensor(self.net.used_mask())
        matrix = torch.tensor(self.net.group_masks()) & used
        kept = matrix.any(dim=1)
        primary = torch.tensor([True, True, False])[kept]
        return matrix[kept].float().to(self.device), primary.to(self.device)

    def _modality_dropout(self, presence: torch.Tensor) -> torch.Tensor:
        """Hide one modality group of some cases, so the model learns to predict from
        whatever subset a hospital can supply. A case always keeps one image or omics
        group: covariates alone are not a case (and an image + covariates baseline
        never loses its image)."""
        p = self.hparams.modality_dropout
        groups, primary = self._dropout_groups()
        if p <= 0 or len(groups) < 2:
            return presence
        present = (presence @ groups.T) > 0  # (batch, groups)
        last_primary = primary & ((present & primary).sum(dim=1, keepdim=True) == 1)
        # Nor the only group a case has (covariates alone, its image and omics missing):
        # hiding it would train on an empty case.
        only = present & (present.sum(dim=1, keepdim=True) == 1)
        droppable = present & ~last_primary & ~only
        drop = droppable.any(dim=1) & (torch.rand(len(presence), device=presence.device) < p)
        # Pick one droppable group per case, uniformly.
        which = torch.multinomial(droppable.float() + 1e-9, 1).squeeze(1)
        hide = groups[which] * drop[:, None].float()
        return presence * (1 - hide)

    def _unimodal_loss(self, embeddings: list[torch.Tensor], presence: torch.Tensor, batch: dict) -> torch.Tensor:
        """The unimodal heads' mean loss, each over the cases that have its modality
        (before modality dropout: a hidden modality's encoder still learns). Every head
        runs on the whole batch, so each has a gradient every step, as DDP without
        find_unused_parameters needs, even where no case of a rank's batch has its modality."""
        losses = []
        for i, name in enumerate(self.net.modality_names):
            if name not in self.unimodal_heads:
                continue
            outputs = self.unimodal_heads[name](embeddings[i])
            present = presence[:, i] > 0
            if bool(present.any()):
                targets = {k: batch[k][present] for k in TARGET_KEYS if k in batch}
                losses.append(self.task.loss(outputs[present], targets) + 0.0 * outputs.sum())
            else:
                losses.append(0.0 * outputs.sum())
        return torch.stack(losses).mean() if losses else embeddings[0].new_zeros(())

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        presence = self._presence(batch)
        genomics, clinical = batch["genomics"], batch["clinical"]
        kept = self._modality_dropout(presence)
        embeddings, tokens = self.net.encode(batch["image"], genomics, clinical, presence)
        hidden = [e * kept[:, i : i + 1] for i, e in enumerate(embeddings)]
        logits = self.net.fuse(hidden, tokens, genomics, clinical, kept)
        loss = self.task.loss(logits, batch)
        if self.unimodal_heads:
            unimodal = self._unimodal_loss(embeddings, presence, batch)
            self.log("train/unimodal_loss", unimodal, on_step=False, on_epoch=True, batch_size=len(logits))
            loss = loss + self.hparams.unimodal_loss * unimodal
        if self.net.treatment_effect is not None:
            loss = loss + self.optimiser_config.interaction_l1 * self.net.treatment_effect.penalty()
        if self.net.linear_path is not None:
            optimiser = self.optimiser_config
            loss = loss + self.net.linear_path.penalty(optimiser.linear_l2, optimiser.linear_l1)
        self.log("train/loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(logits))
        return loss

    def _fitting(self) -> bool:
        # The sanity check runs before any training, and a standalone validate must
        # measure the checkpoint as it is.
        return not self.trainer.sanity_checking and self.trainer.state.fn == "fit"

    def on_validation_epoch_start(self) -> None:
        if self._fitting():
            self.recompute_batchnorm()

    def _evaluation_forward(self, batch: dict) -> tuple[torch.Tensor, dict]:
        batch = self.transfer_batch_to_device(batch, self.device, 0)
        return self(batch["image"], batch["genomics"], batch["clinical"], self._presence(batch)), batch

    def recompute_batchnorm(self) -> None:
        """Precise BatchNorm statistics under the current weights, so validation, the
        saved checkpoint and the exported model evaluate the network the loss fitted
        (training/evaluation_mode.py)."""
        batches = self.hparams.evaluation_batches
        if not batchnorm_layers(self.net) or batches <= 0:
            return
        # Every DDP rank reads the same batches (the statistics loader is not sharded and
        # has its own seed) under the same weights, so the replicas agree without a reduce.
        recompute_batchnorm_statistics(
            self.net, self.trainer.datamodule.statistics_dataloader(), self._evaluation_forward, batches
        )

    def refit_output_shift(self) -> None:
        """The output shift by the task's loss on training batches in evaluation mode
        (training/evaluation_mode.py). Run only when a new best checkpoint is about to
        be saved: the validation metrics (AUROC, c-index) do not depend on it, and a
        second pass every epoch would cost about a third of the training time."""
        batches = self.hparams.evaluation_batches
        if batches <= 0:
            return
        was_training = self.net.training
        self.net.eval()
        with torch.no_grad():
            seen = [
                self._evaluation_forward(b)
                for b in itertools.islice(self.trainer.datamodule.statistics_dataloader(), batches)
            ]
        self.net.train(was_training)
        if not seen:
            return
        targets = {k: torch.cat([b[k] for _, b in seen]) for k in TARGET_KEYS}
        self.net.output_bias += fit_output_shift(torch.cat([o for o, _ in seen]), targets, self.task.loss)

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        logits = self(batch["image"], batch["genomics"], batch["clinical"], self._presence(batch))
        loss = self.task.loss(logits, batch)
        self.task.update(logits, batch)
        self.log("val/loss", loss, prog_bar=True, batch_size=len(logits))

    def test_step(self, batch: dict, batch_idx: int) -> None:
        """`radfusion train test`: the test split's loss and the task's metrics
        (test/auroc, test/cindex), as `radfusion evaluate` gives them in its table."""
        logits = self(batch["image"], batch["genomics"], batch["clinical"], self._presence(batch))
        self.task.update(logits, batch)
        self.log("test/loss", self.task.loss(logits, batch), batch_size=len(logits))

    def predict_step(self, batch: dict, batch_idx: int) -> dict:
        """`radfusion train predict`: each case's raw outputs with its patient and
        target (training/predictions.py turns them into the scorer's columns)."""
        logits = self(batch["image"], batch["genomics"], batch["clinical"], self._presence(batch))
        return {
            "patient_id": list(batch["patient_id"]),
            "logits": logits.detach().float().cpu().numpy(),
            "label": batch["label"].cpu().numpy(),
            "time": batch["time"].cpu().numpy(),
        }

    def on_test_epoch_end(self) -> None:
        for name, value in self.task.compute().items():
            self.log(name.replace("val/", "test/", 1), value)
        self.task.reset()

    def on_validation_epoch_end(self) -> None:
        metrics = self.task.compute()
        for name, value in metrics.items():
            self.log(name, value, prog_bar=name == self.task.monitor)
        self.task.reset()
        # The best checkpoint (mode max, saved after this hook) gets the shift fitted for its weights.
        monitored = float(metrics[self.task.monitor])
        if self._fitting() and self.hparams.checkpoint == "best" and monitored > self._best_monitored:
            self._best_monitored = monitored
            self.refit_output_shift()

    def configure_optimizers(self):
        optimiser = self.optimiser_config
        interaction = list(self.net.treatment_effect.parameters()) if self.net.treatment_effect is not None else []
        linear = list(self.net.linear_path.parameters()) if self.net.linear_path is not None else []
        others = [p for p in self.parameters() if all(p is not q for q in [*interaction, *linear])]
        groups = [{"params": others}]
        # Their penalties (L1, elastic net) are their regularisers, not weight decay.
        if interaction:
            groups.append({"params": interaction, "lr": optimiser.interaction_lr, "weight_decay": 0.0})
        if linear:
            groups.append({"params": linear, "lr": optimiser.linear_lr, "weight_decay": 0.0})
        optimizer = torch.optim.AdamW(groups, lr=optimiser.lr, weight_decay=optimiser.weight_decay)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, self.trainer.max_epochs or 1))
        return {"optimizer": optimizer, "lr_scheduler": scheduler}

    def configure_callbacks(self):
        # Best checkpoint by the task's validation metric (AUROC, or the c-index for
        # survival), or the final weights. last.ckpt (for resuming) is written by the
        # trainer config's radfusion.training.checkpoints.ResumeCheckpoint, every N steps too.
        if self.hparams.checkpoint == "last":
            return [FinalWeights(Path(self.trainer.default_root_dir) / "checkpoints" / "best.ckpt")]
        return [
            ModelCheckpoint(
                dirpath=Path(self.trainer.default_root_dir) / "checkpoints",
                filename="best",
                monitor=self.task.monitor,
                mode="max",
                save_last=False,
                # A rerun into the same folder replaces best.ckpt (what evaluate and
                # export read), never writes best-v1.ckpt beside a stale one.
                enable_version_counter=False,
            )
        ]

    def on_fit_start(self) -> None:
        dm = self.trainer.datamodule
        shape = self.network_config.image_shape
        if shape is not None and tuple(shape) != tuple(dm.geometry.target_shape):
            raise ValueError(
                f"model.network.image_shape {list(shape)} differs from "
                f"data.target_shape {list(dm.geometry.target_shape)}"
            )
        self._check_modalities_have_cases(dm)
        if isinstance(self.task, DiscreteHazardTask):
            train = dm.records["train"]
            self.task.fit_edges(np.array([r["time"] for r in train]), np.array([r["event"] for r in train]))
        self.contract_parts = self.contract_of(dm)

    def contract_of(self, dm) -> dict[str, Any]:
        """The contract parts a checkpoint carries: the data module's panels and policy,
        image geometry, labels and task."""
        return {
            "omics": [dataclasses.asdict(block) for block in dm.omics],
            "clinical": dataclasses.asdict(dm.clinical) if dm.clinical else None,
            "geometry": {
                "target_shape": list(dm.geometry.target_shape),
                "target_spacing": list(dm.geometry.target_spacing),
                "window": list(dm.geometry.window),
                "modalities": list(dm.geometry.modalities),
                "min_slices": dm.geometry.min_slices,
            },
            "labels": dm.labels,
            "target": dm.hparams.target,
            "task": self.task.contract_task(dm.hparams.target),
            "output_labels": self.task.contract_labels(dm.labels),
            "time_bins": self.task.edges.tolist() if isinstance(self.task, DiscreteHazardTask) else [],
            "cohort_hash": dm.cohort_hash,
        }

    def _check_modalities_have_cases(self, dm) -> None:
        """A modality the network uses but no training patient has would be exported
        as trained (an untrained encoder answering at serving time): refused."""
        if getattr(dm, "policy", None):  # agreed across sites: the federation's server checked the coverage
            return
        seen = np.stack([r["presence"] for r in dm.records["train"]]).any(axis=0)
        never = [m for m, s in zip(self.net.modality_names, seen, strict=True) if self.net.uses(m) and not s]
        if never:
            hint = " (the cohort has no dicom/ folder)" if "image" in never and not dm.dicom_root.is_dir() else ""
            raise ValueError(
                f"model.network.modalities uses {never}, which no training patient has{hint}: leave it out "
                "(configs/experiment/genomics_only.yaml, clinical_only.yaml, omics_clinical.yaml)"
            )

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        parts = dict(self.contract_parts)
        metric = self.trainer.callback_metrics.get(self.task.monitor)
        if metric is not None:
            parts[self.task.monitor.replace("/", "_")] = float(metric)
        checkpoint[CONTRACT_KEY] = parts

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.contract_parts = checkpoint.get(CONTRACT_KEY, {})
        # Checkpoints from before these buffers existed: no output shift, and a treatment
        # term measured from the mean (0).
        state = checkpoint["state_dict"]
        state.setdefault("net.output_bias", torch.zeros(self.net.n_outputs))
        weight = state.get("net.treatment_effect.features.weight")
        if weight is not None:
            state.setdefault("net.treatment_effect.reference", weight.new_zeros(weight.shape[1]))


class FinalWeights(Callback):
    """Saves the weights training ended with, in evaluation mode as a best checkpoint
    would be (BatchNorm statistics recomputed, output shift refitted), to ``path``:
    the checkpoint of ``checkpoint="last"``, read wherever a best checkpoint is."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def on_train_end(self, trainer: L.Trainer, pl_module: FusionModule) -> None:
        pl_module.recompute_batchnorm()
        pl_module.refit_output_shift()
        trainer.save_checkpoint(self.path)
