"""What a treatment policy achieves on held-out patients, from their observed outcomes
(any cohort where the treatment was assigned at random, as in a trial) and, for a
synthetic cohort, from its planted truth.

- Policy value: the expected response rate if every patient got the treatment the
  policy recommends. Observed: the inverse-probability-weighted (Hajek) estimate over
  the patients whose given treatment matches the recommendation, with each arm's share
  as its propensity, and a bootstrap interval. True: the mean of each patient's true
  response probability under the recommended treatment, beside treating everyone with
  each treatment and the oracle (everyone gets their true best).
- Qini curve: patients ranked by predicted benefit; at each share of them, the extra
  responders the other treatment gives over the reference (Radcliffe's incremental
  gains: treated responders minus control responders scaled to the treated count), per
  patient. The Qini coefficient is the area between the curve and the straight line of
  a random ranking: above zero, the ranking puts the patients who gain first.
- Group effects: in each biomarker group (mutated, wild type, not tested), the observed
  difference in response rate between the arms with its 95% interval beside the mean
  difference the model predicts."""

from __future__ import annotations

import numpy as np
import pandas as pd

N_BOOTSTRAP = 500
Z95 = 1.959963984540054


def observed_policy_value(
    recommended: np.ndarray, given: np.ndarray, response: np.ndarray, n_boot: int = N_BOOTSTRAP, seed: int = 0
) -> dict:
    """IPW estimate of the response rate under ``recommended`` (treatment labels per
    patient) from patients given ``given`` (None/'' unknown) with ``response`` 0/1."""
    recommended, given = np.asarray(recommended, dtype=object), np.asarray(given, dtype=object)
    response = np.asarray(response, dtype=np.float64)
    known = np.array([g is not None and g == g and g != "" for g in given])
    recommended, given, response = recommended[known], given[known], response[known]
    levels, counts = np.unique(given.astype(str), return_counts=True)
    share = dict(zip(levels, counts / counts.sum(), strict=True))
    weight = np.array([1.0 / share[g] for g in given.astype(str)]) * (recommended == given)

    def value(pick: np.ndarray) -> float:
        w = weight[pick]
        return float(np.sum(w * response[pick]) / np.sum(w)) if np.sum(w) > 0 else float("nan")

    everyone = np.arange(len(response))
    rng = np.random.default_rng(seed)
    boots = np.array([value(rng.integers(0, len(response), len(response))) for _ in range(n_boot)])
    boots = boots[np.isfinite(boots)]
    low, high = np.quantile(boots, [0.025, 0.975]) if len(boots) else (float("nan"), float("nan"))
    return {"value": value(everyone), "low": float(low), "high": float(high), "n": len(response)}


def true_policy_values(recommended: pd.Series, truth_patients: dict, levels: list[str]) -> dict:
    """Mean true response probability under ``recommended`` (indexed by patient id), under
    each treatment for everyone (``all_<level>``) and under each patient's true best."""
    probability = pd.DataFrame(
        {lv: [truth_patients[p][f"response_probability_{lv}"] for p in recommended.index] for lv in levels},
        index=recommended.index,
    )
    chosen = probability.to_numpy()[np.arange(len(probability)), [levels.index(r) for r in recommended]]
    return {
        "policy": float(chosen.mean()),
        **{f"all_{lv}": float(probability[lv].mean()) for lv in levels},
        "oracle": float(probability.max(axis=1).mean()),
    }


def qini(benefit: np.ndarray, treated: np.ndarray, response: np.ndarray, points: int = 21) -> dict:
    """Qini curve of a ranking by ``benefit`` over patients given the other treatment
    (``treated`` True) or the reference (False): the share ranked and the incremental
    responders per patient at each share, and the Qini coefficient."""
    order = np.argsort(-np.asarray(benefit, dtype=np.float64), kind="stable")
    treated = np.asarray(treated, dtype=bool)[order]
    response = np.asarray(response, dtype=np.float64)[order]
    n = len(order)
    n_t, n_c = np.cumsum(treated), np.cumsum(~treated)
    r_t, r_c = np.cumsum(response * treated), np.cumsum(response * ~treated)
    gain = np.where(n_c > 0, r_t - r_c * n_t / np.maximum(n_c, 1), r_t) / n
    gain = np.concatenate([[0.0], gain])
    share = np.arange(n + 1) / n
    random = share * gain[-1]
    coefficient = float(np.sum((gain - random)[1:] + (gain - random)[:-1]) / (2 * n))
    at = np.linspace(0, n, points).round().astype(int)
    return {"share": share[at].tolist(), "gain": gain[at].tolist(), "qini_coefficient": coefficient}


def group_effects(
    groups: pd.Series, given: np.ndarray, response: np.ndarray, predicted: np.ndarray, reference: str, other: str
) -> pd.DataFrame:
    """Per group: patients per arm, observed response rates, their difference (other
    minus reference) with a 95% Wald interval, and the model's mean predicted difference
    in response probability (``predicted`` per patient)."""
    given, response, predicted = np.asarray(given, dtype=object), np.asarray(response, float), np.asarray(predicted)
    rows = []
    for group in sorted(groups.unique()):
        mask = (groups == group).to_numpy()
        on_other, on_reference = mask & (given == other), mask & (given == reference)
        n_o, n_r = int(on_other.sum()), int(on_reference.sum())
        row = {
            "group": group,
            f"n_{other}": n_o,
            f"n_{reference}": n_r,
            "predicted_difference": float(predicted[mask].mean()),
        }
        if n_o and n_r:
            p_o, p_r = response[on_other].mean(), response[on_reference].mean()
            se = np.sqrt(p_o * (1 - p_o) / n_o + p_r * (1 - p_r) / n_r)
            row |= {
                f"response_{other}": float(p_o),
                f"response_{reference}": float(p_r),
                "observed_difference": float(p_o - p_r),
                "observed_low": float(p_o - p_r - Z95 * se),
                "observed_high": float(p_o - p_r + Z95 * se),
            }
        rows.append(row)
    return pd.DataFrame(rows)
