"""Training at scale, on a CPU: the trainer configs instantiate what they promise
(DDP, torchrun, SLURM with auto-requeue on SIGUSR1), a run killed mid-epoch resumes
from last.ckpt and finishes, loggers are chosen in YAML, gradient accumulation and
the batch-size finder work with the fusion model, and the GPU benchmark script
exits cleanly where no GPU exists. The DDP numerical check is tests/training/test_ddp.py."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.support.paths import PROJECT_ROOT as ROOT

CONFIGS = ROOT / "configs"
SMALL = [
    "--config",
    str(CONFIGS / "data" / "synthetic.yaml"),
    "--config",
    str(CONFIGS / "model" / "fusion_cpu.yaml"),
    "--data.target_shape",
    "[16, 32, 32]",
    "--data.target_spacing",
    "[6.0, 12.0, 12.0]",
    "--data.batch_size",
    "2",
    "--model.network.image_encoder",
    "resnet",
    "--model.network.image_widths",
    "[4, 4, 8, 8]",
    "--model.network.embed_dim",
    "16",
]
# 16 patients, split 0.6/0.2/0.2 per class: 10 train -> 5 steps of 2 per epoch.
TRAIN_PATIENTS = 10
STEPS_PER_EPOCH = 5


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    from radfusion.synth import generate_cohort

    out = tmp_path_factory.mktemp("scale_cohort")
    generate_cohort(out, n_patients=16, seed=7, n_genes=40, n_slices=16, rows=32, cols=32, workers=1)
    return out


def cli(cohort: Path, root: Path, *args: str, trainer: str = "cpu.yaml", run: bool = False):
    """RadfusionCLI in this process, as `radfusion train` builds it."""
    from radfusion.training.cli import main

    args = [
        "--config",
        str(CONFIGS / "trainer" / trainer),
        *SMALL,
        "--data.cohort_dir",
        str(cohort),
        "--trainer.default_root_dir",
        str(root),
        *args,
    ]
    if run:
        return main(["fit", *args])
    from radfusion.training.cli import RadfusionCLI
    from radfusion.training.data import RadfusionDataModule
    from radfusion.training.module import FusionModule

    return RadfusionCLI(FusionModule, RadfusionDataModule, args=args, run=False)


# ------------------------------------------------------------------ configs

ON_CPU = [
    "--trainer.accelerator",
    "cpu",
    "--trainer.precision",
    "32",
    "--trainer.sync_batchnorm",
    "false",
    "--trainer.devices",
    "1",
    "--trainer.num_nodes",
    "1",
]


def test_slurm_config_requeues_on_sigusr1(cohort, tmp_path, monkeypatch):
    from lightning.pytorch.plugins.environments import SLURMEnvironment

    # What srun sets for one task: SLURMEnvironment reads ranks and nodes from it.
    for key, value in {
        "SLURM_NODEID": "0",
        "SLURM_PROCID": "0",
        "SLURM_LOCALID": "0",
        "SLURM_NTASKS": "1",
        "SLURM_NTASKS_PER_NODE": "1",
        "SLURM_JOB_NAME": "radfusion",
        "SLURM_NODELIST": "node1",
        "SLURM_JOB_ID": "42",
    }.items():
        monkeypatch.setenv(key, value)
    trainer = cli(cohort, tmp_path, *ON_CPU, trainer="slurm.yaml").trainer
    environment = trainer._accelerator_connector.cluster_environment
    assert isinstance(environment, SLURMEnvironment)
    assert environment.auto_requeue and environment.requeue_signal == signal.SIGUSR1
    assert trainer.strategy.__class__.__name__ == "DDPStrategy"
    assert trainer.strategy._process_group_backend == "nccl"


def test_torchrun_config_takes_ranks_from_torchrun(cohort, tmp_path, monkeypatch):
    from lightning.fabric.plugins.environments import TorchElasticEnvironment

    for key, value in {
        "TORCHELASTIC_RUN_ID": "radfusion-1",
        "RANK": "0",
        "GROUP_RANK": "0",
        "LOCAL_RANK": "0",
        "LOCAL_WORLD_SIZE": "1",
        "WORLD_SIZE": "1",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": "29500",
    }.items():
        monkeypatch.setenv(key, value)
    trainer = cli(cohort, tmp_path, *ON_CPU, trainer="torchrun.yaml").trainer
    assert isinstance(trainer._accelerator_connector.cluster_environment, TorchElasticEnvironment)
    assert trainer.strategy.__class__.__name__ == "DDPStrategy"


@pytest.mark.parametrize("name", ["gpu.yaml", "ddp.yaml"])
def test_gpu_configs_ask_for_what_they_say(name):
    import yaml

    trainer = yaml.safe_load((CONFIGS / "trainer" / name).read_text())["trainer"]
    assert trainer["accelerator"] == "gpu" and trainer["precision"] == "bf16-mixed"
    if name == "ddp.yaml":
        assert trainer["strategy"]["init_args"]["process_group_backend"] == "nccl" and trainer["sync_batchnorm"]


# ------------------------------------------------------------------ loggers


def test_csv_logger_and_rich_progress_bar_by_default(cohort, tmp_path):
    from lightning.pytorch.callbacks import RichProgressBar
    from lightning.pytorch.loggers import CSVLogger

    torch.use_deterministic_algorithms(False)
    run = cli(cohort, tmp_path)
    assert isinstance(run.trainer.logger, CSVLogger) and Path(run.trainer.logger.save_dir) == tmp_path
    assert any(isinstance(c, RichProgressBar) for c in run.trainer.callbacks)
    # Seeded and deterministic (cpu.yaml): the Trainer switched torch's deterministic mode on.
    assert run.config["seed_everything"] == 0 and torch.are_deterministic_algorithms_enabled()


def test_tensorboard_logger_from_yaml_writes_events(cohort, tmp_path):
    from lightning.pytorch.loggers import TensorBoardLogger

    trainer = cli(cohort, tmp_path, "--config", str(CONFIGS / "trainer" / "logger" / "tensorboard.yaml")).trainer
    assert isinstance(trainer.logger, TensorBoardLogger)
    trainer.logger.log_metrics({"val/auroc": 0.75}, step=3)
    trainer.logger.finalize("success")
    events = list(Path(trainer.logger.log_dir).glob("events.out.tfevents.*"))
    assert events and Path(trainer.logger.log_dir).is_relative_to(tmp_path)


def test_mlflow_logger_from_yaml_writes_to_file_store(cohort, tmp_path):
    pytest.importorskip("mlflow")
    from lightning.pytorch.loggers import MLFlowLogger

    store = tmp_path / "mlruns"
    trainer = cli(
        cohort,
        tmp_path / "run",
        "--config",
        str(CONFIGS / "trainer" / "logger" / "mlflow.yaml"),
        "--trainer.logger.init_args.tracking_uri",
        store.as_uri(),
    ).trainer
    assert isinstance(trainer.logger, MLFlowLogger)
    trainer.logger.log_metrics({"val/auroc": 0.75}, step=3)
    trainer.logger.finalize("success")
    metric = store / trainer.logger.experiment_id / trainer.logger.run_id / "metrics" / "val" / "auroc"
    assert metric.read_text().split()[1:] == ["0.75", "3"]


# ------------------------------------------------------------------ resume


def _lr_steps(log_dir: Path) -> list[int]:
    """Global steps at which LearningRateMonitor logged (every step with log_every_n_steps 1)."""
    with open(log_dir / "metrics.csv") as f:
        return [int(r["step"]) for r in csv.DictReader(f) if r.get("lr-AdamW")]


@pytest.mark.slow
def test_killed_mid_epoch_resumes_from_last_checkpoint(cohort, tmp_path):
    epochs = 8
    total = epochs * STEPS_PER_EPOCH
    root = tmp_path / "run"
    command = [
        sys.executable,
        "-m",
        "radfusion.cli",
        # Lightning's INFO lines (the backend, the restored checkpoint) are what is checked.
        "--log-level",
        "debug",
        "train",
        "--config",
        str(CONFIGS / "trainer" / "cpu.yaml"),
        *SMALL,
        "--data.cohort_dir",
        str(cohort),
        "--trainer.default_root_dir",
        str(root),
        "--trainer.max_epochs",
        str(epochs),
        "--trainer.log_every_n_steps",
        "1",
        "--trainer.callbacks.every_n_train_steps",
        "2",
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    last = root / "checkpoints" / "last.ckpt"

    first = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 240
        while not last.exists():
            assert first.poll() is None, "training ended before writing last.ckpt"
            assert time.monotonic() < deadline, "no last.ckpt within 4 minutes"
            time.sleep(0.02)
        first.send_signal(signal.SIGKILL)
    finally:
        first.kill()
        first.wait(timeout=30)
    assert first.returncode == -signal.SIGKILL

    saved = torch.load(last, map_location="cpu", weights_only=False)
    resumed_from = saved["global_step"]
    in_epoch = saved["loops"]["fit_loop"]["epoch_loop.batch_progress"]["current"]["completed"]
    assert 0 < resumed_from < total
    assert 0 < in_epoch < STEPS_PER_EPOCH, "the kill should land mid-epoch"

    second = subprocess.run(
        [*command, "--ckpt_path", "last"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )
    assert second.returncode == 0, (second.stdout + second.stderr)[-4000:]
    assert f"Restored all states from the checkpoint at {last}" in second.stdout + second.stderr

    # The second run stepped from the checkpoint's step to the end, not from 0.
    logs = sorted((root / "logs").glob("version_*"), key=lambda p: int(p.name.split("_")[1]))
    steps = _lr_steps(logs[-1])
    assert steps[0] == resumed_from and steps[-1] == total - 1
    assert len(steps) == total - resumed_from

    final = torch.load(last, map_location="cpu", weights_only=False)
    assert final["global_step"] == total and final["epoch"] == epochs - 1
    # Every remaining epoch was validated, and the final metrics were logged.
    with open(logs[-1] / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get("val/auroc")]
    assert [int(r["epoch"]) for r in rows] == list(range(saved["epoch"], epochs))
    assert 0.0 <= float(rows[-1]["val/auroc"]) <= 1.0 and float(rows[-1]["val/loss"]) > 0
    assert (root / "checkpoints" / "best.ckpt").exists()


# ------------------------------------------------------------------ accumulation, batch-size finder


@pytest.mark.slow
def test_gradient_accumulation_steps_once_per_n_batches(cohort, tmp_path):
    run = cli(cohort, tmp_path, "--trainer.max_epochs", "2", "--trainer.accumulate_grad_batches", "2", run=True)
    # 5 batches per epoch: steps after batches 2, 4 and the epoch's last (Lightning
    # steps at epoch end with what it has) -> 3 per epoch.
    assert run.trainer.global_step == 2 * 3
    state = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert int(state["optimizer_states"][0]["state"][0]["step"]) == 6


@pytest.mark.slow
def test_batch_size_finder_tunes_the_datamodule(cohort, tmp_path):
    run = cli(cohort, tmp_path, "--tune_batch_size", "true", "--trainer.max_epochs", "1", run=True)
    # On a CPU nothing runs out of memory: power scaling doubles 2 -> 4 -> 8 -> 16 and
    # stops at the first size that covers the training set (Lightning keeps that one).
    assert len(run.datamodule.datasets["train"]) == TRAIN_PATIENTS
    assert run.datamodule.batch_size == 16
    assert run.trainer.global_step == 1  # the whole training set in one batch
    state = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert state["datamodule_hyper_parameters"]["batch_size"] == 16
    assert not list(tmp_path.glob(".scale_batch_size_*.ckpt"))  # the finder's temporary state is gone


# ------------------------------------------------------------------ evaluation mode


def _saved_buffers(checkpoint: Path) -> tuple[set[int], torch.Tensor]:
    """The BatchNorm layers' batch counts and the output shift, as saved."""
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)["state_dict"]
    return {int(v) for k, v in state.items() if k.endswith("num_batches_tracked")}, state["net.output_bias"]


