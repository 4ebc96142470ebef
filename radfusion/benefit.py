"""A treatment's benefit with its uncertainty, as the model contract carries it: draws
of the treatment term's parameters (fitted at export by bootstrap,
radfusion/training/evidence/benefit.py) and what serving needs to turn them into one
patient's interval: which genomics and presence columns the term reads, its reference
patient, and where the treatment's one-hot columns are.

For each non-reference treatment t and draw b the benefit over the reference on the
log-odds of response is phi(x) . draws[b, t], phi(x) = [1, the used blocks' presence
bits, (x - reference) on the candidate features where their block is present]. The
interval is the draws' quantiles divided by the contract's temperature, the scale the
ranking's log-odds are on. A patient whose candidate biomarkers were not measured gets
the treatment's average effect: the rule keeps them on the reference (``measured``), as
a targeted drug is matched to a tested biomarker, not to an average."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Two-sided interval level; the switch rule reads its lower end.
INTERVAL_LEVEL = 0.95


@dataclass(eq=False)  # the draws are an array: equal only to itself
class BenefitDraws:
    draws: np.ndarray  # (draws, treatments - 1, parameters); a nested list in JSON
    block_presence: list[int]  # presence-mask columns of the term's blocks
    feature_columns: list[int]  # genomics-input columns of its candidate features
    feature_blocks: list[int]  # each feature's block presence-mask column
    reference: list[float]  # the reference patient's value of each feature
    clinical_presence: int
    treatment_columns: list[int]  # clinical-input one-hot columns, the reference first
    level: float = INTERVAL_LEVEL

    def __post_init__(self) -> None:
        self.draws = np.asarray(self.draws, dtype=np.float64)
        if self.draws.ndim != 3 or self.draws.shape[2] != self.n_parameters:
            raise ValueError(f"benefit draws of shape {self.draws.shape} for {self.n_parameters} parameters")
        if not np.all(np.isfinite(self.draws)):
            raise ValueError("benefit draws must be finite")

    @property
    def n_parameters(self) -> int:
        return 1 + len(self.block_presence) + len(self.feature_columns)

    def to_dict(self) -> dict:
        return {
            "draws": self.draws.tolist(),
            "block_presence": self.block_presence,
            "feature_columns": self.feature_columns,
            "feature_blocks": self.feature_blocks,
            "reference": self.reference,
            "clinical_presence": self.clinical_presence,
            "treatment_columns": self.treatment_columns,
            "level": self.level,
        }

    def design(self, genomics: np.ndarray, presence: np.ndarray) -> np.ndarray:
        """(cases, parameters) phi of each case's model inputs."""
        genomics, presence = np.atleast_2d(genomics).astype(np.float64), np.atleast_2d(presence).astype(np.float64)
        features = (genomics[:, self.feature_columns] - np.asarray(self.reference)) * presence[:, self.feature_blocks]
        return np.hstack([np.ones((len(genomics), 1)), presence[:, self.block_presence], features])

    def given(self, clinical: np.ndarray, presence: np.ndarray) -> np.ndarray:
        """(cases, treatments - 1) the term's centred treatment coding of the treatment given."""
        clinical, presence = np.atleast_2d(clinical).astype(np.float64), np.atleast_2d(presence).astype(np.float64)
        onehot = clinical[:, self.treatment_columns]
        return (onehot - onehot.mean(axis=1, keepdims=True))[:, 1:] * presence[:, [self.clinical_presence]]

    def measured(self, presence: np.ndarray) -> np.ndarray:
        """(cases,) whether any block of the term's candidate biomarkers is present: only
        then is the benefit the patient's own and not the treatment's average effect."""
        presence = np.atleast_2d(presence)
        blocks = sorted(set(self.feature_blocks))
        return presence[:, blocks].sum(axis=1) > 0 if blocks else np.ones(len(presence), dtype=bool)

    def interval(self, genomics: np.ndarray, presence: np.ndarray, temperature: float = 1.0) -> np.ndarray:
        """(cases, treatments - 1, 2): each non-reference treatment's benefit interval
        (low, high) over the reference, in temperature-scaled log-odds."""
        values = np.einsum("np,btp->nbt", self.design(genomics, presence), self.draws) / temperature
        tail = (1.0 - self.level) / 2.0
        return np.stack([np.quantile(values, tail, axis=1), np.quantile(values, 1.0 - tail, axis=1)], axis=-1)
