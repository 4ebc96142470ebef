"""Many cases per call, DICOMweb study references and /metrics, against a real
`bentoml serve` on loopback and a real Orthanc (with its DICOMweb plugin) as the PACS
the service fetches from. Answers are checked against radfusion.predictor.Predictor on
the same files; metrics are checked by scraping the server before and after."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections import defaultdict
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from radfusion.dicom import find_studies
from radfusion.genomics import load_genomics_table, row_as_mapping
from radfusion.predictor import Predictor
from radfusion.serving.http.launch import (
    PROJECT_ROOT,
    STARTUP_FAILED,
    free_port,
    running_server,
    serve_command,
    serve_env,
)
from tests.support.study_zip import zip_study

pytestmark = pytest.mark.slow

TOKEN = "batch-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
TOL = 1e-5
MISSING_UID = "1.2.826.0.1.3680043.8.498.999999"


@pytest.fixture(scope="module")
def cohort(tiny_cohort: Path, tiny_onnx_model: Path):
    studies = sorted(find_studies(tiny_cohort / "dicom").studies.values(), key=lambda s: s.patient_id)
    table = load_genomics_table(tiny_cohort / "genomics.parquet")
    with_genes = [s for s in studies if s.patient_id in table.index]
    return with_genes, table, Predictor.load(tiny_onnx_model, device="cpu")


@pytest.fixture(scope="module")
def pacs(orthanc, cohort):
    """Orthanc holding two of the cohort's studies."""
    with_genes, _, _ = cohort
    for study in with_genes[:2]:
        orthanc.upload([h.path for h in study.instances])
    return orthanc


@pytest.fixture(scope="module")
def server(tiny_onnx_model: Path, bentoml_home: Path, pacs, tmp_path_factory):
    env = {
        "BENTOML_HOME": str(bentoml_home),
        "RADFUSION_API_TOKENS": TOKEN,
        "RADFUSION_DICOMWEB_ALLOWED_URLS": pacs.dicomweb,
        "RADFUSION_MAX_BATCH_CASES": "8",
    }
    log_file = tmp_path_factory.mktemp("batch_server") / "serve.log"
    with (
        running_server(tiny_onnx_model, timeout=120, env=env, log_file=log_file) as url,
        httpx.Client(base_url=url, timeout=120, headers=AUTH) as client,
    ):
        yield client, log_file


def genes_of(table, patient_id: str) -> dict[str, float]:
    return {k: float(v) for k, v in row_as_mapping(table, patient_id).items()}


def paths_of(study) -> list[Path]:
    return [h.path for h in study.instances]


def expected(predictor: Predictor, paths, genes) -> dict:
    return predictor.predict([predictor.prepare(paths, genes)])[0]


def assert_same(body: dict, want: dict) -> None:
    assert body["modalities_used"] == want["modalities_used"]
    assert body["imputation"] == want["imputation"]
    assert body.get("study_instance_uid") == want.get("study_instance_uid")
    assert body["probabilities"] == pytest.approx(want["probabilities"], abs=TOL)


def scrape(client: httpx.Client) -> dict[tuple[str, frozenset], float]:
    values: dict[tuple[str, frozenset], float] = defaultdict(float)
    for family in text_string_to_metric_families(client.get("/metrics").text):
        for sample in family.samples:
            labels = {
                k: v for k, v in sample.labels.items() if k not in ("service_name", "runner_name", "worker_index")
            }
            values[(sample.name, frozenset(labels.items()))] += sample.value
    return values


def metric(values, name: str, **labels) -> float:
    return sum(v for (n, ls), v in values.items() if n == name and set(labels.items()) <= set(ls))


def scrape_after(client: httpx.Client, before, wanted: list[tuple[str, float, dict]]) -> dict:
    """Metrics are written by the workers as requests and batches finish, and may lag
    the answer: poll until each (name, increase, labels) is reached, or 10 s."""
    deadline = time.monotonic() + 10
    while True:
        now = scrape(client)
        reached = all(metric(now, n, **ls) - metric(before, n, **ls) >= want for n, want, ls in wanted)
        if reached or time.monotonic() > deadline:
            return now
        time.sleep(0.2)


