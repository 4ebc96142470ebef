"""The BentoML service end to end: a real `bentoml serve` on a loopback port with the
tiny ONNX model, started once for the module. Answers are checked against
radfusion.predictor.Predictor on the same study, and every kind of bad input must get
its own 4xx reason while the server keeps serving."""

from __future__ import annotations

import concurrent.futures
import io
import json
import re
import socket
import time
import zipfile
from pathlib import Path

import httpx
import numpy as np
import pydicom
import pytest

from radfusion.dicom import find_studies
from radfusion.genomics import load_genomics_table, row_as_mapping
from radfusion.predictor import Predictor
from radfusion.serving.http.launch import running_server
from tests.support.study_zip import zip_study

pytestmark = pytest.mark.slow

UPLOAD_LIMIT = 2 * 1024 * 1024  # small, so the 413 path is cheap to test
TOL = 1e-5
TOKEN = "test-token-serving"  # auth itself is tested in test_service_security.py
AUTH = {"Authorization": f"Bearer {TOKEN}"}


# ---------------------------------------------------------------- fixtures and helpers


@pytest.fixture(scope="module")
def server(tiny_onnx_model: Path, bentoml_home: Path, tmp_path_factory: pytest.TempPathFactory):
    log_file = tmp_path_factory.mktemp("server") / "serve.log"
    env = {
        "BENTOML_HOME": str(bentoml_home),
        "RADFUSION_MAX_UPLOAD_BYTES": str(UPLOAD_LIMIT),
        "RADFUSION_API_TOKENS": TOKEN,
    }
    with (
        running_server(tiny_onnx_model, timeout=120, env=env, log_file=log_file) as url,
        httpx.Client(base_url=url, timeout=60, headers=AUTH) as client,
    ):
        yield client, log_file


@pytest.fixture(scope="module")
def cohort(tiny_cohort: Path):
    """Studies by patient, the genomics table and the predictor to compare against."""
    discovery = find_studies(tiny_cohort / "dicom")
    table = load_genomics_table(tiny_cohort / "genomics.parquet")
    studies = {s.patient_id: s for s in discovery.studies.values()}
    with_genomics = sorted(p for p in studies if p in table.index)
    assert with_genomics and len(with_genomics) < len(studies), "the tiny cohort needs both kinds of patient"
    return studies, table, with_genomics


@pytest.fixture(scope="module")
def predictor(tiny_onnx_model: Path) -> Predictor:
    return Predictor.load(tiny_onnx_model, device="cpu")


def study_paths(study) -> list[Path]:
    return [h.path for h in study.instances]


def post_study(client: httpx.Client, payload: bytes, genomics: dict | None = None) -> httpx.Response:
    data = {"genomics": json.dumps(genomics)} if genomics is not None else None
    return client.post("/predict", files={"study": ("study.zip", payload, "application/zip")}, data=data)


def genes_of(table, patient_id: str) -> dict[str, float]:
    return {k: float(v) for k, v in row_as_mapping(table, patient_id).items()}


def assert_matches_predictor(body: dict, expected: dict) -> None:
    assert body["modalities_used"] == expected["modalities_used"]
    assert body["imputation"] == expected["imputation"]
    assert body["predicted_label"] == expected["predicted_label"]
    assert body.get("study_instance_uid") == expected.get("study_instance_uid")
    assert body.get("series_instance_uid") == expected.get("series_instance_uid")
    assert body["probabilities"].keys() == expected["probabilities"].keys()
    for label, p in expected["probabilities"].items():
        assert body["probabilities"][label] == pytest.approx(p, abs=TOL)


def error_of(response: httpx.Response, status: int, kind: str) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"] == kind, body
    return body["detail"]


