"""One (repeat, fold) of cross-validation, in whichever process runs it.

The configured network is built by LightningCLI exactly as `radfusion train` builds it,
plus the fold's data arguments (``data.folds``/``fold``/``repeat``): the data module
holds out fold ``fold`` as its test part and splits an inner validation part off the
rest, on which the best checkpoint is chosen. That checkpoint predicts the held-out
fold. The baselines are then fitted on the same outer training part (training and
validation patients: they choose their penalties by their own inner CV) with the same
feature arrays, and predict the same held-out patients."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from radfusion.training.cv.arrays import outcome_of, table_inputs
from radfusion.training.cv.baselines import default_baselines, make_baseline
from radfusion.training.cv.metrics import fold_metric

DEEP = "radfusion"


@dataclass(frozen=True)
class FoldJob:
    """What one worker needs: the LightningCLI arguments (configs and overrides, as
    for `radfusion train` without ``fit``), the fold, where its run folder goes, the
    baselines (None: the task's defaults; empty: none), torch threads (0: as is) and
    whether the worker's output goes to ``<run_dir>/train.log``."""

    cli_args: tuple[str, ...]
    folds: int
    repeat: int
    fold: int
    run_dir: str
    baselines: tuple[str, ...] | None = None
    threads: int = 0
    log_to_file: bool = False

    def arguments(self) -> list[str]:
        return [
            *self.cli_args,
            "--data.folds",
            str(self.folds),
            "--data.fold",
            str(self.fold),
            "--data.repeat",
            str(self.repeat),
            "--trainer.default_root_dir",
            self.run_dir,
        ]


def build_cli(args: list[str]):
    """LightningCLI objects (trainer, model, data module) as `radfusion train` builds them,
    without running a subcommand."""
    from radfusion.training.cli import main

    return main(args, run=False)


@contextlib.contextmanager
def _output_to(path: Path | None) -> Iterator[None]:
    """stdout and stderr (progress bars, Lightning's log) of a worker into its fold's log."""
    if path is None:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    saved = [os.dup(1), os.dup(2)]
    with path.open("ab") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)


def run_fold(job: FoldJob) -> dict:
    """Fit and score every model on one fold. Returns plain data (it crosses processes):
    per model its metric and seconds (fit + predict), and the out-of-fold predictions."""
    if job.threads:
        torch.set_num_threads(job.threads)
    log = Path(job.run_dir) / "train.log" if job.log_to_file else None
    with _output_to(log):
        return _run_fold(job)


def _run_fold(job: FoldJob) -> dict:
    from radfusion.training.checkpoints import load_module
    from radfusion.training.evaluate import pattern_metrics, predict_split
    from radfusion.training.tasks import SurvivalTask

    start = time.perf_counter()
    cli = build_cli(job.arguments())
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    best = Path(job.run_dir) / "checkpoints" / "best.ckpt"
    if not best.exists():
        raise RuntimeError(f"fold {job.fold} (repeat {job.repeat}) saved no best checkpoint under {best.parent}")
    module = load_module(best)
    dm = cli.datamodule
    predicted = predict_split(module, dm, "test")
    task = module.task
    if task.kind == "multilabel":
        raise ValueError("radfusion cv scores classification and survival tasks, not multilabel ones")
    survival = isinstance(task, SurvivalTask)
    deep_scores = task.risk(predicted["outputs"]) if survival else torch.softmax(predicted["outputs"], dim=-1)
    deep_seconds = time.perf_counter() - start

    train_records = dm.records["train"] + dm.records["val"]
    test_records = dm.records["test"]
    test = outcome_of(test_records)
    scores = {DEEP: deep_scores.numpy().astype(np.float64)}
    models = {
        DEEP: {
            "metric": fold_metric(survival, scores[DEEP], test),
            "seconds": deep_seconds,
            # evaluate's own metrics of the same predictions (td-AUC at the horizons too).
            "evaluate": pattern_metrics(module, predicted, tuple(module.task_config.horizons)),
        }
    }
    names = default_baselines(survival) if job.baselines is None else job.baselines
    inputs = table_inputs(module.net, dm.modalities)
    if inputs is None:  # an image-only network: no table features to fit baselines on
        names = ()
    if names and inputs is not None:
        x_train, x_test = inputs.of(train_records), inputs.of(test_records)
        train = outcome_of(train_records)
        for name in names:
            began = time.perf_counter()
            model = make_baseline(name, n_classes=dm.n_classes, seed=job.repeat).fit(x_train, train)
            scores[name] = model.predict(x_test)
            models[name] = {
                "metric": fold_metric(survival, scores[name], test),
                "seconds": time.perf_counter() - began,
                "chosen": getattr(model, "chosen", {}),
            }
    return {
        "repeat": job.repeat,
        "fold": job.fold,
        "survival": survival,
        "task": task.kind,
        "labels": list(dm.labels),
        "modalities": list(module.network_config.modalities),
        "fusion": module.net.fusion_kind,
        "n_train": len(dm.records["train"]),
        "n_val": len(dm.records["val"]),
        "n_test": len(test_records),
        "models": models,
        "predictions": _predictions(job, test_records, scores, survival, list(dm.labels)),
    }


def _predictions(job: FoldJob, records: list[dict], scores: dict, survival: bool, labels: list[str]) -> list[dict]:
    """Out-of-fold rows: one per (model, patient), the risk or each class's probability."""
    rows = []
    for model, values in scores.items():
        for record, value in zip(records, values, strict=True):
            row = {"repeat": job.repeat, "fold": job.fold, "model": model, "patient_id": record["patient_id"]}
            if survival:
                row.update(risk=float(value), time=record["time"], event=record["event"])
            else:
                row.update({f"p_{label}": float(p) for label, p in zip(labels, value, strict=True)})
                row["label"] = int(record["label"])
            rows.append(row)
    return rows
