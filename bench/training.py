"""Training benchmark: the fusion model's training throughput with the tuned data path
versus a naive one, in one run, on one synthetic cohort, with one model.

    python -m bench.training [--patients 60] [--epochs 3] [--workers 1]

- naive: every step reads and decodes the DICOM series and resamples it
  (``cache="none"``, no worker processes): the loop a first version would write;
- cached: the preprocessed volumes are held in memory (MONAI CacheDataset, filled
  once before training), no workers;
- tuned: cached, plus ``--workers`` DataLoader worker processes (persistent) that run
  the random augmentation and batching while the model trains, and page-locked
  memory where a GPU exists.
All three train the same FusionModule (configs/model/fusion_cpu.yaml widths) on the
same training split with the demo's image grid, through Lightning.

Reported (bench/results/training.json): samples/s of each, ``train_speedup`` =
tuned / naive, and ``data_wait_fraction``: in the tuned run, the share of wall time
between one training step's end (on_train_batch_end) and the next one's start
(on_train_batch_start), i.e. time the model waited for data (target <= 0.10). The
first epoch is warm-up (worker start, allocator) and not counted.

channels-last and torch.compile are not used: channels_last_3d has no fast path for
these small 3D convolutions on CPU, and compiling a 3D DenseNet on 2 cores costs
minutes, more than the runs it would speed up. bench/gpu_train.sh measures the
GPU side (fp32 vs bf16-mixed) with ``--gpu``."""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import lightning as L

from bench.cohorts import build_cohort

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "training.json"
DEMO_GEOMETRY = dict(target_shape=(32, 48, 48), target_spacing=(5.0, 8.0, 8.0), window=(-150.0, 250.0))
CPU_NET = dict(image_encoder="densenet", image_widths=(16, 8), embed_dim=64, genomics_hidden=16)
GPU_NET = dict(image_encoder="densenet", image_widths=(64, 32), embed_dim=128, genomics_hidden=256)


class StepTimer(L.Callback):
    """Wall time of training steps and of the gaps between them (data waiting).

    Gaps are counted within an epoch only (from the second batch on): the time
    between epochs is validation and epoch-end hooks, not data loading."""

    def __init__(self, skip_epochs: int = 1):
        self.skip_epochs = skip_epochs
        self.samples = 0
        self.step_s = 0.0
        self.wait_s = 0.0
        self._start = self._end = 0.0

    def _counted(self, trainer) -> bool:
        return trainer.current_epoch >= self.skip_epochs

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.strategy.root_device.type == "cuda":
            import torch

            torch.cuda.synchronize()
        now = time.perf_counter()
        if self._counted(trainer) and batch_idx > 0:
            self.wait_s += now - self._end
        self._start = now

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.strategy.root_device.type == "cuda":
            import torch

            torch.cuda.synchronize()
        self._end = time.perf_counter()
        if self._counted(trainer):
            self.step_s += self._end - self._start
            self.samples += len(batch["label"])

    def report(self) -> dict:
        total = self.step_s + self.wait_s
        return {
            "samples": self.samples,
            "samples_per_s": self.samples / total,
            "data_wait_fraction": self.wait_s / total,
        }


def train_once(
    cohort: Path,
    *,
    cache: str,
    workers: int,
    epochs: int,
    batch_size: int,
    net: dict,
    accelerator: str = "cpu",
    precision: str = "32-true",
) -> dict:
    """One Lightning fit of the fusion model (no validation, no checkpoints); the timer's report."""
    from radfusion.training.data import RadfusionDataModule
    from radfusion.training.module import FusionModule

    L.seed_everything(0, verbose=False)
    dm = RadfusionDataModule(str(cohort), batch_size=batch_size, num_workers=workers, cache=cache, **DEMO_GEOMETRY)
    model = FusionModule(omics_sizes=dm.omics_sizes, n_clinical=dm.n_clinical, n_classes=dm.n_classes, network=net)
    timer = StepTimer()
    trainer = L.Trainer(
        accelerator=accelerator,
        devices=1,
        precision=precision,
        max_epochs=epochs,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[timer],
        default_root_dir=str(cohort.parent / "bench-train-runs"),
    )
    started = time.perf_counter()
    trainer.fit(model, datamodule=dm)
    return {**timer.report(), "fit_s_including_setup": time.perf_counter() - started}


