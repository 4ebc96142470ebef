"""The runtime choice recorded in the contract (RuntimeChoice): it round-trips, older
models without it open with ONNX Runtime's defaults, a recorded configuration is
the one the session gets, and a recorded provider missing here falls back to the
CPU provider with a warning instead of stopping a server."""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from radfusion import runtime
from radfusion.contract import ModelContract, RuntimeChoice, read_contract_from_onnx, write_contract_to_onnx
from radfusion.runtime import CPU_PROVIDER, OnnxModel, machine_cpus


def with_choice(model: Path, tmp_path: Path, choice: RuntimeChoice | None) -> Path:
    copy = tmp_path / "model.onnx"
    shutil.copy(model, copy)
    contract = read_contract_from_onnx(copy)
    contract.runtime = choice
    write_contract_to_onnx(copy, contract)
    return copy


def inputs(contract: ModelContract, n: int = 2) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(0)
    return (
        rng.random((n, 1, *contract.image.target_shape), dtype=np.float32),
        rng.standard_normal((n, len(contract.genomics.features)), dtype=np.float32),
        np.zeros((n, contract.clinical_width), np.float32),
        np.ones((n, len(contract.modalities)), np.float32),
    )


def test_the_choice_round_trips_through_the_contract(tiny_contract) -> None:
    choice = RuntimeChoice(
        "OpenVINOExecutionProvider", threads=1, spinning=False, graph="plain", cpus=2, timings_ms={"a": [1.5, 20.0]}
    )
    contract = dataclasses.replace(tiny_contract, runtime=choice)
    assert ModelContract.from_json(contract.to_json()) == contract
    # A contract written before the field existed reads as "no choice", and writes as before.
    older = json.loads(tiny_contract.to_json())
    assert "runtime" not in older
    assert ModelContract.from_dict(older).runtime is None
    # What a later version adds inside the choice is left out, not an error.
    later = json.loads(contract.to_json())
    later["runtime"]["affinity"] = [0, 1]
    assert ModelContract.from_dict(later).runtime == choice


def test_a_model_without_a_choice_opens_with_onnx_runtime_defaults(tiny_onnx_model: Path) -> None:
    model = OnnxModel(tiny_onnx_model, device="cpu")
    assert model.contract.runtime is None
    assert model.configuration == {
        "provider": CPU_PROVIDER,
        "threads": 0,
        "spinning": True,
        "graph": None,
        "recorded": False,
    }


def test_a_recorded_cpu_choice_is_how_the_session_opens(
    tiny_onnx_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = with_choice(tiny_onnx_model, tmp_path, RuntimeChoice(threads=1, spinning=False, cpus=machine_cpus()))
    model = OnnxModel(path, device="cpu")
    assert model.configuration == {
        "provider": CPU_PROVIDER,
        "threads": 1,
        "spinning": False,
        "graph": "folded",
        "recorded": True,
    }
    reference = OnnxModel(tiny_onnx_model, device="cpu")
    arrays = inputs(model.contract)
    np.testing.assert_allclose(model.logits(*arrays), reference.logits(*arrays), atol=1e-6)
    # An explicit thread count (RADFUSION_ORT_THREADS, --threads) wins over the record.
    assert OnnxModel(path, device="cpu", threads=3).configuration["threads"] == 3
    # A count measured on a machine with other cores says nothing here: ORT's default.
    monkeypatch.setattr(runtime, "machine_cpus", lambda: machine_cpus() + 7)
    assert OnnxModel(path, device="cpu").configuration["threads"] == 0


def test_an_explicit_spinning_wins_over_the_record(tiny_onnx_model: Path, tmp_path: Path) -> None:
    """A server whose other threads share the cores turns spinning off whatever the
    export measured alone (RADFUSION_ORT_SPINNING); the record still counts when not given."""
    spinning = with_choice(tiny_onnx_model, tmp_path, RuntimeChoice(threads=1, spinning=True, cpus=machine_cpus()))
    assert OnnxModel(spinning, device="cpu").configuration["spinning"]
    off = OnnxModel(spinning, device="cpu", spinning=False)
    assert not off.configuration["spinning"] and off.configuration["threads"] == 1
    assert OnnxModel(tiny_onnx_model, device="cpu", spinning=False).configuration["spinning"] is False
    assert OnnxModel(tiny_onnx_model, device="cpu", spinning=True).configuration["spinning"]


def test_a_recorded_provider_missing_here_falls_back_to_the_cpu_provider(
    tiny_onnx_model: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    assert "NoSuchExecutionProvider" not in ort.get_available_providers()
    path = with_choice(tiny_onnx_model, tmp_path, RuntimeChoice("NoSuchExecutionProvider", threads=1, cpus=1))
    with caplog.at_level(logging.WARNING, logger="radfusion.runtime"):
        model = OnnxModel(path, device="cpu")
    assert model.provider == CPU_PROVIDER
    assert not model.configuration["recorded"]
    assert "NoSuchExecutionProvider was measured fastest" in caplog.text and "CPU provider runs it" in caplog.text
    arrays = inputs(model.contract)
    np.testing.assert_allclose(
        model.logits(*arrays), OnnxModel(tiny_onnx_model, device="cpu").logits(*arrays), atol=1e-6
    )


def test_a_provider_that_needs_unused_inputs_left_out_gets_them_left_out(
    tiny_onnx_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The OpenVINO provider feeds the wrong tensor when a graph input no node reads (the
    # clinical input of a model without a clinical block) is there; here the CPU
    # provider stands in for it, so the pruned model and OnnxModel's feed are checked.
    monkeypatch.setattr(runtime, "OPENVINO_PROVIDER", CPU_PROVIDER)
    pruned = ort.InferenceSession(runtime._without_unused_inputs(tiny_onnx_model), providers=[CPU_PROVIDER])
    assert [i.name for i in pruned.get_inputs()] == ["image", "genomics", "presence"]
    path = with_choice(tiny_onnx_model, tmp_path, RuntimeChoice())
    model = OnnxModel(path, device="cpu")
    assert [i.name for i in model.session.get_inputs()] == ["image", "genomics", "presence"]
    arrays = inputs(model.contract)
    np.testing.assert_allclose(
        model.logits(*arrays), OnnxModel(tiny_onnx_model, device="cpu").logits(*arrays), atol=1e-6
    )
