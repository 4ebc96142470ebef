"""The evidence analyses checked against the synthetic cohort's truth, on one model
trained once for the session (conftest ``evidence_run``). Each test is one line of the
report's "Checked against the truth" table."""

from __future__ import annotations

import numpy as np
import pytest

from radfusion.training.evidence import truth
from tests.support.evidence_support import EVIDENCE_SALIENCY_CASES

# The first test to run also builds the shared evidence model (about 4 minutes on 2
# cores): its time counts against that test's timeout.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]


def _check(evidence, name: str) -> truth.Check:
    found = [c for c in evidence.checks if c.name == name]
    assert found, f"no check {name!r} in {[c.name for c in evidence.checks]}"
    return found[0]


def test_planted_driver_genes_lead_the_ranking(evidence_run):
    _, _, dm, ev = evidence_run
    known = truth.load_truth(dm.cohort_dir)
    top20 = set(ev.gene_ranking.index[:20])
    found = len(top20 & set(known["driver_genes"]))
    assert found >= 8, f"{found} of 12 drivers in the top 20: {ev.gene_ranking.head(20).index.tolist()}"
    assert _check(ev, "driver genes in the top 20").measured == found
    # The ranking is a finding, not noise: stable across patient folds and across methods.
    assert ev.gene_stability["jaccard_mean"] >= 0.5
    assert ev.method_agreement["spearman_mean"] >= 0.5


def test_saliency_peak_lies_in_the_planted_lesion(evidence_run):
    _, _, _, ev = evidence_run
    check = _check(ev, "saliency peak inside the planted lesion")
    assert len(ev.saliencies) == EVIDENCE_SALIENCY_CASES
    assert check.measured >= 0.8, check.detail


def test_risk_groups_separate_survival(evidence_run):
    _, _, _, ev = evidence_run
    assert ev.risk["p_value"] < 0.01, ev.risk
    # Higher model risk, shorter survival: median survival falls from low to high group.
    medians = ev.survival.groupby("group")["months"].median()
    assert medians["low"] > medians["high"]


# The recommendation switches a patient only when the lower end of the benefit's 95%
# interval clears zero, and only where the biomarkers it rests on were measured
# (radfusion.treatment.recommend), from a treatment term refitted to convergence on the
# training and validation patients (training/evidence/benefit.py). On this model 0.837
# where the check needs 0.8; over five cohort and training draws 0.84-0.96
# (bench/evidence.py). The earlier rule (a 1.0 log-odds point margin on the SGD-trained
# term, 255 training patients) gave 0.72-0.96 over the same draws and 0.53 on another machine.
def test_top_ranked_treatment_is_the_true_best(evidence_run):
    _, _, _, ev = evidence_run
    check = _check(ev, "top-ranked treatment equals the true best")
    assert check.measured >= 0.8, check.detail


def test_the_policy_is_worth_following_and_stands_beside_the_peers(evidence_run):
    """The recommended policy's true response rate is near the oracle's and clearly above
    keeping everyone on the reference; nobody is switched on an average effect; the
    causal-ML peers ranked the same patients."""
    _, _, _, ev = evidence_run
    ours = ev.policy["policies"]["radfusion"]["true"]
    assert ours["oracle"] - ours["policy"] < 0.03, ours
    assert ours["policy"] - ours["all_chemo"] > 0.03, ours
    switched = ev.treatments["recommended"] != ev.treatments.attrs["reference"]
    assert ev.benefit.measured(ev.cases.presence.numpy())[switched.to_numpy()].all()
    assert set(ev.policy["policies"]) == {"radfusion", "t_learner", "x_learner", "dr_learner", "causal_forest"}
    for name, entry in ev.policy["policies"].items():
        assert 0 < entry["true"]["policy"] <= entry["true"]["oracle"] + 1e-12, name
        assert np.isfinite(entry["qini"]["targeted"]["qini_coefficient"]), name
    groups = {(g["feature"], g["group"]): g for g in ev.policy["groups"]}
    # The planted biomarker's groups: the held-out patients show the benefit where EGFR is
    # mutated, and the model predicts it there and not in the wild type.
    mutated, wild = groups[("EGFR_mut", "mutated")], groups[("EGFR_mut", "wild type")]
    assert mutated["observed_low"] > 0, mutated
    assert mutated["predicted_difference"] > wild["predicted_difference"] + 0.1, (mutated, wild)


def test_temperature_scaling_calibrates(evidence_run):
    _, _, _, ev = evidence_run
    c = ev.calibration
    assert c["ece_after"] <= 0.05, {k: v for k, v in c.items() if not k.startswith("reliability")}
    # On 750 held-out patients the figure means something: a perfectly calibrated
    # model would show under the target by sampling noise alone.
    assert c["n"] >= 700 and c["ece_perfect_p95"] < 0.05
    assert np.isfinite(c["temperature"]) and c["temperature"] > 0
