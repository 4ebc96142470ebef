"""A classical linear baseline as the exported model, for a cohort where it beat the
network (`radfusion cv` says when): Coxnet, the ridge Cox or the elastic-net logistic
regression, fitted on the checkpoint's own training patients and features (the same
missing-data policy), as a torch module with the network's inputs and outputs, so it
is exported, parity-checked, served and scored under the same contract.

Each of these baselines predicts an affine function of its feature row (whatever its
pipeline does inside: dropping constant columns, standardising, lifelines' centring),
so the function is read off the fitted model itself, at zero and at each unit vector,
and checked on the training rows before it is trusted."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from radfusion.training.cv.arrays import TableInputs, outcome_of, table_inputs
from radfusion.training.cv.baselines import make_baseline

AFFINE_BASELINES = ("coxnet", "cox_ridge", "logistic")
# Largest |affine form - model prediction| on the training rows, relative to the
# predictions' spread, for the form to stand for the model.
AFFINE_TOLERANCE = 1e-6


class BaselineExportError(ValueError):
    pass


class AffineBaseline(nn.Module):
    """outputs = features(genomics, clinical, presence) @ weight.T + bias, with the
    features as the baseline was fitted on (training.cv.arrays.features_of): the omics
    values (zero where their block is absent), the omics blocks' presence bits, the
    encoded covariates. Offers what export and the feature importance read from a
    network: ``modality_names``, ``omics_sizes``, ``n_outputs``, ``uses``, ``used_mask``,
    ``group_masks``."""

    def __init__(self, net, inputs: TableInputs, weight: np.ndarray, bias: np.ndarray, binary_logits: bool):
        super().__init__()
        self.modality_names = list(net.modality_names)
        self.omics_sizes = dict(net.omics_sizes)
        self.modalities = [m for m in self.modality_names if net.uses(m)]
        self.inputs = inputs
        self.binary_logits = binary_logits
        self.n_outputs = 2 if binary_logits else weight.shape[0]
        block_of = [self.modality_names.index(name) for name, size in self.omics_sizes.items() for _ in range(size)]
        self.register_buffer("feature_block", torch.tensor(block_of, dtype=torch.long), persistent=False)
        self.register_buffer("presence_bits", torch.tensor(inputs.presence, dtype=torch.long), persistent=False)
        self.register_buffer("weight", torch.as_tensor(weight, dtype=torch.float32))
        self.register_buffer("bias", torch.as_tensor(bias, dtype=torch.float32))

    def uses(self, modality: str) -> bool:
        if modality in self.omics_sizes:
            return self.inputs.genomics
        return modality == "clinical" and self.inputs.clinical

    def used_mask(self) -> list[bool]:
        return [self.uses(m) for m in self.modality_names]

    def group_masks(self) -> list[list[bool]]:
        names = self.modality_names
        return [[n == "image" for n in names], [n in self.omics_sizes for n in names], [n == "clinical" for n in names]]

    def forward(self, image, genomics, clinical, presence) -> torch.Tensor:
        parts = []
        if self.inputs.genomics:
            parts += [
                genomics * presence.index_select(1, self.feature_block),
                presence.index_select(1, self.presence_bits),
            ]
        if self.inputs.clinical:
            parts.append(clinical)
        out = torch.cat(parts, dim=1) @ self.weight.T + self.bias
        # A binary logistic model gives the positive class's log-odds: logits (0, z) give its softmax.
        return torch.cat([torch.zeros_like(out), out], dim=1) if self.binary_logits else out


def _affine_form(predict, width: int) -> tuple[np.ndarray, np.ndarray]:
    """(weight (outputs, width), bias (outputs,)) of an affine ``predict``."""
    at = np.vstack([np.zeros(width), np.eye(width)])
    values = np.asarray(predict(at), dtype=np.float64).reshape(width + 1, -1)
    return (values[1:] - values[0]).T, values[0]


def _decision(model, name: str):
    """The baseline's prediction on the linear scale: Cox log-hazard, logistic logits."""
    if name == "logistic":
        return model.model.decision_function
    return model.predict


def fit_affine_baseline(name: str, net, task_kind: str, dm, seed: int = 0) -> tuple[AffineBaseline, dict]:
    """Fit baseline ``name`` on the data module's training and validation patients
    (its policy already applied) with ``net``'s table inputs. Returns the module and
    what was chosen (penalty, features, training rows)."""
    if name not in AFFINE_BASELINES:
        raise BaselineExportError(
            f"only linear baselines can be exported ({', '.join(AFFINE_BASELINES)}), not {name!r}"
        )
    survival = task_kind == "survival_cox"
    if task_kind not in ("survival_cox", "classification"):
        raise BaselineExportError(f"a baseline is exported for Cox or classification models, not {task_kind}")
    if survival != (name != "logistic"):
        raise BaselineExportError(f"{name} does not fit a {task_kind} task")
    if getattr(net, "treatment_effect", None) is not None:
        raise BaselineExportError(
            "the network ranks treatments by its treatment term; a linear baseline would give every patient "
            "the same treatment effect"
        )
    inputs = table_inputs(net, dm.modalities)
    if inputs is None:
        raise BaselineExportError("the network uses no omics or clinical input for a classical model to be fitted on")
    records: Sequence[dict] = dm.records["train"] + dm.records["val"]
    x, outcome = inputs.of(records), outcome_of(records)
    if not survival and len(np.unique(outcome.label)) < dm.n_classes:
        raise BaselineExportError("the training patients lack a class: a logistic model cannot score it")
    model = make_baseline(name, n_classes=dm.n_classes, seed=seed).fit(x, outcome)
    decision = _decision(model, name)
    weight, bias = _affine_form(decision, x.shape[1])
    expected = np.asarray(decision(x), dtype=np.float64).reshape(len(x), -1)
    error = float(np.max(np.abs(x @ weight.T + bias - expected)))
    if not error <= AFFINE_TOLERANCE * max(1.0, float(np.ptp(expected))):
        raise BaselineExportError(f"{name}'s predictions are not affine in its features (max error {error:.3g})")
    binary = not survival and weight.shape[0] == 1
    module = AffineBaseline(net, inputs, weight, bias, binary_logits=binary).eval()
    chosen = {"baseline": name, "chosen": getattr(model, "chosen", {}), "features": x.shape[1], "patients": len(x)}
    return module, chosen


def trained_groups(net: AffineBaseline) -> list[str]:
    """The contract's ``trained_modalities`` of the baseline: never the image, which it
    does not read, whatever the network it replaces did."""
    return [*(["genomics"] if net.inputs.genomics else []), *(["clinical"] if net.inputs.clinical else [])]


def missing_in_training(net: AffineBaseline, dm) -> list[str]:
    """The used modalities some training patient lacked: the baseline was fitted with
    them absent (an omics block's presence bit is a feature), so it may score without them."""
    records = dm.records["train"] + dm.records["val"]
    presence = np.stack([r["presence"] for r in records])
    return [m for i, m in enumerate(net.modality_names) if net.uses(m) and bool((presence[:, i] == 0).any())]
