"""Train a model the way `radfusion train` does, on a tiny cohort and grid, in process
(shared by the pipeline and evaluation tests)."""

from __future__ import annotations

from pathlib import Path

from tests.support.paths import CONFIGS

TINY_GRID = [
    "--data.target_shape",
    "[8, 16, 16]",
    "--data.target_spacing",
    "[6.0, 12.0, 12.0]",
    "--model.network.image_encoder",
    "resnet",
    "--model.network.image_widths",
    "[4, 4, 8, 8]",
    "--model.network.embed_dim",
    "16",
    "--trainer.max_epochs",
    "2",
]


def train_tiny(cohort: Path, out: Path, *extra: str, batch_size: int = 4) -> Path:
    """Fit with the CPU trainer, synthetic data and fusion model configs plus ``extra``;
    returns the best checkpoint."""
    from radfusion.training.cli import main

    configs = [
        CONFIGS / "trainer" / "cpu.yaml",
        CONFIGS / "data" / "synthetic.yaml",
        CONFIGS / "model" / "fusion_cpu.yaml",
    ]
    args = ["fit", *[a for c in configs for a in ("--config", str(c))], *extra]
    main(
        [
            *args,
            "--data.cohort_dir",
            str(cohort),
            "--trainer.default_root_dir",
            str(out),
            "--data.batch_size",
            str(batch_size),
            *TINY_GRID,
        ]
    )
    return out / "checkpoints" / "best.ckpt"
