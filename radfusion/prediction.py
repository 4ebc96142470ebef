"""One case's prediction, typed by task: the ONE place where a model output row
(``OnnxModel.run``) becomes an answer, and where that answer is rendered for each
consumer — the HTTP JSON answer, the archive scorer's Parquet columns and the PACS
listener's DICOM SR (which reads the typed fields).

Tasks (``ModelContract.task``, the part before ":"):

- classification: softmax probabilities and the arg-max label, and where the contract
  has conformal thresholds, the prediction set at their coverage (radfusion.conformal);
- multilabel: a sigmoid probability per label and every label at p >= 0.5;
- survival:cox: a risk score (log relative hazard; higher = worse);
- survival:discrete: interval hazard logits, turned into the survival probability at
  each of ``contract.time_bins`` and a risk score (the cumulative hazard).

A non-finite output (NaN, inf) is never rendered: building the prediction raises
NonFiniteOutputError, so every consumer reports an error for that case instead."""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from radfusion.contract import ModelContract
from radfusion.errors import RadfusionInputError

# A multi-label model predicts every label whose probability reaches this.
MULTILABEL_THRESHOLD = 0.5


class NonFiniteOutputError(RadfusionInputError):
    """The model gave NaN or inf for this case (extreme inputs, a broken model): the
    case gets an error, never an answer holding a NaN."""

    kind = "non_finite_output"
    http_status = 422


def task_kind(contract: ModelContract) -> str:
    """ "classification", "multilabel", "survival:cox" or "survival:discrete"."""
    if contract.task.startswith("survival"):
        if contract.task not in ("survival:cox", "survival:discrete"):
            raise ValueError(f"unknown survival task {contract.task!r}")
        return contract.task
    kind = contract.task.partition(":")[0]
    return kind if kind == "multilabel" else "classification"


@dataclass(frozen=True)
class Prediction:
    """The task's answer for one case. Fields a task does not have stay empty/None:
    classification and multilabel fill ``probabilities`` (label, p) in contract order
    and ``predicted`` (one label, or every label at p >= 0.5), classification with a
    conformal contract ``prediction_set`` (the labels not ruled out at ``set_coverage``);
    survival fills ``risk_score`` and, for discrete time, ``survival`` (months, P(alive then))."""

    kind: str
    probabilities: tuple[tuple[str, float], ...] = ()
    predicted: tuple[str, ...] = ()
    risk_score: float | None = None
    survival: tuple[tuple[float, float], ...] = ()
    prediction_set: tuple[str, ...] | None = None
    set_coverage: float | None = None

    @classmethod
    def from_outputs(cls, contract: ModelContract, outputs: np.ndarray) -> Prediction:
        """Build from one case's ``OnnxModel.run`` row. Raises NonFiniteOutputError."""
        values = np.asarray(outputs, dtype=np.float64).ravel()
        if values.shape != (len(contract.labels),):
            raise ValueError(f"model gave {values.size} outputs, the contract has {len(contract.labels)} labels")
        if not np.all(np.isfinite(values)):
            raise NonFiniteOutputError("the model's output for this case is not a finite number")
        kind = task_kind(contract)
        if kind == "survival:cox":
            return cls(kind, risk_score=float(values[0]))
        if kind == "survival:discrete":
            return _discrete_survival(contract, values)
        probabilities = tuple((label, float(p)) for label, p in zip(contract.labels, values, strict=True))
        if kind == "multilabel":
            predicted = tuple(label for label, p in probabilities if p >= MULTILABEL_THRESHOLD)
            return cls(kind, probabilities=probabilities, predicted=predicted)
        predicted = (contract.labels[int(np.argmax(values))],)
        if contract.conformal is None:
            return cls(kind, probabilities=probabilities, predicted=predicted)
        members = contract.conformal.prediction_set(values)[0]
        return cls(
            kind,
            probabilities=probabilities,
            predicted=predicted,
            prediction_set=tuple(label for label, member in zip(contract.labels, members, strict=True) if member),
            set_coverage=contract.conformal.coverage,
        )

    @property
    def is_survival(self) -> bool:
        return self.kind.startswith("survival")

    def answer(self) -> dict:
        """The task fields of the HTTP JSON answer (the keys clients rely on)."""
        if self.is_survival:
            answer: dict = {"risk_score": self.risk_score}
            if self.kind == "survival:discrete":
                answer["survival_probabilities"] = {survival_key(t): p for t, p in self.survival}
            return answer
        answer = {"probabilities": dict(self.probabilities)}
        if self.kind == "multilabel":
            answer["predicted_labels"] = list(self.predicted)
        else:
            answer["predicted_label"] = self.predicted[0]
        if self.prediction_set is not None:
            answer["prediction_set"] = {"labels": list(self.prediction_set), "coverage": self.set_coverage}
        return answer

    def columns(self) -> dict[str, object]:
        """The scorer's Parquet values, named as ``output_columns`` names them."""
        if self.is_survival:
            values: dict[str, object] = {RISK_COLUMN: self.risk_score}
            values.update({survival_column(t): p for t, p in self.survival})
            return values
        values = {}
        if self.kind == "multilabel":
            values["predicted_labels"] = list(self.predicted)
        else:
            values["predicted_label"] = self.predicted[0]
        values.update({prob_column(label): p for label, p in self.probabilities})
        if self.prediction_set is not None:
            values[SET_COLUMN] = list(self.prediction_set)
        return values

    def summary(self) -> str:
        """A short headline for logs and status tables (no patient data in it)."""
        if self.is_survival:
            return f"risk {self.risk_score:.4g}"
        return "+".join(self.predicted) if self.predicted else "(no label)"