def rewritten(paths: list[Path], out: Path, **changes) -> list[Path]:
    """Copies of ``paths`` with header attributes changed (per-file callables allowed)."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for i, path in enumerate(paths):
        ds = pydicom.dcmread(path)
        for name, value in changes.items():
            setattr(ds, name, value(i, ds) if callable(value) else value)
        target = out / f"{i:03d}.dcm"
        ds.save_as(target)
        written.append(target)
    return written


# ------------------------------------------------------------------------- happy paths


def test_ready_and_contract(server, tiny_contract) -> None:
    client, _ = server
    assert client.get("/readyz").status_code == 200
    got = client.get("/contract")
    posted = client.post("/contract")
    assert got.status_code == posted.status_code == 200
    assert got.json() == posted.json() == json.loads(tiny_contract.to_json())
    body = got.json()
    assert [b["name"] for b in body["omics"]] == ["expression", "mutation"]
    assert [len(b["features"]) for b in body["omics"]] == [100, 5]  # 100 genes + 5 mutation flags
    assert body["labels"] == ["non-responder", "responder"]
    assert body["image"]["target_shape"] == [8, 16, 16]


def test_zip_with_genomics_matches_predictor(server, cohort, predictor) -> None:
    client, _ = server
    studies, table, with_genomics = cohort
    patient = with_genomics[0]
    genes = genes_of(table, patient)
    response = post_study(client, zip_study(study_paths(studies[patient])), genes)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["modalities_used"] == ["image", "expression", "mutation"]
    assert sum(body["probabilities"].values()) == pytest.approx(1.0, abs=TOL)
    assert body["model"] == {"name": "tiny-fusion", "version": "0.0.1-test"}
    assert body["study_instance_uid"] == studies[patient].study_uid
    expected = predictor.predict([predictor.prepare(study_paths(studies[patient]), genes)])[0]
    assert_matches_predictor(body, expected)


def test_zip_without_genomics_is_image_only(server, cohort, predictor) -> None:
    client, _ = server
    studies, _, with_genomics = cohort
    patient = with_genomics[0]
    response = post_study(client, zip_study(study_paths(studies[patient])))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["modalities_used"] == ["image"]
    assert sum(body["probabilities"].values()) == pytest.approx(1.0, abs=TOL)
    expected = predictor.predict([predictor.prepare(study_paths(studies[patient]), None)])[0]
    assert_matches_predictor(body, expected)


def test_dicom_files_as_multipart_equal_the_zip(server, cohort) -> None:
    client, _ = server
    studies, table, with_genomics = cohort
    patient = with_genomics[-1]
    paths = study_paths(studies[patient])
    genes = genes_of(table, patient)
    as_zip = post_study(client, zip_study(paths), genes).json()
    files = [("study", (p.name, p.read_bytes(), "application/dicom")) for p in paths]
    as_files = client.post("/predict", files=files, data={"genomics": json.dumps(genes)})
    assert as_files.status_code == 200, as_files.text
    assert as_files.json() == as_zip


def test_genomics_only_json(server, cohort, predictor) -> None:
    client, _ = server
    _, table, with_genomics = cohort
    genes = genes_of(table, with_genomics[1])
    response = client.post("/predict", json={"genomics": genes})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["modalities_used"] == ["expression", "mutation"]
    assert "study_instance_uid" not in body
    expected = predictor.predict([predictor.prepare(None, genes)])[0]
    assert_matches_predictor(body, expected)


def test_concurrent_requests_batch_and_agree(server, cohort, predictor) -> None:
    """Concurrent requests share the model service's runs; each still gets its own answer."""
    client, _ = server
    studies, table, _ = cohort
    patients = sorted(studies)
    payloads = {p: zip_study(study_paths(studies[p])) for p in patients}
    genes = {p: genes_of(table, p) if p in table.index else None for p in patients}

    def call(patient: str) -> dict:
        response = post_study(client, payloads[patient], genes[patient])
        assert response.status_code == 200, response.text
        return response.json()

    with concurrent.futures.ThreadPoolExecutor(max_workers=len(patients)) as pool:
        answers = dict(zip(patients, pool.map(call, patients), strict=True))
    expected = predictor.predict([predictor.prepare(study_paths(studies[p]), genes[p]) for p in patients])
    for patient, want in zip(patients, expected, strict=True):
        assert_matches_predictor(answers[patient], want)
    # Untrained but not constant: different patients get different numbers.
    assert len({round(a["probabilities"]["responder"], 6) for a in answers.values()}) > 1


def test_burst_is_batched_and_never_fails(server, cohort, predictor) -> None:
    """150 concurrent calls: past BentoML's 100-call client session refresh (which drops
    in-flight connections, retried by the service), and batched by the model service."""
    client, _ = server
    _, table, with_genomics = cohort
    genes = genes_of(table, with_genomics[0])
    expected = predictor.predict([predictor.prepare(None, genes)])[0]

    def metric_batches() -> tuple[float, float]:
        lines = client.get("/metrics").text.splitlines()
        values = {}
        for suffix in ("_sum", "_count"):
            prefix = f"radfusion_model_batch_calls{suffix} "
            values[suffix] = sum(float(line.rsplit(" ", 1)[1]) for line in lines if line.startswith(prefix))
        return values["_sum"], values["_count"]

    items_before, batches_before = metric_batches()
    with (
        httpx.Client(
            base_url=str(client.base_url), timeout=60, headers=AUTH, limits=httpx.Limits(max_connections=32)
        ) as burst,
        concurrent.futures.ThreadPoolExecutor(max_workers=24) as pool,
    ):
        responses = list(pool.map(lambda _: burst.post("/predict", json={"genomics": genes}), range(150)))
    assert [r.status_code for r in responses] == [200] * 150
    for response in responses:
        assert_matches_predictor(response.json(), expected)
    items, batches = metric_batches()
    # The metric may lag by a scrape; the burst's 150 items are counted by the end.
    assert items - items_before >= 150
    assert batches - batches_before < items - items_before  # calls shared batches


