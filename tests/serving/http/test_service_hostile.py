"""The service against hostile input, as a hospital's security tester sends it: one real
`bentoml serve` on loopback with the tiny model, started once for the module.

Every malformed request gets its exact 4xx and kind (never a 500); hostile studies
(an unknown VR, a sequence nested 5000 deep, a Deflate claim, a PixelSpacing of 2000 mm,
a zip bomb) fail alone with their kind and within their cost; slow-header connections
are cut; and afterwards the server still answers a good request exactly as the
predictor does, with no planted name, ID or UID in its log."""

from __future__ import annotations

import contextlib
import io
import json
import os
import socket
import struct
import threading
import time
import uuid
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path

import httpx
import psutil
import pydicom
import pytest
from pydicom.filebase import DicomFileLike
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import DeflatedExplicitVRLittleEndian

from radfusion.dicom import find_studies
from radfusion.genomics import load_genomics_table, row_as_mapping
from radfusion.predictor import Predictor
from radfusion.serving.http.launch import running_server

pytestmark = pytest.mark.slow

TOKEN = "hostile-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
MAX_FILES = 1000  # RADFUSION_MAX_STUDY_FILES: 1,100 file fields are over it
MAX_VOXELS = 10_000  # the tiny studies resample to ~2,000 voxels; 25 mm pixels to ~36,000
HEADER_TIMEOUT_S = 2
TOL = 1e-5

# Planted in every hostile study: none of them may reach the server's log.
PLANTED_NAME = "Plantedname^Hostile"
PLANTED_ID = "PLANTED-77731"
PLANTED_STUDY_UID = "1.2.826.0.1.3680043.8.498.77731001"
PLANTED_SERIES_UID = "1.2.826.0.1.3680043.8.498.77731002"
# Not a valid UID (letters): pydicom warns, quoting it, whenever it is read.
PLANTED_BAD_UID = "1.2.826.0.1.3680043.8.498.Plantedname"
PLANTED_FILE = "Plantedname_Hostile"


# ---------------------------------------------------------------- fixtures and helpers


@pytest.fixture(scope="module")
def server(tiny_onnx_model: Path, tiny_cohort: Path, bentoml_home: Path, tmp_path_factory: pytest.TempPathFactory):
    """(client, log file, server temp dir, API worker process)."""
    root = tmp_path_factory.mktemp("hostile")
    server_tmp = root / "tmp"
    server_tmp.mkdir()
    env = {
        "BENTOML_HOME": str(bentoml_home),
        "RADFUSION_API_TOKENS": TOKEN,
        "RADFUSION_MAX_STUDY_FILES": str(MAX_FILES),
        "RADFUSION_STUDY_MAX_VOXELS": str(MAX_VOXELS),
        "RADFUSION_HEADER_TIMEOUT_S": str(HEADER_TIMEOUT_S),
        "RADFUSION_GENOMICS_TABLE": str(tiny_cohort / "genomics.parquet"),
        "TMPDIR": str(server_tmp),  # every temporary file of the server, to be measured
        "RADFUSION_RESULT_DIR": str(root / "results"),  # STOW-RS results are kept, not temporary
    }
    log_file = root / "serve.log"
    with (
        running_server(tiny_onnx_model, timeout=120, env=env, log_file=log_file) as url,
        httpx.Client(base_url=url, timeout=120, headers=AUTH) as client,
    ):
        yield client, log_file, server_tmp, api_worker(int(url.rsplit(":", 1)[1]))


def api_worker(port: int) -> psutil.Process:
    """The worker of the public service listening on ``port``."""
    for process in psutil.process_iter(["cmdline"]):
        cmdline = process.info["cmdline"] or []
        if "_bentoml_impl.worker.service" not in cmdline or "radfusion" not in cmdline:
            continue
        try:
            if any(c.laddr.port == port and c.status == psutil.CONN_LISTEN for c in process.net_connections("tcp")):
                return process
        except psutil.Error:
            continue
    raise AssertionError(f"no API worker listens on port {port}")


