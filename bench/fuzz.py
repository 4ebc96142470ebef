"""The fuzz corpus at a larger scale than the test suite's (`make fuzz`).

    python -m bench.fuzz [--scale 8] [--seed 14] [--patients 24] [--work runs/fuzz] [--skip service listener]

The corpus of tests/support/mutations.py, its random mutations (byte flips in header
and pixel data, truncations, unknown VRs) repeated ``--scale`` times with other seeds
and base studies, built from a synthetic cohort (radfusion.synth, the tiny cohort's
geometry) and driven by the harness of the fuzz tests (tests/fuzz/harness.py) through:

- the scorer: `radfusion score` over the whole corpus, then again (resume), with the
  per-study budget of the tests, its workers' peak memory against a baseline run of
  the good studies;
- the HTTP service: every item to /predict, the JSON-representable ones to
  /predict/batch, then the malformed requests;
- the listener: the items marked for it, by C-STORE, SRs to a capturing PACS.

Counts per path, every broken promise (item, mutation, path, outcome, kind), peak
memory and log leaks go to bench/results/fuzz.json. Exits 1 when a promise is broken."""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from tests.fuzz import harness
from tests.support.mutations import BATCH, LISTENER, PREDICT, SCORER, Corpus, build_corpus

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "fuzz.json"
MIB = 1024**2


def build_cohort(folder: Path, patients: int, seed: int) -> Path:
    from radfusion.synth import generate_cohort
    from tests.support.tiny import TINY_COHORT

    if not (folder / "genomics.parquet").exists():
        generate_cohort(folder, **{**TINY_COHORT, "n_patients": patients, "seed": seed, "workers": 2})
    return folder


def build_model(cohort: Path, folder: Path) -> Path:
    """The tiny fusion network with a clinical block (the fuzz tests' model), exported
    for this cohort's gene panel."""
    from tests.support.clinical_models import clinical_models
    from tests.support.tiny import tiny_contract_of

    contract = tiny_contract_of(cohort, version="0.0.1-fuzz", cohort_hash="fuzz")
    lenient, _ = clinical_models(cohort, contract, folder)
    return lenient


# ------------------------------------------------------------------------------ paths


def fuzz_scorer(corpus: Corpus, model: Path, work: Path) -> tuple[dict[str, Any], list[harness.Outcome]]:
    import pandas as pd

    reference = work / "baseline" / "archive"
    for item in corpus.items:
        if item.mutation == "good":
            shutil.copytree(item.location, reference / item.location.name)
    baseline = harness.run_scorer(
        harness.scorer_command(reference, model, work / "baseline" / "scores.parquet", corpus), work / "baseline"
    )
    out = work / "scores.parquet"
    command = harness.scorer_command(corpus.root, model, out, corpus)
    first = harness.run_scorer(command, work / "first", timeout=1800)
    resumed = harness.run_scorer(command, work / "resumed", timeout=1800)
    outcomes = harness.scorer_outcomes(corpus, pd.read_parquet(out)) if out.exists() else []
    allowance = harness.memory_allowance(harness.SCORER_BUDGET)
    record = {
        "aborted_runs": sum(run.returncode != 0 for run in (first, resumed)),
        "returncodes": [first.returncode, resumed.returncode],
        "seconds": round(first.seconds, 1),
        **harness.counts(outcomes),
        "non_finite_rows": sum(any("non-finite" in p for p in o.problems) for o in outcomes),
        "peak_worker_mib": round(first.peak / MIB, 1),
        "baseline_worker_mib": round(baseline.peak / MIB, 1),
        "allowance_mib": round(allowance / MIB, 1),
        "memory_within_budget": bool(first.worker_peaks) and first.peak <= baseline.peak + allowance,
        "log_leaks": len(harness.leaks(first.stderr + resumed.stderr, corpus, roots=[corpus.root])),
    }
    if first.returncode != 0:
        record["abort_tail"] = first.stderr[-1500:]
    return record, outcomes


def fuzz_service(corpus: Corpus, model: Path, work: Path) -> tuple[dict[str, Any], list[harness.Outcome]]:
    import httpx

    from radfusion.serving.http.launch import running_server

    token = "fuzz-bench-token"
    env = {
        "BENTOML_HOME": str(work / "bentoml"),
        "RADFUSION_API_TOKENS": token,
        "RADFUSION_MAX_UPLOAD_BYTES": str(64 * MIB),
        "RADFUSION_MAX_STUDY_BYTES": str(32 * MIB),
        "RADFUSION_MAX_STUDY_FILES": "256",
    }
    log_file = work / "serve.log"
    with (
        running_server(model, timeout=180, env=env, log_file=log_file) as url,
        httpx.Client(base_url=url, timeout=300, headers={"Authorization": f"Bearer {token}"}) as client,
    ):
        predict = harness.predict_outcomes(client, corpus.on(PREDICT))
        batch = harness.batch_outcomes(client, [i for i in corpus.on(BATCH) if i.json_safe()])
        good = next(i for i in corpus.items if i.mutation == "good").upload()
        malformed = harness.malformed_outcomes(client, good)
        still_serving = client.post("/predict", files={"study": (good[0], good[1], "application/zip")}).status_code
    time.sleep(0.5)
    everything = predict + batch + malformed
    record = {
        "predict": harness.counts(predict),
        "batch": harness.counts(batch),
        "malformed": harness.counts(malformed),
        "http_5xx": sum(o.result == "5xx" for o in everything),
        "good_request_at_the_end": still_serving,
        "log_leaks": len(harness.leaks(log_file.read_text(errors="replace"), corpus, roots=[corpus.root])),
    }
    return record, everything


