"""The scorer's Parquet bookkeeping: committed parts, which studies a rerun skips,
one row per study after compaction, and refusal to mix runs."""

from __future__ import annotations

import pandas as pd
import pyarrow.parquet as pq
import pytest

from radfusion.contract import ModelContract
from radfusion.serving.scoring.rows import new_row, output_schema
from radfusion.serving.scoring.score import score_archive
from radfusion.serving.scoring.sources import StudyRef
from radfusion.serving.scoring.writer import PartWriter, ResumeError, parts_dir

IDENTITY = {"model": "tiny-fusion:0.0.1-test", "model_sha256": "ab" * 32}


def row(contract: ModelContract, uid: str, n: int, error: str | None = None, p: float = 0.5) -> dict:
    r = new_row(contract, uid, "P", n)
    r.update({"prob_responder": p, "prob_non_responder": 1 - p, "error": error})
    return r


def test_parts_commit_in_chunks_and_compact_to_the_latest_row(tiny_contract, tmp_path) -> None:
    out = tmp_path / "scores.parquet"
    writer = PartWriter(out, output_schema(tiny_contract), IDENTITY, chunk_size=2)
    for uid, n, p in [("1.3", 4, 0.1), ("1.1", 4, 0.2), ("1.2", 4, 0.3), ("1.3", 6, 0.9)]:
        writer.add(row(tiny_contract, uid, n, p=p))
    parts = sorted(parts_dir(out).glob("part-*.parquet"))
    assert [pq.read_metadata(p).num_rows for p in parts] == [2, 2]  # committed as they filled
    table = writer.finish().to_pandas()
    assert list(table["study_instance_uid"]) == ["1.1", "1.2", "1.3"]
    assert table.set_index("study_instance_uid").loc["1.3", "prob_responder"] == 0.9  # the later row wins
    assert pd.read_parquet(out).equals(table) and not parts_dir(out).exists()


def test_a_rerun_skips_done_studies_but_retries_transient_errors_and_grown_studies(tiny_contract, tmp_path) -> None:
    out = tmp_path / "scores.parquet"
    first = PartWriter(out, output_schema(tiny_contract), IDENTITY, chunk_size=10)
    first.add(row(tiny_contract, "1.1", 4))
    first.add(row(tiny_contract, "1.2", 4, error="corrupt_dicom: pixel data cannot be decoded"))
    first.add(row(tiny_contract, "1.3", 4, error="fetch_failed: WADO-RS retrieve failed (HTTPError, HTTP 503)"))
    first.commit()
    first.add(row(tiny_contract, "1.4", 4))  # never committed: lost with the process
    first.close()

    second = PartWriter(out, output_schema(tiny_contract), IDENTITY)
    decisions = {
        uid: second.should_score(StudyRef(uid, "P", n))
        for uid, n in [("1.1", 4), ("1.2", 4), ("1.3", 4), ("1.4", 4), ("1.1b", 4)]
    }
    assert decisions == {"1.1": False, "1.2": False, "1.3": True, "1.4": True, "1.1b": True}
    assert second.should_score(StudyRef("1.1", "P", 5))  # the study gained an instance
    second.close()


def test_one_run_at_a_time_and_only_with_the_same_model(tiny_contract, tmp_path) -> None:
    out = tmp_path / "scores.parquet"
    running = PartWriter(out, output_schema(tiny_contract), IDENTITY)
    with pytest.raises(ResumeError, match="another run is writing"):
        PartWriter(out, output_schema(tiny_contract), IDENTITY)
    running.add(row(tiny_contract, "1.1", 4))
    running.commit()
    running.close()
    other_model = {**IDENTITY, "model_sha256": "cd" * 32}
    with pytest.raises(ResumeError, match="pass --fresh"):
        PartWriter(out, output_schema(tiny_contract), other_model)
    fresh = PartWriter(out, output_schema(tiny_contract), other_model, fresh=True)
    assert fresh.previous == {}
    assert fresh.finish().num_rows == 0


def test_rerunning_a_finished_run_takes_its_output_over(tiny_cohort, tiny_onnx_model, tmp_path) -> None:
    out = tmp_path / "scores.parquet"
    args = dict(genomics=tiny_cohort / "genomics.parquet", device="cpu", progress=False, workers=0)
    first = score_archive(tiny_cohort / "dicom", tiny_onnx_model, out, **args)
    before = pd.read_parquet(out)
    again = score_archive(tiny_cohort / "dicom", tiny_onnx_model, out, **args)
    assert (again["processed_this_run"], again["taken_from_earlier_runs"]) == (0, first["studies"])
    assert again["studies"] == first["studies"] == 10
    pd.testing.assert_frame_equal(pd.read_parquet(out), before)
