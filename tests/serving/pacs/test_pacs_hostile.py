"""The PACS listener under hostile and odd input (issue 14): it never scores part of a
study, never loses an instance it acknowledged, reports what it cannot score, and its
log carries no identifier.

In-process (fast, on a test clock, the real ONNX model, SRs sent by C-STORE to a
capturing pynetdicom SCP): an outage before the study was complete, instances arriving
after the SR, odd demographics, a corrupt study, the retention period.

As real processes (slow): ``radfusion listen`` killed with SIGKILL in the middle of a
study and restarted; one listener fed late instances, odd demographics, a corrupt
study, undecodable C-STOREs and AE titles of spaces or control characters, with Orthanc
as the PACS that receives the SRs (QIDO-RS/WADO-RS to read them back, dciodvfy to check
them); and the logs of every listener of the module searched for the planted patient
names, every UID and every path below the listeners' storage roots."""

from __future__ import annotations

import re
import shutil
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import FileMetaDataset
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import Verification

from radfusion.predictor import Predictor
from radfusion.runtime import OnnxModel
from radfusion.serving.pacs.completeness import hints_of
from radfusion.serving.pacs.pipeline import Pipeline, RetryPolicy
from radfusion.serving.pacs.predict import StudyPredictor
from radfusion.serving.pacs.send import CStoreSender, DicomPeer
from radfusion.serving.pacs.state import Arrival, OnResend, Status, StudyState
from radfusion.serving.pacs.storage import WorkDir, study_key
from radfusion.serving.patients import PatientTables
from tests.support.dicom_series import ct_slice
from tests.support.peers import CapturingPacs, dicom_echo, free_loopback_port, pacs_status
from tests.support.prediction_sr import read_report
from tests.support.validators import assert_dciodvfy_valid

QUIET = 1.0
MAX_WAIT = 5.0
TOL = 1e-5
MODALITY = "MODALITY"
PLANTED = "PLANTEDNAME"  # in every patient name written here; never in a log
SR_TEXT = ("No result", "Error kind", "Study completeness", "Replaces earlier report", "Earlier report")


# ------------------------------------------------------------------ the studies


@dataclass
class Study:
    study_uid: str
    series_uid: str
    paths: list[Path]
    name: str
    patient_id: str

    @property
    def sop_uids(self) -> list[str]:
        return [pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in self.paths]

    def identifiers(self) -> set[str]:
        """What must never appear in a log: UIDs and patient values as written."""
        header = pydicom.dcmread(self.paths[0], stop_before_pixels=True)
        values = {str(header.get(k, "")) for k in ("PatientBirthDate", "AccessionNumber")}
        return {self.study_uid, self.series_uid, self.patient_id, *self.sop_uids, *self.name.split("^"), *values}


def write_study(
    folder: Path,
    tag: str,
    n: int = 25,
    *,
    declared: bool = True,
    sex: str = "F",
    birth: str = "19600617",
    age: str = "064Y",
    name: str | None = None,
    truncated_pixels: bool = False,
    seed: int = 0,
) -> Study:
    """An axial CT series of ``n`` slices whose intensity changes along z, so that a
    part of it scores differently from the whole. ``declared``: each slice says
    ImagesInAcquisition n (without it, a missing tail is invisible in the headers)."""
    study_uid, series_uid, frame_of_reference = generate_uid(), generate_uid(), generate_uid()
    rng = np.random.default_rng(seed)
    base = rng.normal(0.0, 120.0, (32, 32))
    name = name or f"HOSTILE{tag}^{PLANTED}"
    patient_id = f"PID{tag}{seed}"
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for k in range(n):
        hu = np.clip(base + 30.0 * k - 300.0 + rng.normal(0.0, 30.0, base.shape), -1000, 2000)
        ds = ct_slice(
            hu,
            (-96.0, -96.0, 5.0 * k),
            pixel_spacing=(6.0, 6.0),
            study_uid=study_uid,
            series_uid=series_uid,
            number=k + 1,
        )
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.PatientName, ds.PatientID, ds.PatientSex, ds.PatientBirthDate, ds.PatientAge = (
            name,
            patient_id,
            sex,
            birth,
            age,
        )
        ds.StudyDate, ds.StudyTime, ds.AccessionNumber, ds.StudyID = "20240301", "101500", f"ACC{tag}", "1"
        ds.ReferringPhysicianName, ds.Manufacturer = "", "radfusion-tests"
        ds.FrameOfReferenceUID = frame_of_reference
        if declared:
            ds.AcquisitionNumber, ds.ImagesInAcquisition = 1, n
        if truncated_pixels:
            ds.PixelData = ds.PixelData[:100]
        path = folder / f"{k:03d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return Study(study_uid, series_uid, paths, name, patient_id)