# ---------------------------------------------------------------------------- DICOMweb


def test_predict_from_a_dicomweb_reference(server, pacs, cohort) -> None:
    client, _ = server
    with_genes, table, predictor = cohort
    study = with_genes[0]
    genes = genes_of(table, study.patient_id)
    ref = {"url": pacs.dicomweb, "study_uid": study.study_uid}
    response = client.post("/predict", json={"dicomweb": ref, "genomics": genes})
    assert response.status_code == 200, response.text
    assert_same(response.json(), expected(predictor, paths_of(study), genes))
    image_only = client.post("/predict", json={"dicomweb": ref})
    assert image_only.status_code == 200, image_only.text
    assert_same(image_only.json(), expected(predictor, paths_of(study), None))


def test_dicomweb_references_are_refused_specifically(server, pacs, cohort) -> None:
    client, _ = server
    with_genes, _, _ = cohort
    uid = with_genes[0].study_uid
    cases = [
        ({"url": pacs.dicomweb, "study_uid": MISSING_UID}, 404, "dicomweb_study_not_found"),
        ({"url": pacs.url + "/dicom-web-other", "study_uid": uid}, 403, "dicomweb_not_allowed"),
        ({"url": "http://127.0.0.1:1/dicom-web", "study_uid": uid}, 403, "dicomweb_not_allowed"),
        ({"url": pacs.dicomweb, "study_uid": "1.2/../x"}, 400, "bad_dicomweb_reference"),
    ]
    for ref, status, kind in cases:
        response = client.post("/predict", json={"dicomweb": ref})
        assert (response.status_code, response.json()["error"]) == (status, kind), response.text
    both = client.post(
        "/predict",
        files={"study": ("s.zip", zip_study(paths_of(with_genes[0])), "application/zip")},
        data={"dicomweb": json.dumps({"url": pacs.dicomweb, "study_uid": uid})},
    )
    assert (both.status_code, both.json()["error"]) == (400, "conflicting_study_inputs")


def test_unreachable_allowed_server_is_502(tiny_onnx_model: Path, cohort, tmp_path: Path) -> None:
    """An allowed base URL whose server is down: the gateway answer, not a crash. (Its
    own BENTOML_HOME: a server starting clears the Prometheus folder of its home.)"""
    with_genes, _, _ = cohort
    down = f"http://127.0.0.1:{free_port()}/dicom-web"
    env = {
        "BENTOML_HOME": str(tmp_path / "home"),
        "RADFUSION_API_TOKENS": TOKEN,
        "RADFUSION_DICOMWEB_ALLOWED_URLS": down,
    }
    with running_server(tiny_onnx_model, timeout=120, env=env) as url:
        response = httpx.post(
            f"{url}/predict",
            json={"dicomweb": {"url": down, "study_uid": with_genes[0].study_uid}},
            headers=AUTH,
            timeout=60,
        )
    assert (response.status_code, response.json()["error"]) == (502, "dicomweb_unavailable"), response.text


# ------------------------------------------------------------------------------- batch


