"""Archive-scorer benchmark: in one run, on one archive, with one model.

    python -m bench.scoring [--studies 300] [--workers 2] [--batch-size 16]

Measures, in studies per second:
- decode_only: the scorer's pipeline (discovery + fetch/decode/preprocess in the
  worker pool) with inference left out;
- inference_only: batched ONNX Runtime over those prepared inputs, nothing else;
- end_to_end: ``score_archive`` itself (model load, discovery, workers, inference,
  committed Parquet parts, compaction), with ``--workers`` and with 1 worker.

Ratios: ``pipeline_efficiency`` = end_to_end / min(decode_only, inference_only): how
close the overlapped pipeline gets to its slowest stage (1.0 = perfect overlap);
``worker_scaling`` = end_to_end(workers) / end_to_end(1 worker). On a machine whose
cores are shared by every stage the stages compete, so efficiency depends on how
unequal they are; absolute numbers are noise on shared machines, the ratios are not.

The archive is a synthetic cohort (radfusion.synth) and the model an untrained fusion
network exported exactly like ``radfusion export`` does, with the demo's geometry
(configs/data/synthetic.yaml, configs/model/fusion_cpu.yaml). Both are cached under
``--work``. Results: bench/results/scoring.json."""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

from bench.cohorts import build_cohort

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "scoring.json"
DEMO_GEOMETRY = dict(target_shape=(32, 48, 48), target_spacing=(5.0, 8.0, 8.0), window=(-150.0, 250.0))
DEMO_NET = dict(image_encoder="densenet", image_widths=(16, 8), embed_dim=64, genomics_hidden=16)


def build_model(cohort: Path, path: Path, geometry: dict | None = None) -> Path:
    """An untrained fusion model with the demo geometry (or ``geometry``) and the
    cohort's gene panel."""
    if path.exists():
        return path
    from radfusion.training.runtime_choice import export_fastest

    net, contract = build_network(cohort, geometry)
    export_fastest(net, contract, path)  # as `radfusion export --tune-runtime` does: the runtime timed here
    return path


def build_network(cohort: Path, geometry: dict | None = None):
    """(network, contract) of the bench model: the untrained network, seeded, in eval
    mode, on the demo's image grid or ``geometry``'s."""
    import torch

    from radfusion.contract import ImageGeometry, ModelContract
    from radfusion.genomics import feature_columns, load_genomics_table, split_blocks
    from radfusion.preprocess import fit_omics_block
    from radfusion.training.model import FusionNet

    table = load_genomics_table(cohort / "genomics.parquet")
    contract = ModelContract(
        name="bench-fusion",
        version="0.0.0-bench",
        task="classification:response",
        labels=["non-responder", "responder"],
        positive_label="responder",
        image=ImageGeometry(spatial_dims=3, modalities=("CT",), min_slices=8, **(geometry or DEMO_GEOMETRY)),
        omics=[fit_omics_block(table, name, f) for name, f in split_blocks(feature_columns(table)).items()],
        trained_modalities=["image", "genomics"],
        may_be_missing=["image", "genomics"],
        cohort_hash="bench",
    )
    torch.manual_seed(0)
    net = FusionNet(
        omics_sizes={b.name: len(b.features) for b in contract.omics},
        n_classes=2,
        config={"modalities": ("image", "genomics"), **DEMO_NET},
    ).eval()
    return net, contract


class _NoWriter:
    """Rows go nowhere: the decode-only run measures the pipeline without output."""

    def should_score(self, study) -> bool:
        return True

    def add(self, row: dict) -> None:
        pass


