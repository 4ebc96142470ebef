"""The HTTP service's safety against a real `bentoml serve` on loopback: token auth
(401), load shedding (503 + Retry-After), concurrent clients that see no 5xx other
than those 503s, STOW-RS input, and SIGTERM draining requests still in flight.

"In flight" is made deterministic by clients that stream their body slowly: the
server holds such a request open until its last chunk arrives."""

from __future__ import annotations

import concurrent.futures
import io
import json
import shutil
import signal
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pydicom
import pytest

from radfusion.dicom import find_studies
from radfusion.genomics import load_genomics_table, row_as_mapping
from radfusion.predictor import Predictor
from radfusion.serving.http.launch import (
    running_server,
)
from radfusion.serving.http.model_socket import listening
from tests.support.serving import serving
from tests.support.study_zip import zip_study

pytestmark = pytest.mark.slow

TOKEN = "s3cret-token-for-tests"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
MAX_IN_FLIGHT = 4
RETRY_AFTER_S = 1
TOL = 1e-5


# ---------------------------------------------------------------- fixtures and helpers


@pytest.fixture(scope="module")
def cohort(tiny_cohort: Path, tiny_onnx_model: Path):
    studies = sorted(find_studies(tiny_cohort / "dicom").studies.values(), key=lambda s: s.patient_id)
    table = load_genomics_table(tiny_cohort / "genomics.parquet")
    return studies, table, Predictor.load(tiny_onnx_model, device="cpu")


@pytest.fixture(scope="module")
def server(tiny_onnx_model: Path, tiny_cohort: Path, bentoml_home: Path, tmp_path_factory):
    env = {
        "BENTOML_HOME": str(bentoml_home),
        "RADFUSION_API_TOKENS": f"old-token,{TOKEN}",  # two at once: rotation
        "RADFUSION_MAX_IN_FLIGHT": str(MAX_IN_FLIGHT),
        "RADFUSION_RETRY_AFTER_S": str(RETRY_AFTER_S),
        "RADFUSION_MAX_UPLOAD_BYTES": str(1024 * 1024),
        "RADFUSION_GENOMICS_TABLE": str(tiny_cohort / "genomics.parquet"),
        "RADFUSION_RESULT_DIR": str(tmp_path_factory.mktemp("secure_results")),
    }
    log_file = tmp_path_factory.mktemp("secure_server") / "serve.log"
    with running_server(tiny_onnx_model, timeout=120, env=env, log_file=log_file) as url:
        yield url, log_file


def genes_of(table, patient_id: str) -> dict[str, float] | None:
    genes = row_as_mapping(table, patient_id)
    return {k: float(v) for k, v in genes.items()} if genes is not None else None


