"""`radfusion export`: checkpoint -> one ONNX file (dynamo exporter, dynamic batch)
with the model contract inside and a parity check against PyTorch on held-out cases.
Registration in the BentoML model store is serving's (radfusion.serving.modelref.
register_model), run by the `radfusion export` command: training never imports bentoml.

The ONNX file is written to a temporary name and moved into place only after the
parity check passes, so a failed export never leaves a model that serving would load."""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
from pathlib import Path

import numpy as np
import onnx
import torch

from radfusion.conformal import DEFAULT_COVERAGE
from radfusion.contract import ModelContract, write_contract_to_onnx
from radfusion.runtime import OnnxModel
from radfusion.training.checkpoints import build_contract, load_datamodule, load_module
from radfusion.training.evidence.benefit import fit_benefit, fitting_cases, has_benefit
from radfusion.training.importance import DEFAULT_CASES, export_importance
from radfusion.training.model import LogitModel
from radfusion.training.onnx_layout import fold_depth
from radfusion.training.runtime_choice import export_fastest
from radfusion.treatment import default_margin

log = logging.getLogger(__name__)

PARITY_TOLERANCE = 1e-4
# export(model=...): the checkpoint's own network.
NETWORK = "network"


class ParityError(RuntimeError):
    pass


def export_onnx(net: torch.nn.Module, contract: ModelContract, path: Path, fold: bool = True) -> None:
    """``net`` as ONNX at ``path``, the contract inside. ``fold``: 3D convolutions as
    the equivalent 2D ones ONNX Runtime runs faster (radfusion.training.onnx_layout;
    ``net`` itself is not changed)."""
    if fold:
        net = fold_depth(net)
    wrapper = LogitModel(net).eval()
    shape = (1, *contract.image.target_shape)
    example = (
        torch.rand(2, *shape),
        torch.randn(2, len(contract.genomics.features)),
        torch.randn(2, contract.clinical_width),
        torch.ones(2, len(contract.modalities)),
    )
    batch = torch.export.Dim("batch", min=1, max=4096)
    torch.onnx.export(
        wrapper,
        example,
        str(path),
        dynamo=True,
        input_names=list(contract.input_names),
        output_names=list(contract.output_names),
        dynamic_shapes={name: {0: batch} for name in ("image", "genomics", "clinical", "presence")},
        external_data=False,
        verbose=False,
    )
    _drop_stack_traces(path)
    write_contract_to_onnx(path, contract)


# Node metadata the dynamo exporter adds: the Python stack of each traced operation, with
# the exporting machine's file paths. A model file leaves the training site; they stay.
_STACK_TRACE_KEY = "pkg.torch.onnx.stack_trace"


def _drop_stack_traces(path: Path) -> None:
    model = onnx.load(str(path))
    for node in model.graph.node:
        kept = [p for p in node.metadata_props if p.key != _STACK_TRACE_KEY]
        del node.metadata_props[:]
        node.metadata_props.extend(kept)
    onnx.save(model, str(path))


def group_patterns(net) -> list[torch.Tensor]:
    """Presence masks for every non-empty combination of the model's modality groups
    (image, all omics blocks, clinical)."""
    names = net.modality_names
    groups = [torch.tensor(g) for g in net.group_masks() if any(g)]
    patterns = []
    for bits in itertools.product((0, 1), repeat=len(groups)):
        if any(bits):
            patterns.append(
                sum((g * b for g, b in zip(groups, bits, strict=True)), torch.zeros(len(names))).clamp(max=1).float()
            )
    return patterns


@torch.no_grad()
def parity_check(net: torch.nn.Module, onnx_path: Path, dm, max_cases: int = 32) -> float:
    """Max |logit_torch - logit_onnx| over held-out cases, each also with every
    combination of modality groups present."""
    model = OnnxModel(onnx_path, device="cpu")
    wrapper = LogitModel(net).eval()
    worst = 0.0
    seen = 0
    for batch in dm.test_dataloader():
        inputs = (batch["image"], batch["genomics"], batch["clinical"])
        for pattern in group_patterns(net):
            presence = batch["presence"] * pattern
            presence[presence.sum(dim=1) == 0] = pattern
            expected = wrapper(*inputs, presence).numpy()
            got = model.logits(*(x.numpy() for x in inputs), presence.numpy())
            worst = max(worst, float(np.max(np.abs(expected - got))))
        seen += len(batch["label"])
        if seen >= max_cases:
            break
    if seen == 0:
        raise ParityError("no held-out cases to check parity on")
    return worst


