"""`radfusion train`: LightningCLI over FusionModule and RadfusionDataModule.

The model is sized from the data (gene count, classes) by argument links, so a
config never repeats what the data already says."""

from __future__ import annotations

from lightning.pytorch.cli import LightningCLI

from training.data import RadfusionDataModule
from training.module import FusionModule


class RadfusionCLI(LightningCLI):
    def add_arguments_to_parser(self, parser) -> None:
        parser.link_arguments("data.n_genes", "model.n_genes", apply_on="instantiate")
        parser.link_arguments("data.n_classes", "model.n_classes", apply_on="instantiate")


def main(args: list[str] | None = None) -> RadfusionCLI:
    return RadfusionCLI(
        FusionModule,
        RadfusionDataModule,
        args=args,
        save_config_kwargs={"overwrite": True},
        seed_everything_default=0,
    )


if __name__ == "__main__":
    main()
