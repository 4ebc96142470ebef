"""ONNX Runtime's configurations against PyTorch eager, on the serving bench's model.

    python -m bench.runtimes [--rounds 8] [--calls 3]

The model is bench/serving.py's: the CPU config's fusion network (DenseNet 3D),
untrained, seeded, on the same synthetic cohort's preprocessed cases, at batch 1 and
16. Legs, all in this process: PyTorch eager (fp32, inference_mode, its default
threads: the cores), and ONNX Runtime sessions that differ in one thing each from the
project's configuration: the exported graph (3D convolutions as 2D ones or not,
training/onnx_layout.py), intra-op threads, spinning, graph optimisation level,
execution mode, denormals as zero, the optimised graph saved offline and loaded; and
the OpenVINO execution provider where onnxruntime-openvino is the installed ONNX
Runtime, and OpenVINO's own runtime (fp32 and bf16) where the openvino package is.
``chosen`` is the model opened as serving opens it (radfusion.runtime.OnnxModel,
with the configuration recorded in its contract at export).

Stability: legs alternate within each round (the order rotating from round to round),
each after a pause (idle threads of the leg before stop spinning), one warm-up call
then ``--calls`` timed ones, their median the round's figure;
a leg's ratio to PyTorch is the median over rounds of the per-round ratio, so load
from other processes falls on both sides of each ratio alike. Absolute numbers are
noise on shared machines. Results: bench/results/runtimes.json."""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from bench.cohorts import build_cohort
from bench.scoring import build_model, build_network

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "runtimes.json"
BATCHES = (1, 16)
# ONNX Runtime's idle intra-op threads spin some 30 ms after a run (PyTorch's OpenMP
# ones less): the pause between legs keeps one leg's spinning off the next one's time.
SETTLE_S = 0.05

# name -> (graph, session settings); every other setting as ONNX Runtime's default with
# the intra-op threads at the cores, as the serving bench had it. graph: "folded" (3D
# convolutions as 2D ones, training/onnx_layout.py) or "plain" (as the network has them).
# "plain_graph" is how the project ran the model before it timed its runtime.
ORT_VARIANTS: dict[str, tuple[str, dict]] = {
    "plain_graph": ("plain", {}),
    "plain_graph_1_thread": ("plain", {"threads": 1}),
    "folded_graph": ("folded", {}),
    "threads_1": ("folded", {"threads": 1}),
    "threads_ort_default": ("folded", {"threads": 0}),
    "no_spinning": ("folded", {"spinning": False}),
    "no_spinning_1_thread": ("folded", {"spinning": False, "threads": 1}),
    "level_extended": ("folded", {"optimization": "extended"}),
    "level_basic": ("folded", {"optimization": "basic"}),
    "parallel_execution": ("folded", {"parallel": True}),
    "denormals_as_zero": ("folded", {"denormal_as_zero": True}),
    "offline_optimised": ("folded", {"offline": True}),
}


def ort_session(path: Path, threads: int, settings: dict, work: Path):
    import onnxruntime as ort

    levels = {
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    }

    def options(level: str):
        opts = ort.SessionOptions()
        opts.graph_optimization_level = levels.get(level, ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
        opts.intra_op_num_threads = settings.get("threads", threads)
        if "spinning" in settings:
            opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if settings["spinning"] else "0")
        if settings.get("parallel"):
            opts.execution_mode = ort.ExecutionMode.ORT_PARALLEL
        if settings.get("denormal_as_zero"):
            opts.add_session_config_entry("session.set_denormal_as_zero", "1")
        return opts

    if settings.get("offline"):
        # Optimised once and saved; that file loaded with ORT's own optimisations off.
        optimised = work / f"{path.stem}.optimised.onnx"
        saving = options("all")
        saving.optimized_model_filepath = str(optimised)
        ort.InferenceSession(str(path), sess_options=saving, providers=["CPUExecutionProvider"])
        return ort.InferenceSession(
            str(optimised), sess_options=options("disabled"), providers=["CPUExecutionProvider"]
        )
    return ort.InferenceSession(
        str(path), sess_options=options(settings.get("optimization", "all")), providers=["CPUExecutionProvider"]
    )


def legs(work: Path, cohort: Path, threads: int) -> tuple[dict[str, Callable], dict]:
    """Each leg's ``run(arrays) -> logits``, and what the setup was."""
    import onnxruntime as ort
    import torch

    from radfusion.contract import RuntimeChoice
    from radfusion.runtime import OPENVINO_PROVIDER, OnnxModel, session_as
    from radfusion.training.export import export_onnx
    from radfusion.training.model import LogitModel

    net, contract = build_network(cohort)
    graphs = {"chosen": work / "model.onnx", "folded": work / "model-folded.onnx", "plain": work / "model-plain.onnx"}
    for path in graphs.values():
        path.unlink(missing_ok=True)  # a file left by an older network would compare two models
    build_model(cohort, graphs["chosen"])  # as bench/serving.py: exported with the runtime chosen by timing
    export_onnx(net, contract, graphs["folded"], fold=True)
    export_onnx(net, contract, graphs["plain"], fold=False)
    model = LogitModel(net).eval()
    names = list(contract.input_names)

    def run_torch(arrays):
        with torch.inference_mode():
            return model(*(torch.from_numpy(a) for a in arrays)).numpy()

    def run_torch_1_thread(arrays):
        torch.set_num_threads(1)
        try:
            return run_torch(arrays)
        finally:
            torch.set_num_threads(threads)

    runs: dict[str, Callable] = {"torch": run_torch, "torch_1_thread": run_torch_1_thread}
    for name, (graph, settings) in ORT_VARIANTS.items():
        session = ort_session(graphs[graph], threads, settings, work)
        runs[name] = lambda arrays, s=session: s.run(["logits"], dict(zip(names, arrays, strict=True)))[0]
    if OPENVINO_PROVIDER in ort.get_available_providers():
        for graph in ("folded", "plain"):
            session = session_as(graphs[graph], RuntimeChoice(OPENVINO_PROVIDER, threads))
            inputs = [i.name for i in session.get_inputs()]  # without the unused ones, as OnnxModel feeds it
            runs[f"openvino_{graph}_graph"] = lambda arrays, s=session, i=inputs: s.run(
                ["logits"], {k: v for k, v in zip(names, arrays, strict=True) if k in i}
            )[0]
    openvino_runs, openvino_version = openvino_runtime_legs(graphs, names, threads)
    runs |= openvino_runs
    chosen = OnnxModel(graphs["chosen"], device="cpu")
    runs["chosen"] = lambda arrays: chosen.logits(*arrays)
    setup = {
        "onnxruntime": ort.__version__,
        "providers": ort.get_available_providers(),
        "torch": torch.__version__,
        "chosen": chosen.configuration,
        "chooser_timings_ms": chosen.contract.runtime.timings_ms if chosen.contract.runtime else None,
        "openvino": openvino_version,
    }
    return runs, setup