def probabilities(predictor: Predictor, paths: list[Path]) -> dict[str, float]:
    return predictor.predict([predictor.prepare(paths, None)])[0]["probabilities"]


def sr_texts(ds: pydicom.Dataset) -> dict[str, str]:
    return read_report(ds).texts


def sr_probabilities(ds: pydicom.Dataset) -> dict[str, float]:
    return read_report(ds).probabilities


def evidence_uids(ds: pydicom.Dataset) -> list[str]:
    return sorted(
        i.ReferencedSOPInstanceUID
        for e in ds.CurrentRequestedProcedureEvidenceSequence
        for s in e.ReferencedSeriesSequence
        for i in s.ReferencedSOPSequence
    )


def predecessor_uid(ds: pydicom.Dataset) -> str:
    (study,) = ds.PredecessorDocumentsSequence
    (series,) = study.ReferencedSeriesSequence
    (instance,) = series.ReferencedSOPSequence
    return instance.ReferencedSOPInstanceUID


@pytest.fixture(scope="module")
def reference(tiny_onnx_model: Path) -> Predictor:
    return Predictor.load(tiny_onnx_model, device="cpu")


# ---------------------------------------------------------------- in-process


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Rig:
    pipeline: Pipeline
    state: StudyState
    work: WorkDir
    clock: Clock
    pacs: CapturingPacs | None
    port: int

    def deliver(self, paths: list[Path], policy: OnResend = OnResend.IGNORE) -> list[Arrival]:
        """What the SCP does for each instance, without the network."""
        arrivals = []
        for path in paths:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            target = self.work.instance_path(ds.StudyInstanceUID, ds.SOPInstanceUID)
            written = not target.exists()
            if written:
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, target)
            arrival = self.state.record_instance(
                ds.StudyInstanceUID,
                ds.SeriesInstanceUID,
                ds.SOPInstanceUID,
                ds.SOPClassUID,
                str(target),
                policy,
                now=self.clock.now,
                hints=hints_of(ds),
                file_restored=written,
            )
            if arrival is Arrival.DISCARDED:
                target.unlink()
                self.work.remove_study_dir(ds.StudyInstanceUID)
            arrivals.append(arrival)
        return arrivals

    def restart(self, **options) -> None:
        """A new listener process on the same folder: a new pipeline, started now."""
        self.pipeline = new_pipeline(self.state, self.work, self.pipeline.predictor, self.clock, self.port, **options)


def new_pipeline(state, work, predictor, clock, port, **options) -> Pipeline:
    sender = CStoreSender(DicomPeer("PACS", "127.0.0.1", port), "RADFUSION", timeout=5)
    options.setdefault("max_wait_seconds", MAX_WAIT)
    return Pipeline(state, work, predictor, [sender], QUIET, RetryPolicy(3, 0.5, 10.0), clock, **options)


@pytest.fixture(scope="module")
def predictor(tiny_onnx_model: Path, tiny_cohort: Path) -> StudyPredictor:
    model = OnnxModel(tiny_onnx_model, device="cpu")
    return StudyPredictor(model, PatientTables.from_paths(model.contract, tiny_cohort / "genomics.parquet"))


