"""The field's causal-ML learners on the same patients, features and split as the
model's treatment ranking, so a recommendation policy can be put beside theirs.

EconML's meta-learners (T- and X-learner, gradient-boosted outcome models), its
doubly robust learner and its causal forest (both with confidence intervals) are fitted
on the patients the model's treatment term was (training and validation) and asked, for
every held-out patient, the benefit of each treatment over the reference on the
probability of response. Their policy is the one radfusion applies to its own intervals
(radfusion.treatment.recommend): switch when the benefit's lower bound clears zero, and
only patients whose candidate biomarkers were measured; the meta-learners have no
intervals, so theirs switch on the point estimate.

Features: the effect modifiers X are what the model's treatment term reads (its
candidate biomarkers and their blocks' presence, radfusion.benefit.BenefitDraws.design);
the learners that separate effect modifiers from controls (DR-learner, causal forest)
take every other omics feature and the clinical covariates as controls W, the
meta-learners take X and W together. None of them can read the image: the image is
a prognostic signal here, which only sharpens the outcome models, and a tabular
learner's input is what these learners are used with."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from radfusion.benefit import BenefitDraws
from radfusion.training.evidence.cases import Cases
from radfusion.treatment import recommend

PEERS = ("t_learner", "x_learner", "dr_learner", "causal_forest")
# Two-sided level of the intervals the DR-learner's and causal forest's policies read.
ALPHA = 0.05


@dataclass
class PeerFeatures:
    """Each case's effect modifiers x, controls w and given treatment (level index, -1
    when unknown)."""

    x: np.ndarray
    w: np.ndarray
    given: np.ndarray


def peer_features(cases: Cases, spec: BenefitDraws) -> PeerFeatures:
    genomics, presence, clinical = cases.genomics.numpy(), cases.presence.numpy(), cases.clinical.numpy()
    x = spec.design(genomics, presence)[:, 1:]
    others = [c for c in range(genomics.shape[1]) if c not in set(spec.feature_columns)]
    clinical_cols = [c for c in range(clinical.shape[1]) if c not in set(spec.treatment_columns)]
    # Absent blocks are zeros in the model's input (the data module's fill) and the presence bits say so.
    w = np.hstack([genomics[:, others], presence, clinical[:, clinical_cols]])
    onehot = clinical[:, spec.treatment_columns] * presence[:, [spec.clinical_presence]]
    given = np.where(onehot.sum(axis=1) > 0, onehot.argmax(axis=1), -1)
    return PeerFeatures(x.astype(np.float64), w.astype(np.float64), given)


def _learner(name: str, seed: int):
    from econml.dml import CausalForestDML
    from econml.dr import DRLearner
    from econml.metalearners import TLearner, XLearner
    from sklearn.ensemble import GradientBoostingClassifier, GradientBoostingRegressor
    from sklearn.linear_model import LogisticRegression

    if name == "t_learner":
        return TLearner(models=GradientBoostingRegressor(random_state=seed))
    if name == "x_learner":
        return XLearner(
            models=GradientBoostingRegressor(random_state=seed), propensity_model=LogisticRegression(max_iter=1000)
        )
    if name == "dr_learner":
        return DRLearner(
            model_propensity=LogisticRegression(max_iter=1000),
            model_regression=GradientBoostingClassifier(random_state=seed),
            discrete_outcome=True,
            cv=3,
            random_state=seed,
        )
    if name == "causal_forest":
        return CausalForestDML(
            model_y=GradientBoostingClassifier(random_state=seed),
            model_t=LogisticRegression(max_iter=1000),
            discrete_treatment=True,
            discrete_outcome=True,
            cv=3,
            random_state=seed,
        )
    raise ValueError(f"unknown peer {name!r}; known: {', '.join(PEERS)}")


def peer_rankings(
    train: list[Cases], test: Cases, spec: BenefitDraws, levels: list[str], peers=PEERS, seed: int = 0
) -> dict[str, pd.DataFrame]:
    """Per peer, fitted on the ``train`` cases (the patients the model's term was fitted
    on), per held-out patient: each non-reference treatment's estimated benefit over the
    reference on the response probability (``benefit_<level>``, and ``benefit_low_<level>``
    where the learner has intervals) and the recommendation."""
    parts = [peer_features(part, spec) for part in train]
    fit = PeerFeatures(*(np.concatenate([getattr(p, k) for p in parts]) for k in ("x", "w", "given")))
    ask = peer_features(test, spec)
    ask_presence = test.presence.numpy()
    known = fit.given >= 0
    y = np.concatenate([part.label.numpy() for part in train])[known].astype(int)
    t = fit.given[known]
    out = {}
    for name in peers:
        learner = _learner(name, seed)
        split = name in ("dr_learner", "causal_forest")
        if split:
            learner.fit(y, t, X=fit.x[known], W=fit.w[known])
            x = ask.x
        else:
            learner.fit(y, t, X=np.hstack([fit.x, fit.w])[known])
            x = np.hstack([ask.x, ask.w])
        effects, lows = [], []
        for k in range(1, len(levels)):
            effects.append(np.ravel(learner.effect(x, T0=0, T1=k)))
            if split:
                lows.append(np.ravel(learner.effect_interval(x, T0=0, T1=k, alpha=ALPHA)[0]))
        effect = np.column_stack(effects)
        scores = np.hstack([np.zeros((len(x), 1)), effect])
        chosen = recommend(scores, 0.0, np.column_stack(lows) if lows else None, spec.measured(ask_presence))
        table = pd.DataFrame({f"benefit_{lv}": effect[:, k] for k, lv in enumerate(levels[1:])}, index=test.patient_ids)
        for k, lv in enumerate(levels[1:]):
            if lows:
                table[f"benefit_low_{lv}"] = lows[k]
        table["recommended"] = np.asarray(levels)[chosen]
        table.attrs.update(reference=levels[0], rule="lower bound > 0" if lows else "estimate > 0")
        out[name] = table
    return out