def test_json_batch_one_answer_per_case(server, pacs, cohort) -> None:
    client, _ = server
    with_genes, table, predictor = cohort
    a, b = with_genes[0], with_genes[1]
    genes_a, genes_b = genes_of(table, a.patient_id), genes_of(table, b.patient_id)
    # Genes short of the panel are imputed (test_partial_panel.py); none of it is an error.
    no_panel_gene = {"NOT_A_GENE": 1.0}
    cases = [
        {"study": {"dicomweb": {"url": pacs.dicomweb, "study_uid": a.study_uid}}, "genomics": genes_a},
        {"genomics": genes_b},
        {"study": {"dicomweb": {"url": pacs.dicomweb, "study_uid": MISSING_UID}}, "genomics": genes_a},
        {"genomics": no_panel_gene},
        {"study": {"dicomweb": {"url": pacs.dicomweb, "study_uid": b.study_uid}}, "genomics": genes_b},
        {"study": {"upload": 0}},  # no file uploaded in a JSON request
    ]
    before = scrape(client)
    response = client.post("/predict/batch", json={"cases": cases})
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["cases"], body["ok"], body["failed"]) == (6, 3, 3)
    results = body["results"]
    assert [r["case"] for r in results] == list(range(6))
    assert_same(results[0], expected(predictor, paths_of(a), genes_a))
    assert_same(results[1], expected(predictor, None, genes_b))
    assert_same(results[4], expected(predictor, paths_of(b), genes_b))
    assert (results[2]["error"], results[2]["status"]) == ("dicomweb_study_not_found", 404)
    assert results[3]["error"] == "gene_panel_mismatch" and "TP53" in results[3]["detail"]
    assert (results[5]["error"], results[5]["status"]) == ("bad_case", 400)

    # The three good cases went to the model service in one call: one batch of 3 rows.
    after = scrape_after(
        client,
        before,
        [
            ("radfusion_errors_total", 3, {"route": "predict_batch"}),
            ("radfusion_model_batch_calls_count", 1, {}),
            ("radfusion_model_batch_rows_count", 1, {}),
        ],
    )
    assert (
        metric(after, "radfusion_errors_total", kind="dicomweb_study_not_found", route="predict_batch")
        - metric(before, "radfusion_errors_total", kind="dicomweb_study_not_found", route="predict_batch")
        == 1
    )
    assert (
        metric(after, "radfusion_errors_total", kind="gene_panel_mismatch", route="predict_batch")
        - metric(before, "radfusion_errors_total", kind="gene_panel_mismatch", route="predict_batch")
        == 1
    )
    assert (
        metric(after, "radfusion_batch_request_cases_count") - metric(before, "radfusion_batch_request_cases_count")
        == 1
    )
    assert metric(after, "radfusion_batch_request_cases_sum") - metric(before, "radfusion_batch_request_cases_sum") == 6
    assert metric(after, "radfusion_model_batch_rows_sum") - metric(before, "radfusion_model_batch_rows_sum") == 3
    assert metric(after, "radfusion_model_batch_rows_count") - metric(before, "radfusion_model_batch_rows_count") == 1
    # One call of the model service, not three merged, over its socket, not HTTP.
    assert metric(after, "radfusion_model_batch_calls_sum") - metric(before, "radfusion_model_batch_calls_sum") == 1
    socket_calls = metric(after, "radfusion_model_calls_total", transport="socket")
    assert socket_calls - metric(before, "radfusion_model_calls_total", transport="socket") == 1
    assert metric(after, "radfusion_model_calls_total", transport="http") == 0


def test_multipart_batch_of_zips(server, cohort) -> None:
    client, _ = server
    with_genes, table, predictor = cohort
    a, b = with_genes[0], with_genes[-1]
    genes_a = genes_of(table, a.patient_id)
    files = [
        ("studies", ("a.zip", zip_study(paths_of(a)), "application/zip")),
        ("studies", ("b.zip", zip_study(paths_of(b)), "application/zip")),
        ("studies", ("c.zip", b"PK\x03\x04 not really a zip", "application/zip")),
    ]
    cases = [{"study": {"upload": 0}, "genomics": genes_a}, {"study": {"upload": 1}}, {"study": {"upload": 2}}]
    response = client.post("/predict/batch", files=files, data={"cases": json.dumps(cases)})
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert_same(results[0], expected(predictor, paths_of(a), genes_a))
    assert_same(results[1], expected(predictor, paths_of(b), None))
    assert (results[2]["error"], results[2]["status"]) == ("bad_archive", 400)

    # Without `cases`: each file is one image-only case.
    implied = client.post("/predict/batch", files=files[:2]).json()["results"]
    assert_same(implied[0], expected(predictor, paths_of(a), None))
    assert_same(implied[1], expected(predictor, paths_of(b), None))


def test_batch_request_limits(server) -> None:
    client, _ = server
    too_many = client.post("/predict/batch", json={"cases": [{"genomics": {"TP53": 1.0}}] * 9})
    assert (too_many.status_code, too_many.json()["error"]) == (413, "too_many_cases")
    empty = client.post("/predict/batch", json={"cases": []})
    assert (empty.status_code, empty.json()["error"]) == (422, "no_cases")
    assert (
        client.post(
            "/predict/batch", json={"cases": [{"genomics": {}}]}, headers={"Authorization": "Bearer x"}
        ).status_code
        == 401
    )


