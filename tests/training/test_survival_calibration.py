"""D-calibration and fixed-horizon calibration of discrete-time survival curves
(training/evidence/survival_calibration.py) on patients drawn from known curves."""

from __future__ import annotations

import numpy as np
import pytest

from radfusion.training.evidence.survival_calibration import d_calibration, horizon_calibration, survival_at
from radfusion.training.tasks import survival_curve

EDGES = np.array([6.0, 12.0, 24.0, 36.0])


def _cohort(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Hazard logits per patient (a risk score shifts all intervals) and event/censoring
    times drawn from exactly those piecewise-constant hazards."""
    rng = np.random.default_rng(seed)
    score = rng.normal(0, 1, n)
    logits = -2.0 + score[:, None] + np.array([0.0, 0.2, 0.4, 0.4])
    hazard = 1 / (1 + np.exp(-logits))
    width = np.diff(np.concatenate([[0.0], EDGES]))
    rate = -np.log(1 - hazard) / width  # per month, constant in each interval
    months = np.empty(n)
    for i in range(n):
        t, start = None, 0.0
        for k in range(len(EDGES)):
            wait = rng.exponential(1 / rate[i, k])
            if start + wait <= EDGES[k] or k == len(EDGES) - 1:
                t = start + wait
                break
            start = EDGES[k]
        months[i] = t
    censor = rng.uniform(0, 60, n)
    event = (months <= censor).astype(int)
    return logits, np.minimum(months, censor), event


def test_survival_between_edges_follows_the_constant_hazard() -> None:
    logits = np.array([[0.0, -1.0, -1.0, -1.0]])
    curve = survival_curve(logits)
    at = survival_at(curve, EDGES, np.array([0.0, 3.0, 6.0, 12.0, 48.0]))
    assert at[0] == pytest.approx(1.0) and at[1] == pytest.approx(0.5**0.5)
    assert at[2] == pytest.approx(curve[0, 0]) and at[3] == pytest.approx(curve[0, 1])
    # Past the last edge, the last interval's hazard goes on: one more interval's factor.
    assert at[4] == pytest.approx(curve[0, 3] * curve[0, 3] / curve[0, 2])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_calibrated_curves_pass_and_shifted_ones_fail(seed: int) -> None:
    logits, months, event = _cohort(3000, seed)
    right = d_calibration(survival_curve(logits), EDGES, months, event)
    wrong = d_calibration(survival_curve(logits + 1.0), EDGES, months, event)
    assert right["p_value"] > 0.001 and max(abs(b - 0.1) for b in right["bin_shares"]) < 0.03
    assert wrong["p_value"] < 1e-6
    for h in (12.0, 24.0):
        good = horizon_calibration(survival_curve(logits), EDGES, months, event, h)
        bad = horizon_calibration(survival_curve(logits + 1.0), EDGES, months, event, h)
        assert good["calibration_error"] < 0.045 and bad["calibration_error"] > 0.12
        assert good["slope"] == pytest.approx(1.0, abs=0.25)


def test_a_horizon_beyond_follow_up_has_no_observed_figure() -> None:
    logits, months, event = _cohort(200, 3)
    far = horizon_calibration(survival_curve(logits), EDGES, np.minimum(months, 20.0), event, 30.0)
    assert far["calibration_error"] is None and far["groups"] == []
