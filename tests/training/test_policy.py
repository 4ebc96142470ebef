"""Policy values, Qini curves and biomarker-group effects (training/evidence/policy.py)
on simulated trials whose answers are known."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from radfusion.training.evidence import policy


def _trial(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A randomised trial: biomarker-positive patients (30%) respond 0.7 on the drug, 0.3 on
    the reference; the others 0.3 on either."""
    rng = np.random.default_rng(seed)
    positive = rng.random(n) < 0.3
    given = np.where(rng.random(n) < 0.5, "drug", "reference").astype(object)
    p = np.where(positive & (given == "drug"), 0.7, 0.3)
    return positive, given, (rng.random(n) < p).astype(float), p


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_observed_policy_value_finds_the_true_one(seed: int) -> None:
    positive, given, response, _ = _trial(4000, seed)
    recommended = np.where(positive, "drug", "reference").astype(object)
    # True value: 0.3 * 0.7 + 0.7 * 0.3 = 0.42; everyone on the reference: 0.3.
    value = policy.observed_policy_value(recommended, given, response)
    assert value["low"] < 0.42 < value["high"] and value["high"] - value["low"] < 0.06
    everyone = policy.observed_policy_value(np.full(len(given), "reference", dtype=object), given, response)
    # Everyone on one arm: that arm's response rate, exactly.
    assert everyone["value"] == pytest.approx(response[given == "reference"].mean())
    assert everyone["low"] < 0.3 < everyone["high"]


def test_unknown_treatments_are_left_out() -> None:
    given = np.array(["drug", None, "reference", float("nan"), ""], dtype=object)
    value = policy.observed_policy_value(np.full(5, "drug", dtype=object), given, np.array([1, 1, 0, 1, 1.0]), 10)
    assert value["n"] == 2 and value["value"] == 1.0


def test_the_true_policy_value_reads_each_patients_probabilities() -> None:
    truth = {
        "a": {"response_probability_chemo": 0.2, "response_probability_targeted": 0.8},
        "b": {"response_probability_chemo": 0.5, "response_probability_targeted": 0.5},
    }
    values = policy.true_policy_values(pd.Series(["targeted", "chemo"], index=["a", "b"]), truth, ["chemo", "targeted"])
    assert values == pytest.approx({"policy": 0.65, "all_chemo": 0.35, "all_targeted": 0.65, "oracle": 0.65})


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_qini_rewards_ranking_the_patients_who_gain_first(seed: int) -> None:
    positive, given, response, _ = _trial(4000, seed)
    treated = given == "drug"
    right = policy.qini(positive.astype(float), treated, response)
    wrong = policy.qini(-positive.astype(float), treated, response)
    noise = policy.qini(np.random.default_rng(seed + 100).random(len(given)), treated, response)
    # Half the patients treated: the curve ends near 0.5 * 0.3 * 0.4 = 0.06 extra responders per
    # patient. Ranked right it reaches that at share 0.3 and stays: an area 0.021 above the
    # random line; ranked the wrong way round, 0.021 below; a random ranking near the line.
    assert right["qini_coefficient"] > 0.012 and wrong["qini_coefficient"] < -0.012
    assert abs(noise["qini_coefficient"]) < 0.008
    assert right["gain"][0] == 0.0 and right["share"][-1] == 1.0
    # Every ranking ends at the same place: the trial's overall incremental responders per patient.
    assert right["gain"][-1] == pytest.approx(wrong["gain"][-1]) == pytest.approx(noise["gain"][-1])


def test_group_effects_find_the_planted_ones() -> None:
    positive, given, response, _ = _trial(6000, 3)
    groups = pd.Series(np.where(positive, "mutated", "wild type"))
    predicted = np.where(positive, 0.4, 0.0)
    table = policy.group_effects(groups, given, response, predicted, "reference", "drug").set_index("group")
    assert table.loc["mutated", "observed_low"] < 0.4 < table.loc["mutated", "observed_high"]
    assert table.loc["wild type", "observed_low"] < 0.0 < table.loc["wild type", "observed_high"]
    assert table.loc["mutated", "predicted_difference"] == pytest.approx(0.4)
    mutated_drug = positive & (given == "drug")
    assert table.loc["mutated", "n_drug"] == mutated_drug.sum()
    assert table.loc["mutated", "response_drug"] == pytest.approx(response[mutated_drug].mean())
