"""Checkpoints: load a trained one together with the data module it was trained on
and turn its stored contract pieces into a ModelContract; and ResumeCheckpoint, the
callback that keeps last.ckpt fresh enough to resume a killed or pre-empted run."""

from __future__ import annotations

import datetime as dt
import hashlib
import inspect
from importlib import metadata
from pathlib import Path

import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from radfusion.contract import ClinicalSpec, ImageGeometry, ModelContract, OmicsBlock
from radfusion.errors import UserError
from radfusion.training.data import RadfusionDataModule
from radfusion.training.module import CONTRACT_KEY, FusionModule, migrate_hparams


def load_module(checkpoint: Path | str) -> FusionModule:
    """The trained module in evaluation mode, from a checkpoint of any radfusion
    version: flat 0.1 hyper-parameters are migrated into today's configs first."""
    state = torch.load(str(checkpoint), map_location="cpu", weights_only=False)
    # Built here rather than by Lightning's loader, whose instantiator (LightningCLI's
    # "_instantiator") would re-parse the hyper-parameters and reject an old shape.
    hparams = {k: v for k, v in migrate_hparams(state["hyper_parameters"]).items() if not k.startswith("_")}
    module = FusionModule(**hparams)
    module.on_load_checkpoint(state)
    module.load_state_dict(state["state_dict"])
    module.eval()
    return module


def load_datamodule(checkpoint: Path | str, cohort_dir: Path | str | None = None) -> RadfusionDataModule:
    """The data module exactly as configured for training (same split, same panel).
    ``cohort_dir``: where the training cohort lies now, when it has moved since."""
    state = torch.load(str(checkpoint), map_location="cpu", weights_only=False)
    # LightningCLI adds private keys (e.g. "_instantiator") beside the real arguments.
    hparams = {k: v for k, v in state["datamodule_hyper_parameters"].items() if not k.startswith("_")}
    # Arguments that older versions had and this one dropped are not passed on.
    accepted = inspect.signature(RadfusionDataModule.__init__).parameters
    hparams = {k: v for k, v in hparams.items() if k in accepted}
    hparams["augment"] = False
    if cohort_dir is not None:
        hparams["cohort_dir"] = str(cohort_dir)
    elif hparams.get("cohort_dir") == "":
        raise UserError(
            "the checkpoint was trained on no one cohort (a federated model)",
            "give the cohort to calibrate and check it on: --cohort <a site's cohort folder>",
        )
    dm = RadfusionDataModule(**hparams)
    parts = state.get(CONTRACT_KEY) or {}
    if "omics" in parts:
        clinical = parts.get("clinical")
        dm.adopt_policy(
            [OmicsBlock.from_dict(block) for block in parts["omics"]], ClinicalSpec(**clinical) if clinical else None
        )
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
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%d%H%M%S")
    modalities = list(module.network_config.modalities)
    trained_groups = [
        "image" in modalities,
        any(module.net.uses(b) for b in module.net.omics_sizes),
        module.net.uses("clinical"),
    ]
    # Checkpoints from before the task switch carry neither: classification.
    task = parts.get("task", f"classification:{parts['target']}")
    labels = list(parts.get("output_labels", parts["labels"]))
    return ModelContract(
        name=module.model_name,
        version=f"{stamp}-{digest}",
        task=task,
        labels=labels,
        positive_label=labels[-1] if len(labels) == 2 and task.startswith("classification") else None,
        time_bins=list(parts.get("time_bins", [])),
        image=ImageGeometry(
            spatial_dims=module.network_config.spatial_dims,
            target_shape=tuple(parts["geometry"]["target_shape"]),
            target_spacing=tuple(parts["geometry"]["target_spacing"]),
            window=tuple(parts["geometry"]["window"]),
            modalities=tuple(parts["geometry"]["modalities"]),
            min_slices=parts["geometry"]["min_slices"],
        ),
        omics=[OmicsBlock.from_dict(block) for block in parts["omics"]],
        clinical=ClinicalSpec(**parts["clinical"]) if parts.get("clinical") else None,
        trained_modalities=modalities,
        # A model that uses more than one modality group was trained with modality
        # dropout, so any of them may be missing; a unimodal one needs its own.
        may_be_missing=modalities if sum(trained_groups) > 1 else [],
        cohort_hash=parts["cohort_hash"],
        metrics={k: parts[k] for k in ("val_auroc", "val_cindex") if k in parts},
        provenance=dict(parts.get("provenance", {})),
        versions={p: _version_of(p) for p in ("radfusion", "torch", "monai", "lightning", "onnx", "onnxruntime")},
    )


class ResumeCheckpoint(ModelCheckpoint):
    """Writes ``last.ckpt`` (full trainer state) every ``every_n_train_steps`` optimizer
    steps, after each validation and when training ends, so a killed or pre-empted run
    loses at most N steps: ``radfusion train ... --ckpt_path last`` continues it.

    ``dirpath`` defaults to ``<trainer.default_root_dir>/checkpoints``, beside the best
    checkpoint, and is known before ``fit`` starts because ``ckpt_path="last"`` is
    resolved then. A subclass, so the module's best-metric ModelCheckpoint
    (``configure_callbacks``) does not replace it: Lightning drops trainer callbacks of
    a type the module also returns."""

    def __init__(self, every_n_train_steps: int = 50, dirpath: str | None = None):
        super().__init__(
            dirpath=dirpath,
            save_top_k=0,
            save_last=True,
            every_n_train_steps=every_n_train_steps,
            # One file, always called last.ckpt: never last-v1.ckpt beside a stale one.
            enable_version_counter=False,
        )

    def _default_dir(self, trainer) -> None:
        if self.dirpath is None:
            self.dirpath = str(Path(trainer.default_root_dir) / "checkpoints")

    def setup(self, trainer, pl_module, stage: str) -> None:
        self._default_dir(trainer)
        super().setup(trainer, pl_module, stage)

    def _find_last_checkpoints(self, trainer) -> set[str]:
        self._default_dir(trainer)
        return super()._find_last_checkpoints(trainer)

    def on_validation_end(self, trainer, pl_module) -> None:
        super().on_validation_end(trainer, pl_module)
        self._save_last_now(trainer)

    def on_train_end(self, trainer, pl_module) -> None:
        # Lightning's own on_train_end skips the final state once any step save
        # happened; the end of training must always be resumable (and evaluable).
        self._save_last_now(trainer)

    def _save_last_now(self, trainer) -> None:
        if not self._should_skip_saving_checkpoint(trainer):  # skips if saved at this step
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
