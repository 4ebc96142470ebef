"""Federated benchmark: does training across hospitals pay, and what does privacy cost?

    python -m bench.federated [--patients 192] [--held-out 150] [--rounds 12] [--local-epochs 3]

On one multi-site synthetic cohort (`radfusion synth --sites 3`: scanners, slice
thickness, outcome rates and gene panels differ; the third site has no omics), with
the demo's configs, in one run:
- federated: `radfusion federate simulate` (Flower on loopback, TLS, SecAgg+), with
  client-side differential privacy off and on (epsilon reported);
- central: `radfusion train` on the pooled training and validation patients of every
  site (what the sites could do if the data could move);
- local: `radfusion train` at each site on its own data alone (image-only where the
  site has no omics), rounds x local epochs epochs like the federation.
Every model is scored on the same held-out patients: each site's test part (its own
split, seed 0), never trained on by any of them. A site trains and validates on
--patients (3:1) and keeps --held-out more for the test: a test part as large as the
training part keeps the AUROC's sampling noise (about 0.04 per site at 48 patients)
below the targets' margins.

Reported (bench/results/federated.json): AUROC per site and pooled for each model;
``federated_vs_central`` = federated - central pooled AUROC (target >= -0.03);
``federated_vs_local_mean`` = mean over sites of federated - local AUROC on the site's
own test part (target >= +0.05); the same with DP on and its epsilon; the update each
site sends per round in bytes (float32 values of the exchanged arrays: what SecAgg+
masks and quantises, one 32-bit value each); wall seconds per federated round."""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "federated.json"
FEDERATE_PYTHON = Path(os.environ.get("RADFUSION_FEDERATE_PYTHON", ROOT / ".venv-federate" / "bin" / "python"))
CONFIGS = [
    ROOT / "configs" / p
    for p in ("trainer/cpu.yaml", "data/synthetic.yaml", "model/fusion_cpu.yaml", "experiment/demo.yaml")
]
IMAGE_ONLY = ROOT / "configs" / "experiment" / "image_only.yaml"
TARGET = "response"


def _run(python: Path, *args, env: dict | None = None) -> None:
    out = subprocess.run(
        [str(python), "-m", "radfusion.cli", *map(str, args)],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
    )
    if out.returncode != 0:
        raise RuntimeError(f"radfusion {args[0]} failed:\n{out.stderr[-3000:]}")


Split = tuple[float, float, float]  # train, validation, test shares of a site's patients


def _held_out(site: Path, split: Split) -> pd.Index:
    from radfusion.training.folds import split_patients

    clinical = pd.read_csv(site / "clinical.csv", dtype={"patient_id": str}).set_index("patient_id")
    assignment = split_patients(clinical[clinical[TARGET].notna()], split, 0, TARGET)
    return assignment.index[assignment == "test"]


def pooled_cohort(sites: list[Path], out: Path, split: Split) -> Path:
    """Every site's training and validation patients in one cohort folder (no test
    patient of any site)."""
    if out.exists():
        shutil.rmtree(out)
    (out / "dicom").mkdir(parents=True)
    clinical, genomics = [], []
    for site in sites:
        test = _held_out(site, split)
        table = pd.read_csv(site / "clinical.csv", dtype={"patient_id": str}).set_index("patient_id")
        clinical.append(table.drop(index=test))
        if (site / "genomics.parquet").is_file():
            g = pd.read_parquet(site / "genomics.parquet")
            genomics.append(g.drop(index=g.index.intersection(test)))
        if (site / "dicom").is_dir():
            shutil.copytree(site / "dicom", out / "dicom" / site.name)
    pd.concat(clinical).to_csv(out / "clinical.csv")
    pd.concat(genomics).to_parquet(out / "genomics.parquet")
    return out


def train(
    cohort: Path, run: Path, epochs: int, split: Split, reuse: bool, extra: list[Path] = (), env: dict | None = None
) -> tuple[Path, float | None]:
    """The checkpoint and the seconds its training took (None: reused from a run that
    did not record them)."""
    if reuse and (run / "checkpoints" / "best.ckpt").is_file():
        recorded = run / "seconds.json"
        return run / "checkpoints" / "best.ckpt", (
            json.loads(recorded.read_text())["seconds"] if recorded.is_file() else None
        )
    started = time.perf_counter()
    configs = [a for c in [*CONFIGS, *extra] for a in ("--config", c)]
    _run(
        Path(sys.executable), "train", "fit", *configs, "--data.cohort_dir", cohort,
        "--data.split", json.dumps(list(split)), "--trainer.max_epochs", epochs,
        "--trainer.default_root_dir", run, env=env,
    )  # fmt: skip
    took = time.perf_counter() - started
    (run / "seconds.json").write_text(json.dumps({"seconds": took}))
    return run / "checkpoints" / "best.ckpt", took


