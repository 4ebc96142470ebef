"""`radfusion train`: LightningCLI over FusionModule and RadfusionDataModule.

The model is sized from the data (gene count, classes) by argument links, so a
config never repeats what the data already says.

Training mechanics live in configs/trainer/*.yaml (devices, strategy, precision,
loggers, callbacks); what the YAML cannot say is done here: the logger writes under
``trainer.default_root_dir`` (beside the checkpoints, so one run is one folder), and
``--tune_batch_size true`` runs Lightning's batch-size finder on the data module
before fitting."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from jsonargparse import Namespace
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.tuner import Tuner

from radfusion.errors import UserError, checkpoint_problem
from radfusion.training import curves
from radfusion.training.checkpoints import ResumeCheckpoint
from radfusion.training.data import RadfusionDataModule
from radfusion.training.module import FinalWeights, FusionModule

# --ckpt_path values Lightning resolves itself rather than reading a file.
CKPT_PATH_NAMES = ("best", "last", "hpc", "registry")

log = logging.getLogger(__name__)


class RadfusionCLI(LightningCLI):
    def add_arguments_to_parser(self, parser) -> None:
        parser.link_arguments("data.omics_sizes", "model.omics_sizes", apply_on="instantiate")
        parser.link_arguments("data.n_clinical", "model.n_clinical", apply_on="instantiate")
        parser.link_arguments("data.n_classes", "model.n_classes", apply_on="instantiate")
        parser.add_argument(
            "--tune_batch_size",
            type=bool,
            default=False,
            help="before fitting, double data.batch_size until memory runs out or it covers the training set",
        )

        # Logs go beside the checkpoints: one run, one folder.
        parser.link_arguments("trainer.default_root_dir", "trainer.logger.init_args.save_dir", apply_on="parse")

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        check_paths(config, self.subcommand)
        logger = config.trainer.logger
        if isinstance(logger, Namespace) and logger.class_path.endswith("MLFlowLogger"):
            uri = logger.init_args.tracking_uri or "file:"
            if uri.startswith("file:"):
                # No tracking server: MLflow's file store (under the run folder unless a
                # file: URI says where), which MLflow 3 only opens when asked explicitly.
                os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")

    def before_fit(self) -> None:
        ckpt_path = self.config_init[self.subcommand].get("ckpt_path")
        if ckpt_path:
            # Lightning says so at INFO, which the command keeps quiet for libraries: say it here.
            log.info("resuming from checkpoint %s", ckpt_path)
        if self.config_init[self.subcommand].get("tune_batch_size"):
            # Power mode: 2, 4, 8, ... keeping the largest that fits (on a CPU, the
            # training set size caps it). Weights are restored after the trials.
            Tuner(self.trainer).scale_batch_size(self.model, datamodule=self.datamodule, mode="power")

    def after_fit(self) -> None:
        # The one line on stdout a script reads (logs and progress go elsewhere).
        path = best_checkpoint(self.trainer)
        if path is not None and self.trainer.is_global_zero:
            print(f"best checkpoint: {path}", flush=True)
        if self.trainer.is_global_zero:
            write_training_curves(self.trainer)

    def after_predict(self) -> None:
        # Each process writes the patients it predicted; the path is the line on stdout.
        from radfusion.training.predictions import write_predictions

        trainer = self.trainer
        path = write_predictions(
            self.model,
            trainer.predict_loop.predictions,
            trainer.ckpt_path,
            Path(trainer.default_root_dir),
            trainer.global_rank,
            trainer.world_size,
        )
        print(f"predictions: {path}", flush=True)


def check_paths(config: Namespace, subcommand: str | None) -> None:
    """The cohort and the checkpoint the command names, before anything is built: a
    UserError (one line from `radfusion train`) instead of a traceback minutes later."""
    data = config.get("data")
    manifest = data.get("manifest") if data is not None else None
    cohort_dir = data.get("cohort_dir") if data is not None else None
    if manifest:
        if not Path(manifest).is_dir():
            raise UserError(
                f"data.manifest {manifest} is not a folder", "give the --out folder of radfusion cohort build"
            )
    elif cohort_dir is not None and not (cohort_dir == "" and data.get("policy")):  # "": shapes a model only
        cohort = Path(cohort_dir)
        if not cohort.is_dir():
            raise UserError(
                f"data.cohort_dir {cohort} {'is not a folder' if cohort.exists() else 'does not exist'}",
                "give the folder radfusion synth wrote (--data.cohort_dir), "
                "or a radfusion cohort build output (--data.manifest)",
            )
        clinical = cohort / data.get("clinical_file", "clinical.csv")
        if not clinical.is_file():
            raise UserError(
                f"data.cohort_dir {cohort} has no clinical table {clinical.name} (it holds the outcomes)",
                "give the folder radfusion synth wrote, or set --data.clinical_file",
            )
    if subcommand is None:
        return
    ckpt_path = config.get("ckpt_path")
    if ckpt_path is None and subcommand != "fit":
        raise UserError(
            f"no --ckpt_path: {subcommand} would run an untrained model",
            "give --ckpt_path <run>/checkpoints/best.ckpt",
        )
    if ckpt_path is not None and ckpt_path not in CKPT_PATH_NAMES and (problem := checkpoint_problem(ckpt_path)):
        raise UserError(
            f"--ckpt_path {ckpt_path}: {problem}",
            "give a checkpoint radfusion train wrote (<run>/checkpoints/best.ckpt or last.ckpt), "
            "or --ckpt_path last to resume the run in --trainer.default_root_dir",
        )


def write_training_curves(trainer) -> Path | None:
    """training_curves.png in the run folder (trainer.default_root_dir) from the CSV
    logger's metrics, every version of the run stitched (training/curves.py). Never
    fails the fit: no metrics, or a figure that cannot be drawn, is a warning."""
    logs = next((Path(lg.log_dir).parent for lg in trainer.loggers if isinstance(lg, CSVLogger)), None)
    if logs is None:
        log.warning("no training curves: the run has no CSV logger (trainer.logger) to draw them from")
        return None
    try:
        return curves.write_curves(Path(trainer.default_root_dir), logs)
    except Exception as exc:  # noqa: BLE001 - the model is trained and saved: a figure must not fail the fit
        log.warning("no training curves: %s: %s", type(exc).__name__, exc)
        return None


def best_checkpoint(trainer) -> Path | None:
    """The checkpoint fit chose (checkpoints/best.ckpt: the best validation metric's, or
    the final weights with model.checkpoint last); None when there is none."""
    for callback in trainer.callbacks:
        if isinstance(callback, FinalWeights) and callback.path.is_file():
            return callback.path
        chooses = isinstance(callback, ModelCheckpoint) and not isinstance(callback, ResumeCheckpoint)
        if chooses and callback.best_model_path and Path(callback.best_model_path).is_file():
            return Path(callback.best_model_path)
    return None


def main(args: list[str] | None = None, run: bool = True, prog: str | None = None) -> RadfusionCLI:
    """``run=False``: build the trainer, model and data module without running a
    subcommand (cross-validation fits each fold itself). ``prog``: the command named in
    usage and help (`radfusion train`)."""
    return RadfusionCLI(
        FusionModule,
        RadfusionDataModule,
        args=args,
        run=run,
        save_config_kwargs={"overwrite": True},
        seed_everything_default=0,
        parser_kwargs={"prog": prog} if prog else None,
    )


if __name__ == "__main__":
    main()
