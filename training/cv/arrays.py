"""The arrays a classical baseline is fitted on, taken from the data module's records
(after its one missing-data policy), so baselines and the network see the same
patients and the same features."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Outcome:
    """What is predicted, per patient: a class index, or a survival time and an event flag."""

    label: np.ndarray
    time: np.ndarray
    event: np.ndarray

    def __len__(self) -> int:
        return len(self.label)

    def take(self, index: np.ndarray) -> Outcome:
        return Outcome(self.label[index], self.time[index], self.event[index])


def outcome_of(records: Sequence[dict]) -> Outcome:
    return Outcome(
        label=np.asarray([r["label"] for r in records]),
        time=np.asarray([r["time"] for r in records], dtype=np.float64),
        event=np.asarray([r["event"] for r in records], dtype=np.int64),
    )


def features_of(records: Sequence[dict], genomics: bool, clinical: bool, presence: Sequence[int] = ()) -> np.ndarray:
    """One row per record: the omics values (all blocks, z-scored, absent ones zero)
    and/or the encoded clinical block, plus the presence bits at ``presence`` (which
    omics blocks a patient has: a missing profile may itself carry signal)."""
    parts = []
    if genomics:
        parts.append(np.stack([r["genomics"] for r in records]))
        if len(presence):
            parts.append(np.stack([r["presence"][list(presence)] for r in records]))
    if clinical:
        parts.append(np.stack([r["clinical"] for r in records]))
    if not parts:
        raise ValueError("baselines need genomics or clinical features; the model uses neither")
    return np.hstack(parts).astype(np.float64)
