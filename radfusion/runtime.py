"""ONNX Runtime wrapper: picks the CUDA (or TensorRT) provider only when a session
really runs on it, CPU otherwise, and reads the model contract from the file. On CPU
the session is opened as the contract's RuntimeChoice says (measured at export:
provider, intra-op threads, spinning), falling back to the CPU provider's defaults
where the recorded provider is missing here."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from radfusion.contract import ModelContract, RuntimeChoice, read_contract_from_onnx
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


CPU_PROVIDER = "CPUExecutionProvider"
OPENVINO_PROVIDER = "OpenVINOExecutionProvider"


def machine_cpus() -> int:
    """The cores this process may run on (its affinity, not the host's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _session(path: Path, providers: list, threads: int | None, spinning: bool | None = None):
    import onnxruntime as ort

    # Nothing leaves the host: ONNX Runtime's telemetry (Windows event tracing) is off.
    ort.disable_telemetry_events()
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        options.intra_op_num_threads = threads
    if spinning is not None:
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    model: str | bytes = str(path)
    if any(_provider_name(p) == OPENVINO_PROVIDER for p in providers):
        model = _without_unused_inputs(path)
    return ort.InferenceSession(model, sess_options=options, providers=providers)


def _provider_name(provider) -> str:
    return provider[0] if isinstance(provider, tuple) else provider


def _without_unused_inputs(path: Path) -> bytes:
    """The model without the graph inputs no node reads (the clinical input of a model
    without a clinical block): the OpenVINO provider maps a subgraph's inputs by position
    and feeds the wrong tensor when one is left out. OnnxModel feeds only the inputs
    its session has."""
    import onnx

    model = onnx.load(str(path))
    read = {name for node in model.graph.node for name in node.input} | {o.name for o in model.graph.output}
    kept = [i for i in model.graph.input if i.name in read]
    if len(kept) < len(model.graph.input):
        del model.graph.input[:]
        model.graph.input.extend(kept)
    return model.SerializeToString()


def chosen_threads(choice: RuntimeChoice) -> int | None:
    """The recorded intra-op thread count where it was measured on a machine like this
    one (as many cores), else None: ONNX Runtime's default."""
    if choice.threads and choice.cpus == machine_cpus():
        return choice.threads
    return None


def session_as(path: Path, choice: RuntimeChoice, threads: int | None = None, spinning: bool | None = None):
    """A CPU-side session exactly as ``choice`` says (``threads`` and ``spinning``,
    when given, win over the recorded ones); raises where its provider cannot open
    the model."""
    threads = threads or chosen_threads(choice)
    providers: list = [CPU_PROVIDER]
    if choice.provider != CPU_PROVIDER:
        options = {"device_type": "CPU", "precision": "FP32", **({"num_of_threads": str(threads)} if threads else {})}
        providers = [(choice.provider, options), CPU_PROVIDER]
    return _session(path, providers, threads, choice.spinning if spinning is None else spinning)


def cpu_session(
    path: Path, threads: int | None = None, choice: RuntimeChoice | None = None, spinning: bool | None = None
):
    """A CPU session as ``choice`` says (None: ONNX Runtime's defaults); ``threads`` and
    ``spinning``, when given, win over it. A recorded provider this installation
    lacks, or that fails to open the model, falls back to the CPU provider's defaults,
    logged: a server still starts."""
    if choice is None:
        return _session(path, [CPU_PROVIDER], threads, spinning)
    if choice.provider == CPU_PROVIDER:
        return session_as(path, choice, threads, spinning)
    import onnxruntime as ort

    name = Path(path).name
    if choice.provider not in ort.get_available_providers():
        log.warning(
            "%s was measured fastest for %s but is not installed here: the CPU provider runs it", choice.provider, name
        )
        return _session(path, [CPU_PROVIDER], threads, spinning)
    try:
        return session_as(path, choice, threads, spinning)
    except Exception as exc:  # noqa: BLE001 - any provider failure: serve on the CPU provider instead
        log.warning(
            "%s could not open %s (%s): the CPU provider runs it", choice.provider, name, str(exc).splitlines()[0][:200]
        )
        return _session(path, [CPU_PROVIDER], threads, spinning)


def open_session(
    path: Path,
    device: str = "auto",
    threads: int | None = None,
    choice: RuntimeChoice | None = None,
    spinning: bool | None = None,
):
    """``device``: "cpu", "cuda" (fail if it does not work) or "auto".

    onnxruntime-gpu lists CUDA as available even on machines without a GPU, so "auto"
    opens a session with the GPU provider and keeps it only if ORT actually used it.
    ``choice``: how to run it on CPU (the contract's RuntimeChoice; see cpu_session);
    ``spinning``: whether idle CPU intra-op threads spin (None: as ``choice`` says)."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    if device == "cpu":
        return cpu_session(path, threads, choice, spinning)
    for provider in _GPU_PROVIDERS:
        if provider not in available:
            continue
        try:
            session = _session(path, [provider, CPU_PROVIDER], threads)
        except Exception as exc:  # noqa: BLE001 - ORT raises RuntimeError or its own Fail without a driver
            log.info("%s not usable: %s", provider, str(exc).splitlines()[0][:200])
            continue
        if session.get_providers()[0] == provider:
            return session
    if device == "cuda":
        raise GpuUnavailableError(
            f"device cuda was asked for, but no GPU execution provider works here (available: {available})", NO_GPU_FIX
        )
    return cpu_session(path, threads, choice, spinning)


class OnnxModel:
    """A loaded model plus its contract. ``run`` takes batched inputs. On CPU the
    session is opened as the contract's runtime choice says (see cpu_session), but
    for ``threads`` and ``spinning`` where given: a server whose other threads share
    the cores turns spinning off (radfusion.serving.settings, RADFUSION_ORT_SPINNING)."""

    def __init__(
        self, path: Path | str, device: str = "auto", threads: int | None = None, spinning: bool | None = None
    ):
        self.path = Path(path)
        self.contract: ModelContract = read_contract_from_onnx(self.path)
        self.session = open_session(
            self.path, device=device, threads=threads, choice=self.contract.runtime, spinning=spinning
        )
        self.provider = self.session.get_providers()[0]
        # What the session reads (a provider may run a copy without unused inputs).
        self._inputs = [i.name for i in self.session.get_inputs()]

    @property
    def configuration(self) -> dict:
        """How the session runs: provider, intra-op threads (0: ONNX Runtime's default),
        spinning, and the exported graph, as opened (not as recorded, where a fallback
        or an explicit thread count changed it)."""
        options = self.session.get_session_options()
        choice = self.contract.runtime
        return {
            "provider": self.provider,
            "threads": options.intra_op_num_threads,
            "spinning": _config_entry(options, "session.intra_op.allow_spinning") != "0",
            "graph": choice.graph if choice else None,
            "recorded": choice is not None and choice.provider == self.provider,
        }

    def logits(self, image: np.ndarray, genomics: np.ndarray, clinical: np.ndarray, presence: np.ndarray) -> np.ndarray:
        feed = {"image": image, "genomics": genomics, "clinical": clinical, "presence": presence}
        (logits,) = self.session.run(
            ["logits"], {k: np.ascontiguousarray(feed[k], dtype=np.float32) for k in self._inputs}
        )
        return logits

    def run(self, image: np.ndarray, genomics: np.ndarray, clinical: np.ndarray, presence: np.ndarray) -> np.ndarray:
        """The task's outputs (see ``outputs_from_logits``): for classification,
        calibrated probabilities softmax(logits / contract temperature)."""
        return outputs_from_logits(self.logits(image, genomics, clinical, presence), self.contract)


def _config_entry(options, key: str) -> str | None:
    try:
        return options.get_session_config_entry(key)
    except RuntimeError:  # ORT raises when the entry was never set
        return None


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
