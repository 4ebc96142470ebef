"""`radfusion train`: LightningCLI over FusionModule and RadfusionDataModule.

The model is sized from the data (gene count, classes) by argument links, so a
config never repeats what the data already says.

Training mechanics live in configs/trainer/*.yaml (devices, strategy, precision,
loggers, callbacks); what the YAML cannot say is done here: the logger writes under
``trainer.default_root_dir`` (beside the checkpoints, so one run is one folder), and
``--tune_batch_size true`` runs Lightning's batch-size finder on the data module
before fitting."""

from __future__ import annotations

import os

from jsonargparse import Namespace
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.tuner import Tuner

from radfusion.training.data import RadfusionDataModule
from radfusion.training.module import FusionModule


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
        logger = config.trainer.logger
        if isinstance(logger, Namespace) and logger.class_path.endswith("MLFlowLogger"):
            uri = logger.init_args.tracking_uri or "file:"
            if uri.startswith("file:"):
                # No tracking server: MLflow's file store (under the run folder unless a
                # file: URI says where), which MLflow 3 only opens when asked explicitly.
                os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")

    def before_fit(self) -> None:
        if self.config_init[self.subcommand].get("tune_batch_size"):
            # Power mode: 2, 4, 8, ... keeping the largest that fits (on a CPU, the
            # training set size caps it). Weights are restored after the trials.
            Tuner(self.trainer).scale_batch_size(self.model, datamodule=self.datamodule, mode="power")


def main(args: list[str] | None = None, run: bool = True) -> RadfusionCLI:
    """``run=False``: build the trainer, model and data module without running a
    subcommand (cross-validation fits each fold itself)."""
    return RadfusionCLI(
        FusionModule,
        RadfusionDataModule,
        args=args,
        run=run,
        save_config_kwargs={"overwrite": True},
        seed_everything_default=0,
    )


if __name__ == "__main__":
    main()