# -------------------------------------------------------------------------- bad input


def test_missing_genes_are_imputed_and_counted(server, cohort, predictor) -> None:
    """Genes short of the panel take their training values and the answer counts them
    (tests/serving/http/test_partial_panel.py: the cap beyond which a block is absent);
    a profile with none of the panel's genes is refused, naming some."""
    client, _ = server
    studies, table, with_genomics = cohort
    patient = with_genomics[0]
    genes = genes_of(table, patient)
    del genes["EGFR"], genes["KRAS_mut"]
    paths = study_paths(studies[patient])
    response = post_study(client, zip_study(paths), genes)
    assert response.status_code == 200, response.text
    assert response.json()["imputation"]["blocks"] == {
        "expression": {"imputed": 1, "of": 100, "treated_as_absent": False},
        "mutation": {"imputed": 1, "of": 5, "treated_as_absent": False},
    }
    assert_matches_predictor(response.json(), predictor.predict([predictor.prepare(paths, genes)])[0])
    detail = error_of(client.post("/predict", json={"genomics": {"NOT_A_GENE": 1.0}}), 422, "gene_panel_mismatch")
    assert "none of the model's 105 omics features given" in detail and "TP53" in detail


def test_non_numeric_gene_value_is_named(server, cohort) -> None:
    client, _ = server
    _, table, with_genomics = cohort
    genes = genes_of(table, with_genomics[0])
    genes["TP53"] = "high"
    detail = error_of(client.post("/predict", json={"genomics": genes}), 422, "invalid_value")
    assert "TP53" in detail and "not finite numbers" in detail


