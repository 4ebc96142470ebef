"""A treatment's benefit with its interval (radfusion.benefit, radfusion.treatment):
the interval from the contract's draws for one patient's inputs, the switch rule on its
lower bound, the answer's wording, and the draws through the contract's JSON."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from radfusion.benefit import BenefitDraws
from radfusion.contract import ClinicalSpec, ModelContract
from radfusion.treatment import recommend


def _draws(main: float, mutation: float, spread: float, n: int = 400) -> BenefitDraws:
    """One non-reference treatment; parameters [1, mutation block bit, EGFR_mut - 0]."""
    rng = np.random.default_rng(0)
    draws = np.stack([rng.normal(main, spread, n), np.zeros(n), rng.normal(mutation, spread, n)], axis=1)
    return BenefitDraws(
        draws=draws[:, None, :],
        block_presence=[2],
        feature_columns=[3],
        feature_blocks=[2],
        reference=[0.0],
        clinical_presence=3,
        treatment_columns=[0, 1],
    )


def test_the_interval_is_the_draws_quantiles_for_the_patients_inputs() -> None:
    b = _draws(main=0.0, mutation=3.0, spread=0.5)
    genomics = np.array([[0, 0, 0, 1.0], [0, 0, 0, 0.0]])  # EGFR mutated, wild type
    presence = np.ones((2, 4))
    low, high = b.interval(genomics, presence).transpose(2, 0, 1)[:, :, 0]
    # mutated: 3 + N(0, 0.5) + N(0, 0.5) -> sd 0.71; wild type: N(0, 0.5)
    assert low[0] == pytest.approx(3 - 1.96 * 0.5 * 2**0.5, abs=0.15) and high[0] == pytest.approx(4.39, abs=0.15)
    assert low[1] == pytest.approx(-0.98, abs=0.1) and high[1] == pytest.approx(0.98, abs=0.1)
    # The temperature scales the interval as it scales the ranking's log-odds.
    assert b.interval(genomics, presence, temperature=0.5)[0, 0, 0] == pytest.approx(2 * low[0])
    # An absent mutation block: its features contribute nothing.
    absent = presence.copy()
    absent[0, 2] = 0
    assert b.interval(genomics, absent)[0, 0, 0] == pytest.approx(low[1], abs=1e-9)


def test_the_switch_rule_reads_the_lower_bound() -> None:
    scores = np.array([[0.0, 1.6], [0.0, 1.6], [0.0, 0.4]])  # gains 1.6, 1.6, 0.4
    lower = np.array([[1.2], [0.3], [-0.5]])
    assert recommend(scores, margin=1.0).tolist() == [1, 1, 0]
    assert recommend(scores, margin=1.0, lower=lower).tolist() == [1, 0, 0]
    # Whose biomarkers were not measured stays on the reference, however large the average effect.
    measured = np.array([False, True, True])
    assert recommend(scores, margin=1.0, lower=lower, measured=measured).tolist() == [0, 0, 0]


def test_measured_means_a_candidate_block_present() -> None:
    b = _draws(main=1.0, mutation=3.0, spread=0.1)
    presence = np.ones((3, 4))
    presence[1, 2] = 0  # no mutation block
    presence[2, 0] = 0  # no image: does not matter
    assert b.measured(presence).tolist() == [True, False, True]


def test_the_answer_gives_the_interval_and_why(tiny_contract: ModelContract) -> None:
    from radfusion.treatment import ranking_from_probabilities

    spec = ClinicalSpec(categorical={"arm": ["chemo", "targeted"]}, treatment="arm")
    contract = dataclasses.replace(tiny_contract, clinical=spec, positive_label=tiny_contract.labels[-1])
    probabilities = np.array([[0.5, 0.5], [1 / (1 + np.e**1.6), 1 - 1 / (1 + np.e**1.6)]])  # gain 1.6 log-odds
    sure = ranking_from_probabilities(contract, probabilities, intervals=np.array([[1.2, 2.0]]))
    assert sure["recommended"] == "targeted" and sure["reason"].startswith("switch to targeted")
    entry = next(r for r in sure["ranking"] if r["treatment"] == "targeted")
    assert entry["benefit_interval"] == [1.2, 2.0]
    unsure = ranking_from_probabilities(contract, probabilities, intervals=np.array([[0.3, 2.9]]))
    assert unsure["recommended"] == "chemo"
    assert unsure["reason"].startswith("no confident benefit: targeted's benefit +1.60 log-odds")
    assert "stay on chemo" in unsure["reason"]
    untested = ranking_from_probabilities(contract, probabilities, intervals=np.array([[1.2, 2.0]]), measured=False)
    assert untested["recommended"] == "chemo"
    assert untested["reason"].startswith("no personalised benefit: targeted's benefit +1.60 log-odds")
    assert "were not measured; stay on chemo" in untested["reason"]
    plain = ranking_from_probabilities(contract, probabilities)
    assert plain["recommended"] == "targeted" and "benefit_interval" not in str(plain["ranking"])


def test_the_draws_go_through_the_contracts_json(tiny_contract: ModelContract) -> None:
    b = _draws(main=0.1, mutation=2.0, spread=0.3, n=20)
    read = ModelContract.from_json(dataclasses.replace(tiny_contract, treatment_benefit=b).to_json())
    assert read.treatment_benefit is not None
    np.testing.assert_array_equal(read.treatment_benefit.draws, b.draws)
    assert read.treatment_benefit.feature_columns == [3] and read.treatment_benefit.level == 0.95
    with pytest.raises(ValueError, match="finite"):
        BenefitDraws(**{**b.to_dict(), "draws": np.full((2, 1, 3), np.nan)})
