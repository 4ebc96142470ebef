"""Real ONNX models for each task, built from the tiny contract: the same tiny
FusionNet and export as the shared tiny model, with the task, labels and time bins
changed. Used by the tests that check one task's answer end to end (scorer, listener)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

# task -> (labels, time_bins): one output per label, as the contract requires.
TASKS: dict[str, tuple[list[str], list[float]]] = {
    "survival:cox": (["risk"], []),
    "survival:discrete": (["t12", "t24", "t36"], [12.0, 24.0, 36.0]),
    "multilabel:drugs": (["drug_a", "drug_b", "drug_c"], []),
    "classification:subtype": (["S1", "S2", "S3"], []),
}


def task_contract(tiny_contract, task: str):
    """``tiny_contract`` made a ``task`` model (see TASKS), named after the task."""
    labels, time_bins = TASKS[task]
    return dataclasses.replace(
        tiny_contract,
        task=task,
        labels=labels,
        time_bins=time_bins,
        positive_label=None,
        name=f"tiny-{task.replace(':', '-')}",
    )


def export_task_model(tiny_contract, task: str, folder: Path, seed: int = 0) -> Path:
    """A real (untrained, seeded) ONNX ``task`` model with its contract embedded."""
    from radfusion.training.export import export_onnx
    from tests.support.tiny import tiny_net

    contract = task_contract(tiny_contract, task)
    path = Path(folder) / f"{contract.name}.onnx"
    export_onnx(tiny_net(contract, seed=seed), contract, path)
    return path