@pytest.fixture
def rig(tmp_path: Path, predictor: StudyPredictor) -> Callable[..., Rig]:
    made: list[Rig] = []

    def make(pacs: bool = True, **options) -> Rig:
        port = free_loopback_port()
        work = WorkDir(tmp_path / "work")
        state = StudyState(work.state_path)
        clock = Clock()
        made.append(Rig(new_pipeline(state, work, predictor, clock, port, **options), state, work, clock, None, port))
        if pacs:
            made[-1].pacs = CapturingPacs(port)
        return made[-1]

    yield make
    for r in made:
        if r.pacs:
            r.pacs.stop()
        r.state.close()


def test_restart_after_an_outage_waits_for_the_declared_instances(rig, reference: Predictor, tmp_path: Path) -> None:
    """12 of 25 instances, then the listener is down longer than the quiet period. The
    restarted listener neither scores at once (the PACS could not send while it was
    down) nor after its quiet period (ImagesInAcquisition says 25): it scores the 25
    once the rest arrives."""
    study = write_study(tmp_path / "in", "OUTAGE")
    r = rig()
    r.deliver(study.paths[:12])
    r.clock.now += 100.0  # down for 100 s, far longer than the quiet period
    r.restart()
    r.clock.now += QUIET - 0.1
    assert r.pipeline.tick().completed == 0  # quiet is counted from the restart
    r.clock.now += 0.1
    assert r.pipeline.tick().completed == 0  # quiet, but 13 instances are declared and missing
    assert r.state.get(study.study_uid).status is Status.RECEIVED
    r.clock.now += 2.0
    r.deliver(study.paths[12:])  # the PACS retries
    r.clock.now += QUIET
    report = r.pipeline.tick()
    assert (report.completed, report.scored, report.sent) == (1, 1, 1)
    (sr,) = r.pacs.received
    full, part = probabilities(reference, study.paths), probabilities(reference, study.paths[:12])
    assert max(abs(full[k] - part[k]) for k in full) > 1e-3  # scoring the first 12 would be a different answer
    assert sr_probabilities(sr) == pytest.approx(full, abs=TOL)
    assert evidence_uids(sr) == sorted(study.sop_uids)
    assert sr.CompletionFlag == "COMPLETE" and "Study completeness" not in sr_texts(sr)
    r.clock.now += 60.0
    assert r.pipeline.tick().scored == 0 and len(r.pacs.received) == 1  # once


def test_instances_after_the_sr_reissue_a_superseding_sr(rig, reference: Predictor, tmp_path: Path) -> None:
    """Headers that do not say how many instances there are: the first 12 look whole
    and are scored; the 13 that arrive after the SR reopen the study (default policy
    "ignore" is about re-sent instances, not new ones) and a second SR supersedes it."""
    study = write_study(tmp_path / "in", "LATE", declared=False)
    r = rig()
    r.deliver(study.paths[:12])
    r.clock.now += QUIET
    assert r.pipeline.tick().sent == 1
    r.clock.now += 30.0
    assert r.deliver(study.paths[12:]) == [Arrival.NEW] * 13
    assert r.state.get(study.study_uid).status is Status.RECEIVED
    r.clock.now += QUIET
    assert r.pipeline.tick().sent == 1
    first, second = r.pacs.received
    assert sr_probabilities(first) == pytest.approx(probabilities(reference, study.paths[:12]), abs=TOL)
    assert sr_probabilities(second) == pytest.approx(probabilities(reference, study.paths), abs=TOL)
    assert second.SeriesInstanceUID == first.SeriesInstanceUID and second.SOPInstanceUID != first.SOPInstanceUID
    assert (first.InstanceNumber, second.InstanceNumber) == (1, 2)
    assert predecessor_uid(second) == first.SOPInstanceUID
    assert sr_texts(second)["Replaces earlier report"] == (
        "replaces report version 1, based on 12 instances; this one on 25"
    )
    assert evidence_uids(second) == sorted(study.sop_uids)  # nothing received is left unscored
    record = r.state.get(study.study_uid)
    assert (record.status, record.version, record.n_instances) == (Status.SENT, 2, 25)