def decode_only(
    archive: Path, model_path: Path, genomics_file: Path, workers: int, batch_size: int
) -> tuple[float, list]:
    from radfusion.runtime import OnnxModel
    from radfusion.serving.patients import PatientTables
    from radfusion.serving.scoring.local_engine import LocalEngine
    from radfusion.serving.scoring.progress import Progress

    kept: list = []

    class DecodeOnly(LocalEngine):
        def _infer(self, n: int) -> None:
            batch, self._batch = self._batch[:n], self._batch[n:]
            kept.extend(p.inputs for p in batch)
            self._emit([p.row for p in batch])

    model = OnnxModel(model_path, device="cpu")
    engine = DecodeOnly(model, workers=workers, batch_size=batch_size)
    started = time.perf_counter()
    # Table loading counts here as it does in score_archive's end-to-end time.
    patients = PatientTables.from_paths(model.contract, genomics_file)
    stats = engine.run(str(archive), patients, _NoWriter(), Progress(enabled=False))
    return stats.discovered / (time.perf_counter() - started), kept


def inference_only(model_path: Path, inputs: list, batch_size: int) -> float:
    from radfusion.runtime import OnnxModel
    from radfusion.serving.scoring.inference import run_inputs

    model = OnnxModel(model_path, device="cpu")
    run_inputs(model, inputs[:batch_size])  # warm-up: first call allocates
    started = time.perf_counter()
    for i in range(0, len(inputs), batch_size):
        run_inputs(model, inputs[i : i + batch_size])
    return len(inputs) / (time.perf_counter() - started)


def end_to_end(archive: Path, model_path: Path, genomics_file: Path, out: Path, workers: int, batch_size: int) -> float:
    from radfusion.serving.scoring.score import score_archive

    started = time.perf_counter()
    summary = score_archive(
        archive,
        model_path,
        out,
        genomics=genomics_file,
        batch_size=batch_size,
        device="cpu",
        progress=False,
        workers=workers,
        fresh=True,
    )
    return summary["processed_this_run"] / (time.perf_counter() - started)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=300)
    parser.add_argument("--slices", type=int, default=32)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "bench-scoring")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    cohort = build_cohort(args.work, args.studies, args.slices, args.size)
    model = build_model(cohort, args.work / "model.onnx")
    archive, genomics_file = cohort / "dicom", cohort / "genomics.parquet"

    # Interleaved repeats, best of each: other load on a shared machine only ever slows
    # a run down, and interleaving spreads it over all four measurements alike.
    runs: dict[str, list[float]] = {
        "decode_only": [],
        "inference_only": [],
        "end_to_end": [],
        "end_to_end_1_worker": [],
    }
    for _ in range(args.repeats):
        sps, inputs = decode_only(archive, model, genomics_file, args.workers, args.batch_size)
        runs["decode_only"].append(sps)
        runs["inference_only"].append(inference_only(model, inputs, args.batch_size))
        runs["end_to_end"].append(
            end_to_end(archive, model, genomics_file, args.work / "scores.parquet", args.workers, args.batch_size)
        )
        runs["end_to_end_1_worker"].append(
            end_to_end(archive, model, genomics_file, args.work / "scores-1.parquet", 1, args.batch_size)
        )
    decode_sps, infer_sps, e2e_sps, e2e_one_sps = (max(runs[k]) for k in runs)

    result = {
        "pipeline_efficiency": round(e2e_sps / min(decode_sps, infer_sps), 3),
        "worker_scaling": round(e2e_sps / e2e_one_sps, 3),
        "studies_per_second": {
            "decode_only": round(decode_sps, 2),
            "inference_only": round(infer_sps, 2),
            "end_to_end": round(e2e_sps, 2),
            "end_to_end_1_worker": round(e2e_one_sps, 2),
        },
        "all_runs_studies_per_second": {k: [round(v, 2) for v in vs] for k, vs in runs.items()},
        "bottleneck": "decode" if decode_sps < infer_sps else "inference",
        "setup": {
            "studies": args.studies,
            "slices": args.slices,
            "size": args.size,
            "workers": args.workers,
            "batch_size": args.batch_size,
            "repeats": args.repeats,
            "target_shape": DEMO_GEOMETRY["target_shape"],
            "net": DEMO_NET,
            "cpu_count": os.cpu_count(),
            "machine": platform.machine(),
            "prepared_inputs": len(inputs),
            "image_bytes_per_study": int(np.prod(DEMO_GEOMETRY["target_shape"])) * 4,
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
