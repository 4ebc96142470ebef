"""`radfusion train predict`: the checkpoint's predictions for the cohort's held-out
(test) patients, as a Parquet table whose prediction columns are the scorer's
(radfusion.prediction.output_columns: prob_<label> + predicted_label, or risk_score
and survival_<months>), beside patient_id, the split and the true label.

These are the network's own outputs: no temperature, no conformal sets (those are
fitted by `radfusion export`, and the scorer applies them)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from radfusion.prediction import Prediction
from radfusion.runtime import outputs_from_logits
from radfusion.training.checkpoints import build_contract

FILE_NAME = "predictions.parquet"


def predictions_table(module, outputs: list[dict], checkpoint: Path | str) -> pd.DataFrame:
    """One row per patient from ``predict_step``'s batches."""
    contract = build_contract(module, checkpoint)
    rows = []
    for batch in outputs:
        targets = true_labels(contract, batch)
        for patient_id, logits, label in zip(batch["patient_id"], batch["logits"], targets, strict=True):
            prediction = Prediction.from_outputs(contract, outputs_from_logits(logits[None], contract)[0])
            rows.append({"patient_id": patient_id, "split": "test", "true_label": label, **prediction.columns()})
    return pd.DataFrame(rows)


def write_predictions(module, outputs: list[dict], checkpoint: Path | str, folder: Path, rank: int, world: int) -> Path:
    """The table in ``folder`` (one file per process when several predict: each holds
    the patients its process saw)."""
    table = predictions_table(module, outputs, checkpoint)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / (FILE_NAME if world == 1 else f"predictions-rank{rank}.parquet")
    table.to_parquet(path, index=False)
    return path


def true_labels(contract, batch: dict) -> list:
    """The batch's targets as the contract names them (a survival task: the event time)."""
    if contract.task.startswith("survival"):
        return [float(t) for t in batch["time"]]
    labels, values = contract.labels, np.asarray(batch["label"])
    if values.ndim == 2:  # multi-label: the labels that are present
        return ["+".join(label for label, v in zip(labels, row, strict=True) if v) for row in values]
    return [labels[int(v)] if 0 <= int(v) < len(labels) else None for v in values.ravel()]