def test_odd_demographics_still_get_an_sr(rig, tmp_path: Path) -> None:
    long_name = "Odd^" + PLANTED + "X" * 80
    study = write_study(tmp_path / "in", "ODD", n=6, sex="U", birth="1960-06-17", age="sixty", name=long_name)
    r = rig()
    r.deliver(study.paths)
    r.clock.now += QUIET
    report = r.pipeline.tick()
    assert (report.scored, report.sent, report.retried, report.failed) == (1, 1, 0, 0)
    (sr,) = r.pacs.received
    assert (sr.PatientSex, sr.PatientBirthDate, sr.PatientID) == ("", "19600617", study.patient_id)
    assert "PatientAge" not in sr
    assert len(str(sr.PatientName)) == 64 and str(sr.PatientName).startswith("Odd^" + PLANTED)
    assert sr.StudyInstanceUID == study.study_uid
    assert_dciodvfy_valid(sr, tmp_path)


def test_a_corrupt_study_is_reported_to_the_pacs(rig, tmp_path: Path) -> None:
    """Truncated pixel data: failed at once with its kind, and an SR saying so reaches
    the PACS (after the PACS, down at first, is back)."""
    study = write_study(tmp_path / "in", "CORRUPT", n=6, truncated_pixels=True)
    r = rig(pacs=False)
    r.deliver(study.paths)
    r.clock.now += QUIET
    report = r.pipeline.tick()
    assert (report.scored, report.failed, report.notices, report.sent, report.retried) == (0, 1, 1, 0, 0)
    assert len(report.errors) == 1 and "failed (peer unreachable" in report.errors[0]  # the report could not go
    record = r.state.get(study.study_uid)
    assert (record.status, record.attempts, record.version) == (Status.FAILED, 1, 1)
    assert record.last_error.startswith("corrupt_dicom: ")
    r.pacs = CapturingPacs(r.port)
    r.clock.now += 0.4
    assert r.pipeline.tick().sent == 0  # backoff: not before 0.5 s
    r.clock.now += 0.1
    assert r.pipeline.tick().sent == 1
    (sr,) = r.pacs.received
    texts = sr_texts(sr)
    assert texts["Error kind"] == "corrupt_dicom"
    assert texts["No result"] == record.last_error.removeprefix("corrupt_dicom: ")
    assert "Earlier report" not in texts and "PredecessorDocumentsSequence" not in sr
    assert evidence_uids(sr) == sorted(study.sop_uids) and sr.StudyInstanceUID == study.study_uid
    assert sr.PatientID == study.patient_id and sr.InstanceNumber == 1
    r.clock.now += 100.0
    assert r.pipeline.tick().sent == 0  # delivered once


def test_failure_reports_can_be_turned_off(rig, tmp_path: Path) -> None:
    study = write_study(tmp_path / "in", "QUIETFAIL", n=6, truncated_pixels=True)
    r = rig(report_failures=False)
    r.deliver(study.paths)
    r.clock.now += QUIET
    report = r.pipeline.tick()
    assert (report.failed, report.notices, report.sent) == (1, 0, 0) and r.pacs.received == []
    assert list(r.work.results.iterdir()) == []


