"""The fuzz corpus through a real `bentoml serve` on loopback (one server for the
module): every item uploaded to /predict, the JSON-representable ones again in
/predict/batch requests, then malformed requests (multipart without or with a wrong
boundary, 1,100 file fields, a 20 MB form field, JSON nested 100,000 deep, invalid
UTF-8). Issue 14's promises for the service: no 5xx, no null or NaN probability in a
200 answer, every 4xx with a specific ``error`` kind (the item's, where certain), at
most 1% unprocessable, a good request still answered correctly at the end, and no
planted name, PatientID or corpus UID in the server's log."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from radfusion.predictor import Predictor
from radfusion.serving.http.launch import running_server
from tests.fuzz.harness import (
    MAX_UNPROCESSABLE_SHARE,
    MIB,
    Outcome,
    assert_kept,
    batch_outcomes,
    leaks,
    malformed_outcomes,
    predict_outcomes,
    unprocessable_share,
)
from tests.support.mutations import BATCH, PREDICT, Corpus

pytestmark = pytest.mark.slow

TOKEN = "fuzz-token"
TOL = 1e-5


@pytest.fixture(scope="module")
def server(fuzz_model: Path, bentoml_home: Path, tmp_path_factory: pytest.TempPathFactory):
    log_file = tmp_path_factory.mktemp("fuzz_server") / "serve.log"
    env = {
        "BENTOML_HOME": str(bentoml_home),
        "RADFUSION_API_TOKENS": TOKEN,
        "RADFUSION_MAX_UPLOAD_BYTES": str(64 * MIB),
        "RADFUSION_MAX_STUDY_BYTES": str(32 * MIB),
        "RADFUSION_MAX_STUDY_FILES": "256",
    }
    with (
        running_server(fuzz_model, timeout=120, env=env, log_file=log_file) as url,
        httpx.Client(base_url=url, timeout=120, headers={"Authorization": f"Bearer {TOKEN}"}) as client,
    ):
        yield client, log_file


@pytest.fixture(scope="module")
def uploads(server, fuzz_corpus: Corpus) -> dict[str, list[Outcome]]:
    client, _ = server
    batchable = [item for item in fuzz_corpus.on(BATCH) if item.json_safe()]
    return {
        PREDICT: predict_outcomes(client, fuzz_corpus.on(PREDICT)),
        BATCH: batch_outcomes(client, batchable),
    }


@pytest.fixture(scope="module")
def malformed(server, uploads, fuzz_corpus: Corpus) -> list[Outcome]:
    client, _ = server
    return malformed_outcomes(client, next(item for item in fuzz_corpus.items if item.mutation == "good").upload())


def test_every_upload_keeps_its_promise(uploads) -> None:
    assert len(uploads[PREDICT]) >= 70
    assert_kept(uploads[PREDICT])


def test_every_batch_case_keeps_its_promise(uploads) -> None:
    assert len(uploads[BATCH]) >= 60
    assert_kept(uploads[BATCH])


def test_malformed_requests_get_a_specific_4xx(malformed: list[Outcome]) -> None:
    assert_kept(malformed)
    assert all(o.result == "error" for o in malformed), [(o.mutation, o.detail) for o in malformed]


def test_no_5xx_and_at_most_one_percent_unprocessable(uploads, malformed: list[Outcome]) -> None:
    everything = uploads[PREDICT] + uploads[BATCH] + malformed
    server_errors = [(o.id, o.mutation, o.path, o.detail) for o in everything if o.result == "5xx"]
    assert not server_errors
    unprocessable, answered = unprocessable_share(everything)
    assert unprocessable <= MAX_UNPROCESSABLE_SHARE * answered, [
        (o.id, o.mutation, o.detail) for o in everything if o.kind == "unprocessable_study"
    ]


def test_a_good_request_is_still_answered_correctly(
    server, uploads, malformed, fuzz_corpus: Corpus, fuzz_model: Path
) -> None:
    client, _ = server
    item = next(i for i in fuzz_corpus.items if i.mutation == "good" and i.genomics and i.clinical)
    assert client.get("/readyz").status_code == 200
    name, data = item.upload()
    response = client.post("/predict", files={"study": (name, data, "application/zip")}, data=item.form_fields())
    assert response.status_code == 200, response.text
    body = response.json()
    predictor = Predictor.load(fuzz_model, device="cpu")
    expected = predictor.predict([predictor.prepare(item.files(), item.genomics, item.clinical)])[0]
    assert body["modalities_used"] == expected["modalities_used"]
    assert {"image", "expression", "clinical"} <= set(body["modalities_used"])
    assert body["probabilities"] == pytest.approx(expected["probabilities"], abs=TOL)


def test_logs_hold_no_identifier(server, uploads, malformed, fuzz_corpus: Corpus) -> None:
    _, log_file = server
    time.sleep(0.5)  # the workers flush their last lines
    found = leaks(log_file.read_text(errors="replace"), fuzz_corpus, roots=[fuzz_corpus.root])
    assert not found, "\n".join(found[:20])


def test_no_upload_member_is_written_outside_its_folder(uploads, fuzz_corpus: Corpus) -> None:
    escaped = [str(p) for item in fuzz_corpus.on(PREDICT) for p in item.escapes if p.exists()]
    assert not escaped
