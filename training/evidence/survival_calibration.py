"""Calibration of discrete-time survival curves: do the predicted survival
probabilities match what happened to the held-out patients?

- D-calibration (Haider et al. 2020, "Effective ways to build and evaluate individual
  survival distributions"): for a calibrated model each patient's predicted survival at
  their own event time, S_i(T_i), is uniform on [0, 1]. The unit interval is cut into
  ten bins; an event puts its patient in the bin of S_i(T_i); a patient censored at c
  is spread over the bins below S_i(c) in proportion (their event is later, so their
  S(T) is lower, uniformly so under calibration). A chi-square test of the bin shares
  against 1/10 each gives the p-value: small p, curves that do not match the outcomes.
- At fixed horizons: the patients are cut into groups by predicted event probability
  by the horizon, 1 - S_i(h); each group's observed event probability is its
  Kaplan-Meier estimate (censoring handled), and the calibration error is the
  patient-weighted mean |observed - predicted|, with the calibration slope (observed
  on predicted, weighted least squares: 1 when the spread of risks is right).

The model gives S at each interval's upper edge (radfusion.training.tasks.survival_curve);
between edges the hazard is taken as constant, as a discrete-time hazard model of
continuous times implies, so S(t) is continuous and S_i(T_i) can be uniform at all
(a step function puts every event at the survival before its interval)."""

from __future__ import annotations

import numpy as np
from lifelines import KaplanMeierFitter
from scipy.stats import chisquare

from radfusion.training.tasks import survival_curve

D_BINS = 10
HORIZON_GROUPS = 5


def survival_at(curves: np.ndarray, edges: np.ndarray, months: np.ndarray) -> np.ndarray:
    """Each patient's predicted S at their own time, the hazard constant within each
    interval (S falls geometrically between edges, from 1 at time 0) and the last
    interval's hazard beyond the last edge."""
    edges = np.asarray(edges, dtype=np.float64)
    months = np.asarray(months, dtype=np.float64)
    start = np.concatenate([[0.0], edges[:-1]])
    before = np.hstack([np.ones((len(curves), 1)), curves[:, :-1]])  # S at each interval's start
    k = np.minimum(np.searchsorted(edges, months, side="left"), len(edges) - 1)
    rows = np.arange(len(curves))
    # The interval's survival factor, raised to the share of it the patient lived through.
    factor = np.clip(curves[rows, k] / np.maximum(before[rows, k], 1e-300), 1e-300, 1.0)
    share = (months - start[k]) / np.maximum(edges[k] - start[k], 1e-9)
    return before[rows, k] * factor ** np.maximum(share, 0.0)


def d_calibration(curves: np.ndarray, edges: np.ndarray, months: np.ndarray, event: np.ndarray) -> dict:
    s = np.clip(survival_at(curves, edges, months), 0.0, 1.0)
    event = np.asarray(event).astype(bool)
    cuts = np.linspace(0.0, 1.0, D_BINS + 1)
    shares = np.zeros(D_BINS)
    for value in s[event]:
        shares[min(int(value * D_BINS), D_BINS - 1)] += 1.0
    for value in s[~event]:
        if value <= 0:
            shares[0] += 1.0
            continue
        # Uniform on [0, S(c)]: each bin's overlap with it.
        overlap = np.clip(np.minimum(cuts[1:], value) - cuts[:-1], 0.0, None)
        shares += overlap / value
    n = len(s)
    test = chisquare(shares, np.full(D_BINS, n / D_BINS))
    return {"n": n, "bin_shares": (shares / n).tolist(), "chi2": float(test.statistic), "p_value": float(test.pvalue)}


def horizon_calibration(
    curves: np.ndarray, edges: np.ndarray, months: np.ndarray, event: np.ndarray, horizon: float
) -> dict:
    """Predicted vs Kaplan-Meier observed event probability by ``horizon`` in groups of
    predicted risk; None-valued figures when the horizon is beyond the follow-up."""
    months, event = np.asarray(months, dtype=np.float64), np.asarray(event).astype(int)
    predicted = 1.0 - survival_at(curves, edges, np.full(len(months), horizon))
    order = np.argsort(predicted, kind="stable")
    groups = np.array_split(order, HORIZON_GROUPS)
    rows = []
    for members in groups:
        if len(members) == 0:
            continue
        km = KaplanMeierFitter().fit(months[members], event[members])
        if horizon > months[members].max():
            continue  # nobody in the group followed that long: no observed figure
        observed = 1.0 - float(km.survival_function_at_times(horizon).iloc[0])
        rows.append({"n": len(members), "predicted": float(predicted[members].mean()), "observed": observed})
    if len(rows) < 2:
        return {"horizon": horizon, "groups": rows, "calibration_error": None, "slope": None}
    n = np.array([r["n"] for r in rows], dtype=np.float64)
    p = np.array([r["predicted"] for r in rows])
    o = np.array([r["observed"] for r in rows])
    error = float(np.sum(n * np.abs(o - p)) / n.sum())
    centred = p - np.average(p, weights=n)
    slope = None
    if np.any(centred):
        slope = float(np.sum(n * centred * (o - np.average(o, weights=n))) / np.sum(n * centred**2))
    return {"horizon": horizon, "groups": rows, "calibration_error": error, "slope": slope}


def survival_calibration(
    logits: np.ndarray, edges: np.ndarray, months: np.ndarray, event: np.ndarray, horizons
) -> dict:
    """D-calibration and the fixed-horizon checks of a discrete-time model's held-out curves."""
    curves = survival_curve(logits)
    return {
        "d_calibration": d_calibration(curves, edges, months, event),
        "horizons": [horizon_calibration(curves, edges, months, event, float(h)) for h in horizons],
    }