RISK_COLUMN = "risk_score"
SET_COLUMN = "prediction_set"


def sql_name(text: str) -> str:
    """``text`` as a column name any SQL engine takes unquoted: lower case, and every run
    of characters other than letters and digits one underscore ("non-responder" ->
    "non_responder", "1.5" -> "1_5")."""
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")


def prob_column(label: str) -> str:
    return f"prob_{sql_name(label)}"


def survival_key(months: float) -> str:
    """A time bin as the answer keys it: 12.0 -> "12", 1.5 -> "1.5"."""
    return f"{months:g}"


def survival_column(months: float) -> str:
    return f"survival_{sql_name(survival_key(months))}"


def output_columns(contract: ModelContract) -> list[tuple[str, str]]:
    """The prediction columns of the scorer's output, in order, with their type
    ("string", "float64" or "list<string>"): what ``Prediction.columns`` fills."""
    kind = task_kind(contract)
    if kind == "survival:cox":
        return [(RISK_COLUMN, "float64")]
    if kind == "survival:discrete":
        return _distinct(
            [(RISK_COLUMN, "float64"), *[(survival_column(t), "float64") for t in contract.time_bins]],
            [survival_key(t) for t in contract.time_bins],
        )
    predicted = ("predicted_labels", "list<string>") if kind == "multilabel" else ("predicted_label", "string")
    columns = [predicted, *[(prob_column(label), "float64") for label in contract.labels]]
    if kind == "classification" and contract.conformal is not None:
        columns.append((SET_COLUMN, "list<string>"))
    return _distinct(columns, contract.labels)


def _distinct(columns: list[tuple[str, str]], names: list[str]) -> list[tuple[str, str]]:
    """``columns`` when no two of them share a name; two labels (or time bins) that differ
    only in case or punctuation would write one column: a model whose output cannot be
    stored as its contract says."""
    seen: dict[str, int] = {}
    for name, _ in columns:
        seen[name] = seen.get(name, 0) + 1
    clashing = sorted(name for name, count in seen.items() if count > 1)
    if clashing:
        raise ValueError(
            f"the model's labels {names} give the same output column(s) {clashing} (lower case, punctuation as _); "
            "export it with labels that differ in letters or digits"
        )
    return columns


def _discrete_survival(contract: ModelContract, hazard_logits: np.ndarray) -> Prediction:
    """Interval hazards h_k = sigmoid(logit_k); S(t_k) = prod_{j<=k} (1 - h_j); the
    risk score is the cumulative hazard sum_k -log(1 - h_k) = sum_k softplus(logit_k)."""
    hazards = 1.0 / (1.0 + np.exp(-hazard_logits))
    curve = np.cumprod(1.0 - hazards)
    risk = float(np.sum(np.logaddexp(0.0, hazard_logits)))
    survival = tuple((float(t), float(p)) for t, p in zip(contract.time_bins, curve, strict=True))
    return Prediction(contract.task, risk_score=risk, survival=survival)