def run_cpu(args) -> dict:
    cohort = build_cohort(Path(args.work), args.patients, args.slices, args.size)
    common = dict(epochs=args.epochs, batch_size=args.batch_size, net=CPU_NET)
    runs = {
        "naive": train_once(cohort, cache="none", workers=0, **common),
        "cached": train_once(cohort, cache="memory", workers=0, **common),
        "tuned": train_once(cohort, cache="memory", workers=args.workers, **common),
    }
    for name, run in runs.items():
        print(f"{name:>7}: {run['samples_per_s']:7.2f} samples/s, data wait {run['data_wait_fraction']:.3f}")
    return {
        "train_speedup": runs["tuned"]["samples_per_s"] / runs["naive"]["samples_per_s"],
        "cache_speedup": runs["cached"]["samples_per_s"] / runs["naive"]["samples_per_s"],
        "data_wait_fraction": runs["tuned"]["data_wait_fraction"],
        "data_wait_fraction_naive": runs["naive"]["data_wait_fraction"],
        "samples_per_s": {name: run["samples_per_s"] for name, run in runs.items()},
        "runs": runs,
        "setup": {
            "patients": args.patients,
            "slices": args.slices,
            "size": args.size,
            "epochs": args.epochs,
            "measured_epochs": args.epochs - 1,
            "batch_size": args.batch_size,
            "workers": args.workers,
            "geometry": DEMO_GEOMETRY,
            "net": CPU_NET,
            "cpus": os.cpu_count(),
            "machine": platform.machine(),
        },
    }


def run_gpu(args) -> dict:
    """fp32 vs bf16-mixed on one GPU, tuned data path, GPU widths (configs/model/fusion_gpu.yaml)."""
    import torch

    cohort = build_cohort(Path(args.work), args.patients, args.slices, args.size)
    common = dict(
        cache="memory",
        workers=args.workers,
        epochs=args.epochs,
        batch_size=args.batch_size,
        net=GPU_NET,
        accelerator="gpu",
    )
    runs = {p: train_once(cohort, precision=p, **common) for p in ("32-true", "bf16-mixed")}
    for name, run in runs.items():
        print(f"{name:>10}: {run['samples_per_s']:8.1f} samples/s, data wait {run['data_wait_fraction']:.3f}")
    return {
        "bf16_speedup": runs["bf16-mixed"]["samples_per_s"] / runs["32-true"]["samples_per_s"],
        "samples_per_s": {name: run["samples_per_s"] for name, run in runs.items()},
        "runs": runs,
        "gpu": torch.cuda.get_device_name(0),
        "setup": {
            "patients": args.patients,
            "epochs": args.epochs,
            "batch_size": args.batch_size,
            "workers": args.workers,
            "geometry": DEMO_GEOMETRY,
            "net": GPU_NET,
        },
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=60, help="cohort size (60%% train)")
    parser.add_argument("--slices", type=int, default=32)
    parser.add_argument("--size", type=int, default=64, help="rows and columns of each slice")
    parser.add_argument("--epochs", type=int, default=3, help="the first is warm-up")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--workers", type=int, default=1, help="DataLoader workers of the tuned path")
    parser.add_argument("--work", default=str(ROOT / "runs" / "bench"))
    parser.add_argument("--gpu", action="store_true", help="fp32 vs bf16-mixed on a GPU instead")
    parser.add_argument("--out", default=None, help="result file (default: bench/results/training.json)")
    args = parser.parse_args(argv)

    result = run_gpu(args) if args.gpu else run_cpu(args)
    out = Path(args.out) if args.out else RESULTS
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if not isinstance(v, dict)}, indent=2))
    return result


if __name__ == "__main__":
    main()
