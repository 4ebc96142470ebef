"""The STOW-RS result store (bounded, restart-safe), the Store Instances Response's
semantics, and a PACS that cannot take the SR: in-process, with real SRs written by
radfusion.serving.reports.sr from real synthetic instances."""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pydicom
import pytest

from radfusion.dicom import find_studies
from radfusion.errors import CorruptDicomError, GeometryError, StudyOverBudgetError
from radfusion.serving.http.results import ResultStore
from radfusion.serving.http.store_response import (
    CANNOT_UNDERSTAND,
    OUT_OF_RESOURCES,
    PROCESSING_FAILURE,
    StoreOutcome,
    failure_reason,
)
from radfusion.serving.http.stow import Instance, ResultNotFoundError, group_by_study
from radfusion.serving.http.stow_results import ResultDestination, ResultWriter, read_headers
from tests.support.peers import free_loopback_port


@pytest.fixture(scope="module")
def study(tiny_cohort: Path) -> list[Instance]:
    first = sorted(find_studies(tiny_cohort / "dicom").studies.values(), key=lambda s: s.patient_id)[0]
    studies, unreadable = group_by_study([h.path for h in first.instances])
    assert not unreadable and list(studies) == [first.study_uid]
    return studies[first.study_uid]


def failure_sr(writer: ResultWriter, instances: list[Instance]) -> str | None:
    return writer.failure(instances[0].study_uid, GeometryError("x"), instances, read_headers(instances))


def test_results_survive_a_restart_and_are_bounded(tmp_path: Path, tiny_contract, study) -> None:
    store = ResultStore(tmp_path, keep_seconds=3600, max_bytes=10**9)
    writer = ResultWriter(tiny_contract, store, ResultDestination())
    assert failure_sr(writer, study) is None
    assert failure_sr(writer, study) is None
    first, second = store.find(study[0].study_uid)
    ds = pydicom.dcmread(second)
    assert (ds.InstanceNumber, ds.SeriesInstanceUID) == (2, pydicom.dcmread(first).SeriesInstanceUID)

    again = ResultStore(tmp_path, keep_seconds=3600, max_bytes=10**9)  # a restarted service
    assert again.find(study[0].study_uid, ds.SeriesInstanceUID, ds.SOPInstanceUID) == [second]
    latest = again.latest(study[0].study_uid)
    assert latest is not None and (latest.version, latest.is_prediction) == (2, False)

    os.utime(first, (time.time() - 7200, time.time() - 7200))
    assert again.purge() == 1 and again.find(study[0].study_uid) == [second]
    small = ResultStore(tmp_path, keep_seconds=3600, max_bytes=second.stat().st_size - 1)  # start applies the cap
    with pytest.raises(ResultNotFoundError):
        small.find(study[0].study_uid)
    assert [p.name for p in tmp_path.iterdir()] == [".versions.lock"]  # no result left
    with pytest.raises(ResultNotFoundError):
        small.find("../../etc")