def test_retention_deletes_files_and_a_study_reopened_after_it_is_not_scored_in_part(
    rig, reference: Predictor, tmp_path: Path
) -> None:
    study = write_study(tmp_path / "in", "RETAIN", n=8, declared=False)
    r = rig(keep_seconds=60.0)
    r.deliver(study.paths[:7])
    r.clock.now += QUIET
    assert r.pipeline.tick().sent == 1
    folder = r.work.studies / study_key(study.study_uid)
    assert len(list(folder.iterdir())) == 7 and len(list(r.work.results.iterdir())) == 1
    r.clock.now += 59.0
    assert r.pipeline.tick().purged == 0
    r.clock.now += 1.0
    assert r.pipeline.tick().purged == 1
    assert not folder.exists() and list(r.work.results.iterdir()) == []
    assert r.deliver(study.paths[:1]) == [Arrival.DISCARDED]  # a re-send changes nothing, is not kept
    assert not folder.exists()
    # The 8th instance arrives: the 7 deleted ones are now missing, so the study waits
    # for them, and then fails rather than be scored from 1 of 8.
    assert r.deliver(study.paths[7:]) == [Arrival.NEW]
    r.clock.now += QUIET
    assert r.pipeline.tick().completed == 0
    r.clock.now += MAX_WAIT
    report = r.pipeline.tick()
    assert (report.failed, report.notices, report.sent) == (1, 1, 1)
    record = r.state.get(study.study_uid)
    assert record.last_error == (
        "study_incomplete: 7 of 8 received instances are no longer on disk (deleted after the retention period)"
        " and were not sent again: send the whole study again to score it"
    )
    first, notice = r.pacs.received
    assert notice.InstanceNumber == 2 and sr_texts(notice)["Error kind"] == "study_incomplete"
    assert sr_texts(notice)["Earlier report"].startswith("report version 1, based on 7 instances, was issued")
    # The PACS sends the whole study again: scored from all 8, superseding version 1.
    r.clock.now += 10.0
    assert r.deliver(study.paths[:7]) == [Arrival.DUPLICATE] * 7
    r.clock.now += QUIET
    assert r.pipeline.tick().sent == 1
    third = r.pacs.received[-1]
    assert third.InstanceNumber == 3 and predecessor_uid(third) == first.SOPInstanceUID
    assert sr_probabilities(third) == pytest.approx(probabilities(reference, study.paths), abs=TOL)


# ------------------------------------------------------------- real processes


def store(port: int, paths: list[Path], calling: str = MODALITY, raw: bool = False) -> list[int | None]:
    """C-STORE each file to the listener; the status of each (None: no response).
    ``raw``: send the dataset bytes as they are in the file, undecoded."""
    from pynetdicom import _config

    ae = AE(ae_title=calling)
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    assoc = ae.associate("127.0.0.1", port, ae_title="RADFUSION")
    assert assoc.is_established, f"no association with the listener on port {port}"
    previous, _config.STORE_SEND_CHUNKED_DATASET = _config.STORE_SEND_CHUNKED_DATASET, raw
    try:
        statuses = []
        for path in paths:
            status = assoc.send_c_store(path if raw else pydicom.dcmread(path))
            statuses.append(int(status.Status) if "Status" in status else None)
        return statuses
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = previous
        assoc.release()


def sent(listener, paths: list[Path]) -> None:
    """C-STORE ``paths`` to a listener process; every one stored."""
    statuses = store(listener.port, paths)
    assert statuses == [0] * len(paths), f"C-STORE statuses {statuses}:\n{listener.log()[-3000:]}"


def hostile_file(path: Path, body: bytes) -> Path:
    """A file whose meta header is valid (so it can be offered as CT) and whose dataset
    is ``body``."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    with open(path, "wb") as out:
        out.write(b"\0" * 128 + b"DICM")
        write_file_meta_info(out, meta)
        out.write(body)
    return path


def deep_sequence(depth: int = 5000) -> bytes:
    """A dataset holding one sequence nested ``depth`` deep (undefined lengths)."""
    opening = b"\x08\x00\x40\x11SQ\x00\x00\xff\xff\xff\xff" + b"\xfe\xff\x00\xe0\xff\xff\xff\xff"
    closing = b"\xfe\xff\x0d\xe0\x00\x00\x00\x00" + b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
    return opening * depth + closing * depth


def associate_raw(port: int, calling: bytes) -> bytes:
    """An A-ASSOCIATE-RQ for Verification with any 16 bytes as the calling AE title;
    the listener's first answer."""
    called = b"RADFUSION".ljust(16)
    app = b"1.2.840.10008.3.1.1.1"
    item = lambda kind, data: bytes([kind, 0]) + len(data).to_bytes(2, "big") + data  # noqa: E731
    context = item(0x20, b"\x01\0\0\0" + item(0x30, b"1.2.840.10008.1.1") + item(0x40, b"1.2.840.10008.1.2"))
    user = item(0x50, item(0x51, (16384).to_bytes(4, "big")) + item(0x52, b"1.2.826.0.1.3680043.9.3811.2"))
    body = b"\0\x01\0\0" + called + calling + b"\0" * 32 + item(0x10, app) + context + user
    pdu = b"\x01\0" + len(body).to_bytes(4, "big") + body
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(pdu)
        return s.recv(64)