@pytest.mark.slow
def test_checkpoint_holds_the_evaluation_mode_fitted_under_the_final_weights(cohort, tmp_path):
    # The ResNet encoder's BatchNorm layers: 5 training steps would leave a moving
    # average over 5 batches; recomputed before validation, over the 3 batches asked for.
    cli(cohort, tmp_path / "aligned", "--trainer.max_epochs", "1", "--model.evaluation_batches", "3", run=True)
    counts, shift = _saved_buffers(tmp_path / "aligned" / "checkpoints" / "best.ckpt")
    assert counts == {3} and shift.abs().sum() > 0
    cli(cohort, tmp_path / "moving", "--trainer.max_epochs", "1", "--model.evaluation_batches", "0", run=True)
    counts, shift = _saved_buffers(tmp_path / "moving" / "checkpoints" / "best.ckpt")
    assert counts == {STEPS_PER_EPOCH} and shift.abs().sum() == 0


# ------------------------------------------------------------------ GPU script


def test_gpu_script_exits_cleanly_without_a_gpu(tmp_path):
    # A PATH without nvidia-smi: this script's view of a machine with no NVIDIA driver.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("bash", "date", "mkdir", "cat", "dirname", "python3", "uname", "hostname"):
        if found := shutil.which(tool):
            (bin_dir / tool).symlink_to(found)
    out = tmp_path / "out"
    result = subprocess.run(
        ["bash", str(ROOT / "bench" / "gpu_train.sh"), str(out)],
        env={"PATH": str(bin_dir)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "no NVIDIA GPU" in result.stdout
    report = json.loads((out / "gpu_train.json").read_text())
    assert report["skipped"] and report["samples_per_s"] == {}