@contextmanager
def dropping_pacs() -> Iterator[tuple[str, list[int]]]:
    """A PACS address that accepts each connection and drops it; the connections counted."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    server.settimeout(0.2)
    accepted: list[int] = []
    stop = threading.Event()

    def drop_connections() -> None:
        while not stop.is_set():
            try:
                connection, _ = server.accept()
            except TimeoutError:
                continue
            accepted.append(1)
            connection.close()

    thread = threading.Thread(target=drop_connections, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.getsockname()[1]}/dicom-web", accepted
    finally:
        stop.set()
        thread.join(5)
        server.close()


def test_the_client_never_waits_for_the_pacs(tmp_path: Path, tiny_contract, study) -> None:
    """Writing a result hands it to the outbox without a word to the PACS (a STOW-RS client
    that times out would send the study again); a delivery round then makes one attempt,
    not retries with backoff, and the result waits for the next round."""
    from radfusion.serving.http.delivery import MARKER

    with dropping_pacs() as (url, accepted):
        writer = ResultWriter(tiny_contract, ResultStore(tmp_path, 3600, 10**9), ResultDestination(url, None, 60.0))
        assert failure_sr(writer, study) is None
        assert accepted == []
        (marker,) = tmp_path.glob(f"*/*/*{MARKER}")
        assert json.loads(marker.read_text())["attempts"] == 0
        assert writer.outbox.deliver_due() == (0, 1)
        assert len(accepted) == 1
    assert json.loads(marker.read_text())["attempts"] == 1
    assert len(writer.store.find(study[0].study_uid)) == 1  # kept here all the same


def test_store_instances_response_semantics(study) -> None:
    one, two = study[:1], study[1:3]
    assert failure_reason(StudyOverBudgetError("x")) == OUT_OF_RESOURCES
    assert failure_reason(CorruptDicomError("x")) == CANNOT_UNDERSTAND
    assert failure_reason(GeometryError("x")) == PROCESSING_FAILURE

    outcome = StoreOutcome()
    outcome.store(one, "http://svc/dicom-web/studies/1")
    assert (outcome.status, outcome.warning_header()) == (200, None)
    response = outcome.dataset()
    assert response.RetrieveURL == "http://svc/dicom-web/studies/1"
    assert "FailedSOPSequence" not in response.to_json_dict()  # never an empty sequence (Orthanc refuses it)

    outcome.fail(two, PROCESSING_FAILURE, 'study 2: "bad" 1.2.840.113619.2.1.1.1 in /data/p/x.dcm')
    assert outcome.status == 202
    assert [i.FailureReason for i in outcome.dataset().FailedSOPSequence] == [PROCESSING_FAILURE] * 2
    assert outcome.warning_header() == "299 radfusion \"study 2: 'bad' <uid> in <path>\""

    nothing = StoreOutcome()
    nothing.other_failures.append(CANNOT_UNDERSTAND)
    assert nothing.status == 409 and "ReferencedSOPSequence" not in nothing.dataset()


def test_concurrent_results_of_one_study_get_distinct_versions(tmp_path: Path, tiny_contract, study) -> None:
    """Two stores on one folder (as two worker processes have) and eight threads writing
    results of one study at once: versions 1..8, each once, all in one SR series."""
    from concurrent.futures import ThreadPoolExecutor

    import pydicom

    writers = [ResultWriter(tiny_contract, ResultStore(tmp_path, 3600, 10**9), ResultDestination()) for _ in range(2)]
    with ThreadPoolExecutor(8) as pool:
        assert list(pool.map(lambda i: failure_sr(writers[i % 2], study), range(8))) == [None] * 8

    reports = [pydicom.dcmread(path) for path in writers[0].store.find(study[0].study_uid)]
    assert sorted(int(ds.InstanceNumber) for ds in reports) == list(range(1, 9))
    assert len({ds.SeriesInstanceUID for ds in reports}) == 1


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def test_an_undelivered_result_is_sent_again_until_the_pacs_takes_it(
    tmp_path: Path, tiny_contract, study, orthanc
) -> None:
    """The PACS is down while the client waits: the result waits in the outbox, on disk.
    Each due attempt that fails waits longer for the next; a restarted service (a new
    writer on the same folder) delivers it once the PACS is back (the real Orthanc), and
    two workers delivering at once send it once."""
    from radfusion.serving.dicomweb import DicomwebPolicy, store_refusal
    from radfusion.serving.http.delivery import BACKOFF_S, MARKER, Outbox

    down = f"http://127.0.0.1:{free_loopback_port()}/dicom-web"
    writer = ResultWriter(tiny_contract, ResultStore(tmp_path, 3600, 10**9), ResultDestination(down, None, 5.0))
    clock = Clock()
    writer.outbox.clock = clock
    assert failure_sr(writer, study) is None
    (marker,) = tmp_path.glob(f"*/*/*{MARKER}")
    (result,) = writer.store.find(study[0].study_uid)
    assert marker.name == result.name + MARKER

    assert writer.outbox.deliver_due() == (0, 1)  # due at once; the PACS is down: attempt 1 failed
    assert writer.outbox.deliver_due() == (0, 1)  # attempt 2 waits BACKOFF_S[0]
    assert json.loads(marker.read_text())["attempts"] == 1
    clock.now += BACKOFF_S[0] + 1
    assert writer.outbox.deliver_due() == (0, 1)  # attempt 2 failed
    assert json.loads(marker.read_text())["attempts"] == 2
    clock.now += BACKOFF_S[0] + 1
    assert writer.outbox.deliver_due() == (0, 1)  # attempt 3 waits longer
    assert json.loads(marker.read_text())["attempts"] == 2
    clock.now += BACKOFF_S[1]

    # The service restarts (two workers) and the PACS is back.
    sends = []

    def to_orthanc(ds: pydicom.Dataset) -> str | None:
        sends.append(ds.SOPInstanceUID)
        return store_refusal(orthanc.dicomweb, [ds], DicomwebPolicy.trusted(timeout_s=30))

    workers = [Outbox(tmp_path, to_orthanc, clock) for _ in range(2)]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(2) as pool:
        outcomes = list(pool.map(lambda outbox: outbox.deliver_due(), workers))
    assert sorted(outcomes) == [(0, 0), (1, 0)]
    sr = pydicom.dcmread(result)
    assert sends == [sr.SOPInstanceUID]
    found = orthanc.http.post("/tools/lookup", content=sr.SOPInstanceUID).json()
    assert [item["Type"] for item in found] == ["Instance"]
    assert list(tmp_path.glob(f"*/*/*{MARKER}*")) == [] and list(tmp_path.glob("*/*/*.sending")) == []


def test_a_result_that_leaves_the_store_leaves_the_outbox(tmp_path: Path, tiny_contract, study) -> None:
    from radfusion.serving.http.delivery import MARKER

    down = f"http://127.0.0.1:{free_loopback_port()}/dicom-web"
    writer = ResultWriter(tiny_contract, ResultStore(tmp_path, 3600, 10**9), ResultDestination(down, None, 5.0))
    failure_sr(writer, study)
    assert len(list(tmp_path.glob(f"*/*/*{MARKER}"))) == 1
    assert writer.store.purge(now=time.time() + 7200) == 1
    assert list(tmp_path.glob("*/*/*")) == [] and writer.outbox.pending() == 0


def test_a_result_larger_than_the_cap_survives_its_own_write(tmp_path: Path, tiny_contract, study) -> None:
    """The cap lets older results go, never the one just written (it is the answer's
    RetrieveURL); a WADO-RS read that lists a file the cap deletes meanwhile leaves it
    out, and one whose files are all gone is result_not_found, never a 500."""
    from radfusion.serving.http.wado import multipart_dicom

    writer = ResultWriter(tiny_contract, ResultStore(tmp_path, 3600, max_bytes=1), ResultDestination())
    failure_sr(writer, study)
    (first,) = writer.store.find(study[0].study_uid)
    failure_sr(writer, study)
    (second,) = writer.store.find(study[0].study_uid)  # the first went to make room
    assert second != first and not first.exists()

    body, _, _ = multipart_dicom([first, second])
    assert body.count(b"Content-Type: application/dicom") == 1
    second.unlink()
    with pytest.raises(ResultNotFoundError):
        multipart_dicom([first, second])


@contextmanager
def pacs_answering(status: int, body: bytes, content_type: str) -> Iterator[str]:
    """A DICOMweb root whose STOW-RS answers are given: what a real PACS answers when it
    refuses, half-understands or is misconfigured."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Answer(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Answer)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/dicom-web"
    finally:
        server.shutdown()
        server.server_close()