def wait_until(check: Callable[[], object], timeout: float, what: str, log: Callable[[], str]) -> object:
    deadline = time.monotonic() + timeout
    while not (value := check()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}:\n{log()[-3000:]}"
        time.sleep(0.3)
    return value


class OrthancSRs:
    def __init__(self, orthanc):
        from dicomweb_client import DICOMwebClient

        self.client = DICOMwebClient(orthanc.dicomweb)

    def __call__(self, study_uid: str) -> list[pydicom.Dataset]:
        """The SRs Orthanc holds for the study, by InstanceNumber."""
        found = []
        for series in self.client.search_for_series(study_uid, search_filters={"Modality": "SR"}):
            series_uid = series["0020000E"]["Value"][0]
            for instance in self.client.search_for_instances(study_uid, series_uid):
                found.append(self.client.retrieve_instance(study_uid, series_uid, instance["00080018"]["Value"][0]))
        return sorted(found, key=lambda ds: int(ds.InstanceNumber))


def listener_args(model: Path, work: Path, orthanc, *extra: str) -> list[str]:
    return [
        "--model",
        str(model),
        "--work",
        str(work),
        "--allow-aet",
        MODALITY,
        "--quiet-seconds",
        "2",
        "--poll-seconds",
        "0.2",
        "--retry-seconds",
        "1",
        "--device",
        "cpu",
        "--send-to",
        f"{orthanc.aet}@127.0.0.1:{orthanc.dicom_port}",
        *extra,
    ]


@dataclass
class Run:
    """What a scenario left behind, for the tests and the log search."""

    logs: list[str] = field(default_factory=list)
    works: list[Path] = field(default_factory=list)
    studies: list[Study] = field(default_factory=list)
    srs: dict[str, list[pydicom.Dataset]] = field(default_factory=dict)
    status: dict = field(default_factory=dict)
    facts: dict = field(default_factory=dict)


@pytest.fixture(scope="module")
def killed_run(start_listener, orthanc, tiny_onnx_model: Path, tmp_path_factory) -> Run:
    """SIGKILL after 12 of 25 instances; restarted after longer than the quiet period;
    the PACS sends the other 13 only after the restarted listener's quiet period."""
    root = tmp_path_factory.mktemp("killed")
    work = root / "work"
    study = write_study(root / "in", "KILLED", seed=1)
    args = listener_args(tiny_onnx_model, work, orthanc)
    first = start_listener(args)
    sent(first, study.paths[:12])
    assert first.stop(signal.SIGKILL) == -signal.SIGKILL
    time.sleep(3.0)  # longer than the quiet period (2 s)
    second = start_listener(args)
    srs = OrthancSRs(orthanc)
    time.sleep(3.0)  # the restarted listener's quiet period passes too
    waiting = "waits up to" in second.log()
    sent(second, study.paths[12:])
    wait_until(lambda: srs(study.study_uid), 60, "the SR in Orthanc", second.log)
    time.sleep(3.0)  # long enough for a second scoring to show
    run = Run(works=[work], studies=[study], srs={study.study_uid: srs(study.study_uid)}, status=pacs_status(work))
    run.facts["waiting_logged_before_the_rest"] = waiting
    assert second.stop() == 0
    run.logs = [first.log(), second.log()]
    return run


@pytest.mark.slow
def test_killed_mid_study_and_restarted_scores_the_complete_study_once(killed_run: Run, reference: Predictor) -> None:
    (study,) = killed_run.studies
    (sr,) = killed_run.srs[study.study_uid]  # one SR, not one for 12 and one for 25
    assert evidence_uids(sr) == sorted(study.sop_uids)
    assert sr_probabilities(sr) == pytest.approx(probabilities(reference, study.paths), abs=TOL)
    assert sr.CompletionFlag == "COMPLETE"
    (row,) = killed_run.status["studies"]
    assert (row["status"], row["instances"], row["version"], row["attempts"]) == ("sent", 25, 1, 0)
    assert killed_run.facts["waiting_logged_before_the_rest"]  # it did wait for the 13
    assert killed_run.logs[1].count(" scored v") == 1


