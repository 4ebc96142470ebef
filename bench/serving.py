"""Serving benchmark: in one run, on one model and one set of inputs.

    python -m bench.serving [--studies 32] [--clients 16] [--requests 8]

- ``batching_speedup``: requests/s through the real HTTP service (`bentoml serve`, the
  API service in front of the model service) with 16 concurrent clients, adaptive
  batching on vs the same service with batching off (RADFUSION_BATCHING=off). Each
  request is a study (zip of its DICOM files) plus the patient's genomics, as a
  hospital app sends it; the API service decodes and preprocesses every study, so
  this is end to end.
- ``batching_speedup_genomics_only``: the same two servers and clients, with
  genomics-only requests: the full model still runs for each (the image branch on an
  absent image), but the API service has almost nothing to do, so the ratio shows what
  batching does for the model service itself.
- ``ort_vs_torch``: the same fusion network run by PyTorch eager and by ONNX Runtime in
  this process, on the same preprocessed inputs, batch 16 (also ``_batch1``); the
  outputs are compared to show it is the same model.
- p50/p95 latency per request for every HTTP run.

The model is an untrained fusion network with the demo's geometry, exported exactly
like `radfusion export` (bench.scoring.build_model); the cohort is synthetic. Absolute
numbers are noise on shared machines; the ratios compare runs made minutes apart on
the same machine. Results: bench/results/serving.json."""

from __future__ import annotations

import argparse
import concurrent.futures
import io
import json
import os
import platform
import statistics
import time
import zipfile
from pathlib import Path

import numpy as np

from bench.scoring import DEMO_NET, build_cohort, build_model

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "serving.json"
TOKEN = "bench-token"


# ------------------------------------------------------------------------------ inputs


def load_cases(cohort: Path, model_path: Path, n: int) -> list[dict]:
    """Per study: the zip upload, the genomics, and the preprocessed model inputs."""
    from radfusion.dicom import find_studies
    from radfusion.genomics import load_genomics_table, row_as_mapping
    from radfusion.predictor import Predictor

    predictor = Predictor.load(model_path, device="cpu")
    table = load_genomics_table(cohort / "genomics.parquet")
    studies = sorted(find_studies(cohort / "dicom").studies.values(), key=lambda s: s.patient_id)
    studies = [s for s in studies if s.patient_id in table.index][:n]
    cases = []
    for study in studies:
        paths = [h.path for h in study.instances]
        genes = {k: float(v) for k, v in row_as_mapping(table, study.patient_id).items()}
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w") as zf:
            for i, path in enumerate(paths):
                zf.write(path, f"{i:04d}.dcm")
        cases.append({"zip": buffer.getvalue(), "genes": genes, "inputs": predictor.prepare(paths, genes).inputs})
    return cases


# -------------------------------------------------------------------------------- HTTP


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def http_load(url: str, cases: list[dict], kind: str, clients: int, per_client: int) -> dict:
    """``clients`` threads, each sending ``per_client`` requests back to back."""
    import httpx

    def one(client: httpx.Client, case: dict) -> float:
        started = time.perf_counter()
        if kind == "study":
            response = client.post(
                "/predict",
                files={"study": ("study.zip", case["zip"], "application/zip")},
                data={"genomics": json.dumps(case["genes"])},
            )
        else:
            response = client.post("/predict", json={"genomics": case["genes"]})
        if response.status_code != 200:
            raise RuntimeError(f"HTTP {response.status_code}: {response.text[:200]}")
        return time.perf_counter() - started

    def client_run(index: int) -> list[float]:
        with httpx.Client(base_url=url, timeout=300, headers={"Authorization": f"Bearer {TOKEN}"}) as client:
            return [one(client, cases[(index * per_client + i) % len(cases)]) for i in range(per_client)]

    def one_warmup(index: int) -> float:
        with httpx.Client(base_url=url, timeout=300, headers={"Authorization": f"Bearer {TOKEN}"}) as client:
            return one(client, cases[index % len(cases)])

    # Warm-up: one request per client (the model's first batches, the worker threads).
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        list(pool.map(lambda i: one_warmup(i), range(clients)))
    started = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        latencies = [t for run in pool.map(client_run, range(clients)) for t in run]
    wall = time.perf_counter() - started
    return {
        "requests": len(latencies),
        "requests_per_s": round(len(latencies) / wall, 2),
        "p50_ms": round(1000 * percentile(latencies, 50), 1),
        "p95_ms": round(1000 * percentile(latencies, 95), 1),
    }


def batch_sizes(url: str) -> dict:
    """Mean batch size the model service ran, from /metrics."""
    import httpx

    lines = httpx.get(f"{url}/metrics", timeout=30).text.splitlines()
    total = {suffix: sum(float(line.rsplit(" ", 1)[1]) for line in lines
                         if line.startswith(f"bentoml_service_adaptive_batch_size{suffix}{{"))
             for suffix in ("_sum", "_count")}
    mean = round(total["_sum"] / total["_count"], 2) if total["_count"] else None
    return {"batches": int(total["_count"]), "mean_batch_size": mean}


