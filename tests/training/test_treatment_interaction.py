"""The explicit treatment-interaction term end to end: `radfusion train` with
configs/experiment/treatment.yaml builds it from the data's treatment levels, the
checkpoint rebuilds it, and export carries it into ONNX with parity and writes the
switch margin the evidence check uses into the contract."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from radfusion.contract import read_contract_from_onnx
from radfusion.runtime import OnnxModel
from radfusion.training.checkpoints import load_datamodule, load_module
from radfusion.training.evidence import benefit as benefit_fit
from radfusion.training.evidence.benefit import fit_benefit, fitting_cases
from radfusion.training.evidence.cases import collect_cases
from radfusion.treatment import DEFAULT_INTERVAL_MARGIN
from tests.support.tiny_training import CONFIGS, train_tiny

pytestmark = pytest.mark.slow

TREATMENT = ["--config", str(CONFIGS / "experiment" / "treatment.yaml")]


@pytest.fixture(scope="module")
def checkpoint(tiny_cohort: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_tiny(tiny_cohort, tmp_path_factory.mktemp("interaction"), *TREATMENT)


def test_training_builds_the_term_from_the_treatment_levels(checkpoint: Path) -> None:
    module, dm = load_module(checkpoint), load_datamodule(checkpoint)
    spec = dm.clinical
    columns = [spec.features.index(f"treatment={level}") for level in spec.treatments]
    assert spec.treatments[0] == "chemo"  # the reference comes first
    assert list(module.hparams.treatment_columns) == columns
    term = module.net.treatment_effect
    assert term is not None and term.treatment_columns.tolist() == columns
    # The clinical encoder sees every covariate but the treatment.
    keep = module.net.clinical_keep.tolist()
    assert [i for i, k in enumerate(keep) if k == 0] == columns
    # Trained, the term is no longer its zero start.
    assert float(term.blocks.bias.abs().sum() + term.features.weight.abs().sum()) > 0


def test_export_keeps_parity_and_carries_the_switch_margin(checkpoint: Path, tmp_path: Path) -> None:
    from radfusion.training.export import export

    out = tmp_path / "model.onnx"
    report = export(checkpoint, out)
    assert report["onnx_max_abs_diff"] <= 1e-4
    contract = read_contract_from_onnx(out)
    assert contract.clinical.switch_margin == DEFAULT_INTERVAL_MARGIN  # the model has benefit draws
    # The treatment gain the ONNX model predicts is the PyTorch model's, its term refitted as export refits it.
    module, dm = load_module(checkpoint), load_datamodule(checkpoint)
    fit_benefit(module.net, fitting_cases(dm))
    cases = collect_cases(dm, "train")
    spec = dm.clinical
    columns = [spec.features.index(f"treatment={level}") for level in spec.treatments]
    model = OnnxModel(out, device="cpu")
    gains = []
    for runner in ("torch", "onnx"):
        logits = []
        for chosen in columns:
            clinical = cases.clinical.clone()
            clinical[:, columns] = 0.0
            clinical[:, chosen] = 1.0
            args = (cases.image, cases.genomics, clinical, cases.presence)
            if runner == "torch":
                with torch.no_grad():
                    logits.append(module.net(*args).numpy())
            else:
                logits.append(model.logits(*(a.numpy() for a in args)))
        gains.append((logits[1][:, 1] - logits[1][:, 0]) - (logits[0][:, 1] - logits[0][:, 0]))
    assert np.max(np.abs(gains[0] - gains[1])) < 1e-4
    # The benefit's bootstrap draws (training/evidence/benefit.py) are centred on that gain.
    benefit = contract.treatment_benefit
    assert benefit is not None and benefit.draws.shape == (200, 1, benefit.n_parameters)
    point = benefit.design(cases.genomics.numpy(), cases.presence.numpy()) @ benefit.draws.mean(axis=0)[0]
    assert np.max(np.abs(point - gains[1])) < 1e-3
    low, high = benefit.interval(cases.genomics.numpy(), cases.presence.numpy())[:, 0].T
    assert np.all(low < high)


def test_the_refit_term_solves_its_regression(checkpoint: Path) -> None:
    """fit_benefit leaves the term at the penalised likelihood's optimum on the training
    and validation patients (zero gradient), written back into the network."""
    module, dm = load_module(checkpoint), load_datamodule(checkpoint)
    term = module.net.treatment_effect
    trained = term.blocks.bias.detach().clone(), term.features.weight.detach().clone()
    cases = fitting_cases(dm)
    assert [len(c) for c in cases] == [len(dm.records["train"]), len(dm.records["val"])]
    draws = fit_benefit(module.net, cases)
    x, y, offset = benefit_fit._regression(module.net, draws, cases)
    blocks, features = benefit_fit._columns(term)
    theta = benefit_fit._trained_parameters(term, blocks, features)
    # The regression's solution is the term's, plus the intercept it fits and does not keep.
    full = benefit_fit._ridge_logistic(x, y, offset, np.ones(len(y)), draws.n_parameters)
    np.testing.assert_allclose(full[:-1], theta, atol=1e-6)
    p = 1.0 / (1.0 + np.exp(-(offset + x @ full)))
    penalty = np.full(len(full), benefit_fit.RIDGE)
    penalty[: -1 : draws.n_parameters] = 0.0
    penalty[-1] = 0.0
    gradient = x.T @ (p - y) + penalty * full
    assert np.max(np.abs(gradient)) < 1e-4 * len(y)
    assert not (torch.equal(trained[0], term.blocks.bias) and torch.equal(trained[1], term.features.weight))
    # The draws are centred on it.
    assert np.allclose(draws.draws.mean(axis=0).reshape(-1), theta, atol=1e-9)


def test_the_term_needs_a_treatment_covariate(tiny_cohort: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"data\.treatment"):
        train_tiny(
            tiny_cohort,
            tmp_path,
            "--model.network.treatment_interaction",
            "true",
            "--model.network.modalities",
            "[image, genomics, clinical]",
            "--data.clinical_numeric",
            "[age]",
        )
