"""Operating the listener: refused associations in its log (reason, AE titles and peer
address, no patient data), the retention policy for received instances ("sent": 0
hours; N hours; what a restart finds), a failure report still being delivered keeps
its study, the instances it writes pass dciodvfy, and a subtype (multi-class) model
scored through the listener. `radfusion listen` runs as its own process, dcmtk's
storescu/echoscu and pynetdicom are the peers, Orthanc the PACS."""

from __future__ import annotations

import re
import shutil
import socket
import struct
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pydicom
import pytest
from pynetdicom import AE
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    ModalityWorklistInformationFind,
    Verification,
)

from radfusion.dicom import find_studies
from radfusion.genomics import load_genomics_table, row_as_mapping
from radfusion.predictor import Predictor
from radfusion.runtime import OnnxModel
from radfusion.serving.pacs.pipeline import Pipeline, RetryPolicy
from radfusion.serving.pacs.predict import StudyPredictor
from radfusion.serving.pacs.send import CStoreSender, DicomPeer
from radfusion.serving.pacs.state import Status, StudyRecord, StudyState
from radfusion.serving.pacs.storage import WorkDir, study_key
from radfusion.serving.patients import PatientTables
from tests.support.dicom_series import fresh_copy
from tests.support.peers import CapturingPacs, free_loopback_port
from tests.support.prediction_sr import read_report
from tests.support.received import deliver
from tests.support.task_models import export_task_model
from tests.support.validators import dciodvfy_errors

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not shutil.which("storescu") or not shutil.which("echoscu"), reason="dcmtk is not installed"),
]

ALLOWED = "STORESCU"
TOL = 1e-5


# ------------------------------------------------------------------------ helpers


@pytest.fixture(scope="module")
def studies(tiny_cohort: Path, tmp_path_factory: pytest.TempPathFactory) -> list:
    """Studies stored uncompressed (storescu proposes only uncompressed syntaxes), of
    patients in the genomics table; copies under new UIDs, as the results these tests send
    to the session's Orthanc must not be found by other tests."""
    table = load_genomics_table(tiny_cohort / "genomics.parquet")
    plain = {pydicom.uid.ExplicitVRLittleEndian, pydicom.uid.ImplicitVRLittleEndian}
    found = []
    for study in sorted(find_studies(tiny_cohort / "dicom").studies.values(), key=lambda s: s.patient_id):
        syntaxes = {
            pydicom.dcmread(h.path, stop_before_pixels=True).file_meta.TransferSyntaxUID for h in study.instances
        }
        if syntaxes <= plain and row_as_mapping(table, study.patient_id) is not None:
            found.append(fresh_copy(study, tmp_path_factory.mktemp("operations_study")))
    assert len(found) >= 2, "the tiny cohort has fewer than 2 uncompressed studies with genomics"
    return found


def paths_of(study) -> list[str]:
    return [str(h.path) for h in study.instances]


def storescu(port: int, paths: list[str], calling: str = ALLOWED) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["storescu", "-aet", calling, "-aec", "RADFUSION", "127.0.0.1", str(port), *paths],
        capture_output=True,
        text=True,
        timeout=60,
    )


def listener_args(model: Path, work: Path, *extra: str) -> list[str]:
    return [
        "--model",
        str(model),
        "--work",
        str(work),
        "--allow-aet",
        ALLOWED,
        "--quiet-seconds",
        "0.5",
        "--poll-seconds",
        "0.2",
        "--device",
        "cpu",
        *extra,
    ]


def record_of(work: Path, study_uid: str) -> StudyRecord | None:
    state = StudyState(WorkDir(work).state_path)
    try:
        return state.get(study_uid)
    finally:
        state.close()