def fuzz_listener(corpus: Corpus, model: Path, work: Path) -> tuple[dict[str, Any], list[harness.Outcome]]:
    from tests.support.peers import CapturingPacs, ListenerProcess, dicom_echo, free_loopback_port

    pacs = CapturingPacs(free_loopback_port())
    log_file = work / "listener.log"
    args = harness.listener_args(model, work / "state", corpus, pacs.port)
    listener = ListenerProcess(args, free_loopback_port(), log_file)
    try:
        listener.wait_ready()
        items = sorted(corpus.on(LISTENER), key=lambda item: item.expect[LISTENER].outcome == "ok")
        for item in items:
            harness.send_study(listener.port, item.files())
        uids = [uid for item in items for uid in item.study_uids]
        report = harness.wait_settled(work / "state", uids, lambda: listener.process.poll() is None, 180)
        alive = listener.process.poll() is None and dicom_echo(listener.port, calling=harness.CALLING) == 0
        outcomes = harness.listener_outcomes(items, report, pacs.sr_studies)
    finally:
        listener.stop()
        pacs.stop()
    record = {
        **harness.counts(outcomes),
        "alive": alive,
        "log_leaks": len(harness.leaks(listener.log(), corpus, roots=[corpus.root])),
    }
    return record, outcomes


# ------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", type=int, default=8, help="repeats of the random mutations")
    parser.add_argument("--seed", type=int, default=14)
    parser.add_argument(
        "--patients", type=int, default=24, help="studies of the synthetic cohort the corpus is cut from"
    )
    parser.add_argument("--work", default=str(ROOT / "runs" / "fuzz"))
    parser.add_argument("--skip", nargs="*", default=[], choices=[SCORER, "service", LISTENER])
    args = parser.parse_args(argv)

    work = Path(args.work)
    cohort = build_cohort(work / "cohort", args.patients, args.seed)
    model = build_model(cohort, work / "model")
    shutil.rmtree(work / "corpus", ignore_errors=True)
    corpus = build_corpus(cohort, work / "corpus", seed=args.seed, scale=args.scale)
    print(f"corpus: {len(corpus.items)} items, {sum(len(i.study_uids) for i in corpus.items)} studies", flush=True)

    results: dict[str, Any] = {
        "seed": args.seed,
        "scale": args.scale,
        "items": len(corpus.items),
        "studies": sum(len(i.study_uids) for i in corpus.items),
        "mutations": dict(sorted(Counter(i.mutation for i in corpus.items).items())),
        "machine": {"python": platform.python_version(), "cpus": _cpus()},
    }
    broken: list[harness.Outcome] = []
    runs = {SCORER: fuzz_scorer, "service": fuzz_service, LISTENER: fuzz_listener}
    for name, run in runs.items():
        if name in args.skip:
            continue
        folder = work / "runs" / name
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        started = time.monotonic()
        results[name], outcomes = run(corpus, model, folder)
        results[name]["wall_seconds"] = round(time.monotonic() - started, 1)
        broken += [o for o in outcomes if o.failed]
        print(f"{name}: {json.dumps(results[name])}", flush=True)

    results["broken_promises"] = len(broken)
    results["broken"] = harness.table(broken).splitlines()[1:201] if broken else []
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    if broken:
        print(harness.failures(broken), file=sys.stderr)
    print(f"-> {RESULTS}")
    return 1 if broken or _any_breach(results) else 0


def _any_breach(results: dict[str, Any]) -> bool:
    scorer, service, listener = (results.get(k, {}) for k in (SCORER, "service", LISTENER))
    return bool(
        scorer.get("aborted_runs")
        or scorer.get("memory_within_budget") is False
        or scorer.get("log_leaks")
        or service.get("http_5xx")
        or service.get("log_leaks")
        or service.get("good_request_at_the_end", 200) != 200
        or listener.get("alive") is False
        or listener.get("log_leaks")
    )


def _cpus() -> int:
    return os.cpu_count() or 1


if __name__ == "__main__":
    sys.exit(main())
