"""Treatment ranking: for a model trained with the treatment as a clinical covariate,
predict the response under every candidate treatment (the contract's treatment
levels), changing only the treatment's one-hot columns, and rank them.

The ranking orders treatments by predicted response probability (the contract's
positive label, after temperature scaling). The recommendation is more cautious:
it stays with the reference — the first treatment level, taken as the standard of
care — unless another treatment raises the log-odds of response by more than the
switch margin (``ClinicalSpec.switch_margin``, else DEFAULT_SWITCH_MARGIN), because a
small predicted gain is within the model's error and switching therapy has costs
the model does not see. Where the contract carries the benefit's bootstrap draws
(radfusion.benefit), the model's error is measured instead of assumed: the gain's
interval must clear the margin with its lower bound (DEFAULT_INTERVAL_MARGIN), and the
answer says why a patient was or was not switched.

The gain is measured in log-odds, not probability: a probability gain vanishes near
0 and 1 whatever the treatment's effect, so one probability margin means a large
effect for some patients and a small one for others, while a log-odds margin is one
odds ratio for everybody. The evidence check (radfusion.training.evidence.treatment) applies
this very rule and margin."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import numpy as np

from radfusion.contract import CLINICAL, ModelContract
from radfusion.explain import log_odds
from radfusion.prediction import NonFiniteOutputError
from radfusion.preprocess import ModelInputs

# Gain in log-odds of response over the reference. 1.0 is an odds ratio of e (about
# 2.7): a clinically meaningful effect, beyond the odds ratios of 1.5-2 that a few
# hundred training patients leave uncertain. Export writes it into the contract.
DEFAULT_SWITCH_MARGIN = 1.0
# With the benefit's interval (radfusion.benefit), the uncertainty the 1.0 margin stood in
# for is measured: a switch needs the interval's lower bound above this, i.e. a benefit
# the training patients establish at 97.5% one-sided. Over five evidence cohorts this
# rule never switched the wild-type majority on a chance imbalance, which the 1.0 point
# margin did (bench/results/evidence.json).
DEFAULT_INTERVAL_MARGIN = 0.0
# Probabilities are clipped this far from 0 and 1 before taking log-odds (float32
# softmax saturates there); both candidates saturated means no gain to act on.
_PROBABILITY_EPS = 1e-7

ProbabilitiesFn = Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray], np.ndarray]


def ranks_treatments(contract: ModelContract) -> bool:
    """Whether the model has a treatment covariate (each answer then ranks the treatments)."""
    return contract.clinical is not None and contract.clinical.treatment is not None


def unavailable_reason(contract: ModelContract, inputs: ModelInputs) -> str | None:
    """Why this case cannot be ranked, or None when it can."""
    spec = contract.clinical
    if spec is None or spec.treatment is None or len(spec.treatments) < 2:
        return "the model has no treatment covariate with at least two treatments"
    if not contract.uses_clinical:
        return "the model was not trained with clinical covariates"
    if CLINICAL not in inputs.modalities_used:
        return "no clinical covariates in this case (the treatment is one of them)"
    if response_label(contract) is None:
        return "the contract names no positive label (the response)"
    return None


def response_label(contract: ModelContract) -> int | None:
    if contract.positive_label in contract.labels:
        return contract.labels.index(contract.positive_label)
    return None


def default_margin(with_intervals: bool) -> float:
    return DEFAULT_INTERVAL_MARGIN if with_intervals else DEFAULT_SWITCH_MARGIN


def switch_margin(contract: ModelContract) -> float:
    margin = contract.clinical.switch_margin if contract.clinical else None
    return default_margin(contract.treatment_benefit is not None) if margin is None else float(margin)


def response_log_odds(probabilities: np.ndarray, label: int) -> np.ndarray:
    """Log-odds of ``label`` per row of (rows, labels) probabilities, by the one
    definition (radfusion.explain.log_odds) applied to log-probabilities; probabilities
    are clipped away from 0 so saturated ones give finite log-odds."""
    p = np.clip(np.asarray(probabilities, dtype=np.float64), _PROBABILITY_EPS, 1.0)
    return log_odds(np.log(p), label)


def recommend(
    log_odds_by_treatment: np.ndarray,
    margin: float,
    lower: np.ndarray | None = None,
    measured: np.ndarray | None = None,
) -> np.ndarray:
    """Index of the recommended treatment per row of (patients, treatments) log-odds,
    column 0 the reference: the best other treatment when its gain over the reference
    exceeds ``margin`` — with ``lower`` (patients, treatments - 1), the lower ends of
    the gains' intervals, when that lower end does — else the reference; with
    ``measured`` (patients,), only where the benefit's biomarkers were measured
    (radfusion.benefit.BenefitDraws.measured). The one switch rule, for serving and the
    evidence alike."""
    scores = np.atleast_2d(np.asarray(log_odds_by_treatment, dtype=np.float64))
    if scores.shape[1] < 2:
        return np.zeros(len(scores), dtype=int)
    rows = np.arange(len(scores))
    best_other = 1 + np.argmax(scores[:, 1:], axis=1)
    gain = scores[rows, best_other] - scores[:, 0]
    if lower is not None:
        gain = np.atleast_2d(np.asarray(lower, dtype=np.float64))[rows, best_other - 1]
    switch = gain > margin
    if measured is not None:
        switch &= np.asarray(measured, dtype=bool)
    return np.where(switch, best_other, 0)


def candidate_inputs(contract: ModelContract, inputs: ModelInputs) -> list[ModelInputs]:
    """The case once per treatment, in the contract's treatment order; everything but
    the treatment's one-hot columns is left as it is."""
    spec = contract.clinical
    assert spec is not None and spec.treatment is not None
    columns = spec.treatment_columns
    candidates = []
    for chosen in columns:
        clinical = inputs.clinical.copy()
        clinical[columns] = 0.0
        clinical[chosen] = 1.0
        candidates.append(replace(inputs, clinical=clinical))
    return candidates


