"""Run every (repeat, fold) and write what `radfusion cv` leaves in ``out``:

- ``cv.json``: per model the per-fold metric, mean with its 95% interval, the pooled
  metric, seconds (fit + predict, summed over folds), and each baseline's paired
  difference from radfusion; ``deep_vs_best_classical`` and ``cv_seconds_ratio``;
- ``cv.md``: the same as a table;
- ``predictions.csv``: the out-of-fold predictions of every model, with repeat and fold;
- ``r<repeat>-f<fold>/``: each fold's training run (checkpoints, logs).

Folds run in ``workers`` processes (spawned: a fresh interpreter, no forked torch
state), each with an equal share of the CPU cores for torch, and where GPUs exist,
one GPU per process in turn (CUDA_VISIBLE_DEVICES). One worker runs in this process."""

from __future__ import annotations

import json
import math
import multiprocessing
import os
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from radfusion.training.cv.fold import FoldJob, run_fold
from radfusion.training.cv.table import build_results, markdown


@dataclass(frozen=True)
class CVOptions:
    folds: int = 5
    repeats: int = 1
    workers: int = 1
    # None: the task's default baselines; (): none.
    baselines: tuple[str, ...] | None = None
    out: str = "runs/cv"


def _jobs(cli_args: Sequence[str], options: CVOptions, threads: int) -> list[FoldJob]:
    out = Path(options.out)
    return [
        FoldJob(
            cli_args=tuple(cli_args),
            folds=options.folds,
            repeat=repeat,
            fold=fold,
            run_dir=str(out / f"r{repeat}-f{fold}"),
            baselines=options.baselines,
            threads=threads,
            log_to_file=options.workers > 1,
        )
        for repeat in range(options.repeats)
        for fold in range(options.folds)
    ]


def _init_worker(gpus: list[str], counter) -> None:
    """Pin this worker to one GPU (round robin) before torch sees any."""
    if gpus:
        with counter.get_lock():
            index = counter.value
            counter.value += 1
        os.environ["CUDA_VISIBLE_DEVICES"] = gpus[index % len(gpus)]


def _visible_gpus() -> list[str]:
    import torch

    if not torch.cuda.is_available():
        return []
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    return listed.split(",") if listed else [str(i) for i in range(torch.cuda.device_count())]


def run_folds(jobs: list[FoldJob], workers: int) -> list[dict]:
    if workers <= 1:
        return [run_fold(job) for job in jobs]
    context = multiprocessing.get_context("spawn")
    counter = context.Value("i", 0)
    with ProcessPoolExecutor(
        workers, mp_context=context, initializer=_init_worker, initargs=(_visible_gpus(), counter)
    ) as pool:
        return list(pool.map(run_fold, jobs))


def run_cv(cli_args: Sequence[str], options: CVOptions) -> dict:
    """Cross-validate the configuration ``cli_args`` (LightningCLI arguments as for
    `radfusion train`, without ``fit``) and the baselines; returns cv.json's content."""
    if options.folds < 2:
        raise ValueError(f"cross-validation needs at least 2 folds, not {options.folds}")
    if options.repeats < 1 or options.workers < 1:
        raise ValueError("repeats and workers must be at least 1")
    workers = min(options.workers, options.folds * options.repeats)
    threads = max(1, (os.cpu_count() or 1) // workers) if workers > 1 else 0
    results = run_folds(_jobs(cli_args, options, threads), workers)
    summary = build_results(results, options.folds, options.repeats, cli_args)
    out = Path(options.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "cv.json").write_text(json.dumps(json_safe(summary), indent=2))
    (out / "cv.md").write_text(markdown(summary))
    pd.DataFrame([row for r in results for row in r["predictions"]]).to_csv(out / "predictions.csv", index=False)
    return summary


def json_safe(value):
    """NaN/inf (an undefined fold metric) as null: cv.json stays standard JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value
