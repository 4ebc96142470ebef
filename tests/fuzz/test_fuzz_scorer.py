"""The fuzz corpus as one archive through `radfusion score`, run as an operator runs it
(a subprocess, two worker processes, a small per-study budget), then run again
(resume). Issue 14's promises for the scorer: the run completes, one row per study,
no non-finite number in a scored row, every failure "<kind>: <reason>" with a
specific kind (at most 1% unprocessable) and the kind the item expects where it is
certain, each worker's peak memory within the study budget above its baseline, and no
planted name, PatientID, corpus UID or path below the archive root in the log."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest

from tests.fuzz.harness import (
    MAX_UNPROCESSABLE_SHARE,
    MIB,
    SCORER_BUDGET,
    ScorerRun,
    assert_kept,
    leaks,
    memory_allowance,
    run_scorer,
    scorer_command,
    scorer_outcomes,
    unprocessable_share,
)
from tests.support.mutations import SCORER, Corpus


@dataclass
class Scored:
    first: ScorerRun
    resumed: ScorerRun
    out: Path

    def rows(self) -> pd.DataFrame:
        if not self.out.exists():
            pytest.fail(f"no output: the run aborted (exit {self.first.returncode}):\n{self.first.stderr[-3000:]}")
        return pd.read_parquet(self.out)


@pytest.fixture(scope="module")
def scored(fuzz_corpus: Corpus, fuzz_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Scored:
    work = tmp_path_factory.mktemp("fuzz_scorer")
    out = work / "scores.parquet"
    command = scorer_command(fuzz_corpus.root, fuzz_model, out, fuzz_corpus)
    first = run_scorer(command, work / "first")
    return Scored(first, run_scorer(command, work / "resumed"), out)


@pytest.fixture(scope="module")
def baseline(fuzz_corpus: Corpus, fuzz_model: Path, tmp_path_factory: pytest.TempPathFactory) -> ScorerRun:
    """The same command on the corpus's good studies alone: what a worker holds when
    every study is a small, sane one."""
    work = tmp_path_factory.mktemp("fuzz_baseline")
    for item in fuzz_corpus.items:
        if item.mutation == "good":
            shutil.copytree(item.location, work / "archive" / item.location.name)
    run = run_scorer(scorer_command(work / "archive", fuzz_model, work / "scores.parquet", fuzz_corpus), work / "log")
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.summary()["scored"] == run.summary()["studies"] == 4
    return run


def test_the_run_completes_and_so_does_its_resume(scored: Scored) -> None:
    assert scored.first.returncode == 0, f"aborted run:\n{scored.first.stderr[-3000:]}"
    first = scored.first.summary()
    assert first["studies"] == len(scored.rows())
    assert scored.resumed.returncode == 0, f"aborted resume:\n{scored.resumed.stderr[-3000:]}"
    resumed = scored.resumed.summary()
    assert resumed["studies"] == first["studies"]
    # Only retryable rows (a worker that died) are tried again.
    assert resumed["processed_this_run"] <= first["failed_by_reason"].get("worker_crashed", 0)


def test_one_row_per_study_and_every_item_keeps_its_promise(scored: Scored, fuzz_corpus: Corpus) -> None:
    rows = scored.rows()
    assert rows["study_instance_uid"].is_unique
    outcomes = scorer_outcomes(fuzz_corpus, rows)
    assert len(outcomes) >= 70
    assert_kept(outcomes)


def test_at_most_one_percent_unprocessable(scored: Scored, fuzz_corpus: Corpus) -> None:
    outcomes = scorer_outcomes(fuzz_corpus, scored.rows())
    unprocessable, answered = unprocessable_share(outcomes)
    assert unprocessable <= MAX_UNPROCESSABLE_SHARE * answered, [
        (o.id, o.mutation, o.detail) for o in outcomes if o.kind == "unprocessable_study"
    ]


def test_peak_memory_per_study_stays_within_its_budget(scored: Scored, baseline: ScorerRun) -> None:
    """Every worker of the corpus run against the largest worker of the baseline run,
    plus what one study may cost under SCORER_BUDGET (bytes decoded, voxels resampled):
    a study over its budget is refused before its arrays exist."""
    assert scored.first.worker_peaks and baseline.worker_peaks, "no worker process was sampled"
    limit = baseline.peak + memory_allowance(SCORER_BUDGET)
    peaks = {pid: round(peak / MIB) for pid, peak in sorted(scored.first.worker_peaks.items())}
    assert scored.first.peak <= limit, (
        f"worker peaks {peaks} MiB; baseline {baseline.peak / MIB:.0f} MiB + allowance "
        f"{memory_allowance(SCORER_BUDGET) / MIB:.0f} MiB = {limit / MIB:.0f} MiB"
    )


def test_logs_hold_no_identifier_and_no_path_below_the_archive_root(scored: Scored, fuzz_corpus: Corpus) -> None:
    found = leaks(scored.first.stderr + scored.resumed.stderr, fuzz_corpus, roots=[fuzz_corpus.root])
    assert not found, "\n".join(found[:20])


def test_no_zip_member_is_written_outside_its_folder(scored: Scored, fuzz_corpus: Corpus) -> None:
    scored.rows()
    escaped = [str(p) for item in fuzz_corpus.on(SCORER) for p in item.escapes if p.exists()]
    assert not escaped
