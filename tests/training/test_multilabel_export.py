"""A multi-label model end to end: trained on per-drug response columns, exported with
one temperature per label (training/evidence/calibration.py calibrate_labels), and the
ONNX model's served probabilities use them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from radfusion.contract import read_contract_from_onnx
from radfusion.runtime import OnnxModel
from tests.support.tiny import TINY_COHORT
from tests.support.tiny_training import train_tiny

pytestmark = pytest.mark.slow


def test_each_label_is_calibrated_at_export(tmp_path: Path) -> None:
    from radfusion.synth import generate_cohort
    from radfusion.training.checkpoints import load_datamodule, load_module
    from radfusion.training.evidence.cases import collect_cases, predict_logits
    from radfusion.training.export import export

    # Enough validation patients (about 19) that each label has both classes there.
    cohort = generate_cohort(tmp_path / "cohort", workers=1, **{**TINY_COHORT, "n_patients": 48, "seed": 3})
    table = pd.read_csv(cohort / "clinical.csv", dtype={"patient_id": str})
    table["resp_chemo"] = (table["response"] & (table["treatment"] == "chemo")).astype(int)
    table["resp_targeted"] = (table["response"] & (table["treatment"] == "targeted")).astype(int)
    table.to_csv(cohort / "clinical.csv", index=False)
    checkpoint = train_tiny(
        cohort,
        tmp_path / "run",
        "--model.task.kind",
        "multilabel",
        "--data.targets",
        "[resp_chemo, resp_targeted]",
        "--data.split",
        "[0.5, 0.4, 0.1]",
    )
    out = tmp_path / "model.onnx"
    export(checkpoint, out)
    contract = read_contract_from_onnx(out)
    assert contract.task.startswith("multilabel") and len(contract.label_temperatures) == 2
    assert all(0 < t < float("inf") and t != 1.0 for t in contract.label_temperatures)
    # Served: sigmoid(logit / that label's temperature), the logits carrying the fitted levels.
    dm = load_datamodule(checkpoint)
    cases = collect_cases(dm, "val")
    args = [a.numpy() for a in (cases.image, cases.genomics, cases.clinical, cases.presence)]
    model = OnnxModel(out, device="cpu")
    expected = 1 / (1 + np.exp(-model.logits(*args) / np.asarray(contract.label_temperatures)))
    np.testing.assert_allclose(model.run(*args), expected, atol=1e-5)
    # The levels moved the logits away from the checkpoint's own.
    raw = predict_logits(load_module(checkpoint).net, cases).numpy()
    assert not np.allclose(raw, model.logits(*args), atol=1e-4)
