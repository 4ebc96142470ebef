"""DDP really runs: `radfusion train --config configs/trainer/ddp_cpu.yaml` starts two
CPU processes that all-reduce gradients over gloo, and four optimizer steps of the
fusion model end at the same weights as single-process training on the same samples.

What "the same training" means here. The global batch is 2 in both runs. Under a
distributed strategy Lightning always shuffles the training set with a
DistributedSampler seeded by seed_everything: one permutation, of which rank r takes
every other sample from position r. The single-process run is the same config with
``--trainer.devices 1``: one process, the same sampler with one replica, so it walks
the same permutation in order, and its step k sees exactly the two samples the two
ranks see at step k. Batch norm cannot be synchronised on a CPU (SyncBatchNorm needs
a GPU), so each DDP rank normalises over its own sample; the single process does the
same with batch 1 and two accumulated micro-batches, whose mean gradient is what
DDP's all-reduce averages. Dropout, modality dropout and augmentation are off: they
draw from per-process random streams, which differ by design and would make the
comparison loose.

Tolerance. The two runs differ only in how the two per-sample gradients are summed
(gloo all-reduce vs accumulation); a sum of two floats does not depend on order, and
on torch 2.13 the runs were measured to agree exactly. Adam turns a gradient into a
step of at most ~lr, so after 4 steps a parameter has moved up to ~4e-3; the bound
of 1e-5 (0.25% of that) leaves room for a reduction that rounds differently while
any real mismatch (other samples, other batch-norm groups, a skipped all-reduce)
shows up at the 1e-3 scale. The test also asserts the weights did move by far more than
the tolerance, so agreement cannot come from nothing having trained."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.support.paths import PROJECT_ROOT as ROOT

pytestmark = pytest.mark.slow

CONFIGS = ROOT / "configs"
STEPS = 4
TOLERANCE = 1e-5
# Batch-norm running statistics are buffers, not trained weights: DDP keeps rank 0's.
BUFFERS = ("running_mean", "running_var", "num_batches_tracked")
SAME_TRAINING = [
    "--config",
    str(CONFIGS / "data" / "synthetic.yaml"),
    "--config",
    str(CONFIGS / "model" / "fusion_cpu.yaml"),
    "--data.target_shape",
    "[16, 32, 32]",
    "--data.target_spacing",
    "[6.0, 12.0, 12.0]",
    "--data.augment",
    "false",
    "--model.network.image_encoder",
    "resnet",
    "--model.network.image_widths",
    "[4, 4, 8, 8]",
    "--model.network.embed_dim",
    "16",
    "--model.network.dropout",
    "0",
    "--model.network.genomics_dropout",
    "0",
    "--model.modality_dropout",
    "0",
    "--trainer.max_epochs",
    "1",
    "--trainer.max_steps",
    str(STEPS),
    "--trainer.limit_val_batches",
    "0",
    "--trainer.num_sanity_val_steps",
    "0",
]


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    """16 patients: ~10 in the training split, enough for 4 steps of 2 in one epoch."""
    from radfusion.synth import generate_cohort

    out = tmp_path_factory.mktemp("ddp_cohort")
    generate_cohort(out, n_patients=16, seed=7, n_genes=40, n_slices=16, rows=32, cols=32, workers=1)
    return out


def train(trainer_config: str, out: Path, cohort: Path, *extra: str) -> tuple[dict, str]:
    """Run `radfusion train` as a user would; (last.ckpt contents, console output)."""
    command = [
        sys.executable,
        "-m",
        "radfusion.cli",
        # Lightning's INFO lines (the backend, the restored checkpoint) are what is checked.
        "--log-level",
        "debug",
        "train",
        "--config",
        str(CONFIGS / "trainer" / trainer_config),
        *SAME_TRAINING,
        "--data.cohort_dir",
        str(cohort),
        "--trainer.default_root_dir",
        str(out),
        *extra,
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, cwd=out.parent, env=env, capture_output=True, text=True, timeout=300)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-5000:]
    return torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False), output


def weights(state: dict) -> dict[str, torch.Tensor]:
    return {k: v for k, v in state["state_dict"].items() if not k.endswith(BUFFERS)}


def test_two_gloo_ranks_train_like_one_process(cohort, tmp_path):
    ddp, ddp_log = train("ddp_cpu.yaml", tmp_path / "ddp", cohort, "--data.batch_size", "1")
    single, single_log = train(
        "ddp_cpu.yaml",
        tmp_path / "single",
        cohort,
        "--trainer.devices",
        "1",
        "--data.batch_size",
        "1",
        "--trainer.accumulate_grad_batches",
        "2",
    )

    # Two processes joined one gloo process group, against one (Lightning's own report).
    assert "distributed_backend=gloo" in ddp_log and "Starting with 2 processes" in ddp_log
    assert "Starting with 1 processes" in single_log
    assert ddp["global_step"] == single["global_step"] == STEPS
    assert ddp["hyper_parameters"] == single["hyper_parameters"]
    ddp_w, single_w = weights(ddp), weights(single)
    assert ddp_w.keys() == single_w.keys()
    worst = max((ddp_w[k] - single_w[k]).abs().max().item() for k in ddp_w)
    assert worst < TOLERANCE, f"DDP and single-process weights differ by {worst:.2e}"

    # Both moved away from the same seeded initial weights by far more than the tolerance.
    moved = max((single_w[k] - v).abs().max().item() for k, v in initial_weights(single).items())
    assert moved > 100 * TOLERANCE


def initial_weights(state: dict) -> dict[str, torch.Tensor]:
    """The model as seed_everything(0) builds it before any step (what both runs start from)."""
    import lightning as L

    from radfusion.training.module import FusionModule

    L.seed_everything(0)
    hparams = {k: v for k, v in state["hyper_parameters"].items() if not k.startswith("_")}
    return weights({"state_dict": FusionModule(**hparams).state_dict()})