def openvino_runtime_legs(
    graphs: dict[str, Path], names: list[str], threads: int
) -> tuple[dict[str, Callable], str | None]:
    """Where the ``openvino`` package is installed: OpenVINO's own runtime on both
    graphs, in fp32 and in bf16 (where the CPU has it; lower precision, so
    max_abs_diff_logits shows what it costs), ``threads`` threads, latency mode; and
    its version (None: not installed). Not a project dependency: measured to say what
    another runtime would give."""
    try:
        import openvino
    except ImportError:
        return {}, None
    core = openvino.Core()
    runs: dict[str, Callable] = {}
    for graph in ("folded", "plain"):
        model = core.read_model(str(graphs[graph]))
        inputs = {p.get_any_name() for p in model.inputs}  # the unused ones are not inputs here
        for precision in ("f32", "bf16"):
            config = {"INFERENCE_PRECISION_HINT": precision, "INFERENCE_NUM_THREADS": threads}
            request = core.compile_model(model, "CPU", {**config, "PERFORMANCE_HINT": "LATENCY"}).create_infer_request()
            runs[f"openvino_runtime_{graph}_{precision}"] = lambda arrays, r=request, i=inputs: next(
                iter(r.infer({k: v for k, v in zip(names, arrays, strict=True) if k in i}).values())
            )
    return runs, openvino.__version__


def measure(runs: dict[str, Callable], batches: dict[int, tuple], rounds: int, calls: int) -> dict:
    """Per batch and leg: median ms over rounds and median per-round ratio to torch."""
    times: dict[int, dict[str, list[float]]] = {n: {leg: [] for leg in runs} for n in batches}
    order = list(runs)
    for r in range(rounds):
        rotated = order[r % len(order) :] + order[: r % len(order)]
        for n, arrays in batches.items():
            for leg in rotated:
                time.sleep(SETTLE_S)  # the previous leg's idle threads stop spinning
                runs[leg](arrays)  # warm-up
                timed = []
                for _ in range(calls):
                    started = time.perf_counter()
                    runs[leg](arrays)
                    timed.append(time.perf_counter() - started)
                times[n][leg].append(statistics.median(timed))
    out: dict = {}
    for n, by_leg in times.items():
        torch_times = by_leg["torch"]
        out[f"batch{n}"] = {
            leg: {
                "ms": round(1000 * statistics.median(values), 2),
                "vs_torch": round(statistics.median(t / v for t, v in zip(torch_times, values, strict=True)), 2),
            }
            for leg, values in by_leg.items()
        }
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=16)
    parser.add_argument("--slices", type=int, default=32)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--calls", type=int, default=3, help="timed calls per leg per round")
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "bench-runtimes")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    import torch

    from bench.serving import load_cases
    from radfusion.predictor import stack_inputs

    started = time.perf_counter()
    threads = torch.get_num_threads()
    cohort = build_cohort(args.work, args.studies + args.studies // 2, args.slices, args.size)
    runs, setup = legs(args.work, cohort, threads)
    cases = load_cases(cohort, args.work / "model.onnx", args.studies)
    batches = {
        n: tuple(a.astype(np.float32) for a in stack_inputs([cases[i % len(cases)]["inputs"] for i in range(n)]))
        for n in BATCHES
    }
    reference = runs["torch"](batches[16])
    diffs = {leg: float(np.abs(run(batches[16]) - reference).max()) for leg, run in runs.items()}
    results = {
        "ort_vs_torch": None,
        "ort_vs_torch_batch1": None,
        **measure(runs, batches, args.rounds, args.calls),
        "max_abs_diff_logits": diffs,
    }
    results["ort_vs_torch"] = results["batch16"]["chosen"]["vs_torch"]
    results["ort_vs_torch_batch1"] = results["batch1"]["chosen"]["vs_torch"]
    results["setup"] = {
        **setup,
        "rounds": args.rounds,
        "calls": args.calls,
        "threads": threads,
        "cpus": os.cpu_count(),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "seconds": round(time.perf_counter() - started, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    for n in BATCHES:
        print(f"batch {n}")
        for leg, figures in results[f"batch{n}"].items():
            print(f"  {leg:26s} {figures['ms']:8.2f} ms   x{figures['vs_torch']:.2f} vs torch")
    print(json.dumps({k: results[k] for k in ("ort_vs_torch", "ort_vs_torch_batch1")}))
    print(f"written to {args.out}")
    return results


if __name__ == "__main__":
    main()
