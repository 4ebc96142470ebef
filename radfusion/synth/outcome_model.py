"""The ground-truth outcome model: how image and genomic scores drive response.

Designed so that neither modality alone predicts response well but both together
do: the logit weighs an image score and an independent genomic score equally
(true-score AUROC about 0.82 each, about 0.97 together). A treatment-by-EGFR
interaction makes treatment ranking meaningful: EGFR-mutated patients respond
clearly better to the targeted drug (+2.5 log-odds) and worse to chemotherapy
(-1.5), an effect large enough to be estimated from a few hundred patients (an
oracle logistic model on 250 training patients recovers it in about 95% of draws
with a 1.0 log-odds switch margin; with +1.5/-0.5 it was about 70%).

Survival follows the "aggressive but responsive" pattern seen in e.g.
triple-negative breast cancer: high scores raise both the chance of response and
the baseline hazard, and responding lowers the hazard. With the hazard weights at
1.0 the true scores reach a c-index of about 0.76 together and 0.68 each (at 0.7:
0.69 and 0.63, a gap that 160 test patients cannot resolve reliably).
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import brentq

B0 = -0.55  # gives a response rate of about 45%
COEF_IMAGE = 4.0
COEF_GENOMIC = 4.0
INTERACTION_GENE = "EGFR_mut"
# Added to the logit when the interaction gene is mutated, by treatment.
EGFR_INTERACTION = {"targeted": 2.5, "chemo": -1.5}
TREATMENTS = ("chemo", "targeted")

HAZARD_IMAGE = 1.0
HAZARD_GENOMIC = 1.0
HAZARD_RESPONSE = -0.5
BASELINE_MEDIAN_MONTHS = 20.0
ADMIN_CENSOR_MONTHS = 120.0
TARGET_CENSORED_FRACTION = 0.30


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def response_logit(
    z_img: np.ndarray, z_gen: np.ndarray, egfr_mut: np.ndarray, treatment: np.ndarray, shift: float = 0.0
) -> np.ndarray:
    """logit = b0 + 4.0 z_img + 4.0 z_gen + EGFR x treatment interaction (+ a site's
    `shift` of the intercept: its patient mix responds more or less often, the effects
    of image, genes and treatment unchanged)."""
    treatment = np.asarray(treatment)
    bonus = np.where(treatment == "targeted", EGFR_INTERACTION["targeted"], EGFR_INTERACTION["chemo"])
    return (B0 + shift) + COEF_IMAGE * z_img + COEF_GENOMIC * z_gen + np.asarray(egfr_mut) * bonus


def response_probability(
    z_img: np.ndarray, z_gen: np.ndarray, egfr_mut: np.ndarray, treatment: np.ndarray, shift: float = 0.0
) -> np.ndarray:
    return sigmoid(response_logit(z_img, z_gen, egfr_mut, treatment, shift))


def best_treatment(p_chemo: np.ndarray, p_targeted: np.ndarray) -> np.ndarray:
    """The treatment with the higher response probability; ties go to chemo.

    Without the EGFR mutation both probabilities are equal and chemo, the
    standard of care, is the recommendation.
    """
    return np.where(p_targeted > p_chemo, "targeted", "chemo")


def survival_hazard(z_img: np.ndarray, z_gen: np.ndarray, response: np.ndarray) -> np.ndarray:
    """Per-month exponential hazard."""
    h0 = np.log(2.0) / BASELINE_MEDIAN_MONTHS
    return h0 * np.exp(HAZARD_IMAGE * z_img + HAZARD_GENOMIC * z_gen + HAZARD_RESPONSE * response)


def _expected_censored(rate: float, hazard: np.ndarray) -> float:
    """P(censored) under exponential censoring at `rate` plus the administrative cap."""
    total = rate + hazard
    tail = np.exp(-total * ADMIN_CENSOR_MONTHS)
    return float(np.mean(rate / total * (1.0 - tail) + tail))


def simulate_survival(hazard: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(survival_months, event): exponential event and censoring times.

    The censoring rate is solved for so that the expected censored share is
    TARGET_CENSORED_FRACTION for these very patients, whatever their hazards.
    """

    def excess(r: float) -> float:
        return _expected_censored(r, hazard) - TARGET_CENSORED_FRACTION

    # If the administrative cap alone already censors enough, add no more.
    rate = 1e-9 if excess(1e-9) >= 0 else brentq(excess, 1e-9, 10.0)
    event_time = rng.exponential(1.0 / hazard)
    censor_time = np.minimum(rng.exponential(1.0 / rate, len(hazard)), ADMIN_CENSOR_MONTHS)
    event = (event_time <= censor_time).astype(np.int64)
    months = np.minimum(event_time, censor_time)
    return months, event
