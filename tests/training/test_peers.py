"""The causal-ML peers (training/evidence/peers.py) on a simulated trial with a planted
biomarker effect: the features they get, the policy rule they share with radfusion,
and that the learners with intervals find the patients who benefit."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from radfusion.benefit import BenefitDraws
from radfusion.training.evidence.cases import Cases
from radfusion.training.evidence.peers import PEERS, peer_features, peer_rankings

# genomics: [mutation A, mutation B, expression x3]; presence: [image, omics block, clinical];
# clinical: [treatment=chemo, treatment=targeted, age z-score].
SPEC = BenefitDraws(
    draws=np.zeros((1, 1, 4)),
    block_presence=[1],
    feature_columns=[0, 1],
    feature_blocks=[1],
    reference=[0.0, 0.0],
    clinical_presence=2,
    treatment_columns=[0, 1],
)


def _cases(n: int, seed: int) -> tuple[Cases, np.ndarray]:
    """Mutation A (30%) adds 3 log-odds of response on the targeted drug; expression 0 is
    prognostic; 10% untested (omics block absent, zeros)."""
    rng = np.random.default_rng(seed)
    mutation = (rng.random((n, 2)) < 0.3).astype(np.float32)
    expression = rng.normal(size=(n, 3)).astype(np.float32)
    tested = rng.random(n) > 0.1
    targeted = rng.random(n) < 0.5
    logit = -0.5 + 1.5 * expression[:, 0] + 3.0 * mutation[:, 0] * targeted
    label = rng.random(n) < 1 / (1 + np.exp(-logit))
    genomics = np.hstack([mutation, expression]) * tested[:, None]
    presence = np.stack([np.ones(n), tested, np.ones(n)], axis=1).astype(np.float32)
    clinical = np.stack([~targeted, targeted, rng.normal(size=n)], axis=1).astype(np.float32)
    cases = Cases(
        [f"p{i}" for i in range(n)],
        torch.zeros(n, 1),
        torch.from_numpy(genomics.astype(np.float32)),
        torch.from_numpy(clinical),
        torch.from_numpy(presence),
        torch.from_numpy(label.astype(np.int64)),
        [[] for _ in range(n)],
    )
    return cases, (mutation[:, 0] > 0) & tested


def test_effect_modifiers_are_the_terms_features_and_the_rest_controls() -> None:
    cases, _ = _cases(20, 0)
    features = peer_features(cases, SPEC)
    np.testing.assert_array_equal(features.x, SPEC.design(cases.genomics.numpy(), cases.presence.numpy())[:, 1:])
    # Controls: the other omics columns, the presence bits and the clinical covariates but the treatment.
    assert features.w.shape == (20, 3 + 3 + 1)
    np.testing.assert_array_equal(features.w[:, -1], cases.clinical[:, 2].numpy())
    np.testing.assert_array_equal(features.given, cases.clinical[:, 1].numpy().astype(int))


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1])
def test_the_peers_rank_the_same_patients_with_the_same_rule(seed: int) -> None:
    train, _ = _cases(1200, seed)
    test, benefits = _cases(400, seed + 10)
    # Fitted on two parts (as on training and validation patients): the same as one.
    halves = [train.subset(np.arange(600)), train.subset(np.arange(600, 1200))]
    rankings = peer_rankings(halves, test, SPEC, ["chemo", "targeted"], seed=seed)
    assert list(rankings) == list(PEERS)
    untested = test.presence[:, 1].numpy() == 0
    for name, table in rankings.items():
        assert list(table.index) == test.patient_ids
        assert np.all(np.isfinite(table["benefit_targeted"]))
        # The shared rule: nobody whose biomarkers were not measured is switched.
        assert set(table.loc[untested, "recommended"]) == {"chemo"}, name
        if name in ("dr_learner", "causal_forest"):
            assert table.attrs["rule"] == "lower bound > 0"
            assert np.all(table["benefit_low_targeted"] <= table["benefit_targeted"] + 1e-9)
            # A 3 log-odds effect in 30% of 1200 patients: found, and the others kept.
            accuracy = np.mean((table["recommended"] == "targeted") == benefits)
            assert accuracy >= 0.85, (name, accuracy)
        else:
            assert table.attrs["rule"] == "estimate > 0"