def export(
    checkpoint: Path,
    out: Path,
    tolerance: float = PARITY_TOLERANCE,
    calibrate: bool = True,
    cohort_dir: Path | None = None,
    importance_cases: int = DEFAULT_CASES,
    model: str = NETWORK,
    conformal_coverage: float | None = DEFAULT_COVERAGE,
    tune_runtime: bool = False,
) -> dict:
    """Export ``checkpoint`` to ``out`` (plus ``out``.export.json, the report returned).
    ``tune_runtime``: time how ONNX Runtime runs the model fastest on this machine
    (radfusion.training.runtime_choice: both graphs, threads, spinning; tens of seconds)
    and record it in the contract; otherwise the folded graph with the runtime's
    defaults (a model is often served on another machine than it is exported on).
    ``cohort_dir``: where the training cohort lies now, if it moved since training
    (calibration, the feature importance and the parity check read it);
    ``importance_cases``: validation cases the contract's feature importance is
    computed on (radfusion.training.importance; 0: none); ``model``: the checkpoint's
    network, or a linear classical baseline (training.cv.affine.AFFINE_BASELINES)
    fitted on its training patients, under the same contract; ``conformal_coverage``:
    a classification network's prediction sets (radfusion.conformal; None: none)."""
    log.info("export: loading the checkpoint and its cohort")
    module = load_module(checkpoint)
    contract = build_contract(module, checkpoint)
    dm = load_datamodule(checkpoint, cohort_dir)
    net, baseline = module.net, None
    if model != NETWORK:
        log.info("export: fitting the %s baseline on the training patients", model)
        from radfusion.training.cv.affine import fit_affine_baseline, missing_in_training, trained_groups

        net, baseline = fit_affine_baseline(model, module.net, module.task.kind, dm)
        contract.name = f"{contract.name}-{model}"
        # The network's validation metrics are not this model's; `radfusion cv` measures it.
        contract.metrics = {}
        contract.trained_modalities = trained_groups(net)
        contract.may_be_missing = missing_in_training(net, dm)
    if baseline is None and has_benefit(module):
        # Refits the treatment term (before the temperature: it changes the logits) and
        # gives the benefit intervals the treatment ranking's switch rule reads.
        log.info("export: refitting the treatment term")
        contract.treatment_benefit = fit_benefit(net, fitting_cases(dm))
    # A logistic baseline is fitted on the validation patients too, by likelihood: its
    # probabilities are its own, not recalibrated on patients it has seen.
    if calibrate and module.task.kind == "classification" and baseline is None:
        # Temperature from the validation split, level from the training split (the
        # level goes into the exported graph); serving divides the logits by the temperature.
        from radfusion.training.evidence.calibration import calibrate

        log.info("export: fitting the temperature on the validation patients")
        contract.temperature = calibrate(net, dm)
    if calibrate and module.task.kind == "multilabel" and baseline is None:
        from radfusion.training.evidence.calibration import calibrate_labels

        log.info("export: fitting a temperature per label on the validation patients")
        contract.label_temperatures = calibrate_labels(net, dm)
    if conformal_coverage and module.task.kind == "classification" and baseline is None:
        # Not for a baseline: it was fitted on the validation patients the sets are calibrated on.
        from radfusion.training.evidence.conformal import fit_conformal

        log.info("export: calibrating the prediction sets (coverage %g)", conformal_coverage)
        contract.conformal = fit_conformal(net, dm, contract.temperature, conformal_coverage)
    if contract.clinical is not None and contract.clinical.treatment:
        # Serving recommends with the very rule and margin the evidence report measured.
        contract.clinical.switch_margin = default_margin(contract.treatment_benefit is not None)
    log.info("export: feature importance on up to %d validation cases", importance_cases)
    importance = export_importance(net, module.task.kind, dm, importance_cases)
    contract.feature_importance = importance.features
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".partial")
    if tune_runtime:
        log.info("export: writing the ONNX graph, timing how ONNX Runtime runs it fastest here")
        export_fastest(net, contract, tmp)
    else:
        log.info("export: writing the ONNX graph")
        export_onnx(net, contract, tmp)
    log.info("export: checking ONNX Runtime against PyTorch")
    diff = parity_check(net, tmp, dm)
    if not diff <= tolerance:
        tmp.unlink(missing_ok=True)
        raise ParityError(f"ONNX and PyTorch disagree: max |diff| {diff:.3g} > {tolerance:g}")
    tmp.replace(out)
    report = {
        "onnx": str(out),
        "model": contract.name,
        "version": contract.version,
        "baseline": baseline,
        "onnx_max_abs_diff": diff,
        "runtime": dataclasses.asdict(contract.runtime) if contract.runtime else None,
        "parity_tolerance": tolerance,
        "temperature": contract.temperature,
        "conformal": dataclasses.asdict(contract.conformal) if contract.conformal else None,
        "feature_importance": importance.report(),
    }
    write_export_report(out, report)
    return report


def write_export_report(out: Path, report: dict) -> None:
    """The export report beside the model (``model.export.json``)."""
    out.with_suffix(".export.json").write_text(json.dumps(report, indent=2))
