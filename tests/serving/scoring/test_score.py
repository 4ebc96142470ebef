"""The archive scorer: one Parquet row per study, errors as rows, numbers equal to
radfusion.predictor.Predictor, and never a half-written output file.

The module's reference run uses the real worker pool (2 processes); other runs here
use ``workers=0`` (all in this process) where the pool is not the point."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pydicom
import pytest
from pydicom.uid import generate_uid

from radfusion.dicom import find_studies
from radfusion.genomics import load_genomics_table, row_as_mapping
from radfusion.prediction import prob_column
from radfusion.predictor import Predictor
from radfusion.serving.scoring import inference, writer
from radfusion.serving.scoring.rows import TIMING_COLUMNS
from radfusion.serving.scoring.score import score_archive

TOL = 1e-5
BROKEN_PATIENT = "BROKEN0001"


def results(path: Path) -> pd.DataFrame:
    """The output without its timing columns (which differ from run to run)."""
    return pd.read_parquet(path).drop(columns=list(TIMING_COLUMNS))


def add_broken_copy(source_study, dest: Path) -> str:
    """A copy of ``source_study`` under new UIDs whose axial slice 3 has lost the end of
    its pixel data. Returns the copy's StudyInstanceUID."""
    study_uid = generate_uid()
    series_uids: dict[str, str] = {}
    dest.mkdir(parents=True)
    axial = []
    for i, header in enumerate(source_study.instances):
        ds = pydicom.dcmread(header.path)
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uids.setdefault(header.series_uid, generate_uid())
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.PatientID = BROKEN_PATIENT
        path = dest / f"{i:03d}.dcm"
        ds.save_as(path)
        if "AXIAL" in header.image_type:
            axial.append(path)
    data = axial[3].read_bytes()
    axial[3].write_bytes(data[: len(data) - 700])
    return study_uid


@pytest.fixture(scope="module")
def archive(tiny_cohort: Path, tmp_path_factory: pytest.TempPathFactory):
    """The tiny cohort's studies, one broken copy, and a stray non-DICOM file."""
    root = tmp_path_factory.mktemp("archive")
    shutil.copytree(tiny_cohort / "dicom", root / "dicom")
    first = min(find_studies(tiny_cohort / "dicom").studies.values(), key=lambda s: s.study_uid)
    broken_uid = add_broken_copy(first, root / "dicom" / "zz_broken")
    (root / "dicom" / "README.txt").write_text("not a DICOM file")
    return root / "dicom", broken_uid


@pytest.fixture(scope="module")
def scored(archive, tiny_cohort: Path, tiny_onnx_model: Path, tmp_path_factory: pytest.TempPathFactory):
    dicom_root, _ = archive
    out = tmp_path_factory.mktemp("scores") / "scores.parquet"
    summary = score_archive(
        dicom_root,
        tiny_onnx_model,
        out,
        genomics=tiny_cohort / "genomics.parquet",
        batch_size=4,
        device="cpu",
        workers=2,
        chunk_size=4,
    )
    return summary, out