def test_only_a_response_that_names_the_result_as_stored_delivers_it(study) -> None:
    from radfusion.serving.dicomweb import DicomwebPolicy, store_refusal

    result = read_headers(study[:1])[study[0].sop_uid]
    assert result is not None
    policy = DicomwebPolicy.trusted(timeout_s=10, retries=False)

    def response(**sequences: list[pydicom.Dataset]) -> bytes:
        ds = pydicom.Dataset()
        for keyword, items in sequences.items():
            setattr(ds, keyword, items)
        return json.dumps(ds.to_json_dict()).encode()

    def item(**values) -> pydicom.Dataset:
        ds = pydicom.Dataset()
        ds.ReferencedSOPClassUID = result.SOPClassUID
        ds.ReferencedSOPInstanceUID = result.SOPInstanceUID
        for keyword, value in values.items():
            setattr(ds, keyword, value)
        return ds

    json_type = "application/dicom+json"
    answers = {
        "refused with 409": (409, response(FailedSOPSequence=[item(FailureReason=0xA700)]), json_type),
        "refused with 200": (200, response(FailedSOPSequence=[item(FailureReason=0xC000)]), json_type),
        "an HTML page": (200, b"<html>ok</html>", "text/html"),
        "another instance": (200, response(ReferencedSOPSequence=[item(ReferencedSOPInstanceUID="1.2.3")]), json_type),
        "stored": (200, response(ReferencedSOPSequence=[item()]), json_type),
        "stored with a warning": (202, response(ReferencedSOPSequence=[item(WarningReason=0xB000)]), json_type),
    }
    said = {}
    for case, answer in answers.items():
        with pacs_answering(*answer) as url:
            said[case] = store_refusal(url, [result], policy)
    assert said["refused with 409"] == "the PACS refused the result (failure reason 0xA700)"
    assert said["refused with 200"] == "the PACS refused the result (failure reason 0xC000)"
    for case in ("an HTML page", "another instance"):
        assert said[case] is not None and "does not name the result as stored" in said[case], case
    assert said["stored"] is None and said["stored with a warning"] is None