@pytest.fixture(scope="module")
def cohort(tiny_cohort: Path, tiny_onnx_model: Path):
    studies = sorted(find_studies(tiny_cohort / "dicom").studies.values(), key=lambda s: s.patient_id)
    table = load_genomics_table(tiny_cohort / "genomics.parquet")
    return studies, table, Predictor.load(tiny_onnx_model, device="cpu")


@pytest.fixture(scope="module")
def planted(cohort, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """A cohort study's files with planted identifiers, in a folder named after the patient."""
    studies, _, _ = cohort
    out = tmp_path_factory.mktemp("planted") / PLANTED_FILE
    out.mkdir()
    paths = []
    for i, instance in enumerate(studies[0].instances):
        ds = pydicom.dcmread(instance.path)
        ds.PatientName, ds.PatientID = PLANTED_NAME, PLANTED_ID
        ds.StudyInstanceUID = PLANTED_STUDY_UID
        ds.SeriesInstanceUID = f"{PLANTED_SERIES_UID}.{ds.SeriesNumber or 0}"
        ds.FrameOfReferenceUID = PLANTED_BAD_UID
        paths.append(out / f"{PLANTED_FILE}_{i:03d}.dcm")
        ds.save_as(paths[-1])
    return paths


def genes_of(table, patient_id: str) -> dict[str, float]:
    return {k: float(v) for k, v in row_as_mapping(table, patient_id).items()}


def error_of(response: httpx.Response, status: int, kind: str) -> str:
    assert response.status_code == status, response.text[:500]
    body = response.json()
    assert body["error"] == kind, body
    return body["detail"]


def upload(client: httpx.Client, files: list[bytes], route: str = "/predict", field: str = "study") -> httpx.Response:
    """One zip of ``files`` as the study, its members named after the patient."""
    names = [f"{PLANTED_FILE}/{PLANTED_FILE}_{i:03d}.dcm" for i in range(len(files))]
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in zip(names, files, strict=True):
            zf.writestr(name, data)
    return client.post(route, files={field: (f"{PLANTED_FILE}.zip", buffer.getvalue(), "application/zip")})


def multipart(fields: list[tuple[str, bytes, str | None]], boundary: str, close: bool = True) -> bytes:
    """A multipart/form-data body: (name, value, filename or None) per part."""
    out = []
    for name, value, filename in fields:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        out += [f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode(), value, b"\r\n"]
    if close:
        out.append(f"--{boundary}--\r\n".encode())
    return b"".join(out)


def stow_body(files: list[bytes]) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    chunks = []
    for data in files:
        chunks += [f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode(), data, b"\r\n"]
    chunks.append(f"--{boundary}--\r\n".encode())
    return b"".join(chunks), f'multipart/related; type="application/dicom"; boundary={boundary}'


# ------------------------------------------------------------------ hostile DICOM files


def unknown_vr(data: bytes) -> bytes:
    """Two bytes flipped: Modality's VR "CS" becomes "ZX", which no reader knows."""
    at = data.index(b"\x08\x00\x60\x00CS")
    return data[: at + 4] + b"ZX" + data[at + 6 :]


def nested_5000_deep(data: bytes) -> bytes:
    """A sequence of undefined length holding itself 5000 times, before Modality."""
    opening = b"\x08\x00\x15\x11SQ\x00\x00\xff\xff\xff\xff" + b"\xfe\xff\x00\xe0\xff\xff\xff\xff"
    closing = b"\xfe\xff\x0d\xe0\x00\x00\x00\x00" + b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
    at = data.index(b"\x08\x00\x60\x00CS")
    return data[:at] + opening * 5000 + closing * 5000 + data[at:]


def deflate_claim(data: bytes) -> bytes:
    """The file meta says Deflated Explicit VR Little Endian; the data set is not deflated."""
    meta = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True).file_meta
    meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    group_length = struct.unpack("<I", data[140:144])[0]
    buffer = io.BytesIO()
    write_file_meta_info(DicomFileLike(buffer), meta, enforce_standard=True)
    return data[:132] + buffer.getvalue() + data[144 + group_length :]


def with_pixel_spacing(spacing: float) -> Callable[[bytes], bytes]:
    def change(data: bytes) -> bytes:
        ds = pydicom.dcmread(io.BytesIO(data))
        ds.PixelSpacing = [spacing, spacing]
        out = io.BytesIO()
        ds.save_as(out)
        return out.getvalue()

    return change


