"""The listener's pipeline in-process, on a clock the test controls: quiet period,
scoring with the real ONNX model, the SR sent by C-STORE to a capturing pynetdicom SCP,
retries with backoff against a peer that is down, bad input, SR versions, clinical
covariates looked up by PatientID, and the geometry-correction note in the SR."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pydicom
import pytest
from pydicom.uid import generate_uid

from radfusion.dicom import find_studies
from radfusion.predictor import Predictor
from radfusion.runtime import OnnxModel
from radfusion.serving.pacs.pipeline import Pipeline, RetryPolicy
from radfusion.serving.pacs.predict import StudyPredictor
from radfusion.serving.pacs.send import CStoreSender, DicomPeer
from radfusion.serving.pacs.state import OnResend, Status, StudyState
from radfusion.serving.pacs.storage import WorkDir
from radfusion.serving.patients import PatientTables
from tests.support.peers import CapturingPacs, free_loopback_port
from tests.support.prediction_sr import read_report
from tests.support.received import deliver

QUIET = 1.0
TOL = 1e-5


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def studies(tiny_cohort: Path) -> list:
    return sorted(find_studies(tiny_cohort / "dicom").studies.values(), key=lambda s: s.patient_id)


@pytest.fixture(scope="module")
def predictor(tiny_onnx_model: Path, tiny_cohort: Path) -> StudyPredictor:
    model = OnnxModel(tiny_onnx_model, device="cpu")
    return StudyPredictor(model, PatientTables.from_paths(model.contract, tiny_cohort / "genomics.parquet"))


@pytest.fixture
def setup(tmp_path: Path, predictor: StudyPredictor):
    """Factory: (pipeline, state, work, clock) sending to 127.0.0.1:port."""
    opened: list[StudyState] = []

    def make(port: int | None = None, retry: RetryPolicy = RetryPolicy(3, 0.5, 10.0)):
        port = port or free_loopback_port()
        work = WorkDir(tmp_path / "work")
        state = StudyState(work.state_path)
        opened.append(state)
        clock = Clock()
        sender = CStoreSender(DicomPeer("PACS", "127.0.0.1", port), "RADFUSION", timeout=5)
        return Pipeline(state, work, predictor, [sender], QUIET, retry, clock), state, work, clock, port

    yield make
    for state in opened:
        state.close()


def test_scored_after_the_quiet_period_and_sent(setup, studies, tiny_onnx_model: Path) -> None:
    pipeline, state, work, clock, port = setup()
    pacs = CapturingPacs(port)
    try:
        study = studies[0]
        paths = [h.path for h in study.instances]
        deliver(state, work, paths, now=clock.now)
        clock.now += QUIET - 0.1
        report = pipeline.tick()
        assert (report.completed, report.scored, report.sent) == (0, 0, 0)
        clock.now += 0.1
        report = pipeline.tick()
        assert (report.completed, report.scored, report.sent) == (1, 1, 1)
    finally:
        pacs.stop()
    (sr,) = pacs.received
    record = state.get(study.study_uid)
    assert record.status is Status.SENT and record.sr_sop_uid == sr.SOPInstanceUID
    assert sr.StudyInstanceUID == study.study_uid and sr.InstanceNumber == 1
    reference = Predictor.load(tiny_onnx_model, device="cpu")
    genes = pipeline.predictor.patients.lookup(study.patient_id).genomics
    expected = reference.predict([reference.prepare(paths, genes)])[0]
    assert record.result["probabilities"] == pytest.approx(expected["probabilities"], abs=TOL)
    assert record.result["modalities_used"] == expected["modalities_used"]


def test_send_retries_with_backoff_fails_and_requeue_delivers(setup, studies) -> None:
    pipeline, state, work, clock, port = setup(retry=RetryPolicy(max_attempts=3, base_seconds=0.5, cap_seconds=10))
    study = studies[1]
    deliver(state, work, [h.path for h in study.instances], now=clock.now)
    clock.now += QUIET
    attempts_at = []
    for step in (0.0, 0.3, 0.2, 0.5, 0.5, 5.0):  # the PACS is down all along
        clock.now += step
        before = state.get(study.study_uid).attempts
        pipeline.tick()
        if state.get(study.study_uid).attempts > before:
            attempts_at.append(round(clock.now - 1_000.0 - QUIET, 2))
    # Attempt 1 at once, 2 after 0.5 s, 3 after 1.0 s more: then failed, no more.
    assert attempts_at == [0.0, 0.5, 1.5]
    failed = state.get(study.study_uid)
    assert failed.status is Status.FAILED and failed.attempts == 3
    assert failed.last_error == f"association with PACS@127.0.0.1:{port} failed (peer unreachable or aborted)"

    pacs = CapturingPacs(port)  # the PACS is back; the operator requeues
    try:
        assert state.requeue_failed(now=clock.now) == 1
        report = pipeline.tick()
    finally:
        pacs.stop()
    assert (report.scored, report.sent) == (0, 1)  # the SR already written is sent, not re-scored
    assert len(pacs.received) == 1 and pacs.received[0].SOPInstanceUID == failed.sr_sop_uid
    assert state.get(study.study_uid).status is Status.SENT


def test_study_without_a_ct_series_fails_at_once(setup, studies) -> None:
    pipeline, state, work, clock, _ = setup()
    study = studies[2]
    localizer = [h.path for h in study.instances if "LOCALIZER" in h.image_type]
    deliver(state, work, localizer, now=clock.now)
    clock.now += QUIET
    report = pipeline.tick()
    assert (report.scored, report.failed, report.retried) == (0, 1, 0)
    record = state.get(study.study_uid)
    assert record.status is Status.FAILED and record.attempts == 1 and record.failed_at == "pending"
    assert record.last_error.startswith("no_image_series: ")
    clock.now += 1_000
    assert pipeline.tick().failed == 0  # not retried: bad input stays failed


def test_rescore_policy_sends_a_new_version(setup, studies) -> None:
    pipeline, state, work, clock, port = setup()
    pacs = CapturingPacs(port)
    study = studies[3]
    paths = [h.path for h in study.instances]
    try:
        deliver(state, work, paths, now=clock.now, policy=OnResend.RESCORE)
        clock.now += QUIET
        assert pipeline.tick().sent == 1
        clock.now += 5
        deliver(state, work, paths, now=clock.now, policy=OnResend.RESCORE)  # the PACS sends it again
        assert state.get(study.study_uid).status is Status.RECEIVED
        clock.now += QUIET
        assert pipeline.tick().sent == 1
    finally:
        pacs.stop()
    first, second = pacs.received
    assert second.SeriesInstanceUID == first.SeriesInstanceUID  # one SR series per study
    assert (first.InstanceNumber, second.InstanceNumber) == (1, 2)
    assert second.SOPInstanceUID != first.SOPInstanceUID
    (predecessor,) = second.PredecessorDocumentsSequence
    assert (
        predecessor.ReferencedSeriesSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID
        == first.SOPInstanceUID
    )
    assert state.get(study.study_uid).version == 2


# ------------------------------------------------- clinical covariates, SR provenance


def sr_texts(path: str) -> dict[str, str]:
    """The SR's texts (found by code, tests.support.prediction_sr), and its modality codes
    under "modalities"."""
    report = read_report(path)
    return {**report.texts, "modalities": ",".join(report.modalities)}


@pytest.fixture(scope="module")
def clinical_setup(tiny_cohort: Path, tiny_contract, studies, tmp_path_factory: pytest.TempPathFactory):
    """(lenient model, strict model, clinical table without studies[0]'s patient)."""
    from tests.support.clinical_models import clinical_models, read_clinical_csv

    lenient, strict = clinical_models(tiny_cohort, tiny_contract, tmp_path_factory.getbasetemp() / "clinical_models")
    table = tmp_path_factory.mktemp("pacs_clinical") / "clinical.parquet"
    read_clinical_csv(tiny_cohort / "clinical.csv").drop(index=studies[0].patient_id).reset_index().to_parquet(table)
    return lenient, strict, table


def listener_pipeline(tmp_path: Path, model: Path, clinical: Path | None, genomics: Path | None = None):
    """The pipeline as ``radfusion listen --clinical`` builds it, without senders (the SR
    stays on disk), on a test clock."""
    from radfusion.serving.pacs.listener import ListenerConfig, build_pipeline

    work = WorkDir(tmp_path / "work")
    state = StudyState(work.state_path)
    config = ListenerConfig(
        model=model,
        work=work.root,
        genomics=genomics,
        clinical=clinical,
        quiet_seconds=QUIET,
        retry=RetryPolicy(3, 0.5, 10.0),
        device="cpu",
    )
    pipeline = build_pipeline(config, state, work)
    pipeline.clock = clock = Clock()
    pipeline.started = clock.now  # the listener started at the test clock's origin
    return pipeline, state, work, clock


def test_listener_looks_up_clinical_covariates_by_patient(
    clinical_setup, studies, tiny_cohort: Path, tmp_path: Path
) -> None:
    from tests.support.clinical_models import read_clinical_csv

    lenient, _, table = clinical_setup
    pipeline, state, work, clock = listener_pipeline(tmp_path, lenient, table, tiny_cohort / "genomics.parquet")
    try:
        absent, present = studies[0], studies[1]
        for study in (absent, present):
            deliver(state, work, [h.path for h in study.instances], now=clock.now)
        clock.now += QUIET
        assert pipeline.tick().scored == 2
        reference = Predictor.load(lenient, device="cpu")
        covariates = read_clinical_csv(tiny_cohort / "clinical.csv")
        for study, source in ((absent, "patient not in the clinical table"), (present, "clinical table")):
            record = state.get(study.study_uid)
            assert record.status is Status.SCORED
            assert record.result["clinical_source"] == source
            genes = pipeline.predictor.patients.lookup(study.patient_id).genomics
            given = covariates.loc[study.patient_id].to_dict() if study is present else None
            expected = reference.predict([reference.prepare([h.path for h in study.instances], genes, given)])[0]
            assert record.result["modalities_used"] == expected["modalities_used"]
            assert record.result["probabilities"] == pytest.approx(expected["probabilities"], abs=TOL)
            texts = sr_texts(record.sr_path)
            assert texts["Clinical source"] == source
            assert texts["Image series selection"] == record.result["series_reason"]
            assert "Geometry corrections" not in texts  # the synthetic series need no repair
        assert "clinical" in state.get(present.study_uid).result["modalities_used"]
        assert "clinical" not in state.get(absent.study_uid).result["modalities_used"]
        assert sr_texts(state.get(present.study_uid).sr_path)["modalities"].endswith("RF-CLINICAL")
    finally:
        state.close()


def test_a_model_requiring_clinical_fails_the_patient_without_a_row_at_once(
    clinical_setup, studies, tmp_path: Path
) -> None:
    from radfusion.serving.patients import PatientTableError

    _, strict, table = clinical_setup
    with pytest.raises(PatientTableError, match="requires clinical input"):
        listener_pipeline(tmp_path / "refused", strict, None)
    pipeline, state, work, clock = listener_pipeline(tmp_path, strict, table)
    try:
        absent, present = studies[0], studies[1]
        for study in (absent, present):
            deliver(state, work, [h.path for h in study.instances], now=clock.now)
        clock.now += QUIET
        report = pipeline.tick()
        assert (report.scored, report.failed, report.retried) == (1, 1, 0)
        failed = state.get(absent.study_uid)
        assert failed.status is Status.FAILED and failed.attempts == 1
        assert (
            failed.last_error == "patient_data_missing: the model requires clinical (patient not in the clinical table)"
        )
        assert state.get(present.study_uid).result["clinical_source"] == "clinical table"
    finally:
        state.close()


def test_gapped_series_waits_then_is_scored_with_the_gap_noted(predictor: StudyPredictor, tmp_path: Path) -> None:
    """Slice 7 of 10 never arrives: instance numbers and positions show the hole, so the
    quiet study waits for it; after the maximum wait it is scored from 9 slices (the
    reader fills the gap) and the SR says both what was missing and what was repaired."""
    from tests.support.dicom_series import GAP_NOTE, write_axial_series

    study_uid = generate_uid()
    write_axial_series(tmp_path / "in", study_uid, 2, 10, keep=[k for k in range(10) if k != 6])
    work = WorkDir(tmp_path / "work")
    state = StudyState(work.state_path)
    clock = Clock()
    try:
        pipeline = Pipeline(state, work, predictor, [], QUIET, RetryPolicy(3, 0.5, 10.0), clock, max_wait_seconds=5.0)
        deliver(state, work, sorted((tmp_path / "in").iterdir()), now=clock.now)
        clock.now += QUIET
        assert pipeline.tick().completed == 0 and state.get(study_uid).status is Status.RECEIVED
        clock.now += 5.0 - QUIET - 0.1
        assert pipeline.tick().completed == 0
        clock.now += 0.1
        assert pipeline.tick().scored == 1
        record = state.get(study_uid)
        assert record.result["geometry_corrections"] == [GAP_NOTE]
        texts = sr_texts(record.sr_path)
        assert texts["Geometry corrections"] == GAP_NOTE
        assert texts["Study completeness"] == (
            "scored after waiting 5 s for missing instances: 1 instance(s) the headers declare never arrived"
            " (series 2: 9 received, instance numbers 1-10 with 1 missing)"
        )
        assert record.result["completeness"] == texts["Study completeness"]
        assert pydicom.dcmread(record.sr_path).CompletionFlag == "PARTIAL"
        assert texts["Image series selection"] == "CT series with 9 slices"
        assert texts["Genomics source"] == "patient not in the genomics table"
        assert "Clinical source" not in texts  # the model has no clinical block
    finally:
        state.close()


def test_listen_command_refuses_a_clinical_table_without_the_model_covariates(clinical_setup, tmp_path: Path) -> None:
    """``radfusion listen --clinical`` reaches the lookup: a table that cannot serve the
    model stops the command with the reason, before anything listens."""
    from radfusion.serving.pacs.cli import main

    lenient, strict, table = clinical_setup
    no_sex = tmp_path / "no_sex.csv"
    pd.read_parquet(table).drop(columns=["sex"]).to_csv(no_sex, index=False)
    with pytest.raises(
        SystemExit, match=r"radfusion listen: clinical table no_sex\.csv lacks the model's column\(s\): sex"
    ):
        main(
            [
                "listen",
                "--model",
                str(lenient),
                "--work",
                str(tmp_path / "work"),
                "--clinical",
                str(no_sex),
                "--port",
                str(free_loopback_port()),
                "--device",
                "cpu",
            ]
        )
    with pytest.raises(SystemExit, match="radfusion listen: the model requires clinical input: give a clinical table"):
        main(
            [
                "listen",
                "--model",
                str(strict),
                "--work",
                str(tmp_path / "work"),
                "--port",
                str(free_loopback_port()),
                "--device",
                "cpu",
            ]
        )
