"""Treatment ranking for models that take the treatment as a clinical input.

Each patient's response is predicted under every candidate treatment (the treatment
one-hot switched, everything else kept). The reference treatment is the standard of
care, the first level listed (or named). The recommendation switches away from it only
when another treatment's predicted gain in log-odds of response exceeds ``margin``:
a model's small, noisy differences must not move patients off the standard of care.
Rule and default margin are serving's (radfusion.treatment: 1.0 log-odds, an odds
ratio of about 2.7), which export writes into the model contract, so the evidence
measures exactly what the service will recommend."""

from __future__ import annotations

import numpy as np
import pandas as pd

from radfusion.training.evidence.cases import Cases, positive_log_odds, predict_logits
from radfusion.treatment import DEFAULT_SWITCH_MARGIN, recommend

DEFAULT_MARGIN = DEFAULT_SWITCH_MARGIN


def treatment_columns(spec) -> dict[str, int]:
    """Treatment level -> its column in the encoded clinical input."""
    if spec is None or not spec.treatment:
        raise ValueError("the model has no treatment covariate: train with data.treatment set")
    return dict(zip(spec.treatments, spec.treatment_columns, strict=True))


def predict_under_treatments(net, cases: Cases, spec) -> pd.DataFrame:
    """(patients x treatments) predicted log-odds of response."""
    columns = treatment_columns(spec)
    out = {}
    for level, col in columns.items():
        clinical = cases.clinical.clone()
        clinical[:, list(columns.values())] = 0.0
        clinical[:, col] = 1.0
        out[level] = positive_log_odds(predict_logits(net, cases, clinical=clinical))
    return pd.DataFrame(out, index=cases.patient_ids)


def rank_treatments(
    log_odds_table: pd.DataFrame,
    reference: str | None = None,
    margin: float = DEFAULT_MARGIN,
    temperature: float = 1.0,
    intervals: np.ndarray | None = None,
    measured: np.ndarray | None = None,
) -> pd.DataFrame:
    """Per patient: predicted response probability per treatment, the ranking, the gain
        over the reference and the recommendation under the margin rule; with ``intervals``
        (patients, treatments - 1, 2: radfusion.benefit.BenefitDraws.interval, the first
        column the reference) the rule reads the gain's lower bound, and with ``measured``
    (BenefitDraws.measured) switches only patients whose biomarkers were, as serving does."""
    reference = reference or log_odds_table.columns[0]
    if reference not in log_odds_table.columns:
        raise ValueError(f"reference treatment {reference!r} is not one of {list(log_odds_table.columns)}")
    if intervals is not None and reference != log_odds_table.columns[0]:
        raise ValueError("benefit intervals are over the first treatment, the model's reference")
    scaled = log_odds_table / temperature
    # Reference first: the column order radfusion.treatment.recommend expects.
    scaled = scaled[[reference, *(c for c in scaled.columns if c != reference)]]
    gain = scaled.drop(columns=[reference]).sub(scaled[reference], axis=0)
    best_gain = gain.max(axis=1) if len(gain.columns) else pd.Series(0.0, index=scaled.index)
    probability = 1.0 / (1.0 + np.exp(-scaled))
    result = probability.add_prefix("p_")
    result["ranking"] = [" > ".join(row.sort_values(ascending=False).index) for _, row in scaled.iterrows()]
    result["gain_log_odds"] = best_gain
    lower = None if intervals is None else intervals[:, :, 0]
    result["recommended"] = scaled.columns.to_numpy()[recommend(scaled.to_numpy(), margin, lower, measured)]
    if intervals is not None:
        for k, level in enumerate(scaled.columns[1:]):
            result[f"benefit_low_{level}"], result[f"benefit_high_{level}"] = intervals[:, k, 0], intervals[:, k, 1]
    result.attrs.update(reference=reference, margin=margin)
    return result