def zip_bomb(chunks: int = 170, chunk: int = 16 * 1024**2) -> bytes:
    """One member of ``chunks`` x 16 MiB of zeros (2.85 GB) in ~2.8 MB, with honest
    sizes and CRC. After a full flush the deflate stream of identical input is
    identical, so the compressed blocks are repeated instead of computed."""
    zeros = bytes(chunk)
    deflate = zlib.compressobj(9, zlib.DEFLATED, -15)
    first = deflate.compress(zeros) + deflate.flush(zlib.Z_FULL_FLUSH)
    again = deflate.compress(zeros) + deflate.flush(zlib.Z_FULL_FLUSH)
    data = first + again * (chunks - 1) + deflate.flush()
    crc = 0
    for _ in range(chunks):
        crc = zlib.crc32(zeros, crc)
    size, name = chunks * chunk, f"{PLANTED_FILE}/000.dcm".encode()
    local = struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, 8, 0, 0, crc, len(data), size, len(name), 0) + name
    central = (
        struct.pack(
            "<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0, 8, 0, 0, crc, len(data), size, len(name), 0, 0, 0, 0, 0, 0
        )
        + name
    )
    end = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, 1, 1, len(central), len(local) + len(data), 0)
    return local + data + central + end


def folder_bytes(folder: Path) -> int:
    total = 0
    for parent, _, names in os.walk(folder):
        for name in names:
            with contextlib.suppress(FileNotFoundError):  # removed while we walked
                total += os.lstat(os.path.join(parent, name)).st_size
    return total


# ------------------------------------------------------------------ malformed requests

B = "hostileboundary"
DEEP = b"[" * 100_000 + b"]" * 100_000
FORM = f"multipart/form-data; boundary={B}"

