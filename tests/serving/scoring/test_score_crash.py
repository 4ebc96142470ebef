"""A study whose decoding kills the worker process (a decoder crashing on a hostile
file) costs only its own row: the pool restarts and the suspects are retried alone."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from radfusion.dicom import find_studies
from radfusion.runtime import OnnxModel
from radfusion.serving.patients import PatientTables
from radfusion.serving.scoring import prepare
from radfusion.serving.scoring.local_engine import LocalEngine
from radfusion.serving.scoring.progress import Progress
from radfusion.serving.scoring.rows import TIMING_COLUMNS, output_schema
from radfusion.serving.scoring.score import score_archive
from radfusion.serving.scoring.writer import PartWriter

CRASH_ENV = "RADFUSION_TEST_CRASH_STUDY"


def crashing_prepare(study, patient):
    """Runs in the worker: dies like a segfaulting decoder on the chosen study."""
    if study.study_uid == os.environ.get(CRASH_ENV):
        os._exit(70)
    return prepare.prepare_task(study, patient)


def test_a_study_that_kills_its_worker_gets_an_error_row_and_costs_nothing_else(
    tiny_cohort: Path, tiny_onnx_model: Path, tmp_path: Path, monkeypatch
) -> None:
    reference = tmp_path / "reference.parquet"
    score_archive(
        tiny_cohort / "dicom",
        tiny_onnx_model,
        reference,
        genomics=tiny_cohort / "genomics.parquet",
        device="cpu",
        progress=False,
        workers=0,
    )
    victim = sorted(find_studies(tiny_cohort / "dicom").studies)[3]
    monkeypatch.setenv(CRASH_ENV, victim)  # the workers are spawned after this: they inherit it

    model = OnnxModel(tiny_onnx_model, device="cpu")
    writer = PartWriter(tmp_path / "scores.parquet", output_schema(model.contract), {"test": "crash"})
    engine = LocalEngine(model, workers=2, batch_size=4, prepare_fn=crashing_prepare)
    patients = PatientTables.from_paths(model.contract, tiny_cohort / "genomics.parquet")
    stats = engine.run(str(tiny_cohort / "dicom"), patients, writer, Progress(enabled=False))
    rows = writer.finish().to_pandas().drop(columns=list(TIMING_COLUMNS)).set_index("study_instance_uid")

    assert stats.discovered == len(rows) == 10
    assert rows.loc[victim, "error"] == "worker_crashed: the process preparing this study died"
    assert rows["error"].notna().sum() == 1
    expected = pd.read_parquet(reference).drop(columns=list(TIMING_COLUMNS)).set_index("study_instance_uid")
    others = rows.index != victim
    pd.testing.assert_frame_equal(rows[others], expected[others], atol=1e-6)