def test_corrupt_zip(server, cohort) -> None:
    client, _ = server
    studies, _, _ = cohort
    payload = zip_study(study_paths(next(iter(studies.values()))))
    detail = error_of(post_study(client, payload[: len(payload) // 2]), 400, "bad_archive")
    assert "zip" in detail


def test_garbage_dicom(server) -> None:
    client, _ = server
    garbage = np.random.default_rng(0).bytes(4096)
    response = client.post("/predict", files={"study": ("slice.dcm", garbage, "application/dicom")})
    assert "no readable DICOM" in error_of(response, 400, "corrupt_dicom")
    # Garbage inside a zip is the same reason.
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        zf.writestr("a.dcm", garbage)
        zf.writestr("b.dcm", b"not dicom either")
    error_of(post_study(client, buffer.getvalue()), 400, "corrupt_dicom")


@pytest.mark.parametrize("as_zip", [True, False], ids=["zip", "files"])
def test_truncated_pixel_data(server, cohort, tmp_path: Path, as_zip: bool) -> None:
    """Files named after the patient, as some exports do: the name must not reach the
    logs either (checked in test_logs_hold_no_patient_identifiers)."""
    client, _ = server
    studies, _, _ = cohort
    for study in studies.values():  # one RLE study (reader warnings) and one plain
        paths = rewritten(study_paths(study), tmp_path / study.patient_id)
        axial = [p for p, h in zip(paths, study.instances, strict=True) if "AXIAL" in h.image_type]
        data = axial[2].read_bytes()
        axial[2].write_bytes(data[: len(data) - 700])
        names = [f"{study.patient_id}_{i:03d}.dcm" for i in range(len(paths))]
        if as_zip:
            response = post_study(client, zip_study(paths, names))
        else:
            files = [("study", (n, p.read_bytes(), "application/dicom")) for n, p in zip(names, paths, strict=True)]
            response = client.post("/predict", files=files)
        # The reader names the file by its place in the study, never by its name.
        detail = error_of(response, 400, "corrupt_dicom")
        assert re.match(r"(file \d+ of \d+: )?(pixel data cannot be decoded|instance has no pixel data)", detail)


def test_text_in_the_file_field_is_never_fetched(server) -> None:
    """BentoML would download a URL given as a multipart text value; the service takes
    the text as the file's content instead, and the URL's host never hears from it."""
    client, _ = server
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        listener.settimeout(0.5)
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/study.zip"
        response = client.post("/predict", data={"study": url})
        error_of(response, 400, "corrupt_dicom")
        with pytest.raises(TimeoutError):
            listener.accept()


def test_path_traversal_zip_is_refused(server, cohort) -> None:
    client, _ = server
    studies, _, _ = cohort
    paths = study_paths(next(iter(studies.values())))
    names = [f"ok/{i}.dcm" for i in range(len(paths))]
    names[0] = "../../../../tmp/radfusion-escape.dcm"
    detail = error_of(post_study(client, zip_study(paths, names)), 400, "unsafe_archive")
    assert ".." in detail
    assert not Path("/tmp/radfusion-escape.dcm").exists()


def test_wrong_modality(server, cohort, tmp_path: Path) -> None:
    client, _ = server
    studies, _, _ = cohort
    paths = rewritten(study_paths(next(iter(studies.values()))), tmp_path, Modality="MR")
    detail = error_of(post_study(client, zip_study(paths)), 422, "wrong_modality")
    assert "MR" in detail


def test_no_image_series(server, cohort) -> None:
    """Only the one-slice localizer: nothing the model can use."""
    client, _ = server
    studies, _, _ = cohort
    study = next(iter(studies.values()))
    localizer = [h.path for h in study.instances if "LOCALIZER" in h.image_type]
    assert len(localizer) == 1
    error_of(post_study(client, zip_study(localizer)), 422, "no_image_series")


def test_geometry_rejected(server, cohort, tmp_path: Path) -> None:
    """One axial slice tilted: mixed orientations in a series must not become a volume."""
    client, _ = server
    studies, _, _ = cohort
    study = next(iter(studies.values()))
    axial = [h.path for h in study.instances if "AXIAL" in h.image_type]
    tilted = [1.0, 0.0, 0.0, 0.0, 0.9659258, -0.2588190]
    paths = rewritten(
        axial, tmp_path, ImageOrientationPatient=lambda i, ds: tilted if i == 4 else ds.ImageOrientationPatient
    )
    detail = error_of(post_study(client, zip_study(paths)), 422, "geometry_rejected")
    assert "orientation" in detail


def test_neither_modality(server) -> None:
    client, _ = server
    error_of(client.post("/predict", json={}), 422, "no_modality")
    error_of(client.post("/predict", json={"genomics": None}), 422, "no_modality")


def test_malformed_genomics_field(server) -> None:
    """The field and what it should be, never the value sent."""
    client, _ = server
    response = client.post("/predict", json={"genomics": [1, 2, 3]})
    assert error_of(response, 400, "invalid_request") == "genomics: Input should be an object"
    form = client.post("/predict", data={"genomics": "[1, 2, 3]"})
    assert error_of(form, 400, "invalid_request") == "genomics: Input should be a valid dictionary"


def test_upload_over_the_limit(server) -> None:
    client, _ = server
    big = b"\0" * (UPLOAD_LIMIT + 1024)
    detail = error_of(post_study(client, big), 413, "upload_too_large")
    assert str(UPLOAD_LIMIT) in detail

    def chunks():  # no Content-Length: counted as it streams
        for _ in range(4):
            yield b"\0" * (UPLOAD_LIMIT // 2)

    response = client.post("/predict", content=chunks(), headers={"content-type": "application/json"})
    error_of(response, 413, "upload_too_large")


# ------------------------------------------------------------- still serving, privacy


def test_still_serving_after_bad_requests(server, cohort, predictor) -> None:
    client, _ = server
    studies, table, with_genomics = cohort
    patient = with_genomics[0]
    genes = genes_of(table, patient)
    assert client.get("/readyz").status_code == 200
    response = post_study(client, zip_study(study_paths(studies[patient])), genes)
    assert response.status_code == 200, response.text
    expected = predictor.predict([predictor.prepare(study_paths(studies[patient]), genes)])[0]
    assert_matches_predictor(response.json(), expected)


def test_logs_hold_no_patient_identifiers(server, cohort) -> None:
    """Runs last: the log then holds every request of this module."""
    client, log_file = server
    studies, _, with_genomics = cohort
    patient = with_genomics[0]
    paths = study_paths(studies[patient])
    assert post_study(client, zip_study(paths, [f"{patient}_{i}.dcm" for i in range(len(paths))])).status_code == 200
    assert client.post("/predict", json={"genomics": {"TP53": 1.0}}).status_code == 422
    time.sleep(0.5)  # let the server flush its log lines
    text = log_file.read_text(errors="replace")
    assert "predict ok" in text and "predict rejected: no_modality" in text  # our lines are there
    assert "status=500" not in text
    for patient_id, study in studies.items():
        assert patient_id not in text
        assert study.study_uid not in text
        ds = pydicom.dcmread(study.instances[0].path, stop_before_pixels=True)
        name = str(ds.get("PatientName", "")).strip()
        if name:
            assert name not in text and name.split("^")[0] not in text
