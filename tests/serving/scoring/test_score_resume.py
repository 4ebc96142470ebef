"""Interrupting the scorer loses nothing and duplicates nothing.

Real ``radfusion score`` processes are interrupted mid-way, first with SIGINT (Ctrl-C)
and then with SIGKILL (kill -9); the same command run again finishes the job. Every
study then has exactly one row, and the predictions equal those of an uninterrupted
run. A test-only knob (RADFUSION_SCORER_COMMIT_DELAY_S) pauses after each committed
part file so that the interruptions land mid-way on a small cohort."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import psutil
import pyarrow.parquet as pq
import pytest

from radfusion.dicom import find_studies
from radfusion.serving.scoring.rows import TIMING_COLUMNS
from radfusion.serving.scoring.score import score_archive
from radfusion.serving.scoring.writer import COMMIT_DELAY_ENV, parts_dir
from tests.support.paths import PROJECT_ROOT as ROOT

N_STUDIES = 36
TOL = 1e-6


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """36 small studies; genes as in the tiny cohort, so the tiny model applies."""
    from radfusion.synth import generate_cohort
    from tests.support.tiny import TINY_COHORT

    out = tmp_path_factory.mktemp("resume_cohort")
    generate_cohort(out, **{**TINY_COHORT, "n_patients": N_STUDIES, "seed": 11, "workers": 2})
    return out


@pytest.fixture(scope="module")
def reference(cohort: Path, tiny_onnx_model: Path, tmp_path_factory: pytest.TempPathFactory) -> pd.DataFrame:
    out = tmp_path_factory.mktemp("reference") / "scores.parquet"
    score_archive(
        cohort / "dicom",
        tiny_onnx_model,
        out,
        genomics=cohort / "genomics.parquet",
        device="cpu",
        progress=False,
        workers=0,
    )
    return pd.read_parquet(out).drop(columns=list(TIMING_COLUMNS)).set_index("study_instance_uid")


def score_command(cohort: Path, model: Path, out: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "radfusion.cli",
        "score",
        "--archive",
        str(cohort / "dicom"),
        "--genomics",
        str(cohort / "genomics.parquet"),
        "--model",
        str(model),
        "--out",
        str(out),
        "--device",
        "cpu",
        "--workers",
        "2",
        "--batch-size",
        "2",
        "--chunk-size",
        "3",
    ]


def committed_rows(out: Path) -> int:
    """Rows in committed part files (a part is renamed into place only when whole)."""
    return sum(pq.read_metadata(p).num_rows for p in parts_dir(out).glob("part-*.parquet"))


def _default_sigint() -> None:
    """In the scorer's process, before it starts: SIGINT raises KeyboardInterrupt even when
    this test runs where SIGINT is ignored (a background job of a non-interactive shell,
    whose children inherit the ignoring and which Python then leaves as it is)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def interrupt_mid_way(command: list[str], out: Path, sig: int, tmp_path: Path) -> tuple[int, str, list[psutil.Process]]:
    """Start the scorer, wait for two committed parts, send ``sig``; returns the exit
    code, stderr and the worker processes it had."""
    env = {**os.environ, COMMIT_DELAY_ENV: "0.4"}
    log = tmp_path / f"stderr-{sig}.txt"
    with open(log, "w") as stderr:
        process = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=stderr, preexec_fn=_default_sigint
        )
        before = committed_rows(out)
        deadline = time.monotonic() + 60
        while committed_rows(out) < before + 6:
            assert process.poll() is None, log.read_text()[-2000:]
            assert time.monotonic() < deadline, "no part committed within 60 s"
            time.sleep(0.05)
        workers = psutil.Process(process.pid).children(recursive=True)
        process.send_signal(sig)
        code = process.wait(timeout=30)
    return code, log.read_text(), workers


def test_interrupted_runs_resume_to_exactly_one_row_per_study(
    cohort: Path, tiny_onnx_model: Path, reference: pd.DataFrame, tmp_path: Path
) -> None:
    out = tmp_path / "scores.parquet"
    command = score_command(cohort, tiny_onnx_model, out)
    assert len(reference) == N_STUDIES

    code, stderr, _ = interrupt_mid_way(command, out, signal.SIGINT, tmp_path)
    assert code == 130, stderr[-2000:]
    assert "run the same command again to resume" in stderr
    after_sigint = committed_rows(out)
    assert 6 <= after_sigint < N_STUDIES and not out.exists()

    code, stderr, workers = interrupt_mid_way(command, out, signal.SIGKILL, tmp_path)
    assert code == -signal.SIGKILL
    assert len(workers) >= 2
    _, alive = psutil.wait_procs(workers, timeout=5)
    assert alive == []  # the workers leave with their parent, even after kill -9
    after_kill = committed_rows(out)
    assert after_sigint + 6 <= after_kill < N_STUDIES and not out.exists()

    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout)
    assert summary["taken_from_earlier_runs"] == after_kill
    assert summary["processed_this_run"] == N_STUDIES - after_kill
    assert summary["studies"] == summary["scored"] == N_STUDIES
    assert not parts_dir(out).exists()

    rows = pd.read_parquet(out).drop(columns=list(TIMING_COLUMNS))
    assert len(rows) == N_STUDIES and rows["study_instance_uid"].is_unique
    assert set(rows["study_instance_uid"]) == set(find_studies(cohort / "dicom").studies)
    pd.testing.assert_frame_equal(rows.set_index("study_instance_uid"), reference, atol=TOL)

    # Progress went to the log as plain lines (no terminal), with counts only.
    assert re.search(r"scored \d+/\d+ studies \(0 failed\), [\d.]+ studies/s", done.stderr)
    patient_ids = set(rows["patient_id"])
    assert not any(pid in done.stderr + stderr for pid in patient_ids)