def measure_server(model: Path, cases: list[dict], batching: bool, clients: int, per_client: int, home: Path) -> dict:
    from serving.launch import running_server

    env = {
        "BENTOML_HOME": str(home),
        "RADFUSION_API_TOKENS": TOKEN,
        "RADFUSION_BATCHING": "on" if batching else "off",
        "RADFUSION_MAX_IN_FLIGHT": str(4 * clients),  # measure throughput, not shedding
    }
    with running_server(model, timeout=180, env=env) as url:
        result = {kind: http_load(url, cases, kind, clients, per_client) for kind in ("study", "genomics_only")}
        if batching:
            result["model_batches"] = batch_sizes(url)
    return result


# ------------------------------------------------------------------------ ORT vs torch


def ort_vs_torch(model_path: Path, cases: list[dict], repeats: int) -> dict:
    """Same network, same inputs, same process: PyTorch eager vs ONNX Runtime."""
    import torch

    from radfusion.runtime import OnnxModel
    from training.model import FusionNet, ProbabilityModel

    ort_model = OnnxModel(model_path, device="cpu")
    contract = ort_model.contract
    torch.manual_seed(0)  # the weights bench.scoring.build_model exported
    net = FusionNet(n_genes=len(contract.genomics.features), n_classes=len(contract.labels),
                    modalities=("image", "genomics"), **DEMO_NET)
    model = ProbabilityModel(net).eval()  # what is exported: softmax probabilities

    def batch(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        chosen = [cases[i % len(cases)]["inputs"] for i in range(n)]
        return (np.stack([c.image for c in chosen]).astype(np.float32),
                np.stack([c.genomics for c in chosen]).astype(np.float32),
                np.stack([c.presence for c in chosen]).astype(np.float32))

    def run_torch(arrays):
        with torch.inference_mode():
            return model(*(torch.from_numpy(a) for a in arrays)).numpy()

    def timed(fn, arrays) -> float:
        fn(arrays)  # warm-up
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            fn(arrays)
            times.append(time.perf_counter() - started)
        return statistics.median(times)

    out: dict = {"torch_threads": torch.get_num_threads()}
    arrays = batch(16)
    out["max_abs_diff"] = float(np.abs(run_torch(arrays) - ort_model.run(*arrays)).max())
    for n in (1, 16):
        arrays = batch(n)
        t_torch, t_ort = timed(run_torch, arrays), timed(lambda a: ort_model.run(*a), arrays)
        out[f"batch{n}"] = {"torch_ms": round(1000 * t_torch, 2), "ort_ms": round(1000 * t_ort, 2),
                            "ratio": round(t_torch / t_ort, 2)}
    return out


# -------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=32, help="distinct studies sent (cycled)")
    parser.add_argument("--slices", type=int, default=32)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--requests", type=int, default=8, help="requests per client per run")
    parser.add_argument("--repeats", type=int, default=20, help="timed repeats for ort_vs_torch")
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "bench-serving")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    os.environ.setdefault("BENTOML_DO_NOT_TRACK", "True")

    cohort = build_cohort(args.work, args.studies + args.studies // 2, args.slices, args.size)
    model = build_model(cohort, args.work / "model.onnx")
    cases = load_cases(cohort, model, args.studies)
    home = args.work / "bentoml"

    started = time.perf_counter()
    batched = measure_server(model, cases, True, args.clients, args.requests, home)
    unbatched = measure_server(model, cases, False, args.clients, args.requests, home)
    engines = ort_vs_torch(model, cases, args.repeats)

    def speedup(kind: str) -> float:
        return round(batched[kind]["requests_per_s"] / unbatched[kind]["requests_per_s"], 2)

    results = {
        "batching_speedup": speedup("study"),
        "batching_speedup_genomics_only": speedup("genomics_only"),
        "ort_vs_torch": engines["batch16"]["ratio"],
        "ort_vs_torch_batch1": engines["batch1"]["ratio"],
        "targets": {"batching_speedup": 2.0, "ort_vs_torch": 2.0},
        "http": {"batching_on": batched, "batching_off": unbatched},
        "engines": engines,
        "setup": {
            "clients": args.clients, "requests_per_client": args.requests, "studies": len(cases),
            "study": f"{args.slices} slices of {args.size}x{args.size}", "net": DEMO_NET,
            "cpus": os.cpu_count(), "python": platform.python_version(), "seconds": round(time.perf_counter() - started, 1),
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    headline = ("batching_speedup", "batching_speedup_genomics_only", "ort_vs_torch", "ort_vs_torch_batch1")
    print(json.dumps({k: results[k] for k in headline}))
    print(f"written to {args.out}")
    return results


if __name__ == "__main__":
    main()