def slow_body(payload: bytes, pieces: int, pause: float) -> Iterator[bytes]:
    """The body in ``pieces`` chunks, ``pause`` seconds apart (sent chunked)."""
    size = -(-len(payload) // pieces)
    for i in range(0, len(payload), size):
        if i:
            time.sleep(pause)
        yield payload[i : i + size]


def stow_body(paths: list[Path]) -> tuple[bytes, str]:
    """A STOW-RS request body as a PACS sends it: one application/dicom part per file."""
    boundary = uuid.uuid4().hex
    chunks = []
    for path in paths:
        chunks += [f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode(), path.read_bytes(), b"\r\n"]
    chunks.append(f"--{boundary}--\r\n".encode())
    return b"".join(chunks), f'multipart/related; type="application/dicom"; boundary={boundary}'


def assert_same_prediction(body: dict, expected: dict) -> None:
    assert body["modalities_used"] == expected["modalities_used"]
    assert body["probabilities"] == pytest.approx(expected["probabilities"], abs=TOL)


# -------------------------------------------------------------------------------- auth


def test_inference_routes_need_a_token(server, cohort) -> None:
    url, _ = server
    studies, table, _ = cohort
    genes = genes_of(table, next(s.patient_id for s in studies if s.patient_id in table.index))
    stow, stow_type = stow_body([h.path for h in studies[0].instances])
    with httpx.Client(base_url=url, timeout=60) as client:
        for method, path, kwargs in [
            ("POST", "/predict", {"json": {"genomics": genes}}),
            ("POST", "/dicom-web/studies", {"content": stow, "headers": {"content-type": stow_type}}),
            ("GET", "/contract", {}),
            ("POST", "/contract", {}),
        ]:
            response = client.request(method, path, **kwargs)
            assert response.status_code == 401, (path, response.text)
            assert response.json() == {
                "error": "unauthorized",
                "detail": "missing API token (Authorization: Bearer <token> or X-API-Key)",
            }
            assert response.headers["www-authenticate"] == 'Bearer realm="radfusion"'

        wrong = client.post("/predict", json={"genomics": genes}, headers={"Authorization": "Bearer nope"})
        assert (wrong.status_code, wrong.json()["detail"]) == (401, "invalid API token")
        assert (
            client.post("/predict", json={"genomics": genes}, headers={"Authorization": f"Basic {TOKEN}"}).status_code
            == 401
        )
        # Refused before the body counts: an oversized upload without a token is 401, not 413.
        assert client.post("/predict", content=b"\0" * (2 * 1024 * 1024)).status_code == 401

        assert client.post("/predict", json={"genomics": genes}, headers=AUTH).status_code == 200
        assert client.post("/predict", json={"genomics": genes}, headers={"X-API-Key": TOKEN}).status_code == 200
        assert (
            client.post("/predict", json={"genomics": genes}, headers={"Authorization": "Bearer old-token"}).status_code
            == 200
        )

        for open_path in ("/readyz", "/livez", "/healthz", "/metrics"):
            assert client.get(open_path).status_code == 200, open_path
        metrics = client.get("/metrics").text
    assert "radfusion_predictions_total{modalities=" in metrics
    assert 'radfusion_errors_total{kind="unauthorized",route="/predict"}' in metrics


# ---------------------------------------------------------------------------- overload


def test_overload_is_503_with_retry_after_and_recovers(server, cohort) -> None:
    url, _ = server
    studies, table, predictor = cohort
    genes = genes_of(table, next(s.patient_id for s in studies if s.patient_id in table.index))
    expected = predictor.predict([predictor.prepare(None, genes)])[0]
    payload = json.dumps({"genomics": genes}).encode()
    headers = {**AUTH, "content-type": "application/json"}

    def slow_request() -> httpx.Response:  # holds one in-flight slot for ~2 s
        with httpx.Client(base_url=url, timeout=60) as client:
            return client.post("/predict", content=slow_body(payload, 6, 0.4), headers=headers)

    with concurrent.futures.ThreadPoolExecutor(MAX_IN_FLIGHT) as pool:
        holders = [pool.submit(slow_request) for _ in range(MAX_IN_FLIGHT)]
        time.sleep(0.8)  # all slots taken, none finished
        with httpx.Client(base_url=url, timeout=30) as client:
            shed = [client.post("/predict", json={"genomics": genes}, headers=AUTH) for _ in range(5)]
            ready_while_full = client.get("/readyz").status_code
        held = [f.result() for f in holders]
    for response in shed:
        assert response.status_code == 503
        assert response.headers["retry-after"] == str(RETRY_AFTER_S)
        assert response.json()["error"] == "overloaded"
    assert ready_while_full == 200
    for response in held:  # the requests that held the slots were served
        assert response.status_code == 200, response.text
        assert_same_prediction(response.json(), expected)
    with httpx.Client(base_url=url, timeout=30) as client:  # and the server recovers
        again = client.post("/predict", json={"genomics": genes}, headers=AUTH)
    assert again.status_code == 200


def test_concurrent_clients_see_no_5xx_but_503(server, cohort) -> None:
    """16 clients, mixed good and bad requests: every answer is the right one or 503."""
    url, _ = server
    studies, table, predictor = cohort
    requests = []
    for study in studies[:4]:
        paths = [h.path for h in study.instances]
        genes = genes_of(table, study.patient_id)
        data = {"genomics": json.dumps(genes)} if genes else None
        expected = predictor.predict([predictor.prepare(paths, genes)])[0]
        requests.append(
            ("study", {"files": {"study": ("s.zip", zip_study(paths), "application/zip")}, "data": data}, 200, expected)
        )
    requests.append(("corrupt", {"files": {"study": ("s.zip", b"PK\x03\x04broken", "application/zip")}}, 400, None))
    requests.append(("no-token", {"json": {"genomics": None}, "headers": {"Authorization": "Bearer x"}}, 401, None))
    work = [requests[i % len(requests)] for i in range(16 * 6)]

    def call(item) -> tuple[str, int, int, dict | None]:
        name, kwargs, want, expected = item
        with httpx.Client(base_url=url, timeout=120, headers=AUTH) as client:
            response = client.post("/predict", **kwargs)
        if response.status_code == 200:
            assert_same_prediction(response.json(), expected)
        return name, want, response.status_code, response.headers.get("retry-after")

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        outcomes = list(pool.map(call, work))
    statuses = [status for _, _, status, _ in outcomes]
    assert all(status in (want, 503) for _, want, status, _ in outcomes), sorted(set(statuses))
    assert all(retry == str(RETRY_AFTER_S) for _, _, status, retry in outcomes if status == 503)
    assert statuses.count(200) >= 8 and 400 in statuses and 401 in statuses


# ----------------------------------------------------------------------------- STOW-RS


def test_stow_rs_input_scores_the_study_with_genomics_by_patient(server, cohort) -> None:
    """The answer is a Store Instances Response (its semantics: test_stow_conformance.py);
    the prediction, the same as the predictor's, is in the study's SR, found with WADO-RS."""
    url, _ = server
    studies, table, predictor = cohort
    with_genes = next(s for s in studies if s.patient_id in table.index)
    without = next(s for s in studies if s.patient_id not in table.index)
    with httpx.Client(base_url=url, timeout=60, headers=AUTH) as client:
        for study, genes in ((with_genes, genes_of(table, with_genes.patient_id)), (without, None)):
            paths = [h.path for h in study.instances]
            body, content_type = stow_body(paths)
            response = client.post("/dicom-web/studies", content=body, headers={"content-type": content_type})
            assert response.status_code == 200, response.text
            assert response.headers["content-type"] == "application/dicom+json"
            answer = pydicom.Dataset.from_json(response.json())
            assert len(answer.ReferencedSOPSequence) == len(paths) and "FailedSOPSequence" not in answer
            expected = predictor.predict([predictor.prepare(paths, genes)])[0]
            sr = client.get(answer.RetrieveURL)
            assert sr.status_code == 200 and sr.headers["content-type"].startswith("multipart/related")
            boundary = sr.headers["content-type"].rsplit("boundary=", 1)[1].encode()
            last_part = sr.content.split(b"--" + boundary)[-2]  # the newest result comes last
            latest = pydicom.dcmread(io.BytesIO(last_part.split(b"\r\n\r\n", 1)[1][:-2]))
            numbers = [float(m.NumericValue) for m in _measured(latest)]
            for p in expected["probabilities"].values():
                assert any(abs(n - p) < TOL for n in numbers)

        body, _ = stow_body([with_genes.instances[0].path])
        wrong_type = client.post("/dicom-web/studies", content=body, headers={"content-type": "application/dicom"})
        assert (wrong_type.status_code, wrong_type.json()["error"]) == (415, "unsupported_media_type")
        no_boundary = client.post("/dicom-web/studies", content=body, headers={"content-type": "multipart/related"})
        assert (no_boundary.status_code, no_boundary.json()["error"]) == (400, "bad_multipart")
        garbage = b"--b\r\nContent-Type: application/dicom\r\n\r\nnot dicom at all\r\n--b--\r\n"
        corrupt = client.post(
            "/dicom-web/studies", content=garbage, headers={"content-type": "multipart/related; boundary=b"}
        )
        assert corrupt.status_code == 409 and "corrupt_dicom" in corrupt.headers["warning"]


def _measured(ds: pydicom.Dataset) -> list:
    found = []
    for item in ds.get("ContentSequence", []):
        found += list(item.get("MeasuredValueSequence", [])) + _measured(item)
    return found


def test_security_server_logs_hold_no_identifiers(server, cohort) -> None:
    _, log_file = server
    studies, _, _ = cohort
    time.sleep(0.3)
    text = log_file.read_text(errors="replace")
    assert "stow: 1 studies, " in text and "request refused: no token" in text
    assert "status=500" not in text and TOKEN not in text
    for study in studies:
        assert study.patient_id not in text and study.study_uid not in text


# ------------------------------------------------------------------------------- drain


def test_sigterm_drains_in_flight_requests(tiny_onnx_model: Path, bentoml_home: Path, cohort, tmp_path: Path) -> None:
    """SIGTERM arrives while three requests are still uploading: all three are answered
    200 with the right prediction, then the server exits."""
    studies, table, predictor = cohort
    study = next(s for s in studies if s.patient_id in table.index)
    paths = [h.path for h in study.instances]
    genes = genes_of(table, study.patient_id)
    expected = predictor.predict([predictor.prepare(paths, genes)])[0]
    boundary = uuid.uuid4().hex
    multipart = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="genomics"\r\n\r\n{json.dumps(genes)}\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="study"; filename="s.zip"\r\n'
            "Content-Type: application/zip\r\n\r\n"
        ).encode()
        + zip_study(paths)
        + f"\r\n--{boundary}--\r\n".encode()
    )
    headers = {**AUTH, "content-type": f"multipart/form-data; boundary={boundary}"}

    env = {"BENTOML_HOME": str(bentoml_home), "RADFUSION_API_TOKENS": TOKEN}
    finished_at: list[float] = []
    lock = threading.Lock()
    with serving(tiny_onnx_model, env, tmp_path / "serve.log") as (process, url):

        def upload() -> httpx.Response:
            with httpx.Client(base_url=url, timeout=60) as client:
                response = client.post("/predict", content=slow_body(multipart, 8, 0.3), headers=headers)
            with lock:
                finished_at.append(time.monotonic())
            return response

        with concurrent.futures.ThreadPoolExecutor(3) as pool:
            futures = [pool.submit(upload) for _ in range(3)]
            time.sleep(0.6)
            sigterm_at = time.monotonic()
            process.send_signal(signal.SIGTERM)
            responses = [f.result() for f in futures]
        exit_code = process.wait(timeout=30)
    assert min(finished_at) > sigterm_at + 1.0  # still uploading when the signal came
    for response in responses:
        assert response.status_code == 200, response.text
        assert_same_prediction(response.json(), expected)
    assert exit_code == 0, (tmp_path / "serve.log").read_text()[-3000:]


