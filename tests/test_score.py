"""The archive scorer: one Parquet row per study, errors as rows, numbers equal to
radfusion.predictor.Predictor, and never a half-written output file."""

from __future__ import annotations

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
from radfusion.predictor import Predictor
from serving import score
from serving.score import score_archive

TOL = 1e-5
BROKEN_PATIENT = "BROKEN0001"


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
        dicom_root, tiny_onnx_model, out, genomics=tiny_cohort / "genomics.parquet", batch_size=4, device="cpu"
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
    assert summary["out"] == str(out) and summary["seconds"] > 0

    broken = rows.set_index("study_instance_uid").loc[broken_uid]
    assert broken["patient_id"] == BROKEN_PATIENT
    assert broken["error"].startswith("corrupt_dicom: pixel data cannot be decoded")
    assert pd.isna(broken["prob_responder"]) and pd.isna(broken["predicted_label"])
    assert pd.isna(broken["modalities_used"]) and pd.isna(broken["series_instance_uid"])
    assert broken["model_name"] == "tiny-fusion"

    ok = rows[rows["study_instance_uid"] != broken_uid]
    assert ok["error"].isna().all()
    total = ok["prob_non-responder"] + ok["prob_responder"]
    np.testing.assert_allclose(total, 1.0, atol=TOL)
    assert (ok["model_name"] == "tiny-fusion").all() and (ok["model_version"] == "0.0.1-test").all()
    argmax = np.where(ok["prob_responder"] > ok["prob_non-responder"], "responder", "non-responder")
    assert list(ok["predicted_label"]) == list(argmax)

    table = load_genomics_table(tiny_cohort / "genomics.parquet")
    has_genomics = ok["patient_id"].isin(table.index)
    assert has_genomics.any() and not has_genomics.all()
    assert set(ok.loc[has_genomics, "modalities_used"]) == {"image,genomics"}
    assert set(ok.loc[~has_genomics, "modalities_used"]) == {"image"}


def test_schema_is_fixed(scored) -> None:
    _, out = scored
    schema = pq.read_schema(out)
    assert schema.names == [
        "study_instance_uid", "patient_id", "series_instance_uid", "predicted_label",
        "prob_non-responder", "prob_responder", "modalities_used", "model_name", "model_version", "error",
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
        predictor.prepare([h.path for h in s.instances], row_as_mapping(table, s.patient_id))
        for s in studies.values()
    ]
    for uid, expected in zip(studies, predictor.predict(cases)):
        row = rows.loc[uid]
        assert row["series_instance_uid"] == expected["series_instance_uid"]
        assert row["predicted_label"] == expected["predicted_label"]
        assert row["modalities_used"].split(",") == expected["modalities_used"]
        for label, p in expected["probabilities"].items():
            assert row[f"prob_{label}"] == pytest.approx(p, abs=TOL)


def test_batch_size_does_not_change_answers(archive, scored, tiny_onnx_model: Path, tiny_cohort: Path, tmp_path: Path) -> None:
    dicom_root, _ = archive
    _, out = scored
    one_by_one = tmp_path / "one.parquet"
    score_archive(dicom_root, tiny_onnx_model, one_by_one, genomics=tiny_cohort / "genomics.parquet",
                  batch_size=1, device="cpu", progress=False)
    pd.testing.assert_frame_equal(pd.read_parquet(one_by_one), pd.read_parquet(out), atol=TOL)


def test_without_genomics_every_study_is_image_only(archive, tiny_onnx_model: Path, tmp_path: Path) -> None:
    dicom_root, _ = archive
    out = tmp_path / "image_only.parquet"
    summary = score_archive(dicom_root, tiny_onnx_model, out, genomics=None, device="cpu", progress=False)
    rows = pd.read_parquet(out)
    assert summary["failed"] == 1
    assert set(rows["modalities_used"].dropna()) == {"image"}


def test_failed_inference_costs_only_its_own_row(archive, tiny_onnx_model: Path, tmp_path: Path, monkeypatch) -> None:
    """A batch that breaks the runtime is retried case by case: only the culprit fails."""
    dicom_root, broken_uid = archive
    real_run = score._run

    def flaky_run(model, cases):
        if any(c.study is not None and c.study.study_uid == victim for c in cases):
            raise RuntimeError("ORT failure")
        return real_run(model, cases)

    victim = sorted(uid for uid in find_studies(dicom_root).studies if uid != broken_uid)[2]
    monkeypatch.setattr(score, "_run", flaky_run)
    out = tmp_path / "flaky.parquet"
    summary = score_archive(dicom_root, tiny_onnx_model, out, device="cpu", batch_size=4, progress=False)
    rows = pd.read_parquet(out).set_index("study_instance_uid")
    assert rows.loc[victim, "error"] == "inference_failed: RuntimeError"
    assert summary["failed"] == 2  # the victim and the broken study
    assert rows["prob_responder"].notna().sum() == 9


def test_output_is_replaced_atomically(archive, tiny_onnx_model: Path, tmp_path: Path, monkeypatch) -> None:
    dicom_root, _ = archive
    out = tmp_path / "scores.parquet"
    out.write_bytes(b"previous run")

    def failing_write(table, where, **kwargs):
        Path(where).write_bytes(b"PAR1 half a file")
        raise OSError("disk full")

    monkeypatch.setattr(score.pq, "write_table", failing_write)
    with pytest.raises(OSError, match="disk full"):
        score_archive(dicom_root, tiny_onnx_model, out, device="cpu", progress=False)
    assert out.read_bytes() == b"previous run"
    assert [p.name for p in tmp_path.iterdir()] == ["scores.parquet"]  # no partial file left


def test_empty_archive_gives_empty_table(tiny_onnx_model: Path, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    out = tmp_path / "empty.parquet"
    summary = score_archive(tmp_path / "empty", tiny_onnx_model, out, device="cpu", progress=False)
    assert (summary["studies"], summary["scored"], summary["failed"]) == (0, 0, 0)
    table = pq.read_table(out)
    assert table.num_rows == 0 and "prob_responder" in table.schema.names


def test_cli_score(archive, scored, tiny_cohort: Path, tiny_onnx_model: Path, tmp_path: Path, capsys) -> None:
    from radfusion.cli import main

    dicom_root, _ = archive
    _, reference = scored
    out = tmp_path / "cli.parquet"
    main(["score", "--archive", str(dicom_root), "--genomics", str(tiny_cohort / "genomics.parquet"),
          "--model", str(tiny_onnx_model), "--out", str(out), "--device", "cpu"])
    assert '"failed": 1' in capsys.readouterr().out
    pd.testing.assert_frame_equal(pd.read_parquet(out), pd.read_parquet(reference), atol=TOL)
