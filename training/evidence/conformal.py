"""Conformal prediction sets fitted at export (radfusion.conformal holds the method and
what serving applies): thresholds from the validation split's probabilities, as the
service computes them (the exported logits, the contract's temperature), and their
coverage measured on the test split, which the thresholds never saw."""

from __future__ import annotations

import logging

from radfusion.conformal import ConformalSpec, coverage_report, fit_class_conditional
from radfusion.runtime import probabilities_from_logits
from radfusion.training.evidence.cases import collect_cases, predict_logits

log = logging.getLogger(__name__)


def fit_conformal(net, dm, temperature: float, coverage: float) -> ConformalSpec | None:
    """The spec, or None when the validation split is empty (nothing to calibrate on)."""
    if not dm.records.get("val"):
        log.warning("no validation patients: the model is exported without conformal prediction sets")
        return None
    val = collect_cases(dm, "val")
    probabilities = probabilities_from_logits(predict_logits(net, val).numpy(), temperature)
    spec = fit_class_conditional(probabilities, val.label.numpy(), coverage)
    if dm.records.get("test"):
        test = collect_cases(dm, "test")
        held_out = probabilities_from_logits(predict_logits(net, test).numpy(), temperature)
        spec.test = coverage_report(spec, held_out, test.label.numpy())
    return spec