def federate(
    sites: list[Path],
    out: Path,
    rounds: int,
    local_epochs: int,
    dp_noise: float,
    env: dict,
    split_config: Path,
    reuse: bool,
) -> tuple[Path, float]:
    """The federation's checkpoint and seconds; its sites split their patients like the
    other models' (``split_config``: a config of its own, after the demo's)."""
    if reuse and (out / "seconds.json").is_file():
        return out / "checkpoints" / "best.ckpt", json.loads((out / "seconds.json").read_text())["seconds"]
    if out.is_dir():  # a fresh run, not the resumption of an earlier one
        shutil.rmtree(out)
    started = time.perf_counter()
    configs = [a for c in [*CONFIGS, split_config] for a in ("--config", c)]
    names = [f"--site=s{i}={site}" for i, site in enumerate(sites, 1)]
    _run(
        FEDERATE_PYTHON, "federate", "simulate", *names, *configs, "--rounds", rounds, "--local-epochs", local_epochs,
        "--dp-noise", dp_noise, "--out", out, env=env,
    )  # fmt: skip
    took = time.perf_counter() - started
    (out / "seconds.json").write_text(json.dumps({"seconds": took}))
    return out / "checkpoints" / "best.ckpt", took


def site_scores(checkpoint: Path, site: Path, cache: Path, split: Split) -> tuple[np.ndarray, np.ndarray]:
    """The model's P(responder) and the labels on the site's test part, preprocessed with
    the model's own panel and policy (the site's table may lack genes)."""
    import torch

    from radfusion.training.checkpoints import load_module
    from radfusion.training.data import RadfusionDataModule
    from radfusion.training.evaluate import predict_split
    from radfusion.training.module import CONTRACT_KEY

    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    hparams = {k: v for k, v in state["datamodule_hyper_parameters"].items() if not k.startswith("_")}
    parts = state[CONTRACT_KEY]
    hparams.update(
        cohort_dir=str(site), split=split, split_seed=0, augment=False, manifest=None, cache_dir=str(cache),
        policy={"omics": parts["omics"], "clinical": parts["clinical"]}, folds=0,
    )  # fmt: skip
    dm = RadfusionDataModule(**hparams)
    dm.setup()
    module = load_module(checkpoint)
    with torch.no_grad():
        predicted = predict_split(module, dm, "test")
    return torch.softmax(predicted["outputs"], -1)[:, 1].numpy(), predicted["label"].numpy()