@pytest.fixture(scope="module")
def hostile_run(start_listener, orthanc, tiny_onnx_model: Path, tmp_path_factory) -> Run:
    """One listener fed, in turn: refused and undecodable associations, undecodable
    C-STOREs, a study in two halves with the SR in between, odd demographics, a corrupt
    study, and finally a good study to show it still serves."""
    root = tmp_path_factory.mktemp("hostile")
    work = root / "work"
    listener = start_listener(listener_args(tiny_onnx_model, work, orthanc))
    srs = OrthancSRs(orthanc)
    run = Run(works=[work])

    run.facts["blank_aet"] = associate_raw(listener.port, b" " * 16)
    # pynetdicom quotes an AE title it cannot accept: a peer's bytes, here a planted name.
    run.facts["control_aet"] = associate_raw(listener.port, b"\x1b[31m" + PLANTED.encode())
    intruder = AE(ae_title="INTRUDER")
    intruder.add_requested_context(Verification)
    run.facts["intruder_established"] = intruder.associate(
        "127.0.0.1", listener.port, ae_title="RADFUSION"
    ).is_established
    run.facts["hostile_store"] = store(
        listener.port,
        [
            hostile_file(root / "deep.dcm", deep_sequence()),
            hostile_file(root / "junk.dcm", np.random.default_rng(3).bytes(4096)),
        ],
        raw=True,
    )

    late = write_study(root / "late", "LATE", declared=False, seed=2)
    odd = write_study(
        root / "odd", "ODD", n=6, sex="U", birth="1960-06-17", age="sixty", name="Odd^" + PLANTED + "Y" * 90, seed=3
    )
    corrupt = write_study(root / "corrupt", "CORRUPT", n=6, truncated_pixels=True, seed=4)
    good = write_study(root / "good", "GOOD", n=6, seed=5)
    run.studies = [late, odd, corrupt, good]

    sent(listener, late.paths[:12])
    wait_until(lambda: srs(late.study_uid), 60, "the first SR of the late study", listener.log)
    sent(listener, late.paths[12:])
    wait_until(lambda: len(srs(late.study_uid)) == 2, 60, "the superseding SR", listener.log)
    for study in (odd, corrupt):
        sent(listener, study.paths)
    wait_until(lambda: srs(odd.study_uid) and srs(corrupt.study_uid), 60, "SRs of both", listener.log)
    run.facts["echo_after"] = dicom_echo(listener.port, calling=MODALITY)
    sent(listener, good.paths)
    wait_until(lambda: srs(good.study_uid), 60, "the SR of the study sent last", listener.log)
    run.srs = {s.study_uid: srs(s.study_uid) for s in run.studies}
    run.status = pacs_status(work)
    run.facts["alive"] = listener.process.poll() is None
    assert listener.stop() == 0
    run.logs = [listener.log()]
    return run


@pytest.mark.slow
def test_late_instances_supersede_the_sr_in_orthanc(hostile_run: Run, reference: Predictor) -> None:
    late = hostile_run.studies[0]
    first, second = hostile_run.srs[late.study_uid]
    assert sr_probabilities(first) == pytest.approx(probabilities(reference, late.paths[:12]), abs=TOL)
    assert sr_probabilities(second) == pytest.approx(probabilities(reference, late.paths), abs=TOL)
    assert predecessor_uid(second) == first.SOPInstanceUID
    assert second.SeriesInstanceUID == first.SeriesInstanceUID
    assert (first.InstanceNumber, second.InstanceNumber) == (1, 2)
    assert sr_texts(second)["Replaces earlier report"].startswith("replaces report version 1, based on 12 instances")
    assert evidence_uids(second) == sorted(late.sop_uids)