# ----------------------------------------------------------------------------- metrics


def test_metrics_count_requests_patterns_and_errors(server, cohort) -> None:
    client, _ = server
    with_genes, table, _ = cohort
    genes = genes_of(table, with_genes[0].patient_id)
    zipped = zip_study(paths_of(with_genes[0]))
    before = scrape(client)
    for _ in range(3):
        genes_only = client.post("/predict", json={"genomics": genes})
        assert genes_only.status_code == 200
    with_study = client.post(
        "/predict", files={"study": ("s.zip", zipped, "application/zip")}, data={"genomics": json.dumps(genes)}
    )
    assert with_study.status_code == 200
    assert client.post("/predict", json={"genomics": {"TP53": 1.0}}).status_code == 422
    assert (
        client.post("/predict", json={"genomics": genes}, headers={"Authorization": "Bearer wrong"}).status_code == 401
    )
    after = scrape_after(
        client,
        before,
        [
            ("bentoml_service_request_total", 5, {"endpoint": "/predict"}),
            ("radfusion_model_call_seconds_count", 4, {"route": "predict"}),
        ],
    )

    def delta(name: str, **labels) -> float:
        return metric(after, name, **labels) - metric(before, name, **labels)

    # The modality pattern is what the answer says was used, e.g. "image+<omics blocks>".
    assert delta("radfusion_predictions_total", modalities="+".join(genes_only.json()["modalities_used"])) == 3
    assert delta("radfusion_predictions_total", modalities="+".join(with_study.json()["modalities_used"])) == 1
    assert "image" in with_study.json()["modalities_used"] and "image" not in genes_only.json()["modalities_used"]
    # One gene of the panel: the omics blocks are past their cap, absent, and nothing is left.
    assert delta("radfusion_errors_total", kind="no_modality", route="predict") == 1
    assert delta("radfusion_errors_total", kind="unauthorized", route="/predict") == 1
    # BentoML's own: requests by endpoint and status, and their latency.
    assert delta("bentoml_service_request_total", endpoint="/predict", http_response_code="200") == 4
    assert delta("bentoml_service_request_total", endpoint="/predict", http_response_code="422") == 1
    assert delta("bentoml_service_request_duration_seconds_count", endpoint="/predict") >= 5
    assert delta("bentoml_service_request_duration_seconds_sum", endpoint="/predict") > 0
    assert delta("radfusion_model_call_seconds_count", route="predict") == 4


# ------------------------------------------------------------------------ auth default


def test_server_without_a_token_does_not_start(tiny_onnx_model: Path, tmp_path: Path) -> None:
    """`bentoml serve` itself (not the launcher, which refuses earlier): the service
    fails its start-up with the reason and never becomes ready."""
    port = free_port()
    env = serve_env(tiny_onnx_model, {"BENTOML_HOME": str(tmp_path / "home")})
    for name in ("RADFUSION_API_TOKENS", "RADFUSION_API_TOKENS_FILE", "RADFUSION_AUTH"):
        env.pop(name, None)
    log_path = tmp_path / "serve.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            serve_command("127.0.0.1", port),
            env=env,
            cwd=PROJECT_ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 90
        while STARTUP_FAILED not in log_path.read_bytes() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.25)
        text = log_path.read_text(errors="replace")
        assert "no API token configured" in text, text[-3000:]
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).raise_for_status()
    finally:
        # SIGTERM first: BentoML starts each worker in its own session, which a kill of the
        # server's process group would not reach; the arbiter stops them on SIGTERM.
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=15)
    home = str(tmp_path / "home")
    deadline = time.monotonic() + 15
    while (left := _processes_with_home(home)) and time.monotonic() < deadline:
        time.sleep(0.25)
    assert not left, f"{len(left)} BentoML process(es) outlived the server"


def _processes_with_home(home: str) -> list[int]:
    """PIDs of live processes started with BENTOML_HOME=home (the server and its workers)."""
    import psutil

    found = []
    for proc in psutil.process_iter(["pid"]):
        try:
            if proc.environ().get("BENTOML_HOME") == home:
                found.append(proc.pid)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found
