"""GPU serving benchmark (run by bench/gpu_serving.sh, which installs onnxruntime-gpu).

    python -m bench.gpu_serving --out OUT/gpu_serving.json

In one run, on one model (the GPU config's network, configs/model/fusion_gpu.yaml, with
the demo geometry) and one set of inputs:

- ``providers``: ms per case at batch 1 and 32 with ONNX Runtime's CPU, CUDA and
  TensorRT execution providers, each in a fresh process (a provider that cannot load —
  TensorRT without its libraries — is reported with the reason, not faked), plus the
  largest difference of the logits from the CPU provider's;
  ``cuda_vs_cpu`` / ``tensorrt_vs_cpu``: the speed ratios at batch 32.
- ``batching_speedup``: the model service on the GPU (RADFUSION_DEVICE=cuda) under 16
  concurrent clients sending packed cases, batching on vs off, measured as
  bench/serving.py measures it on CPU.

Providers are always named explicitly: onnxruntime-gpu lists CUDA and TensorRT as
available even where they cannot run, so each session's providers are checked after
it is made. Without an NVIDIA GPU it prints why and exits 0."""

from __future__ import annotations

import argparse
import glob
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
GPU_CONFIG = ROOT / "configs" / "model" / "fusion_gpu.yaml"
PROVIDERS = ("CPUExecutionProvider", "CUDAExecutionProvider", "TensorrtExecutionProvider")
BATCHES = (1, 32)


def gpu_names() -> list[str]:
    """GPUs nvidia-smi lists; empty when there is none or no working driver."""
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        listed = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return []
    return (
        [line.strip() for line in listed.stdout.splitlines() if line.startswith("GPU")]
        if listed.returncode == 0
        else []
    )


def gpu_net() -> dict:
    """The GPU config's network widths (the CPU benchmark uses the CPU config's)."""
    model = yaml.safe_load(GPU_CONFIG.read_text())["model"]
    return {
        "image_encoder": model["image_encoder"],
        "image_widths": tuple(model["image_widths"]),
        "embed_dim": model["embed_dim"],
        "genomics_hidden": model["genomics_hidden"],
    }


def build_gpu_model(work: Path) -> tuple[Path, Path]:
    """Cohort and model exported exactly as bench.scoring.build_model does, with the
    GPU config's widths in place of the CPU demo's."""
    import bench.scoring as scoring

    cohort = scoring.build_cohort(work, 12, 32, 64)
    path = work / "model-gpu.onnx"
    path.unlink(missing_ok=True)
    cpu_net = scoring.DEMO_NET
    scoring.DEMO_NET = gpu_net()  # build_model reads the module's DEMO_NET when called
    try:
        scoring.build_model(cohort, path)
    finally:
        scoring.DEMO_NET = cpu_net
    return cohort, path


def tensorrt_library_dirs() -> list[str]:
    """Where the tensorrt wheels put libnvinfer (ORT finds it only on the loader path)."""
    dirs = []
    for pattern in ("tensorrt_libs", "tensorrt_cu12_libs", "tensorrt"):
        for found in glob.glob(os.path.join(sys.prefix, "lib", "python3*", "site-packages", pattern)):
            if glob.glob(os.path.join(found, "libnvinfer.so*")):
                dirs.append(found)
    return dirs


# ------------------------------------------------------------- one provider, own process


def provider_options(provider: str, cache: Path, shapes: dict[str, list[int]]) -> list:
    if provider == "CPUExecutionProvider":
        return ["CPUExecutionProvider"]
    if provider == "CUDAExecutionProvider":
        return [("CUDAExecutionProvider", {"device_id": 0}), "CPUExecutionProvider"]

    def profile(batch: int) -> str:
        return ",".join(f"{name}:{'x'.join(str(d) for d in [batch, *dims])}" for name, dims in shapes.items())

    # One optimisation profile over the batch sizes measured, so the engine is built once
    # (and cached), not once per new shape.
    options = {
        "device_id": 0,
        "trt_engine_cache_enable": True,
        "trt_engine_cache_path": str(cache),
        "trt_timing_cache_enable": True,
        "trt_timing_cache_path": str(cache),
        "trt_fp16_enable": False,  # fp32, comparable with the other providers
        "trt_profile_min_shapes": profile(min(BATCHES)),
        "trt_profile_opt_shapes": profile(max(BATCHES)),
        "trt_profile_max_shapes": profile(max(BATCHES)),
    }
    return [("TensorrtExecutionProvider", options), ("CUDAExecutionProvider", {"device_id": 0}), "CPUExecutionProvider"]