@pytest.mark.slow
def test_odd_demographics_sr_in_orthanc_passes_dciodvfy(hostile_run: Run, tmp_path: Path) -> None:
    odd = hostile_run.studies[1]
    (sr,) = hostile_run.srs[odd.study_uid]
    assert (sr.PatientSex, sr.PatientBirthDate, sr.PatientID) == ("", "19600617", odd.patient_id)
    assert len(str(sr.PatientName)) == 64 and "PatientAge" not in sr
    row = next(r for r in hostile_run.status["studies"] if r["study"] == study_key(odd.study_uid))
    assert (row["status"], row["attempts"], row["last_error"]) == ("sent", 0, None)
    assert_dciodvfy_valid(sr, tmp_path)


@pytest.mark.slow
def test_corrupt_input_fails_alone_and_is_reported(hostile_run: Run, tmp_path: Path) -> None:
    corrupt, good = hostile_run.studies[2], hostile_run.studies[3]
    (sr,) = hostile_run.srs[corrupt.study_uid]
    texts = sr_texts(sr)
    assert texts["Error kind"] == "corrupt_dicom" and texts["No result"].startswith("file ")
    assert evidence_uids(sr) == sorted(corrupt.sop_uids)
    assert_dciodvfy_valid(sr, tmp_path)
    row = next(r for r in hostile_run.status["studies"] if r["study"] == study_key(corrupt.study_uid))
    assert (row["status"], row["attempts"]) == ("failed", 1) and row["last_error"].startswith("corrupt_dicom: ")
    # Undecodable datasets are refused one by one ("cannot understand"), the association goes on.
    assert hostile_run.facts["hostile_store"] == [0xC000, 0xC000]
    # A-ASSOCIATE-RQs with a blank or control-character calling AE title: aborted (0x07).
    assert hostile_run.facts["blank_aet"][:1] == b"\x07" and hostile_run.facts["control_aet"][:1] == b"\x07"
    assert not hostile_run.facts["intruder_established"]
    # ... and it still serves: an echo and a study sent after all that.
    assert hostile_run.facts["echo_after"] == 0 and hostile_run.facts["alive"]
    (last,) = hostile_run.srs[good.study_uid]
    assert "Error kind" not in sr_texts(last) and len(sr_probabilities(last)) == 2
    assert hostile_run.status["counts"] == {"received": 0, "pending": 0, "scored": 0, "sent": 3, "failed": 1}


@pytest.mark.slow
def test_refusals_are_logged_without_tracebacks(hostile_run: Run) -> None:
    (log,) = hostile_run.logs
    assert "association refused: calling AE title 'INTRUDER' is not allowed" in log
    assert "Traceback" not in log and "\x1b" not in log and "\x07" not in log
    assert "C-STORE refused: dataset cannot be read (RecursionError)" in log
    assert re.search(r"study [0-9a-f]{12} not scored: corrupt_dicom: ", log)
    assert re.search(r"study [0-9a-f]{12}: failure report v1 sent to ", log)


@pytest.mark.slow
def test_listener_logs_hold_no_planted_name_uid_or_stored_path(killed_run: Run, hostile_run: Run, orthanc) -> None:
    logs = "\n".join(killed_run.logs + hostile_run.logs)
    assert logs.count(" scored v") >= 5  # the logs are the listeners' own, with their work in them
    identifiers = set()
    for run in (killed_run, hostile_run):
        for study in run.studies:
            identifiers |= study.identifiers()
        for srs in run.srs.values():
            identifiers |= {sr.SOPInstanceUID for sr in srs} | {sr.SeriesInstanceUID for sr in srs}
    leaked = sorted(value for value in identifiers if value and value in logs)
    assert not leaked, leaked
    assert PLANTED not in logs
    assert not re.search(r"(?<![\w.])\d+(?:\.\d+){4,}", logs)  # no UID of any origin
    for work in killed_run.works + hostile_run.works:
        assert str(work) not in logs
    assert not re.search(r"[0-9a-f]{20}\.dcm|[0-9a-f]{12}-v\d+\.dcm|studies/|results/", logs)