def wait_until(condition: Callable[[], object], listener, what: str, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while not (found := condition()):
        assert time.monotonic() < deadline, f"{what} not reached:\n{listener.log()[-3000:]}"
        time.sleep(0.1)
    return found


def wait_purged(listener, work: Path, study_uid: str) -> StudyRecord:
    """The study's record once its files were deleted: the log line comes after the
    deletion (the state marks the purge before it)."""
    wait_until(lambda: f"study {study_key(study_uid)}: received files deleted" in listener.log(), listener, "purge")
    record = record_of(work, study_uid)
    assert record is not None and record.purged is not None
    return record


def kept_files(work: Path, study_uid: str) -> list[Path]:
    """The study's received instances and its SR documents, as on disk now."""
    received = sorted((work / "studies" / study_key(study_uid)).glob("*.dcm"))
    return received + sorted((work / "results").glob(f"{study_key(study_uid)}-*.dcm"))


def identifiers(study) -> set[str]:
    """What must never reach a log: the study's UIDs and patient values."""
    header = pydicom.dcmread(study.instances[0].path, stop_before_pixels=True)
    values = {str(header.get(k, "")) for k in ("PatientID", "PatientBirthDate", "AccessionNumber", "StudyID")}
    names = set(str(header.PatientName).split("^"))
    sops = {h.sop_uid for h in study.instances}
    return {v for v in {study.study_uid, *sops, *values, *names} if v}


# ------------------------------------------------------------ refused associations


def test_refused_associations_are_logged_with_reason_ae_title_and_address(
    start_listener, tiny_onnx_model: Path, studies, tmp_path: Path
) -> None:
    work = tmp_path / "work"
    listener = start_listener(listener_args(tiny_onnx_model, work))
    study = studies[0]
    # A modality whose AE title is not allowed sends a study (dcmtk).
    refused = storescu(listener.port, paths_of(study), calling="WRONG")
    assert refused.returncode != 0 and "Association Rejected" in refused.stdout + refused.stderr
    # The same from a known local port (pynetdicom), to find it in the log.
    intruder_port = free_loopback_port()
    intruder = AE(ae_title="INTRUDER")
    intruder.add_requested_context(Verification)
    intruder.acse_timeout = intruder.network_timeout = 10
    assoc = intruder.associate(
        "127.0.0.1", listener.port, ae_title="RADFUSION", bind_address=("127.0.0.1", intruder_port)
    )
    assert assoc.is_rejected
    # An allowed AE title calling another AE title.
    wrong_called = subprocess.run(
        ["echoscu", "-aet", ALLOWED, "-aec", "SOMEONEELSE", "127.0.0.1", str(listener.port)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert wrong_called.returncode != 0
    # An allowed AE title asking for a service the listener does not offer (worklist).
    asker = AE(ae_title=ALLOWED)
    asker.add_requested_context(ModalityWorklistInformationFind)
    asker.acse_timeout = asker.network_timeout = 10
    assoc = asker.associate("127.0.0.1", listener.port, ae_title="RADFUSION")
    assert not assoc.is_established
    # A request pynetdicom cannot read (a newline and an escape in the calling AE title),
    # from a known local port; and a port probe that sends nothing (not worth a line).
    garbled_port = free_loopback_port()
    with socket.create_connection(("127.0.0.1", listener.port), source_address=("127.0.0.1", garbled_port)) as raw:
        raw.sendall(association_request(b"EVIL\n\x1b[31m"))
        raw.settimeout(10)
        assert raw.recv(1)[:1] == b"\x07"  # A-ABORT
    socket.create_connection(("127.0.0.1", listener.port)).close()

    def refusals() -> list[str]:
        lines = [line for line in listener.log().splitlines() if "association refused" in line]
        return lines if len(lines) >= 5 else []

    lines = wait_until(refusals, listener, "5 refusals in the log", timeout=30)
    assert listener.stop() == 0
    log = listener.log()
    address = r"from 127\.0\.0\.1:\d+\)"
    assert any(
        "calling AE title 'WRONG' is not allowed (calling AE title 'WRONG', called AE title 'RADFUSION'" in line
        and re.search(address, line)
        for line in lines
    ), lines
    assert any(
        "calling AE title 'INTRUDER' is not allowed" in line and f"from 127.0.0.1:{intruder_port})" in line
        for line in lines
    ), lines
    assert any(
        "called AE title 'SOMEONEELSE' is not this listener's" in line
        and f"calling AE title '{ALLOWED}'" in line
        and re.search(address, line)
        for line in lines
    ), lines
    assert any(
        "none of its presentation contexts is supported (Abstract Syntax Not Supported:"
        " Modality Worklist Information Model - FIND;"
        in line
        and re.search(r"from 127\.0\.0\.1:\d+\)$", line)
        for line in lines
    ), lines
    assert [line for line in lines if "could not be read" in line] == [
        next(line for line in lines if line.endswith(f"its request could not be read (from 127.0.0.1:{garbled_port})"))
    ]
    assert "\x1b" not in log and "EVIL\n" not in log
    # Nothing was stored, and nothing about the patient reached the log.
    assert list((work / "studies").iterdir()) == []
    leaked = {value for value in identifiers(study) if value in log}
    assert leaked == set()


def association_request(calling: bytes) -> bytes:
    """An A-ASSOCIATE-RQ PDU (PS3.8 9.3.2) for Verification, called AE title RADFUSION,
    with ``calling`` as the calling AE title bytes, whatever they hold."""
    called, calling = b"RADFUSION".ljust(16), calling.ljust(16)[:16]

    def item(kind: int, value: bytes) -> bytes:
        return bytes([kind, 0]) + struct.pack(">H", len(value)) + value

    context = item(0x20, b"\x01\x00\xff\x00" + item(0x30, b"1.2.840.10008.1.1") + item(0x40, b"1.2.840.10008.1.2"))
    user = item(0x50, item(0x51, struct.pack(">I", 16384)))
    body = b"\x00\x01\x00\x00" + called + calling + bytes(32) + item(0x10, b"1.2.840.10008.3.1.1.1") + context + user
    return b"\x01\x00" + struct.pack(">I", len(body)) + body


# ---------------------------------------------------------------------- retention


def test_sent_mode_deletes_received_files_once_the_sr_is_in_the_pacs(
    start_listener, orthanc, tiny_onnx_model: Path, studies, tmp_path: Path
) -> None:
    from dicomweb_client import DICOMwebClient

    work = tmp_path / "work"
    study = studies[0]
    listener = start_listener(listener_args(tiny_onnx_model, work, "--keep-hours", "0", "--stow-url", orthanc.dicomweb))
    assert "received files deleted as soon as the result is sent" in listener.log()
    stored = storescu(listener.port, paths_of(study))
    assert stored.returncode == 0, stored.stderr
    record = wait_purged(listener, work, study.study_uid)
    assert record.status is Status.SENT and record.purged >= record.updated
    assert kept_files(work, study.study_uid) == [] and not (work / "studies" / study_key(study.study_uid)).exists()
    # Deleted after the SR was delivered: it is in the PACS.
    # (the PACS is shared by the session's tests: other SRs of this study may be there)
    sent = DICOMwebClient(orthanc.dicomweb).search_for_instances(
        study.study_uid, record.sr_series_uid, search_filters={"SOPInstanceUID": record.sr_sop_uid}
    )
    assert len(sent) == 1
    log = listener.log()
    assert log.index(f"study {study_key(study.study_uid)}: SR v1 sent") < log.index(
        f"study {study_key(study.study_uid)}: received files deleted"
    )
    assert listener.stop() == 0


def test_hours_mode_keeps_the_files_that_long_after_the_sr_was_sent(
    start_listener, orthanc, tiny_onnx_model: Path, studies, tmp_path: Path
) -> None:
    """Kept ``--keep-hours`` after the SR was sent (the listener's own times, in the
    state), then deleted. While kept, every received instance passes dciodvfy and holds
    the dataset that was sent."""
    keep_hours = 0.002  # 7.2 s
    work = tmp_path / "work"
    study = studies[1]
    listener = start_listener(
        listener_args(tiny_onnx_model, work, "--keep-hours", str(keep_hours), "--stow-url", orthanc.dicomweb)
    )
    assert storescu(listener.port, paths_of(study)).returncode == 0
    wait_until(lambda: (r := record_of(work, study.study_uid)) and r.status is Status.SENT, listener, "SR sent")
    received = kept_files(work, study.study_uid)[:-1]  # the SR document is the last one
    snapshot = {path: path.read_bytes() for path in received}
    assert len(snapshot) == len(study.instances)
    record = wait_purged(listener, work, study.study_uid)
    assert record.purged - record.updated >= keep_hours * 3600.0
    assert kept_files(work, study.study_uid) == []
    assert listener.stop() == 0
    # What was kept: the instances as sent, each valid.
    originals = {h.sop_uid: pydicom.dcmread(h.path) for h in study.instances}
    for path, data in snapshot.items():
        copy = tmp_path / "kept" / path.name
        copy.parent.mkdir(exist_ok=True)
        copy.write_bytes(data)
        assert dciodvfy_errors(copy) == []
        ds = pydicom.dcmread(copy)
        assert ds == originals[ds.SOPInstanceUID]


def test_a_restart_applies_the_policy_to_what_earlier_runs_left(
    start_listener, tiny_onnx_model: Path, studies, tmp_path: Path
) -> None:
    """Run 1 keeps files for ever and scores two studies (SRs stay on disk: no
    destination, so "sent" never comes; the studies are marked sent in the state as a
    PACS would confirm). A crash after claiming one study's purge leaves its files.
    Run 2 (24 h) deletes those leftovers before it listens and keeps the other study;
    run 3 (0 h) deletes the other study's files at its first tick."""
    work = tmp_path / "work"
    first, second = studies[0], studies[1]
    run1 = start_listener(listener_args(tiny_onnx_model, work, "--keep-hours", "-1"))
    assert "received files kept for ever" in run1.log()
    for study in (first, second):
        assert storescu(run1.port, paths_of(study)).returncode == 0
    for study in (first, second):
        wait_until(lambda s=study: (r := record_of(work, s.study_uid)) and r.status is Status.SCORED, run1, "scored")
    assert run1.stop() == 0
    state = StudyState(WorkDir(work).state_path)
    try:
        for study in (first, second):
            assert state.mark_sent(study.study_uid, state.get(study.study_uid).sr_sop_uid)
        # The process that claimed this purge died before deleting anything.
        assert len(state.claim_purge(second.study_uid, final_before=time.time())) == len(second.instances) + 1
    finally:
        state.close()
    for study in (first, second):
        assert len(kept_files(work, study.study_uid)) == len(study.instances) + 1  # and the SR

    run2 = start_listener(listener_args(tiny_onnx_model, work, "--keep-hours", "24"))
    assert "deleted the files of 1 studies left by an earlier process" in run2.log()
    assert kept_files(work, second.study_uid) == []
    time.sleep(1.0)  # several ticks: the first study is well within its 24 h
    assert len(kept_files(work, first.study_uid)) == len(first.instances) + 1
    assert record_of(work, first.study_uid).purged is None
    assert run2.stop() == 0

    run3 = start_listener(listener_args(tiny_onnx_model, work, "--keep-hours", "0"))
    wait_purged(run3, work, first.study_uid)
    assert kept_files(work, first.study_uid) == []
    assert "deleted the files of" not in run3.log()  # nothing was left half-deleted
    assert run3.stop() == 0


# --------------------------------------- a failure report still being delivered


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


def truncated_copy(study, folder: Path) -> list[Path]:
    """The study with each slice's pixel data cut short: it fails as bad input."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, header in enumerate(study.instances):
        ds = pydicom.dcmread(header.path)
        ds.PixelData = ds.PixelData[:100]
        paths.append(folder / f"{i:03d}.dcm")
        ds.save_as(paths[-1], enforce_file_format=True)
    return paths


def test_in_sent_mode_a_failure_report_keeps_its_study_until_delivered_or_out_of_attempts(
    tiny_onnx_model: Path, tiny_cohort: Path, studies, tmp_path: Path
) -> None:
    """With 0 hours, a study that failed is deleted once its failure report reached the
    PACS, or its delivery ran out of attempts; never while the report is being retried
    (the report is one of its files). In-process, on a clock the test controls."""
    model = OnnxModel(tiny_onnx_model, device="cpu")
    predictor = StudyPredictor(model, PatientTables.from_paths(model.contract, tiny_cohort / "genomics.parquet"))
    port = free_loopback_port()
    work = WorkDir(tmp_path / "work")
    state = StudyState(work.state_path)
    clock = Clock()
    sender = CStoreSender(DicomPeer("PACS", "127.0.0.1", port), "RADFUSION", timeout=5)
    retry = RetryPolicy(max_attempts=3, base_seconds=10.0, cap_seconds=60.0)
    pipeline = Pipeline(state, work, predictor, [sender], 1.0, retry, clock, keep_seconds=0.0)
    delivered, abandoned = studies[0], studies[1]

    def fail(study, tag: str) -> None:
        deliver(state, work, truncated_copy(study, tmp_path / tag), now=clock.now)
        clock.now += 1.0
        report = pipeline.tick()  # fails as bad input; the report cannot be delivered: the PACS is down
        assert (report.failed, report.notices, report.sent, report.purged) == (1, 1, 0, 0)
        assert state.get(study.study_uid).status is Status.FAILED

    try:
        # 1. Delivered at the second attempt, and deleted in the same tick.
        fail(delivered, "delivered")
        assert len(kept_files(work.root, delivered.study_uid)) == len(delivered.instances) + 1
        clock.now += 10.0
        pacs = CapturingPacs(port)
        try:
            report = pipeline.tick()
        finally:
            pacs.stop()
        assert (report.sent, report.purged) == (1, 1)
        (notice,) = pacs.received
        assert notice.StudyInstanceUID == delivered.study_uid
        assert kept_files(work.root, delivered.study_uid) == []
        # 2. Never delivered: kept through attempts 1 and 2, deleted after the 3rd.
        fail(abandoned, "abandoned")
        for wait in (10.0, 20.0):
            assert len(kept_files(work.root, abandoned.study_uid)) == len(abandoned.instances) + 1
            clock.now += wait
            report = pipeline.tick()
        assert (report.sent, report.purged) == (0, 1)
        assert kept_files(work.root, abandoned.study_uid) == []
    finally:
        state.close()


def test_subtype_model_through_the_listener(
    start_listener, tiny_contract, tiny_cohort: Path, studies, tmp_path: Path
) -> None:
    """A 3-class subtype model: the SR names the predicted subtype and passes dciodvfy;
    the result equals radfusion.predictor.Predictor's on the same study."""
    model = export_task_model(tiny_contract, "classification:subtype", tmp_path)
    work = tmp_path / "work"
    study = studies[0]
    listener = start_listener(
        listener_args(model, work, "--genomics", str(tiny_cohort / "genomics.parquet"), "--keep-hours", "-1")
    )
    assert storescu(listener.port, paths_of(study)).returncode == 0
    record = wait_until(
        lambda: (r := record_of(work, study.study_uid)) and r.status is Status.SCORED and r, listener, "scored"
    )
    assert listener.stop() == 0
    assert not re.search(r" (ERROR|WARNING|CRITICAL) |Traceback|tick failed", listener.log()), listener.log()
    predictor = Predictor.load(model, device="cpu")
    genomics = row_as_mapping(load_genomics_table(tiny_cohort / "genomics.parquet"), study.patient_id)
    (expected,) = predictor.predict([predictor.prepare(paths_of(study), genomics)])
    assert set(expected["probabilities"]) == {"S1", "S2", "S3"}
    assert record.result["probabilities"] == pytest.approx(expected["probabilities"], abs=TOL)
    assert record.result["predicted_label"] == expected["predicted_label"]
    assert dciodvfy_errors(Path(record.sr_path)) == []
    assert read_report(record.sr_path).predicted == [expected["predicted_label"]]