MALFORMED = {
    "multipart without boundary": (
        "/predict",
        multipart([("genomics", b"{}", None)], B),
        "multipart/form-data",
        400,
        "bad_multipart",
    ),
    "multipart with a wrong boundary": (
        "/predict",
        multipart([("genomics", b"{}", None)], B),
        "multipart/form-data; boundary=another",
        400,
        "bad_multipart",
    ),
    "truncated multipart": (
        "/predict",
        multipart([("genomics", b'{"TP53": 1.0', None)], B, close=False)[:-20],
        FORM,
        400,
        "bad_multipart",
    ),
    "1,100 file fields": (
        "/predict",
        multipart([("study", b"x", f"{i}.dcm") for i in range(1100)], B),
        FORM,
        413,
        "upload_too_large",
    ),
    "genomics JSON nested 100,000 deep (form field)": (
        "/predict",
        multipart([("genomics", DEEP, None)], B),
        FORM,
        400,
        "bad_json",
    ),
    "genomics JSON nested 100,000 deep (JSON body)": (
        "/predict",
        b'{"genomics": ' + DEEP + b"}",
        "application/json",
        400,
        "bad_json",
    ),
    "cases JSON nested 100,000 deep (batch form field)": (
        "/predict/batch",
        multipart([("cases", DEEP, None)], B),
        FORM,
        400,
        "bad_json",
    ),
    "a 20 MB form field": (
        "/predict",
        multipart([("genomics", b"1" * (20 * 1000**2), None)], B),
        FORM,
        413,
        "json_too_large",
    ),
    "invalid UTF-8 in a form field": (
        "/predict",
        multipart([("genomics", b'{"TP53\xff\xfe": 1.0}', None)], B),
        FORM,
        400,
        "bad_multipart",
    ),
    "invalid UTF-8 in a JSON body": (
        "/predict",
        b'{"genomics": {"TP53\xff": 1.0}}',
        "application/json",
        400,
        "bad_json",
    ),
    "JSON syntax error": ("/predict", b'{"genomics": {', "application/json", 400, "bad_json"),
    "genomics of the wrong type": ("/predict", b'{"genomics": "high"}', "application/json", 400, "invalid_request"),
    "text/plain": ("/predict", b"hello", "text/plain", 415, "unsupported_media_type"),
    "multipart/related to /predict": (
        "/predict",
        b"x",
        f"multipart/related; boundary={B}",
        415,
        "unsupported_media_type",
    ),
    "BentoML's pickle": ("/predict", b"x", "application/vnd.bentoml+pickle", 415, "unsupported_media_type"),
    "XML to /predict/batch": ("/predict/batch", b"<a/>", "application/xml", 415, "unsupported_media_type"),
    "STOW-RS truncated": (
        "/dicom-web/studies",
        f"--{B}\r\nContent-Type: application/dicom\r\n\r\nDICM".encode(),
        f'multipart/related; type="application/dicom"; boundary={B}',
        400,
        "bad_multipart",
    ),
    "STOW-RS as application/json": ("/dicom-web/studies", b"{}", "application/json", 415, "unsupported_media_type"),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_request_is_its_4xx(server, case: str) -> None:
    client, _, _, _ = server
    route, body, content_type, status, kind = MALFORMED[case]
    error_of(client.post(route, content=body, headers={"content-type": content_type}), status, kind)


def test_the_refusals_say_what_is_wrong(server) -> None:
    client, _, _, _ = server
    files = multipart([("study", b"x", f"{i}.dcm") for i in range(1100)], B)
    assert error_of(
        client.post("/predict", content=files, headers={"content-type": FORM}), 413, "upload_too_large"
    ) == (f"more than {MAX_FILES} files in one request")
    wrong_type = client.post("/predict", json={"genomics": [1, 2]})
    assert error_of(wrong_type, 400, "invalid_request") == "genomics: Input should be an object"
    deep = client.post("/predict", content=b'{"genomics": ' + DEEP + b"}", headers={"content-type": "application/json"})
    assert "recursion limit exceeded" in error_of(deep, 400, "bad_json")


def test_300_mib_of_zeros(server) -> None:
    """As multipart: refused at its first bytes; as JSON: refused from its Content-Length
    (read whole, it would cost the worker 300 MiB and more)."""
    client, _, _, worker = server
    zeros = bytes(300 * 1024**2)
    before = worker.memory_info().rss
    error_of(client.post("/predict", content=zeros, headers={"content-type": FORM}), 400, "bad_multipart")
    error_of(
        client.post("/predict", content=zeros, headers={"content-type": "application/json"}), 413, "json_too_large"
    )
    error_of(client.post("/predict/batch", content=zeros), 413, "json_too_large")  # no type: JSON, as BentoML reads it
    assert worker.memory_info().rss - before < 100 * 1024**2


# -------------------------------------------------------------------- hostile studies

HOSTILE = {
    "unknown VR (2 bytes flipped)": (unknown_vr, "an unknown value representation"),
    "sequence nested 5000 deep": (nested_5000_deep, "nested too deeply"),
    "Deflate claimed, not deflated": (deflate_claim, "cannot be inflated"),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_study_is_corrupt_dicom(server, planted: list[Path], case: str) -> None:
    """Every file of the study damaged the same way: as an upload and through STOW-RS."""
    client, _, _, _ = server
    mutate, reason = HOSTILE[case]
    files = [mutate(path.read_bytes()) for path in planted]
    assert reason in error_of(upload(client, files), 400, "corrupt_dicom")
    body, content_type = stow_body(files)
    stow = client.post("/dicom-web/studies", content=body, headers={"content-type": content_type})
    # STOW-RS: no instance taken (409); why travels in the Warning header.
    assert stow.status_code == 409 and stow.headers["content-type"] == "application/dicom+json"
    assert "corrupt_dicom" in stow.headers["warning"] and reason in stow.headers["warning"]


def test_pixel_spacing_2000_is_refused_fast_and_cheap(server, planted: list[Path]) -> None:
    """A ~45 KB study asking for a 64-metre volume: refused from its headers, twice,
    in well under a second each, and the worker does not grow."""
    client, _, _, worker = server
    files = [with_pixel_spacing(2000.0)(path.read_bytes()) for path in planted]
    before = worker.memory_info().rss
    for _ in range(2):
        started = time.monotonic()
        detail = error_of(upload(client, files), 422, "geometry_rejected")
        assert time.monotonic() - started < 5.0
        assert "PixelSpacing" in detail
    assert worker.memory_info().rss - before < 50 * 1024**2


def test_the_voxel_budget_of_the_settings_is_enforced(server, planted: list[Path]) -> None:
    """25 mm pixels are physically possible, but resample to ~36,000 voxels: over
    RADFUSION_STUDY_MAX_VOXELS (10,000) of this server."""
    client, _, _, _ = server
    files = [with_pixel_spacing(25.0)(path.read_bytes()) for path in planted]
    assert f"{MAX_VOXELS:,}" in error_of(upload(client, files), 413, "study_over_budget")


def test_zip_bomb_is_refused_before_it_is_written(server) -> None:
    """~2.8 MB expanding to 2.85 GB: 413, and the server's temporary folder never holds
    more than a few MB while the request runs."""
    client, _, server_tmp, _ = server
    bomb = zip_bomb()
    assert len(bomb) < 3 * 1024**2
    peak = 0
    done = threading.Event()

    def watch() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, folder_bytes(server_tmp))
            time.sleep(0.01)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        started = time.monotonic()
        response = client.post("/predict", files={"study": ("bomb.zip", bomb, "application/zip")})
        elapsed = time.monotonic() - started
    finally:
        done.set()
        watcher.join()
    assert "zip" in error_of(response, 413, "zip_bomb")
    assert elapsed < 10.0
    assert peak < 8 * 1024**2, f"the server's temp folder reached {peak / 1024**2:.0f} MiB"


@pytest.mark.parametrize("value", ["1e39", "-1e308", "1e308"])
def test_genomic_value_beyond_float32_is_invalid_value(server, cohort, value: str) -> None:
    """Never a 200 with null probabilities: 422 naming the gene."""
    client, _, _, _ = server
    studies, table, _ = cohort
    genes = genes_of(table, next(s.patient_id for s in studies if s.patient_id in table.index))
    body = json.dumps({"genomics": {**genes, "TP53": 0.0}}).replace('"TP53": 0.0', f'"TP53": {value}')
    response = client.post("/predict", content=body.encode(), headers={"content-type": "application/json"})
    assert "TP53" in error_of(response, 422, "invalid_value")


# ---------------------------------------------------------------------- slow clients


def read_answer(sock: socket.socket) -> bytes:
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def test_slow_headers_are_cut_off(server) -> None:
    """Headers sent one byte every 0.2 s, or nothing sent at all: the server answers 408
    and closes within its header timeout, whatever the client does."""
    client, _, _, _ = server
    host, port = client.base_url.host, client.base_url.port
    assert port is not None
    request = f"POST /predict HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {TOKEN}\r\n".encode()

    with socket.create_connection((host, port), timeout=30) as dripping:
        started = time.monotonic()
        dripping.settimeout(0.2)
        answer = b""
        for byte in request * 10:  # ~60 s of bytes unless the server cuts it off
            try:
                dripping.send(bytes([byte]))
                answer = dripping.recv(65536)
            except TimeoutError:
                continue
            except (BrokenPipeError, ConnectionResetError):
                break
            if answer:
                break
        elapsed = time.monotonic() - started
    assert answer.startswith(b"HTTP/1.1 408 "), answer
    assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["error"] == "request_header_timeout"
    assert HEADER_TIMEOUT_S - 0.5 < elapsed < HEADER_TIMEOUT_S + 3

    with socket.create_connection((host, port), timeout=30) as silent:
        started = time.monotonic()
        answer = read_answer(silent)
        assert answer.startswith(b"HTTP/1.1 408 ")
        assert time.monotonic() - started < HEADER_TIMEOUT_S + 3


def test_a_slow_body_is_not_a_slow_header(server, cohort) -> None:
    """The bound is on headers only: a body streamed over 3 s (longer than the header
    timeout) after complete headers is served."""
    client, _, _, _ = server
    studies, table, _ = cohort
    genes = genes_of(table, next(s.patient_id for s in studies if s.patient_id in table.index))
    payload = json.dumps({"genomics": genes}).encode()

    def slowly():
        for i in range(0, len(payload), len(payload) // 6 + 1):
            time.sleep(0.5)
            yield payload[i : i + len(payload) // 6 + 1]

    response = client.post("/predict", content=slowly(), headers={"content-type": "application/json"})
    assert response.status_code == 200, response.text


def test_a_stalled_body_is_cut_off(server) -> None:
    """Complete headers, then silence: the in-flight slot is freed with a 408 once the
    body has been silent for the timeout, not held until the request timeout."""
    client, _, _, _ = server
    host, port = client.base_url.host, client.base_url.port
    head = (
        f"POST /predict HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {TOKEN}\r\n"
        'Content-Type: application/json\r\nContent-Length: 10000000\r\n\r\n{"genomics":'
    )
    with socket.create_connection((host, port), timeout=30) as stalled:
        started = time.monotonic()
        stalled.sendall(head.encode())
        answer = stalled.recv(65536)  # the answer's first bytes: when the slot was freed
        elapsed = time.monotonic() - started
        answer += read_answer(stalled)
    assert answer.startswith(b"HTTP/1.1 408 "), answer
    assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["error"] == "request_body_timeout"
    assert HEADER_TIMEOUT_S - 0.5 < elapsed < HEADER_TIMEOUT_S + 5


def test_a_client_that_leaves_mid_body_is_not_a_server_error(server) -> None:
    """The multipart body ends with the connection: counted as the client's failure
    (test_log_holds_no_planted_identifier then finds no status=500 in the log)."""
    client, _, _, _ = server
    host, port = client.base_url.host, client.base_url.port
    head = (
        f"POST /predict HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {TOKEN}\r\n"
        "Content-Type: multipart/form-data; boundary=B\r\nContent-Length: 1000\r\n\r\n--B\r\n"
    )
    with socket.create_connection((host, port), timeout=30) as leaving:
        leaving.sendall(head.encode())
        time.sleep(0.3)
    assert client.get("/livez").status_code == 200


def test_an_integer_too_long_to_read_is_bad_json(server) -> None:
    """Python refuses to read integers of more than 4,300 digits: the field is bad JSON."""
    client, _, _, _ = server
    response = client.post("/predict", data={"genomics": '{"TP53": ' + "9" * 5000 + "}"})
    assert "too long" in error_of(response, 400, "bad_json")


def test_malformed_http_is_400_with_a_kind(server) -> None:
    client, _, _, _ = server
    with socket.create_connection((client.base_url.host, client.base_url.port), timeout=10) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nBad Header Line\r\n\r\n")
        answer = read_answer(sock)
    assert answer.startswith(b"HTTP/1.1 400 "), answer
    assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["error"] == "bad_http_request"


# ------------------------------------------------------------ afterwards: still right


def test_still_answers_a_good_request_correctly(server, cohort, planted: list[Path]) -> None:
    client, _, _, _ = server
    studies, table, predictor = cohort
    patient = next(s.patient_id for s in studies if s.patient_id in table.index)
    genes = genes_of(table, patient)
    expected = predictor.predict([predictor.prepare(planted, genes)])[0]
    files = [("study", (path.name, path.read_bytes(), "application/dicom")) for path in planted]
    response = client.post("/predict", files=files, data={"genomics": json.dumps(genes)})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["modalities_used"] == expected["modalities_used"]
    assert body["predicted_label"] == expected["predicted_label"]
    for label, p in expected["probabilities"].items():
        assert body["probabilities"][label] == pytest.approx(p, abs=TOL)
    assert client.get("/metrics").status_code == 200


def test_log_holds_no_planted_identifier(server) -> None:
    """Runs last: the log holds every request of this module, hostile ones included."""
    _, log_file, _, _ = server
    time.sleep(0.5)  # let the server flush its lines
    text = log_file.read_text(errors="replace")
    assert "predict rejected: corrupt_dicom" in text and "predict rejected: bad_multipart" in text
    assert "status=500" not in text and "Traceback" not in text
    for planted in (PLANTED_NAME, "Plantedname", PLANTED_ID, PLANTED_STUDY_UID, PLANTED_SERIES_UID, PLANTED_FILE):
        assert planted not in text, planted
