"""Prediction tasks: what the network's outputs mean, the loss that trains them, the
validation metric that picks the best checkpoint, and how the model contract names
them. ``model.task.kind`` picks one (TaskConfig):

- ``classification``: binary or multi-class (response, subtype); cross-entropy; val/auroc.
- ``multilabel``: one binary label per output (e.g. response per drug); BCE; val/auroc (macro).
- ``survival_cox``: one output, the log relative risk; Cox partial likelihood with
  Breslow ties; val/cindex.
- ``survival_discrete``: one hazard logit per time interval (edges from the training
  split's event-time quantiles); discrete-time hazard NLL; val/cindex.

Concordance is lifelines' ``concordance_index``; time-dependent AUC is
cumulative/dynamic (cases: event by t; controls: still at risk after t) scored by
scikit-learn's ``roc_auc_score``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from lifelines.utils import concordance_index
from sklearn.metrics import roc_auc_score
from torch import nn
from torchmetrics import CatMetric
from torchmetrics.classification import BinaryAUROC, MulticlassAUROC, MultilabelAUROC

TASKS = ("classification", "multilabel", "survival_cox", "survival_discrete")
DEFAULT_HORIZONS = (12.0, 24.0, 36.0)


# ----------------------------------------------------------------------------- losses


def cox_partial_likelihood(risk: torch.Tensor, time: torch.Tensor, event: torch.Tensor) -> torch.Tensor:
    """Negative Cox log partial likelihood, Breslow's method for tied times, mean over events.

    For each event i: risk_i - log sum_{j: t_j >= t_i} exp(risk_j). Sorting by time
    descending makes the risk set a prefix (a running logsumexp); tied times share
    the risk set that ends at the LAST member of their tie group (Breslow)."""
    risk, time, event = risk.reshape(-1), time.reshape(-1), event.reshape(-1).float()
    order = torch.argsort(time, descending=True)
    risk, time, event = risk[order], time[order], event[order]
    running = torch.logcumsumexp(risk, dim=0)
    _, counts = torch.unique_consecutive(time, return_counts=True)
    group_end = torch.repeat_interleave(torch.cumsum(counts, 0) - 1, counts)
    log_risk_set = running[group_end]
    n_events = event.sum()
    if n_events == 0:  # no event in the batch: nothing to rank, keep the graph
        return risk.sum() * 0.0
    return -((risk - log_risk_set) * event).sum() / n_events


def interval_index(time: torch.Tensor, edges: torch.Tensor) -> torch.Tensor:
    """Interval k holds times in (edges[k-1], edges[k]]; times past the last edge fall in the last."""
    return torch.bucketize(time, edges).clamp(max=len(edges) - 1)


def discrete_hazard_nll(
    logits: torch.Tensor, time: torch.Tensor, event: torch.Tensor, edges: torch.Tensor
) -> torch.Tensor:
    """Negative log-likelihood of the discrete-time (logistic) hazard model.

    A patient whose time falls in interval k survived intervals < k (target 0 each);
    with an event, interval k is the event (target 1); censored, it counts as
    survived (censoring assumed at the interval's end, as in Gensheimer & Narasimhan
    2019 and pycox's LogisticHazard). Mean over patients."""
    k = interval_index(time.reshape(-1), edges)
    steps = torch.arange(logits.shape[1], device=logits.device)
    at_risk = (steps[None, :] <= k[:, None]).float()
    target = ((steps[None, :] == k[:, None]) & (event.reshape(-1, 1) > 0)).float()
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    return (bce * at_risk).sum(dim=1).mean()


def discrete_risk(logits: torch.Tensor) -> torch.Tensor:
    """Cumulative hazard over all intervals, sum_k -log(1 - h_k): higher = worse."""
    return F.softplus(logits).sum(dim=1)


def survival_curve(logits: np.ndarray) -> np.ndarray:
    """S(t_k) = prod_{j<=k} (1 - h_j), for each interval's end."""
    hazards = 1.0 / (1.0 + np.exp(-np.asarray(logits, dtype=np.float64)))
    return np.cumprod(1.0 - hazards, axis=-1)


# ---------------------------------------------------------------------------- metrics


def concordance(risk: np.ndarray, time: np.ndarray, event: np.ndarray) -> float:
    """Harrell's C (lifelines): lifelines ranks predicted times, so pass -risk."""
    return float(concordance_index(np.asarray(time), -np.asarray(risk), np.asarray(event)))


def time_dependent_auc(risk: np.ndarray, time: np.ndarray, event: np.ndarray, horizon: float) -> float:
    """Cumulative/dynamic AUC at ``horizon``: cases had the event by then, controls were
    still event-free after it; patients censored before it are left out. NaN when
    either set is empty."""
    risk, time, event = map(np.asarray, (risk, time, event))
    cases = (time <= horizon) & (event > 0)
    controls = time > horizon
    keep = cases | controls
    if cases.sum() == 0 or controls.sum() == 0:
        return float("nan")
    return float(roc_auc_score(cases[keep], risk[keep]))


# ------------------------------------------------------------------------------ tasks


class Task(nn.Module):
    """Base: ``n_outputs``, ``loss``, validation metric (``update``/``compute``),
    ``monitor`` (the metric that picks the best checkpoint) and the contract's
    task string and output labels."""

    kind: str = ""
    monitor: str = "val/auroc"

    def loss(self, outputs: torch.Tensor, batch: dict) -> torch.Tensor:
        raise NotImplementedError

    def update(self, outputs: torch.Tensor, batch: dict) -> None:
        raise NotImplementedError

    def compute(self) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def reset(self) -> None:
        for m in self.children():
            m.reset()

    def contract_task(self, target: str) -> str:
        raise NotImplementedError

    def contract_labels(self, labels: Sequence[str]) -> list[str]:
        return list(labels)


class ClassificationTask(Task):
    kind = "classification"

    def __init__(self, n_classes: int):
        super().__init__()
        self.n_outputs = n_classes
        self.auroc = BinaryAUROC() if n_classes == 2 else MulticlassAUROC(num_classes=n_classes)

    def loss(self, outputs, batch):
        return F.cross_entropy(outputs, batch["label"])

    def update(self, outputs, batch):
        probs = torch.softmax(outputs, dim=-1)
        self.auroc.update(probs[:, 1] if self.n_outputs == 2 else probs, batch["label"])

    def compute(self):
        return {"val/auroc": self.auroc.compute()}

    def contract_task(self, target):
        return f"classification:{target}"


class MultilabelTask(Task):
    kind = "multilabel"

    def __init__(self, n_labels: int):
        super().__init__()
        self.n_outputs = n_labels
        self.auroc = MultilabelAUROC(num_labels=n_labels, average="macro")

    def loss(self, outputs, batch):
        return F.binary_cross_entropy_with_logits(outputs, batch["label"].float())

    def update(self, outputs, batch):
        self.auroc.update(torch.sigmoid(outputs), batch["label"].long())

    def compute(self):
        return {"val/auroc": self.auroc.compute()}

    def contract_task(self, target):
        return f"multilabel:{target}"


class SurvivalTask(Task):
    """Shared by the Cox and discrete-time tasks: gathers risk, time and event over
    the validation epoch (CatMetric, so DDP ranks are joined) and scores them."""

    monitor = "val/cindex"

    def __init__(self, horizons: Sequence[float] = DEFAULT_HORIZONS):
        super().__init__()
        self.horizons = tuple(float(h) for h in horizons)
        self.risks, self.times, self.events = CatMetric(), CatMetric(), CatMetric()

    def risk(self, outputs: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def update(self, outputs, batch):
        self.risks.update(self.risk(outputs).detach())
        self.times.update(batch["time"])
        self.events.update(batch["event"].float())

    def compute(self):
        risk, time, event = (m.compute().cpu().numpy().reshape(-1) for m in (self.risks, self.times, self.events))
        if event.sum() == 0:
            return {"val/cindex": torch.tensor(float("nan"))}
        metrics = {"val/cindex": torch.tensor(concordance(risk, time, event))}
        for h in self.horizons:
            metrics[f"val/td_auc_{h:g}"] = torch.tensor(time_dependent_auc(risk, time, event, h))
        return metrics


class CoxTask(SurvivalTask):
    kind = "survival_cox"
    n_outputs = 1

    def loss(self, outputs, batch):
        return cox_partial_likelihood(outputs[:, 0], batch["time"], batch["event"])

    def risk(self, outputs):
        return outputs[:, 0]

    def contract_task(self, target):
        return "survival:cox"

    def contract_labels(self, labels):
        return ["risk"]


class DiscreteHazardTask(SurvivalTask):
    kind = "survival_discrete"

    def __init__(self, n_intervals: int, horizons: Sequence[float] = DEFAULT_HORIZONS):
        super().__init__(horizons)
        self.n_outputs = n_intervals
        # Interval upper edges (months), fitted on the training split by ``fit_edges``;
        # a buffer so it is saved in and restored from the checkpoint.
        self.register_buffer("edges", torch.arange(1, n_intervals + 1, dtype=torch.float32))

    def fit_edges(self, times: np.ndarray, events: np.ndarray) -> None:
        """Quantiles of the training event times: each interval holds about as many events."""
        observed = np.asarray(times)[np.asarray(events) > 0]
        if len(observed) < self.n_outputs:
            raise ValueError(f"{len(observed)} training events cannot fill {self.n_outputs} hazard intervals")
        edges = np.quantile(observed, np.linspace(0, 1, self.n_outputs + 1)[1:])
        for k in range(1, len(edges)):  # tied event times: keep the edges strictly increasing
            edges[k] = max(edges[k], edges[k - 1] + 1e-3)
        self.edges.copy_(torch.as_tensor(edges, dtype=torch.float32))

    def loss(self, outputs, batch):
        return discrete_hazard_nll(outputs, batch["time"], batch["event"], self.edges)

    def risk(self, outputs):
        return discrete_risk(outputs)

    def contract_task(self, target):
        return "survival:discrete"

    def contract_labels(self, labels):
        return [f"hazard_{k}" for k in range(self.n_outputs)]


@dataclass(frozen=True)
class TaskConfig:
    """What the model predicts (YAML ``model.task``): the task kind, the discrete-time
    intervals and the survival horizons (months) reported for survival tasks."""

    # classification | multilabel | survival_cox | survival_discrete
    kind: str = "classification"
    time_intervals: int = 8
    horizons: tuple[float, ...] = DEFAULT_HORIZONS

    def __post_init__(self) -> None:
        if self.kind not in TASKS:
            raise ValueError(f"unknown task {self.kind!r}; choose from {TASKS}")
        object.__setattr__(self, "horizons", tuple(float(h) for h in self.horizons))

    @classmethod
    def coerce(cls, value: TaskConfig | Mapping[str, Any] | str | None) -> TaskConfig:
        """The config from itself, a mapping (a checkpoint's or YAML's), a bare task
        kind, or None (defaults)."""
        if value is None:
            return cls()
        if isinstance(value, cls):
            return value
        if isinstance(value, str):
            return cls(kind=value)
        return cls(**dict(value))

    def build(self, n_classes: int) -> Task:
        return build_task(self.kind, n_classes, self.time_intervals, self.horizons)


def build_task(kind: str, n_classes: int, n_intervals: int = 8, horizons: Sequence[float] = DEFAULT_HORIZONS) -> Task:
    if kind == "classification":
        return ClassificationTask(n_classes)
    if kind == "multilabel":
        return MultilabelTask(n_classes)
    if kind == "survival_cox":
        return CoxTask(horizons)
    if kind == "survival_discrete":
        return DiscreteHazardTask(n_intervals, horizons)
    raise ValueError(f"unknown task {kind!r}; choose from {TASKS}")