def measure_provider(model: Path, inputs: Path, provider: str, cache: Path, repeats: int) -> dict:
    """Time one provider (called in a child process: one CUDA context, one provider)."""
    import numpy as np
    import onnxruntime as ort

    if hasattr(ort, "preload_dlls"):  # CUDA/cuDNN from the nvidia-* wheels (ORT >= 1.21)
        try:
            ort.preload_dlls()
        except Exception as exc:  # noqa: BLE001 - reported, the session below decides
            print(f"preload_dlls: {exc}", file=sys.stderr)
    arrays = dict(np.load(inputs))
    shapes = {name: list(a.shape[1:]) for name, a in arrays.items()}
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    started = time.perf_counter()
    try:
        session = ort.InferenceSession(str(model), options, providers=provider_options(provider, cache, shapes))
    except Exception as exc:  # noqa: BLE001 - ORT raises plain RuntimeError/Fail
        return {"skipped": f"session failed: {str(exc).splitlines()[0][:300]}"}
    if session.get_providers()[0] != provider:
        return {"skipped": f"{provider} did not load (session runs on {session.get_providers()[0]})"}
    result: dict = {"session_seconds": round(time.perf_counter() - started, 2)}
    for batch in BATCHES:
        feed = {
            name: np.ascontiguousarray(np.repeat(a[:1], batch, axis=0)) if batch > len(a) else a[:batch]
            for name, a in arrays.items()
        }
        for _ in range(3):  # warm-up: kernels chosen, engines built
            session.run(None, feed)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            (logits,) = session.run(None, feed)
            times.append(time.perf_counter() - t0)
        result[f"batch{batch}_ms_per_case"] = round(1000 * statistics.median(times) / batch, 3)
        if batch == max(BATCHES):
            np.save(cache / f"logits-{provider}.npy", logits)
    return result


def providers_in_children(model: Path, inputs: Path, work: Path, repeats: int) -> dict:
    results = {}
    for provider in PROVIDERS:
        env = dict(os.environ)
        if provider == "TensorrtExecutionProvider":
            env["LD_LIBRARY_PATH"] = os.pathsep.join([*tensorrt_library_dirs(), env.get("LD_LIBRARY_PATH", "")])
        command = [
            sys.executable,
            "-m",
            "bench.gpu_serving",
            "--provider",
            provider,
            "--model",
            str(model),
            "--inputs",
            str(inputs),
            "--work",
            str(work),
            "--repeats",
            str(repeats),
        ]
        try:
            child = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=150)
            last = child.stdout.strip().splitlines()[-1] if child.stdout.strip() else ""
            results[provider] = (
                json.loads(last)
                if child.returncode == 0 and last.startswith("{")
                else {"skipped": f"exit {child.returncode}: {child.stderr.strip()[-300:]}"}
            )
        except subprocess.TimeoutExpired:
            results[provider] = {"skipped": "timed out after 150 s"}
    return results


def parity(work: Path) -> dict:
    import numpy as np

    reference = work / "logits-CPUExecutionProvider.npy"
    out = {}
    for provider in PROVIDERS[1:]:
        found = work / f"logits-{provider}.npy"
        if reference.exists() and found.exists():
            out[provider] = float(np.abs(np.load(found) - np.load(reference)).max())
    return out


# -------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "gpu_serving.json")
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "bench-gpu-serving")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--requests", type=int, default=16, help="requests per client per round")
    parser.add_argument("--rounds", type=int, default=2)
    # Internal: measure one provider in this process (see providers_in_children).
    parser.add_argument("--provider", choices=PROVIDERS)
    parser.add_argument("--model", type=Path)
    parser.add_argument("--inputs", type=Path)
    args = parser.parse_args(argv)

    if args.provider:
        print(json.dumps(measure_provider(args.model, args.inputs, args.provider, args.work, args.repeats)))
        return 0

    gpus = gpu_names()
    if not gpus:
        print("gpu_serving: no NVIDIA GPU found (nvidia-smi missing or lists none): nothing measured")
        return 0

    import numpy as np

    from bench.serving import load_cases, model_service_leg
    from radfusion.predictor import stack_inputs

    started = time.perf_counter()
    args.work.mkdir(parents=True, exist_ok=True)
    cohort, model = build_gpu_model(args.work)
    cases = load_cases(cohort, model, 8)
    inputs = args.work / "inputs.npz"
    names = ("image", "genomics", "clinical", "presence")
    np.savez(
        inputs,
        **dict(zip(names, stack_inputs([cases[i % len(cases)]["inputs"] for i in range(max(BATCHES))]), strict=True)),
    )

    providers = providers_in_children(model, inputs, args.work, args.repeats)
    cpu = providers["CPUExecutionProvider"].get(f"batch{max(BATCHES)}_ms_per_case")

    def ratio(provider: str) -> float | None:
        fast = providers[provider].get(f"batch{max(BATCHES)}_ms_per_case")
        return round(cpu / fast, 2) if cpu and fast else None

    os.environ["RADFUSION_DEVICE"] = "cuda"  # the servers below inherit it
    batching = model_service_leg(model, cases, args.work / "bentoml", args, args.requests)

    results = {
        "cuda_vs_cpu": ratio("CUDAExecutionProvider"),
        "tensorrt_vs_cpu": ratio("TensorrtExecutionProvider"),
        "batching_speedup": batching["speedup"],
        "providers": providers,
        "max_abs_diff_logits_vs_cpu": parity(args.work),
        "model_service": batching,
        "setup": {
            "gpus": gpus,
            "net": gpu_net(),
            "batches": list(BATCHES),
            "clients": args.clients,
            "python": platform.python_version(),
            "seconds": round(time.perf_counter() - started, 1),
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps({k: results[k] for k in ("cuda_vs_cpu", "tensorrt_vs_cpu", "batching_speedup")}))
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