def test_one_row_per_study_and_the_broken_one_fails(archive, scored, tiny_cohort: Path) -> None:
    dicom_root, broken_uid = archive
    summary, out = scored
    rows = pd.read_parquet(out)
    assert len(rows) == summary["studies"] == 11
    assert rows["study_instance_uid"].is_unique
    assert set(rows["study_instance_uid"]) == set(find_studies(dicom_root).studies)
    assert (summary["scored"], summary["failed"], summary["skipped_files"]) == (10, 1, 1)
    assert summary["failed_by_reason"] == {"corrupt_dicom": 1}
    assert (summary["processed_this_run"], summary["taken_from_earlier_runs"]) == (11, 0)
    assert summary["out"] == str(out) and summary["seconds"] > 0 and summary["studies_per_second"] > 0
    assert not Path(f"{out}.parts").exists()  # compacted: the part files are gone
    assert list(rows["study_instance_uid"]) == sorted(rows["study_instance_uid"])

    broken = rows.set_index("study_instance_uid").loc[broken_uid]
    assert broken["patient_id"] == BROKEN_PATIENT
    assert broken["error"].startswith("corrupt_dicom: ") and "pixel data cannot be decoded" in broken["error"]
    assert pd.isna(broken["prob_responder"]) and pd.isna(broken["predicted_label"])
    assert pd.isna(broken["modalities_used"]) and pd.isna(broken["series_instance_uid"])
    assert broken["model_name"] == "tiny-fusion"
    assert broken["prepare_seconds"] > 0 and pd.isna(broken["infer_seconds"])

    ok = rows[rows["study_instance_uid"] != broken_uid]
    assert ok["error"].isna().all()
    total = ok["prob_non_responder"] + ok["prob_responder"]
    np.testing.assert_allclose(total, 1.0, atol=TOL)
    assert (ok["model_name"] == "tiny-fusion").all() and (ok["model_version"] == "0.0.1-test").all()
    assert (ok["prepare_seconds"] > 0).all() and (ok["infer_seconds"] > 0).all()
    studies = find_studies(dicom_root).studies
    assert [len(studies[uid].instances) for uid in rows["study_instance_uid"]] == list(rows["n_instances"])
    argmax = np.where(ok["prob_responder"] > ok["prob_non_responder"], "responder", "non-responder")
    assert list(ok["predicted_label"]) == list(argmax)

    table = load_genomics_table(tiny_cohort / "genomics.parquet")
    has_genomics = ok["patient_id"].isin(table.index)
    assert has_genomics.any() and not has_genomics.all()
    assert set(ok.loc[has_genomics, "modalities_used"]) == {"image+expression+mutation"}
    assert set(ok.loc[~has_genomics, "modalities_used"]) == {"image"}


def test_schema_is_fixed(scored) -> None:
    _, out = scored
    schema = pq.read_schema(out)
    assert schema.names == [
        "study_instance_uid",
        "patient_id",
        "series_instance_uid",
        "series_reason",
        "series_rejected",
        "geometry_corrections",
        "predicted_label",
        "prob_non_responder",
        "prob_responder",
        "modalities_used",
        "imputed_features",
        "absent_blocks",
        "imputation",
        "genomics_source",
        "clinical_source",
        "model_name",
        "model_version",
        "n_instances",
        "prepare_seconds",
        "infer_seconds",
        "error",
    ]
    assert str(schema.field("prob_responder").type) == "double"
    assert str(schema.field("error").type) == "string"


def test_rows_equal_predictor(archive, scored, tiny_cohort: Path, tiny_onnx_model: Path) -> None:
    dicom_root, broken_uid = archive
    _, out = scored
    rows = pd.read_parquet(out).set_index("study_instance_uid")
    predictor = Predictor.load(tiny_onnx_model, device="cpu")
    table = load_genomics_table(tiny_cohort / "genomics.parquet")
    studies = {uid: s for uid, s in find_studies(dicom_root).studies.items() if uid != broken_uid}
    cases = [
        predictor.prepare([h.path for h in s.instances], row_as_mapping(table, s.patient_id)) for s in studies.values()
    ]
    for uid, expected in zip(studies, predictor.predict(cases), strict=True):
        row = rows.loc[uid]
        assert row["series_instance_uid"] == expected["series_instance_uid"]
        assert row["predicted_label"] == expected["predicted_label"]
        assert row["modalities_used"].split("+") == expected["modalities_used"]
        # The missing-data policy's account, as the HTTP answer gives it.
        assert row["imputed_features"] == expected["imputation"]["imputed_features"]
        assert row["absent_blocks"] == ",".join(expected["imputation"]["absent_blocks"])
        assert json.loads(row["imputation"]) == expected["imputation"]["blocks"]
        for label, p in expected["probabilities"].items():
            assert row[prob_column(label)] == pytest.approx(p, abs=TOL)


def test_batch_size_and_workers_do_not_change_answers(
    archive, scored, tiny_onnx_model: Path, tiny_cohort: Path, tmp_path: Path
) -> None:
    dicom_root, _ = archive
    _, out = scored
    one_by_one = tmp_path / "one.parquet"
    score_archive(
        dicom_root,
        tiny_onnx_model,
        one_by_one,
        genomics=tiny_cohort / "genomics.parquet",
        batch_size=1,
        device="cpu",
        progress=False,
        workers=0,
    )
    pd.testing.assert_frame_equal(results(one_by_one), results(out), atol=TOL)