def aurocs(checkpoints: dict[str, Path], sites: list[Path], cache: Path, split: Split) -> dict[str, float]:
    """AUROC on each site's test part (s1, s2, ...) and on all of them pooled."""
    from sklearn.metrics import roc_auc_score

    result, scores, labels = {}, [], []
    for i, site in enumerate(sites, 1):
        p, y = site_scores(checkpoints.get(f"s{i}", checkpoints.get("all")), site, cache, split)
        result[f"s{i}"] = float(roc_auc_score(y, p))
        scores.append(p)
        labels.append(y)
    result["pooled"] = float(roc_auc_score(np.concatenate(labels), np.concatenate(scores)))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--patients", type=int, default=192, help="patients per site to train and validate on")
    parser.add_argument("--held-out", type=int, default=150, help="more patients per site, for the test only")
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--local-epochs", type=int, default=3)
    parser.add_argument("--dp-noise", type=float, default=0.3, help="noise multiplier of the DP run (0: no DP run)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "bench-federated")
    parser.add_argument("--reuse", action="store_true", help="keep the models an earlier run of --work trained")
    args = parser.parse_args()
    reuse = args.reuse
    total = args.patients + args.held_out
    split = (0.75 * args.patients / total, 0.25 * args.patients / total, args.held_out / total)
    work = args.work
    cache = work / "cache"
    env = {"RADFUSION_CACHE_DIR": str(cache)}
    sites_dir = work / "sites"
    # The cohort, its split and every model in --work belong to one setting: another
    # one would score models on patients they trained on.
    cohort_setup = {"patients": args.patients, "held_out": args.held_out, "seed": args.seed}
    recorded = work / "cohort.json"
    if (sites_dir / "sites.json").is_file():
        if not recorded.is_file() or json.loads(recorded.read_text()) != cohort_setup:
            had = json.loads(recorded.read_text()) if recorded.is_file() else "an older setting"
            sys.exit(f"bench.federated: {work} holds a cohort for {had}, not {cohort_setup}: choose another --work")
    else:
        _run(
            Path(sys.executable), "synth", "--sites", 3, "--patients", total, "--slices", 16, "--size", 48,
            "--pixel-spacing", 6, "--site-without-omics", 3, "--seed", args.seed, "--out", sites_dir,
        )  # fmt: skip
        recorded.write_text(json.dumps(cohort_setup))
    sites = [sites_dir / f"site-{i}" for i in (1, 2, 3)]
    epochs = args.rounds * args.local_epochs

    seconds: dict[str, float | None] = {}
    pooled = pooled_cohort(sites, work / "pooled", split)
    central, seconds["central"] = train(pooled, work / "central", epochs, (0.75, 0.25, 0.0), reuse, env=env)
    local = {}
    for i, site in enumerate(sites, 1):
        extra = [] if (site / "genomics.parquet").is_file() else [IMAGE_ONLY]
        local[f"s{i}"], seconds[f"local_s{i}"] = train(site, work / f"local-s{i}", epochs, split, reuse, extra, env)
    split_config = work / "split.yaml"
    split_config.write_text(f"data:\n  split: {json.dumps(list(split))}\n")
    runs = {}
    legs = (("federated", 0.0), ("federated_dp", args.dp_noise)) if args.dp_noise else (("federated", 0.0),)
    for name, noise in legs:
        checkpoint, took = federate(sites, work / name, args.rounds, args.local_epochs, noise, env, split_config, reuse)
        runs[name] = (checkpoint, json.loads((work / name / "federation.json").read_text()))
        seconds[name] = took

    scores = {"central": aurocs({"all": central}, sites, cache, split), "local": aurocs(local, sites, cache, split)}
    for name, (checkpoint, _) in runs.items():
        scores[name] = aurocs({"all": checkpoint}, sites, cache, split)
    site_keys = ["s1", "s2", "s3"]
    received = [json.loads(x) for x in (work / "federated" / "received.jsonl").read_text().splitlines()]
    shapes = next(r for r in received if r["kind"] == "fit")["content"][0]["arrays"]
    update_bytes = 4 * sum(int(np.prod(s)) for s in shapes)

    def compare(name: str) -> dict:
        return {
            "vs_central": scores[name]["pooled"] - scores["central"]["pooled"],
            "vs_local_mean": float(np.mean([scores[name][k] - scores["local"][k] for k in site_keys])),
        }

    federated = compare("federated")
    # Without a DP run (--dp-noise 0) its keys stay, as null.
    with_dp = compare("federated_dp") if "federated_dp" in runs else {}
    dp = runs["federated_dp"][1]["differential_privacy"] if "federated_dp" in runs else {}
    result = {
        "federated_vs_central": federated["vs_central"],
        "federated_vs_local_mean": federated["vs_local_mean"],
        "federated_dp_vs_central": with_dp.get("vs_central"),
        "federated_dp_vs_local_mean": with_dp.get("vs_local_mean"),
        "dp_epsilon": dp.get("epsilon"),
        "dp_delta": dp.get("delta"),
        "dp_noise_multiplier": dp.get("noise_multiplier"),
        "dp_clip": dp.get("clip"),
        "update_bytes_per_round_per_client": update_bytes,
        "seconds_per_federated_round": seconds["federated"] / args.rounds,
        "auroc": scores,
        "test_patients_per_site": {k: len(_held_out(s, split)) for k, s in zip(site_keys, sites, strict=True)},
        "targets": {"federated_vs_central": ">= -0.03", "federated_vs_local_mean": ">= +0.05"},
        "setup": {
            "patients_per_site": args.patients,
            "held_out_per_site": args.held_out,
            "rounds": args.rounds,
            "local_epochs": args.local_epochs,
            "central_and_local_epochs": epochs,
            "strategy": "fedavg",
            "secure_aggregation": "secagg+",
            "sites": len(sites),
            "seed": args.seed,
        },
        # With --reuse, the models an earlier run of --work trained are scored again: their
        # seconds here are not training times (federated runs keep theirs in seconds.json).
        "reused": reuse,
        "seconds": seconds,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: v for k, v in result.items() if not isinstance(v, dict)}, indent=1))


if __name__ == "__main__":
    main()