# ------------------------------------------------------------------- model service restart


def model_calls(client: httpx.Client) -> dict[str, float]:
    found = {"socket": 0.0, "http": 0.0}
    for line in client.get("/metrics").text.splitlines():
        for transport in found:
            if line.startswith(f'radfusion_model_calls_total{{transport="{transport}"}}'):
                found[transport] += float(line.split()[-1])
    return found


def test_a_killed_model_worker_costs_no_request(
    tiny_onnx_model: Path, bentoml_home: Path, cohort, tmp_path: Path
) -> None:
    """The model service's worker killed after calls left connections to its socket
    open: BentoML starts another, which removes the dead one's socket folder, and the
    API service finds the new socket. Every request once the new worker listens is
    answered 200, over the socket (none a 500 from a dead connection); SIGTERM then
    leaves no socket folder behind."""
    studies, table, predictor = cohort
    study = next(s for s in studies if s.patient_id in table.index)
    paths = [h.path for h in study.instances]
    genes = genes_of(table, study.patient_id)
    expected = predictor.predict([predictor.prepare(paths, genes)])[0]
    upload = zip_study(paths)
    # The server's temporary folder, short: BentoML's Unix sockets go there too.
    temp = Path(tempfile.mkdtemp(prefix="rf-"))
    env = {"BENTOML_HOME": str(bentoml_home), "RADFUSION_API_TOKENS": TOKEN, "TMPDIR": str(temp)}

    try:
        with serving(tiny_onnx_model, env, tmp_path / "serve.log") as (process, url):

            def predict(_: int = 0) -> httpx.Response:
                with httpx.Client(base_url=url, timeout=120, headers=AUTH) as client:
                    files = {"study": ("s.zip", upload, "application/zip")}
                    return client.post("/predict", files=files, data={"genomics": json.dumps(genes)})

            with concurrent.futures.ThreadPoolExecutor(6) as pool:
                assert [r.status_code for r in pool.map(predict, range(12))] == [200] * 12
            (old,) = temp.glob("radfusion-model-*")
            (worker,) = [
                p for p in psutil.Process(process.pid).children(recursive=True) if "radfusion_model" in p.cmdline()
            ]
            worker.kill()
            worker.wait(timeout=30)
            deadline = time.monotonic() + 120
            while not [f for f in temp.glob("radfusion-model-*") if f != old and listening(f / "model.sock")]:
                # BentoML starts another worker, which opens a socket of its own.
                assert time.monotonic() < deadline, (tmp_path / "serve.log").read_text()[-3000:]
                time.sleep(0.25)
            with httpx.Client(base_url=url, timeout=30, headers=AUTH) as client:
                before = model_calls(client)
                responses = [predict() for _ in range(8)]
                after = model_calls(client)
            assert [r.status_code for r in responses] == [200] * 8, [r.text for r in responses]
            for response in responses:
                assert_same_prediction(response.json(), expected)
            assert after["socket"] - before["socket"] == 8 and after["http"] == before["http"]
            assert not old.exists()  # the new worker removed the dead one's socket
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=60) == 0
        assert not list(temp.glob("radfusion-model-*"))  # removed at shutdown
    finally:
        shutil.rmtree(temp, ignore_errors=True)
