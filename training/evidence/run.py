"""All analyses for one trained checkpoint, on its own data module's held-out split,
with the truth checks when the cohort has a truth file. The report and the tests
both call ``run_evidence``; the analyses themselves live in their own modules."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from radfusion.benefit import BenefitDraws
from radfusion.explain import log_odds
from radfusion.training.evidence import (
    attribution,
    benefit,
    calibration,
    peers,
    policy,
    stratify,
    subgroups,
    treatment,
    truth,
)
from radfusion.training.evidence.cases import Cases, clinical_frame, collect_cases, predict_logits
from radfusion.training.evidence.saliency import Saliency, cohort_saliency
from radfusion.training.evidence.survival_calibration import survival_calibration
from radfusion.treatment import default_margin

log = logging.getLogger(__name__)
# Biomarker groups shown: the treatment term's strongest candidate features.
GROUP_FEATURES = 3


@dataclass
class Evidence:
    """What the report shows; arrays are per held-out patient, in ``cases`` order."""

    cases: Cases
    logits: np.ndarray
    temperature: float
    gene_ranking: pd.DataFrame | None = None
    ablation_ranking: pd.DataFrame | None = None
    gene_stability: dict | None = None
    method_agreement: dict | None = None
    saliencies: list[Saliency] = field(default_factory=list)
    risk: dict | None = None
    risk_groups: np.ndarray | None = None
    survival: pd.DataFrame | None = None
    clusters: dict | None = None
    treatments: pd.DataFrame | None = None
    # (omics feature x treatment) log-odds weights of the explicit treatment term, if any.
    treatment_effects: pd.DataFrame | None = None
    # Its bootstrap draws (training/evidence/benefit.py), behind the ranking's intervals.
    benefit: BenefitDraws | None = None
    # The causal-ML peers' rankings of the same held-out patients (training/evidence/peers.py).
    peers: dict[str, pd.DataFrame] = field(default_factory=dict)
    # Policy values, Qini curves and biomarker-group effects (training/evidence/policy.py).
    policy: dict | None = None
    calibration: dict | None = None
    # Discrete-time survival models: D-calibration and fixed-horizon calibration.
    survival_calibration: dict | None = None
    subgroups: pd.DataFrame | None = None
    checks: list[truth.Check] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def probability(self) -> np.ndarray:
        return calibration.positive_probability(self.logits, self.temperature)

    @property
    def label(self) -> np.ndarray:
        return self.cases.label.numpy()

    def summary(self) -> dict:
        """JSON-ready figures (no per-patient identifiers)."""

        def top(table):
            return (
                None
                if table is None
                else [
                    {"feature": f, "importance": float(r.importance), "direction": float(r.direction)}
                    for f, r in table.head(20).iterrows()
                ]
            )

        return {
            "n_test": len(self.cases),
            "temperature": self.temperature,
            "top_genes_integrated_gradients": top(self.gene_ranking),
            "top_genes_feature_ablation": top(self.ablation_ranking),
            "gene_stability": self.gene_stability,
            "method_agreement": self.method_agreement,
            "saliency_cases": len(self.saliencies),
            "risk": self.risk,
            "clusters": None if self.clusters is None else {k: v for k, v in self.clusters.items() if k != "clusters"},
            "treatment": None
            if self.treatments is None
            else {
                "reference": self.treatments.attrs["reference"],
                "margin": self.treatments.attrs["margin"],
                "recommended": self.treatments["recommended"].value_counts().to_dict(),
                "interactions": None
                if self.treatment_effects is None
                else [
                    {"feature": f, **{t: float(w) for t, w in row.items()}}
                    for f, row in self.treatment_effects.head(10).iterrows()
                ],
            },
            "policy": self.policy,
            "calibration": self.calibration,
            "survival_calibration": self.survival_calibration,
            "subgroups": None if self.subgroups is None else self.subgroups.to_dict(orient="records"),
            "checks": [c.to_dict() for c in self.checks],
            "notes": self.notes,
        }


def run_evidence(
    module,
    dm,
    temperature: float | None = None,
    saliency_cases: int | None = None,
    ablation_cases: int = 48,
    margin: float | None = None,
    part: str = "test",
) -> Evidence:
    """Every analysis the model supports, on the ``part`` split; truth checks if known.
    Without a ``temperature``, a classifier is calibrated first (in place) as export does;
    without a ``margin``, the treatment ranking uses serving's default for the model
    (radfusion.treatment.default_margin)."""
    net = module.net.eval()
    treatment_model = dm.clinical is not None and dm.clinical.treatment
    # Refits the treatment term in place, as export does: before the temperature is fitted.
    fit_on = benefit.fitting_cases(dm) if treatment_model and benefit.has_benefit(module) else []
    fitted = benefit.fit_benefit(net, fit_on) if fit_on else None
    if temperature is None:
        temperature = calibration.calibrate(net, dm) if module.task.kind == "classification" else 1.0
    cases = collect_cases(dm, part)
    logits = predict_logits(net, cases).numpy()
    val = collect_cases(dm, "val") if part != "val" else cases
    val_logits = predict_logits(net, val).numpy()
    ev = Evidence(cases=cases, logits=logits, temperature=temperature)
    known = truth.load_truth(dm.cohort_dir)
    clinical = clinical_frame(dm, cases.patient_ids)

    log.info("gene attributions and ablations on %d held-out patients", len(cases.patient_ids))
    _genes(ev, net, dm, ablation_cases)
    if net.uses("image"):
        with_image = int(cases.has(net, "image").sum())
        log.info(
            "occlusion saliency on %d held-out studies",
            with_image if saliency_cases is None else min(with_image, saliency_cases),
        )
        ev.saliencies = cohort_saliency(net, cases, dm.cohort_dir / "dicom", dm.geometry, saliency_cases)
    else:
        ev.notes.append("The model does not use the image: no saliency.")
    if {"survival_months", "event"} <= set(clinical.columns):
        log.info("risk groups")
        _stratify(ev, net, dm, clinical)
    else:
        ev.notes.append("The clinical table has no survival_months/event columns: no risk groups.")
    if treatment_model:
        log.info("treatment ranking, its peers (meta-learners, causal forest) and policy values")
        intervals = measured = None
        if fitted is not None:
            ev.benefit = fitted  # the draws export puts in the contract
            intervals = ev.benefit.interval(cases.genomics.numpy(), cases.presence.numpy(), temperature)
            measured = ev.benefit.measured(cases.presence.numpy())
            # The peers learn from the patients the term was refitted on.
            ev.peers = peers.peer_rankings(fit_on, cases, ev.benefit, list(dm.clinical.treatments))
        ev.treatments = treatment.rank_treatments(
            treatment.predict_under_treatments(net, cases, dm.clinical),
            margin=default_margin(intervals is not None) if margin is None else margin,
            temperature=temperature,
            intervals=intervals,
            measured=measured,
        )
        if getattr(net, "treatment_effect", None) is not None:  # the predictive biomarkers it learned
            ev.treatment_effects = net.treatment_effect.effects(
                dm.clinical.treatments[1:], attribution.omics_features(net, dm)
            )
        if module.task.kind == "classification":  # a response to weigh policies by
            ev.policy = _policy(ev, net, dm, clinical, known)
    else:
        ev.notes.append(
            "The model has no treatment input (train with configs/experiment/treatment.yaml): no treatment ranking."
        )
    if module.task.kind == "classification":
        log.info("calibration and subgroups")
        # Validation and held-out cases pooled with out-of-fold temperatures: an ECE on more patients.
        pooled = (val_logits, val.label.numpy()) if part != "val" else (None, None)
        ev.calibration = calibration.calibration_summary(logits, ev.label, temperature, *pooled)
        ev.subgroups = subgroups.subgroup_table(ev.probability, ev.label, clinical)
    elif module.task.kind == "survival_discrete":
        # The outcome columns the model was trained on; patients without a time say nothing.
        months, event = cases.time.numpy(), cases.event.numpy()
        timed = np.isfinite(months)
        ev.survival_calibration = survival_calibration(
            logits[timed], module.task.edges.numpy(), months[timed], event[timed], module.task.horizons
        )
    if known is not None:
        ev.checks = _truth_checks(ev, known)
    return ev


def _policy(ev: Evidence, net, dm, clinical: pd.DataFrame, known: dict | None) -> dict:
    """Policy values (observed, and true when the cohort's truth is known), Qini curves
    and the biomarker groups' effects, for the model's ranking and each peer's."""
    levels = list(dm.clinical.treatments)
    reference = ev.treatments.attrs["reference"]
    given = clinical[dm.clinical.treatment].to_numpy(dtype=object)
    response = ev.label
    rankings = {"radfusion": ev.treatments, **ev.peers}
    out: dict = {"reference": reference, "policies": {}, "everyone": {}}
    for level in levels:
        out["everyone"][level] = policy.observed_policy_value(np.full(len(given), level, dtype=object), given, response)
    for name, ranking in rankings.items():
        entry = {"rule": ranking.attrs.get("rule", "lower bound > margin" if ev.benefit else "estimate > margin")}
        entry["observed"] = policy.observed_policy_value(ranking["recommended"].to_numpy(dtype=object), given, response)
        if known is not None:
            entry["true"] = policy.true_policy_values(ranking["recommended"], truth.patients_by_id(known), levels)
            entry["accuracy"] = truth.check_treatment(known, ranking).measured
        entry["qini"] = {}
        for level in levels[1:]:
            arms = np.isin(given, [reference, level])
            score = _benefit_score(ranking, reference, level)
            entry["qini"][level] = policy.qini(score[arms], given[arms] == level, response[arms])
        out["policies"][name] = entry
    out["groups"] = _group_effects(ev, net, dm, given, reference, levels)
    return out


def _benefit_score(ranking: pd.DataFrame, reference: str, level: str) -> np.ndarray:
    """The ranking's predicted benefit of ``level`` over the reference, per patient."""
    if f"benefit_{level}" in ranking:
        return ranking[f"benefit_{level}"].to_numpy()
    return (ranking[f"p_{level}"] - ranking[f"p_{reference}"]).to_numpy()


def _group_effects(ev: Evidence, net, dm, given: np.ndarray, reference: str, levels: list[str]) -> list[dict]:
    """The biomarker groups of the treatment term's strongest candidate features that are
    calls (two values in the held-out patients): observed vs predicted effects."""
    if ev.treatment_effects is None or ev.benefit is None:
        return []
    names = attribution.omics_features(net, dm)
    candidates = {names[c]: position for position, c in enumerate(ev.benefit.feature_columns)}
    strongest = [
        f for f in ev.treatment_effects.index if f in candidates and ev.treatment_effects.loc[f].abs().max() > 0
    ]
    rows = []
    for feature in strongest[:GROUP_FEATURES]:
        position = candidates[feature]
        column, block = ev.benefit.feature_columns[position], ev.benefit.feature_blocks[position]
        present = ev.cases.presence[:, block].numpy() > 0
        values = ev.cases.genomics[:, column].numpy()
        calls = np.unique(values[present])
        if len(calls) != 2:
            continue
        # A call's z-score keeps its order: the higher value is the mutated one.
        groups = pd.Series(np.where(~present, "not tested", np.where(values == calls[1], "mutated", "wild type")))
        for level in levels[1:]:
            predicted = (ev.treatments[f"p_{level}"] - ev.treatments[f"p_{reference}"]).to_numpy()
            table = policy.group_effects(groups, given, ev.label, predicted, reference, level)
            rows += [{"feature": feature, "treatment": level, **r} for r in table.to_dict(orient="records")]
    return rows


def _genes(ev: Evidence, net, dm, ablation_cases: int) -> None:
    if not any(net.uses(b) for b in net.omics_sizes):
        ev.notes.append("The model does not use genomics: no gene ranking.")
        return
    features = attribution.omics_features(net, dm)
    ig = attribution.gene_attributions(net, ev.cases, features, "integrated_gradients")
    ev.gene_ranking = attribution.rank_features(ig)
    ev.gene_stability = attribution.fold_stability(ig, n_folds=3)
    subset = ev.cases.subset(np.flatnonzero(ev.cases.has(net, "genomics"))[:ablation_cases])
    ablation = attribution.gene_attributions(net, subset, features, "feature_ablation")
    ev.ablation_ranking = attribution.rank_features(ablation)
    ev.method_agreement = attribution.compare_methods(ig, ablation)


def _stratify(ev: Evidence, net, dm, clinical: pd.DataFrame) -> None:
    train = collect_cases(dm, "train")
    train_clinical = clinical_frame(dm, train.patient_ids)
    train_score = stratify.risk_scores(net, train)
    risk_model = stratify.fit_risk_model(
        train_score, train_clinical["survival_months"].to_numpy(), train_clinical["event"].to_numpy()
    )
    score = log_odds(ev.logits)
    groups = risk_model.groups(score)
    months, event = clinical["survival_months"].to_numpy(), clinical["event"].to_numpy()
    ev.risk_groups = groups
    ev.survival = pd.DataFrame({"months": months, "event": event, "group": groups})
    ev.risk = {
        **stratify.logrank(groups, months, event),
        "direction": risk_model.direction,
        "cuts": list(risk_model.cuts),
        "train_hazard_ratio_per_sd": risk_model.hazard_ratio_per_sd,
    }
    if "subtype" in clinical:
        ev.clusters = stratify.cluster_subtypes(
            stratify.fused_embeddings(net, ev.cases), clinical["subtype"].to_numpy()
        )


def _truth_checks(ev: Evidence, known: dict) -> list[truth.Check]:
    checks = []
    if ev.gene_ranking is not None:
        checks.append(truth.check_drivers(known, ev.gene_ranking))
    if ev.saliencies:
        checks.append(truth.check_saliency(known, ev.saliencies))
    if ev.risk is not None:
        checks.append(truth.check_logrank(ev.risk))
    if ev.treatments is not None:
        checks.append(truth.check_treatment(known, ev.treatments))
    if ev.calibration is not None:
        checks.append(truth.check_calibration(ev.calibration))
    return checks


def write_summary(ev: Evidence, path: Path) -> None:
    path.write_text(json.dumps(ev.summary(), indent=2, default=float))
