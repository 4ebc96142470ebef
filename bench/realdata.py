"""Real-data benchmark: radfusion's configuration against classical baselines by 5-fold
cross-validation on the public survival cohorts that scikit-survival and lifelines ship
(no download), their values untouched (gaps, rare levels).

    python -m bench.realdata [--datasets breast_cancer,gbsg2,veterans,lung] [--folds 5]
        [--repeats 5] [--workers 2] [--config FILE ...] [--epochs N]

- breast_cancer (sksurv): 198 patients, 76 expression probes + age/size/grade/ER, the
  omics cohort: genomics + clinical network;
- gbsg2 (sksurv, 686 patients), veterans (sksurv, 137), lung (lifelines, 228, with its
  missing values): clinical-only networks.

Each dataset runs `radfusion cv` (radfusion.training.cv.run) with the configuration
files below plus the cohort's data arguments: the network and every survival baseline
(Coxnet, lifelines ridge Cox, random survival forest) on the same folds and features.
The 5 folds are repeated 5 times with other shuffles: from one partition to another the
mean c-index of a ~200-patient cohort moves by more than the differences measured.
The network's configuration comes from the files, so a change there
(configs/experiment/small_cohort.yaml) is what the benchmark measures.

Reported (bench/results/realdata.json), per dataset: the per-fold c-index of each model,
their means and 95% intervals, each baseline's paired difference from the network,
``deep_vs_best_classical`` (mean paired difference, network minus the baseline with the
best mean; target >= 0 on every omics cohort) and ``cv_seconds_ratio`` (network CV time
/ slowest baseline's, fit + predict summed over folds); a summary over datasets."""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

from radfusion.training.cv.run import CVOptions, json_safe, run_cv
from tests.support.real_cohorts import DATASETS, write_cohort

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "realdata.json"
CONFIGS = ROOT / "configs"
# radfusion's configuration for small survival cohorts; files not (yet) in the tree are
# skipped, and the files used are recorded in the results.
DEFAULT_CONFIGS = (
    "trainer/cpu.yaml",
    "model/fusion_cpu.yaml",
    "experiment/survival_cox.yaml",
    "experiment/small_cohort.yaml",
)


def _configs(named: list[str] | None) -> list[Path]:
    if named:
        return [Path(c) for c in named]
    return [CONFIGS / c for c in DEFAULT_CONFIGS if (CONFIGS / c).exists()]


def _dataset_result(cohort, summary: dict) -> dict:
    models = summary["models"]
    return {
        "omics": cohort.omics,
        "n_patients": cohort.n_patients,
        "n_events": cohort.n_events,
        "modalities": cohort.modalities,
        "metric": summary["metric"],
        "per_fold": {name: m["per_fold"] for name, m in models.items()},
        "mean": {name: m["mean"] for name, m in models.items()},
        "ci95": {name: m["ci95"] for name, m in models.items()},
        "pooled": {name: m["pooled"]["value"] for name, m in models.items()},
        "paired_difference": {
            name: {k: m["paired_difference"][k] for k in ("per_fold", "mean", "ci95")}
            for name, m in models.items()
            if "paired_difference" in m
        },
        "seconds": {name: m["seconds"] for name, m in models.items()},
        "best_baseline": summary["best_baseline"],
        "deep_vs_best_classical": summary["deep_vs_best_classical"],
        "cv_seconds_ratio": summary["cv_seconds_ratio"],
    }


def _summary(datasets: dict[str, dict]) -> dict:
    omics = {n: d["deep_vs_best_classical"] for n, d in datasets.items() if d["omics"]}
    return {
        "deep_vs_best_classical": {n: d["deep_vs_best_classical"] for n, d in datasets.items()},
        "deep_vs_best_classical_omics_min": min(omics.values()) if omics else None,
        # The target: the network at least as good as the best baseline on every omics cohort.
        "deep_at_least_best_classical_on_every_omics_dataset": bool(omics) and all(v >= 0.0 for v in omics.values()),
        "datasets_where_deep_loses": sorted(n for n, d in datasets.items() if d["deep_vs_best_classical"] < 0),
        "cv_seconds_ratio": {n: d["cv_seconds_ratio"] for n, d in datasets.items()},
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default=",".join(DATASETS), help=f"comma-separated, of {', '.join(DATASETS)}")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=5, help="the K folds repeated with other shuffles")
    parser.add_argument("--workers", type=int, default=2, help="folds trained at once, one process each")
    parser.add_argument("--config", action="append", help=f"radfusion config files (default: {DEFAULT_CONFIGS})")
    parser.add_argument("--epochs", type=int, default=None, help="override trainer.max_epochs")
    parser.add_argument("--work", default=str(ROOT / "runs" / "bench_realdata"))
    parser.add_argument("--out", default=None, help="result file (default: bench/results/realdata.json)")
    args = parser.parse_args(argv)

    configs = _configs(args.config)
    work = Path(args.work)
    started = time.perf_counter()
    datasets = {}
    for name in args.datasets.split(","):
        cohort = write_cohort(name, work / name / "cohort")
        cli_args = [*(a for c in configs for a in ("--config", str(c))), *cohort.cli_args()]
        if args.epochs:
            cli_args += ["--trainer.max_epochs", str(args.epochs)]
        began = time.perf_counter()
        summary = run_cv(
            cli_args,
            CVOptions(folds=args.folds, repeats=args.repeats, workers=args.workers, out=str(work / name / "cv")),
        )
        datasets[name] = _dataset_result(cohort, summary) | {"wall_seconds": time.perf_counter() - began}
        print(
            f"{name}: "
            + json.dumps({k: datasets[name][k] for k in ("mean", "deep_vs_best_classical", "cv_seconds_ratio")})
        )

    result = {
        "summary": _summary(datasets),
        "datasets": datasets,
        "folds": args.folds,
        "repeats": args.repeats,
        "workers": args.workers,
        "configs": [str(c.relative_to(ROOT)) if c.is_relative_to(ROOT) else str(c) for c in configs],
        "epochs_override": args.epochs,
        "wall_seconds": time.perf_counter() - started,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
    }
    out = Path(args.out) if args.out else RESULTS
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(json_safe(result), indent=2, allow_nan=False) + "\n")
    print(json.dumps(result["summary"], indent=2))
    return result


if __name__ == "__main__":
    main()
