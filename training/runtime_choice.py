"""Export with the fastest way to run: the network is exported as both graphs
(3D convolutions folded into 2D ones, radfusion.training.onnx_layout, and plain), each
candidate ONNX Runtime configuration is timed on them on this machine, and the
fastest graph is written with its configuration in the contract (RuntimeChoice),
which radfusion.runtime.OnnxModel opens it with.

Candidates: the CPU provider with ONNX Runtime's default intra-op threads (the cores)
or one, threads spinning or not; the OpenVINO provider where onnxruntime-openvino is
the installed ONNX Runtime. Each is timed at batch 1 and 16 in alternating rounds
(other load on a shared machine falls on all alike); the score is the geometric mean
of the two medians. A candidate that fails, or whose logits differ from the CPU
provider's by more than the parity tolerance, is left out."""

from __future__ import annotations

import dataclasses
import logging
import math
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from torch import nn

from radfusion.contract import ModelContract, RuntimeChoice, write_contract_to_onnx
from radfusion.runtime import CPU_PROVIDER, OPENVINO_PROVIDER, machine_cpus, session_as
from radfusion.training.onnx_layout import foldable

log = logging.getLogger(__name__)

BATCHES = (1, 16)
TOLERANCE = 1e-4
# Idle intra-op threads spin some 30 ms after a run: a pause keeps them off the next candidate's time.
SETTLE_S = 0.05


def candidates(graphs: list[str], providers: list[str], cpus: int) -> dict[str, RuntimeChoice]:
    thread_counts = (0, 1) if cpus > 1 else (0,)
    out = {}
    for graph in graphs:
        for threads in thread_counts:
            for spinning in (True, False):
                name = f"{graph}/cpu/{'1' if threads else 'all'}-threads/{'spin' if spinning else 'no-spin'}"
                out[name] = RuntimeChoice(CPU_PROVIDER, threads, spinning, graph)
            if OPENVINO_PROVIDER in providers:
                out[f"{graph}/openvino/{'1' if threads else 'all'}-threads"] = RuntimeChoice(
                    OPENVINO_PROVIDER, threads, True, graph
                )
    return out


def example_inputs(contract: ModelContract, n: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "image": rng.random((n, 1, *contract.image.target_shape), dtype=np.float32),
        "genomics": rng.standard_normal((n, len(contract.genomics.features)), dtype=np.float32),
        "clinical": np.zeros((n, contract.clinical_width), np.float32),
        "presence": np.ones((n, len(contract.modalities)), np.float32),
    }


def time_candidates(
    paths: dict[str, Path],
    contract: ModelContract,
    choices: dict[str, RuntimeChoice],
    rounds: int = 3,
    calls: int = 3,
    budget_s: float = 60.0,
) -> dict[str, list[float]]:
    """Each working candidate's median ms at each of BATCHES. Fewer rounds where one
    pass over the candidates is slow (``budget_s``: about the most the timing takes)."""
    feeds = {n: example_inputs(contract, n) for n in BATCHES}
    sessions, reference = {}, None
    pass_s = 0.0
    for name, choice in choices.items():
        try:
            session = session_as(paths[choice.graph], choice, threads=choice.threads or None)
            inputs = {i.name for i in session.get_inputs()}
            started = time.perf_counter()
            outputs = [session.run(["logits"], {k: v for k, v in feeds[n].items() if k in inputs})[0] for n in BATCHES]
            pass_s += time.perf_counter() - started
        except Exception as exc:  # noqa: BLE001 - a candidate that does not work here is no candidate
            log.info("runtime candidate %s left out: %s", name, str(exc).splitlines()[0][:200])
            continue
        if reference is None:
            reference = outputs
        diff = max(float(np.max(np.abs(a - b))) for a, b in zip(outputs, reference, strict=True))
        if diff > TOLERANCE:
            log.info("runtime candidate %s left out: logits differ by %.3g", name, diff)
            continue
        sessions[name] = (session, inputs)
    rounds = max(1, min(rounds, int(budget_s / max(pass_s * (calls + 1), 1e-9))))
    times: dict[str, dict[int, list[float]]] = {name: {n: [] for n in BATCHES} for name in sessions}
    order = list(sessions)
    for r in range(rounds):
        for name in order[r % len(order) :] + order[: r % len(order)]:
            session, inputs = sessions[name]
            for n in BATCHES:
                feed = {k: v for k, v in feeds[n].items() if k in inputs}
                time.sleep(SETTLE_S)  # the candidate before stops spinning
                session.run(["logits"], feed)  # warm-up
                timed = []
                for _ in range(calls):
                    started = time.perf_counter()
                    session.run(["logits"], feed)
                    timed.append(time.perf_counter() - started)
                times[name][n].append(statistics.median(timed))
    return {
        name: [round(1000 * statistics.median(by_batch[n]), 3) for n in BATCHES] for name, by_batch in times.items()
    }


def score(timings_ms: list[float]) -> float:
    return math.prod(timings_ms) ** (1 / len(timings_ms))


def export_fastest(
    net: nn.Module, contract: ModelContract, path: Path, rounds: int = 3, budget_s: float = 30.0
) -> RuntimeChoice:
    """Export ``net`` to ``path`` as the graph that runs fastest here, its configuration
    in ``contract.runtime`` (set on the object given too) and in the file's contract."""
    import onnxruntime as ort

    from radfusion.training.export import export_onnx

    contract.runtime = None
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=f".{path.name}.") as tmp:
        # Both graphs where there is something to fold, else the one there is.
        graphs = ("folded", "plain") if any(foldable(m) for m in net.modules()) else ("plain",)
        paths = {graph: Path(tmp) / f"{graph}.onnx" for graph in graphs}
        for graph, graph_path in paths.items():
            export_onnx(net, contract, graph_path, fold=graph == "folded")
        cpus = machine_cpus()
        choices = candidates(list(paths), ort.get_available_providers(), cpus)
        timings = time_candidates(paths, contract, choices, rounds=rounds, budget_s=budget_s)
        if not timings:
            raise RuntimeError(f"no ONNX Runtime configuration runs {path.name}")
        best = min(timings, key=lambda name: score(timings[name]))
        choice = dataclasses.replace(choices[best], cpus=cpus, timings_ms=timings)
        log.info("runtime: %s is fastest here (%s ms at batch %s)", best, timings[best], BATCHES)
        contract.runtime = choice
        write_contract_to_onnx(paths[choice.graph], contract)
        paths[choice.graph].replace(path)
    return choice
