"""Batched ONNX Runtime inference over prepared studies; fills their rows in place."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence

import numpy as np

from radfusion.errors import RadfusionInputError
from radfusion.prediction import NonFiniteOutputError, Prediction
from radfusion.predictor import stack_inputs
from radfusion.preprocess import ModelInputs
from radfusion.runtime import OnnxModel
from radfusion.serving.scoring.prepare import PreparedStudy
from radfusion.serving.scoring.rows import InferenceFailedError, fill_prediction
from radfusion.treatment import TreatmentRanking, ranks_treatments


def run_inputs(model: OnnxModel, inputs: Sequence[ModelInputs]) -> np.ndarray:
    return model.run(*stack_inputs(inputs))


def infer_batch(model: OnnxModel, batch: Sequence[PreparedStudy]) -> None:
    """Predict a batch of studies that prepared cleanly. If the batch as a whole fails,
    each study is retried alone so that only the culprit gets an error row."""
    if not batch:
        return
    started = time.perf_counter()
    try:
        outputs = run_inputs(model, [_inputs_of(p) for p in batch])
    except Exception:  # noqa: BLE001 - isolate the case that breaks the runtime
        for item in batch:
            try:
                _fill(item, model, run_inputs(model, [_inputs_of(item)])[0])
            except Exception as exc:  # noqa: BLE001
                item.row["error"] = f"{InferenceFailedError.kind}: {type(exc).__name__}"
    else:
        for item, row_outputs in zip(batch, outputs, strict=True):
            _fill(item, model, row_outputs)
    if ranks_treatments(model.contract):
        _rank_treatments(model, [item for item in batch if item.row.get("error") is None])
    share = (time.perf_counter() - started) / len(batch)
    for item in batch:
        item.row["infer_seconds"] = share


def _fill(item: PreparedStudy, model: OnnxModel, outputs: np.ndarray) -> None:
    """One study's prediction into its row, or its error: a NaN/inf output
    (NonFiniteOutputError) is that study's error row, never a NaN in the output."""
    try:
        prediction = Prediction.from_outputs(model.contract, outputs)
    except RadfusionInputError as exc:
        item.row["error"] = f"{exc.kind}: {exc.message}"
        return
    fill_prediction(item.row, prediction, _inputs_of(item).modalities_used)


def _rank_treatments(model: OnnxModel, batch: Sequence[PreparedStudy]) -> None:
    """Each study's treatment ranking (the candidates of the whole batch in one model
    call), or why it has none, into its row."""
    rankings = [TreatmentRanking(model.contract, _inputs_of(item)) for item in batch]
    candidates = [c for r in rankings for c in r.candidates]
    try:
        outputs = run_inputs(model, candidates) if candidates else np.zeros((0, 0))
    except Exception as exc:  # noqa: BLE001 - the predictions stand; only the ranking is missing
        for item in batch:
            item.row["treatment_reason"] = f"ranking failed: {type(exc).__name__}"
        return
    start = 0
    for item, ranking in zip(batch, rankings, strict=True):
        unavailable = ranking.unavailable()
        if unavailable is not None:
            item.row["treatment_reason"] = unavailable["reason"]
            continue
        probabilities = outputs[start : start + len(ranking.candidates)]
        start += len(ranking.candidates)
        try:
            answer = ranking.result(probabilities)
        except NonFiniteOutputError as exc:  # never a NaN in an answer
            item.row["treatment_reason"] = f"ranking failed: {exc.message}"
            continue
        item.row.update(
            recommended_treatment=answer["recommended"],
            treatment_reason=answer["reason"],
            treatment_ranking=json.dumps(answer["ranking"], allow_nan=False),
        )


def _inputs_of(item: PreparedStudy) -> ModelInputs:
    assert item.inputs is not None, "infer_batch takes studies that prepared cleanly"
    return item.inputs