def test_without_genomics_every_study_is_image_only(archive, tiny_onnx_model: Path, tmp_path: Path) -> None:
    dicom_root, _ = archive
    out = tmp_path / "image_only.parquet"
    summary = score_archive(dicom_root, tiny_onnx_model, out, genomics=None, device="cpu", progress=False, workers=0)
    rows = pd.read_parquet(out)
    assert summary["failed"] == 1
    assert set(rows["modalities_used"].dropna()) == {"image"}


def test_failed_inference_costs_only_its_own_row(archive, tiny_onnx_model: Path, tmp_path: Path, monkeypatch) -> None:
    """A batch that breaks the runtime is retried case by case: only the culprit fails."""
    dicom_root, broken_uid = archive
    real_run = inference.run_inputs
    victim = sorted(uid for uid in find_studies(dicom_root).studies if uid != broken_uid)[2]
    predictor = Predictor.load(tiny_onnx_model, device="cpu")
    victim_image = predictor.prepare(
        [h.path for h in find_studies(dicom_root).studies[victim].instances], None
    ).inputs.image

    def flaky_run(model, inputs):
        if any(np.array_equal(i.image, victim_image) for i in inputs):
            raise RuntimeError("ORT failure")
        return real_run(model, inputs)

    monkeypatch.setattr(inference, "run_inputs", flaky_run)
    out = tmp_path / "flaky.parquet"
    summary = score_archive(dicom_root, tiny_onnx_model, out, device="cpu", batch_size=4, progress=False, workers=0)
    rows = pd.read_parquet(out).set_index("study_instance_uid")
    assert rows.loc[victim, "error"] == "inference_failed: RuntimeError"
    assert summary["failed"] == 2  # the victim and the broken study
    assert summary["failed_by_reason"] == {"corrupt_dicom": 1, "inference_failed": 1}
    assert rows["prob_responder"].notna().sum() == 9


def test_output_is_replaced_atomically(archive, tiny_onnx_model: Path, tmp_path: Path, monkeypatch) -> None:
    dicom_root, _ = archive
    out = tmp_path / "scores.parquet"
    out.write_bytes(b"previous run")
    with pytest.raises(writer.ResumeError, match="not written by this scorer"):
        score_archive(dicom_root, tiny_onnx_model, out, device="cpu", progress=False, workers=0)
    assert [p.name for p in tmp_path.iterdir()] == ["scores.parquet"]

    def failing_write(table, where, **kwargs):
        Path(where).write_bytes(b"PAR1 half a file")
        raise OSError("disk full")

    monkeypatch.setattr(writer.pq, "write_table", failing_write)
    with pytest.raises(OSError, match="disk full"):
        score_archive(dicom_root, tiny_onnx_model, out, device="cpu", progress=False, workers=0, fresh=True)
    assert out.read_bytes() == b"previous run"
    leftovers = [
        p.name for p in tmp_path.rglob("*") if p.is_file() and p.name not in ("scores.parquet", "run.json", "lock")
    ]
    assert leftovers == []  # no partial file, no half part


def test_empty_archive_gives_empty_table(tiny_onnx_model: Path, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    out = tmp_path / "empty.parquet"
    summary = score_archive(tmp_path / "empty", tiny_onnx_model, out, device="cpu", progress=False, workers=0)
    assert (summary["studies"], summary["scored"], summary["failed"]) == (0, 0, 0)
    table = pq.read_table(out)
    assert table.num_rows == 0 and "prob_responder" in table.schema.names


def test_cli_score(archive, scored, tiny_cohort: Path, tiny_onnx_model: Path, tmp_path: Path, capsys) -> None:
    from radfusion.cli import main

    dicom_root, _ = archive
    _, reference = scored
    out = tmp_path / "cli.parquet"
    main(
        [
            "score",
            "--archive",
            str(dicom_root),
            "--genomics",
            str(tiny_cohort / "genomics.parquet"),
            "--model",
            str(tiny_onnx_model),
            "--out",
            str(out),
            "--device",
            "cpu",
            "--workers",
            "1",
        ]
    )
    assert '"failed": 1' in capsys.readouterr().out
    pd.testing.assert_frame_equal(results(out), results(reference), atol=TOL)
