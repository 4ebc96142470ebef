"""The known-signal model (tests/support/known_signal.py) with a treatment covariate and
a known treatment effect: under "targeted" only, GAIN x z(G1_mut) + SHIFT is added to
the response logit, so targeted helps mutated patients and harms the others, as in the
synthetic cohort's outcome model (EGFR_mut x treatment). Shared by the ranking tests
of the service (tests/serving/http/test_treatment_api.py) and of the scorer."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from radfusion.benefit import BenefitDraws
from radfusion.contract import ClinicalSpec, ModelContract
from tests.support.known_signal import GENE_WEIGHTS, export_known_signal, known_signal_contract, raw_genes

GAIN, SHIFT = 3.0, -0.5
SWITCH_MARGIN = 0.5  # log-odds, carried by the contract; differs from the default on purpose


def clinical_contract() -> ModelContract:
    spec = ClinicalSpec(
        numeric={"age": [60.0, 10.0]},
        categorical={"treatment": ["chemo", "targeted"], "sex": ["F", "M"]},
        treatment="treatment",
        switch_margin=SWITCH_MARGIN,
    )
    every = ["image", "genomics", "clinical"]
    return known_signal_contract(clinical=spec, trained_modalities=every, may_be_missing=every)


def clinical_values(treatment: str = "chemo") -> dict:
    return {"age": 67, "sex": "F", "treatment": treatment, "site": "ignored"}


def genes_with_mutation(g1_mut: float) -> dict[str, float]:
    return {**raw_genes(), "G1_mut": g1_mut}


def with_known_benefit(contract: ModelContract, spread: float, n: int = 400) -> ModelContract:
    """``contract`` with benefit draws (radfusion.benefit) centred exactly on the model's
    own effect, SHIFT + GAIN z(G1_mut), each parameter spread by N(0, ``spread``)."""
    mutation = contract.genomics.features.index("G1_mut")
    block = contract.modalities.index("mutation")
    rng = np.random.default_rng(0)
    noise = np.stack([rng.normal(0, spread, n), np.zeros(n), rng.normal(0, spread, n)], axis=1)
    benefit = BenefitDraws(
        draws=(noise - noise.mean(axis=0) + [SHIFT, 0.0, GAIN])[:, None, :],
        block_presence=[block],
        feature_columns=[mutation],
        feature_blocks=[block],
        reference=[0.0],
        clinical_presence=contract.modalities.index("clinical"),
        treatment_columns=[contract.clinical.features.index(f"treatment={t}") for t in ("chemo", "targeted")],
    )
    return dataclasses.replace(contract, treatment_benefit=benefit)


def export_treatment_model(path: Path, contract: ModelContract) -> Path:
    """The ONNX model with the known treatment effect, under ``contract``."""
    effect = {
        "column": contract.clinical.features.index("treatment=targeted"),
        "gain": GAIN,
        "interaction": contract.genomics.features.index("G1_mut"),
        "shift": SHIFT,
    }
    return export_known_signal(path, contract, GENE_WEIGHTS, effect)
