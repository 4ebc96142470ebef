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


@dataclass(frozen=True)
class TableInputs:
    """Which non-image inputs a network uses, as ``features_of`` takes them: its omics
    blocks (with their presence bits, at their positions in the data module's presence
    order) and its clinical block."""

    genomics: bool
    clinical: bool
    presence: tuple[int, ...] = ()

    @property
    def label(self) -> str:
        """How a table names these features, as a model's modalities are named."""
        return "+".join([*(["genomics"] if self.genomics else []), *(["clinical"] if self.clinical else [])])

    def of(self, records: Sequence[dict]) -> np.ndarray:
        return features_of(records, self.genomics, self.clinical, self.presence)


def table_inputs(net, modalities: Sequence[str]) -> TableInputs | None:
    """The table inputs of ``net`` (a FusionNet) given the data module's ``modalities``;
    None when it uses neither omics nor clinical covariates (an image-only network:
    nothing for a classical model to be fitted on)."""
    omics = [m for m in net.modality_names if m in net.omics_sizes and net.uses(m)]
    if not omics and not net.uses("clinical"):
        return None
    return TableInputs(bool(omics), bool(net.uses("clinical")), tuple(list(modalities).index(m) for m in omics))
