"""ONNX Runtime wrapper: picks the CUDA (or TensorRT) provider only when a session
really runs on it, CPU otherwise, and reads the model contract from the file."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from radfusion.contract import ModelContract, read_contract_from_onnx
from radfusion.errors import UserError

log = logging.getLogger(__name__)

_GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")
NO_GPU_FIX = "use device auto or cpu, or install the 'gpu' extra (onnxruntime-gpu) on a machine with a CUDA GPU"


class GpuUnavailableError(UserError, RuntimeError):
    """Device "cuda" was asked for and no GPU execution provider works here (a
    RuntimeError, as before, for callers that catch one)."""


def require_gpu_provider(device: str) -> None:
    """--device cuda where ONNX Runtime has no GPU execution provider at all: a
    UserError before a command opens anything, not when its first model opens."""
    import onnxruntime as ort

    if device == "cuda" and not set(_GPU_PROVIDERS) & set(ort.get_available_providers()):
        raise GpuUnavailableError(
            "device cuda was asked for, but ONNX Runtime here has no GPU execution provider", NO_GPU_FIX
        )


def _session(path: Path, providers: list[str], threads: int | None):
    import onnxruntime as ort

    # Nothing leaves the host: ONNX Runtime's telemetry (Windows event tracing) is off.
    ort.disable_telemetry_events()
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), sess_options=options, providers=providers)


def open_session(path: Path, device: str = "auto", threads: int | None = None):
    """``device``: "cpu", "cuda" (fail if it does not work) or "auto".

    onnxruntime-gpu lists CUDA as available even on machines without a GPU, so "auto"
    opens a session with the GPU provider and keeps it only if ORT actually used it."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    if device == "cpu":
        return _session(path, ["CPUExecutionProvider"], threads)
    for provider in _GPU_PROVIDERS:
        if provider not in available:
            continue
        try:
            session = _session(path, [provider, "CPUExecutionProvider"], threads)
        except Exception as exc:  # noqa: BLE001 - ORT raises RuntimeError or its own Fail without a driver
            log.info("%s not usable: %s", provider, str(exc).splitlines()[0][:200])
            continue
        if session.get_providers()[0] == provider:
            return session
    if device == "cuda":
        raise GpuUnavailableError(
            f"device cuda was asked for, but no GPU execution provider works here (available: {available})", NO_GPU_FIX
        )
    return _session(path, ["CPUExecutionProvider"], threads)


class OnnxModel:
    """A loaded model plus its contract. ``run`` takes batched inputs."""

    def __init__(self, path: Path | str, device: str = "auto", threads: int | None = None):
        self.path = Path(path)
        self.contract: ModelContract = read_contract_from_onnx(self.path)
        self.session = open_session(self.path, device=device, threads=threads)
        self.provider = self.session.get_providers()[0]

    def logits(self, image: np.ndarray, genomics: np.ndarray, clinical: np.ndarray, presence: np.ndarray) -> np.ndarray:
        feed = {"image": image, "genomics": genomics, "clinical": clinical, "presence": presence}
        (logits,) = self.session.run(
            ["logits"], {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in feed.items()}
        )
        return logits

    def run(self, image: np.ndarray, genomics: np.ndarray, clinical: np.ndarray, presence: np.ndarray) -> np.ndarray:
        """The task's outputs (see ``outputs_from_logits``): for classification,
        calibrated probabilities softmax(logits / contract temperature)."""
        return outputs_from_logits(self.logits(image, genomics, clinical, presence), self.contract)


def outputs_from_logits(logits: np.ndarray, contract: ModelContract) -> np.ndarray:
    """Classification: softmax over classes; multi-label: a sigmoid per label (both
    after the temperature, per label where the contract has label_temperatures);
    survival: the raw outputs (a Cox risk score, or interval hazard logits that
    radfusion.prediction turns into survival probabilities)."""
    kind = contract.task.partition(":")[0]
    if kind == "survival":
        return np.asarray(logits, dtype=np.float32)
    if kind == "multilabel":
        temperature = np.asarray(contract.label_temperatures or contract.temperature, dtype=np.float64)
        scaled = np.asarray(logits, dtype=np.float64) / temperature
        return (1.0 / (1.0 + np.exp(-scaled))).astype(np.float32)
    return probabilities_from_logits(logits, contract.temperature)


def probabilities_from_logits(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    scaled = np.asarray(logits, dtype=np.float64) / temperature
    scaled -= scaled.max(axis=-1, keepdims=True)
    exp = np.exp(scaled)
    return (exp / exp.sum(axis=-1, keepdims=True)).astype(np.float32)