def ranking_from_probabilities(
    contract: ModelContract,
    probabilities: np.ndarray,
    given: str | None = None,
    intervals: np.ndarray | None = None,
    measured: bool = True,
) -> dict:
    """The answer from the candidates' probabilities (rows in treatment order).
    ``given``: the treatment the request named, reported for comparison; ``intervals``:
    (treatments - 1, 2) each other treatment's benefit interval (BenefitDraws.interval);
    ``measured``: whether the benefit's biomarkers were (BenefitDraws.measured)."""
    spec = contract.clinical
    assert spec is not None
    label = response_label(contract)
    assert label is not None
    response = np.asarray(probabilities, dtype=np.float64)[:, label]
    treatments = spec.treatments
    reference = treatments[0]
    margin = switch_margin(contract)
    scores = response_log_odds(probabilities, label)
    order = np.argsort(-response, kind="stable")
    lower = None if intervals is None else intervals[None, :, 0]
    choice = int(recommend(scores[None, :], margin, lower, np.array([measured]))[0])
    recommended = treatments[choice]

    def interval(i: int) -> dict:
        if intervals is None or i == 0:
            return {}
        return {"benefit_interval": [float(intervals[i - 1, 0]), float(intervals[i - 1, 1])]}

    return {
        "available": True,
        "covariate": spec.treatment,
        "response_label": contract.labels[label],
        "ranking": [
            {
                "treatment": treatments[i],
                "response_probability": float(response[i]),
                "gain_vs_reference": float(response[i] - response[0]),
                "log_odds_gain_vs_reference": float(scores[i] - scores[0]),
                **interval(i),
            }
            for i in order
        ],
        "reference": reference,
        "switch_margin": margin,
        "recommended": recommended,
        "reason": _reason(treatments, scores - scores[0], margin, choice, intervals, contract, measured),
        "given": given,
    }


def _reason(
    treatments, gains, margin: float, choice: int, intervals, contract: ModelContract, measured: bool = True
) -> str:
    """Why the patient is switched or kept on the reference, in words."""
    best = 1 + int(np.argmax(gains[1:]))
    level = f"{contract.treatment_benefit.level:.0%} " if contract.treatment_benefit is not None else ""
    stated = f"{treatments[best]}'s benefit {gains[best]:+.2f} log-odds"
    if intervals is not None:
        stated += f" ({level}interval {intervals[best - 1, 0]:+.2f} to {intervals[best - 1, 1]:+.2f})"
    if choice:
        bound = "its lower bound clears" if intervals is not None else "clears"
        return f"switch to {treatments[choice]}: {stated}; {bound} the margin {margin:g}"
    if not measured:
        return (
            f"no personalised benefit: {stated} is the treatment's average effect, as the genomics it depends on "
            f"were not measured; stay on {treatments[0]}"
        )
    if intervals is not None and gains[best] > margin:
        return (
            f"no confident benefit: {stated}; the lower bound does not clear the margin {margin:g}; "
            f"stay on {treatments[0]}"
        )
    return f"no benefit beyond the margin: {stated} does not clear {margin:g}; stay on {treatments[0]}"


def given_treatment(contract: ModelContract, inputs: ModelInputs) -> str | None:
    spec = contract.clinical
    if spec is None or spec.treatment is None or CLINICAL not in inputs.modalities_used:
        return None
    for level, column in zip(spec.treatments, spec.treatment_columns, strict=True):
        if inputs.clinical[column] == 1.0:
            return level
    return None


class TreatmentRanking:
    """The ranking for one case, kept apart from running the model, so the candidate
    rows can go through any model call (OnnxModel.run, the batched model service)."""

    def __init__(self, contract: ModelContract, inputs: ModelInputs):
        self.contract = contract
        self.inputs = inputs
        self.reason = unavailable_reason(contract, inputs)
        self.candidates = candidate_inputs(contract, inputs) if self.reason is None else []

    def unavailable(self) -> dict | None:
        """The answer when the case cannot be ranked (no model call needed)."""
        return None if self.reason is None else {"available": False, "reason": self.reason}

    def result(self, probabilities: np.ndarray) -> dict:
        """From the calibrated probabilities of ``candidates``, in order. Raises
        NonFiniteOutputError when the model gave NaN/inf for a candidate."""
        if not np.all(np.isfinite(probabilities)):
            raise NonFiniteOutputError("the model's output for a treatment candidate is not a finite number")
        benefit = self.contract.treatment_benefit
        intervals, measured = None, True
        if benefit is not None:
            intervals = benefit.interval(self.inputs.genomics, self.inputs.presence, self.contract.temperature)[0]
            measured = bool(benefit.measured(self.inputs.presence)[0])
        given = given_treatment(self.contract, self.inputs)
        return ranking_from_probabilities(self.contract, probabilities, given, intervals, measured)


def rank_treatments(probabilities_fn: ProbabilitiesFn, contract: ModelContract, inputs: ModelInputs) -> dict:
    """Rank the treatments for one case with ``probabilities_fn`` (e.g. OnnxModel.run:
    calibrated probabilities), all candidates in one batch."""
    ranking = TreatmentRanking(contract, inputs)
    unavailable = ranking.unavailable()
    if unavailable is not None:
        return unavailable
    names = ("image", "genomics", "clinical", "presence")
    batch = [np.stack([getattr(c, n) for c in ranking.candidates]) for n in names]
    return ranking.result(probabilities_fn(*batch))
