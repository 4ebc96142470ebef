"""STOW-RS as PS3.18 says, against a real `radfusion serve` on loopback (started once for
the module), with the standard's own clients: dicomweb-client stores and retrieves,
Orthanc's DICOMweb plugin forwards a study to radfusion, and the prediction SR reaches
Orthanc (RADFUSION_RESULT_STOW_URL points at it), with the saliency Parametric Map
beside it (RADFUSION_RESULT_SALIENCY). Every SR and map retrieved is checked by dciodvfy."""

from __future__ import annotations

import io
import time
import uuid
from pathlib import Path

import httpx
import pydicom
import pytest
import requests
from dicomweb_client.api import DICOMwebClient

from radfusion.dicom import find_studies
from radfusion.genomics import load_genomics_table, row_as_mapping
from radfusion.predictor import Predictor
from radfusion.serving.http.launch import running_server
from radfusion.serving.http.store_response import CANNOT_UNDERSTAND, PROCESSING_FAILURE, STUDY_MISMATCH
from tests.support.peers import wait_until
from tests.support.prediction_sr import read_report
from tests.support.validators import assert_dciodvfy_valid

pytestmark = pytest.mark.slow

TOKEN = "stow-conformance-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
PARAMETRIC_MAP = "1.2.840.10008.5.1.4.1.1.30"
SR_CLASSES = {"1.2.840.10008.5.1.4.1.1.88.33", "1.2.840.10008.5.1.4.1.1.88.22", "1.2.840.10008.5.1.4.1.1.88.34"}
TOL = 1e-4


@pytest.fixture(scope="module")
def cohort(tiny_cohort: Path, tiny_onnx_model: Path):
    studies = sorted(find_studies(tiny_cohort / "dicom").studies.values(), key=lambda s: s.patient_id)
    table = load_genomics_table(tiny_cohort / "genomics.parquet")
    return studies, table, Predictor.load(tiny_onnx_model, device="cpu")


@pytest.fixture(scope="module")
def server(tiny_onnx_model: Path, tiny_cohort: Path, bentoml_home: Path, orthanc, tmp_path_factory):
    folder = tmp_path_factory.mktemp("stow_server")
    env = {
        "BENTOML_HOME": str(bentoml_home),
        "RADFUSION_API_TOKENS": TOKEN,
        "RADFUSION_GENOMICS_TABLE": str(tiny_cohort / "genomics.parquet"),
        "RADFUSION_RESULT_DIR": str(folder / "results"),
        "RADFUSION_RESULT_STOW_URL": orthanc.dicomweb,
        "RADFUSION_RESULT_SALIENCY": "on",
        "RADFUSION_EXPLAIN_MAX_WINDOWS": "64",
    }
    with running_server(tiny_onnx_model, timeout=120, env=env, log_file=folder / "serve.log") as url:
        yield url, folder / "serve.log"


def client_of(url: str) -> DICOMwebClient:
    return DICOMwebClient(url=f"{url}/dicom-web", headers=AUTH)


def datasets_of(study) -> list[pydicom.Dataset]:
    return [pydicom.dcmread(h.path) for h in study.instances]


def renamed(datasets: list[pydicom.Dataset], **changes) -> list[pydicom.Dataset]:
    """The study under a new StudyInstanceUID (so that each test owns its results)."""
    study_uid = pydicom.uid.generate_uid()
    for ds in datasets:
        ds.StudyInstanceUID = study_uid
        for name, value in changes.items():
            setattr(ds, name, value)
    return datasets


def stow_body(parts: list[bytes]) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    chunks = []
    for data in parts:
        chunks += [f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode(), data, b"\r\n"]
    chunks.append(f"--{boundary}--\r\n".encode())
    return b"".join(chunks), f'multipart/related; type="application/dicom"; boundary={boundary}'


def encoded(ds: pydicom.Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def referenced(response: pydicom.Dataset, keyword: str) -> dict[str, int | None]:
    return {item.ReferencedSOPInstanceUID: item.get("FailureReason") for item in response.get(keyword, [])}


def expected_probabilities(cohort, datasets: list[pydicom.Dataset], tmp_path: Path) -> dict[str, float]:
    _, table, predictor = cohort
    paths = []
    for i, ds in enumerate(datasets):
        paths.append(tmp_path / f"{i}.dcm")
        ds.save_as(paths[-1], enforce_file_format=True)
    genes = row_as_mapping(table, str(datasets[0].PatientID))
    genes = {k: float(v) for k, v in genes.items()} if genes is not None else None
    return predictor.predict([predictor.prepare(paths, genes)])[0]["probabilities"]


# --------------------------------------------------------------------- dicomweb-client


def test_dicomweb_client_stores_a_study_and_retrieves_its_prediction_sr(server, cohort, orthanc, tmp_path) -> None:
    url, _ = server
    studies, table, _ = cohort
    study = next(s for s in studies if s.patient_id in table.index)
    datasets = renamed(datasets_of(study))
    study_uid = datasets[0].StudyInstanceUID
    client = client_of(url)

    response = client.store_instances(datasets)

    assert set(referenced(response, "ReferencedSOPSequence")) == {ds.SOPInstanceUID for ds in datasets}
    assert "FailedSOPSequence" not in response and "OtherFailuresSequence" not in response
    assert response.RetrieveURL == f"{url}/dicom-web/studies/{study_uid}"

    results = client.retrieve_study(study_uid)
    (sr,) = [ds for ds in results if ds.Modality == "SR"]
    assert sr.SOPClassUID in SR_CLASSES and sr.StudyInstanceUID == study_uid
    assert sr.PatientID == study.patient_id
    evidence = {
        item.ReferencedSOPInstanceUID
        for study_item in sr.CurrentRequestedProcedureEvidenceSequence
        for series in study_item.ReferencedSeriesSequence
        for item in series.ReferencedSOPSequence
    }
    assert evidence and evidence <= {ds.SOPInstanceUID for ds in datasets}
    # The study's prediction: the probabilities the same model gives the same study.
    found = read_report(sr).probabilities
    expected = expected_probabilities(cohort, datasets, tmp_path)
    assert found.keys() == expected.keys()
    for label, p in expected.items():
        assert abs(found[label] - p) < TOL, (label, p, found)
    same = client.retrieve_instance(study_uid, sr.SeriesInstanceUID, sr.SOPInstanceUID)
    assert same.SOPInstanceUID == sr.SOPInstanceUID
    assert_dciodvfy_valid(sr, tmp_path)

    # Where the model looked: a Parametric Map on the scored series' slices.
    (pm,) = [ds for ds in results if ds.Modality != "SR"]
    assert pm.SOPClassUID == PARAMETRIC_MAP and pm.StudyInstanceUID == study_uid
    sources = {
        source.ReferencedSOPInstanceUID
        for frame in pm.PerFrameFunctionalGroupsSequence
        for derivation in frame.DerivationImageSequence
        for source in derivation.SourceImageSequence
    }
    assert sources == evidence and pm.NumberOfFrames == len(evidence)
    assert pm.FrameOfReferenceUID == datasets[0].FrameOfReferenceUID
    assert_dciodvfy_valid(pm, tmp_path)

    # RADFUSION_RESULT_STOW_URL: the SR and the map reach Orthanc too (delivered in the
    # background, after the answer).
    for result in (sr, pm):
        found = wait_until(
            lambda uid=result.SOPInstanceUID: orthanc.http.post("/tools/lookup", content=uid).json(), 60, "the result"
        )
        assert [item["Type"] for item in found] == ["Instance"]


def test_a_study_that_cannot_be_scored_fails_its_own_instances_only(server, cohort, tmp_path) -> None:
    url, log_file = server
    studies, _, _ = cohort
    good = renamed(datasets_of(studies[0]))
    bad = renamed(datasets_of(studies[1]), PixelSpacing=[2000.0, 2000.0])  # a 64-metre volume: geometry_rejected
    body, content_type = stow_body([encoded(ds) for ds in good + bad])

    answer = httpx.post(f"{url}/dicom-web/studies", content=body, headers={**AUTH, "content-type": content_type})

    assert answer.status_code == 202, answer.text
    assert answer.headers["content-type"] == "application/dicom+json"
    response = pydicom.Dataset.from_json(answer.json())
    assert set(referenced(response, "ReferencedSOPSequence")) == {ds.SOPInstanceUID for ds in good}
    assert referenced(response, "FailedSOPSequence") == {ds.SOPInstanceUID: PROCESSING_FAILURE for ds in bad}
    warning = answer.headers["warning"]
    assert (
        warning.startswith('299 radfusion "study 2 of 2 not scored: geometry_rejected:') and "PixelSpacing" in warning
    )
    assert bad[0].StudyInstanceUID not in warning and bad[0].PatientID not in warning

    # The failed study's result is the report why, and nothing else: no prediction in it.
    (report,) = client_of(url).retrieve_study(bad[0].StudyInstanceUID)
    failure = read_report(report)
    assert failure.no_result and failure.probabilities == {} and failure.risk_score is None
    assert failure.texts["Error kind"] == "geometry_rejected"
    assert_dciodvfy_valid(report, tmp_path)
    (prediction,) = [ds for ds in client_of(url).retrieve_study(good[0].StudyInstanceUID) if ds.Modality == "SR"]
    assert read_report(prediction).probabilities

    text = log_file.read_text(errors="replace")
    assert "stow: study 2 of 2 not scored: geometry_rejected" in text
    assert bad[0].StudyInstanceUID not in text and bad[0].PatientID not in text


def test_nothing_stored_is_409(server, cohort) -> None:
    url, _ = server
    studies, _, _ = cohort
    garbage, content_type = stow_body([b"not dicom at all", b"DICM but nothing else"])
    answer = httpx.post(f"{url}/dicom-web/studies", content=garbage, headers={**AUTH, "content-type": content_type})
    assert answer.status_code == 409, answer.text
    response = pydicom.Dataset.from_json(answer.json())
    assert "ReferencedSOPSequence" not in response and not response.RetrieveURL
    assert [item.FailureReason for item in response.OtherFailuresSequence] == [CANNOT_UNDERSTAND] * 2
    assert answer.headers["warning"].count("corrupt_dicom") == 2

    # Instances of another study than the request URL names (PS3.18 10.5.1).
    datasets = renamed(datasets_of(studies[2]))
    other = pydicom.uid.generate_uid()
    with pytest.raises(requests.HTTPError) as refused:
        client_of(url).store_instances(datasets, study_instance_uid=other)
    assert refused.value.response.status_code == 409
    response = pydicom.Dataset.from_json(refused.value.response.json())
    assert referenced(response, "FailedSOPSequence") == {ds.SOPInstanceUID: STUDY_MISMATCH for ds in datasets}
    # A study that was never taken has no result.
    missing = httpx.get(f"{url}/dicom-web/studies/{datasets[0].StudyInstanceUID}", headers=AUTH)
    assert (missing.status_code, missing.json()["error"]) == (404, "result_not_found")


def test_accept_that_excludes_dicom_json_is_406(server, cohort) -> None:
    url, _ = server
    studies, _, _ = cohort
    body, content_type = stow_body([encoded(ds) for ds in renamed(datasets_of(studies[3]))])
    for accept in ("application/dicom+xml", "application/dicom+json; q=0, application/xml"):
        answer = httpx.post(
            f"{url}/dicom-web/studies", content=body, headers={**AUTH, "content-type": content_type, "accept": accept}
        )
        assert (answer.status_code, answer.json()["error"]) == (406, "not_acceptable"), accept
    for accept in ("application/dicom+json", "application/json", "*/*"):
        answer = httpx.post(
            f"{url}/dicom-web/studies", content=body, headers={**AUTH, "content-type": content_type, "accept": accept}
        )
        assert answer.status_code == 200, (accept, answer.text)
    study_url = pydicom.Dataset.from_json(answer.json()).RetrieveURL
    jpeg = 'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.4.50'
    assert httpx.get(study_url, headers={**AUTH, "accept": jpeg}).status_code == 406
    assert httpx.get(study_url, headers={**AUTH, "accept": "multipart/related; type=application/dicom"}).is_success


# --------------------------------------------------------------------------- Orthanc


def test_orthanc_forwards_a_study_to_radfusion_and_gets_the_sr_back(server, cohort, orthanc, tmp_path) -> None:
    url, _ = server
    studies, _, _ = cohort
    datasets = renamed(datasets_of(studies[4]))
    study_uid = datasets[0].StudyInstanceUID
    for ds in datasets:
        orthanc.http.post("/instances", content=encoded(ds)).raise_for_status()
    study_id = orthanc.study_id(study_uid)
    orthanc.http.put(
        "/dicom-web/servers/radfusion", json={"Url": f"{url}/dicom-web/", "HttpHeaders": {"X-API-Key": TOKEN}}
    ).raise_for_status()

    answer = orthanc.http.post("/dicom-web/servers/radfusion/stow", json={"Resources": [study_id]})

    # Orthanc's DICOMweb plugin fails the call (older plugins) or its job (newer ones)
    # when the STOW-RS answer does not parse or does not name every instance it sent.
    assert answer.status_code == 200, answer.text
    if "ID" in answer.json():
        deadline = time.monotonic() + 120
        while (state := orthanc.http.get(f"/jobs/{answer.json()['ID']}").json())["State"] not in ("Success", "Failure"):
            assert time.monotonic() < deadline, state
            time.sleep(0.5)
        assert state["State"] == "Success", state
    else:
        assert int(answer.json()["InstancesCount"]) == len(datasets)
    assert "Unable to parse STOW-RS" not in orthanc.log_file.read_text(errors="replace")

    # The SR is in the study on Orthanc, beside the instances Orthanc sent.
    def results_arrived() -> list:
        found = orthanc.http.get(f"/studies/{study_id}/instances").json()
        return found if len(found) >= len(datasets) + 2 else []

    instances = wait_until(results_arrived, 60, "the SR and the map in Orthanc")
    modality = {i["ID"]: orthanc.http.get(f"/instances/{i['ID']}/tags?simplify").json()["Modality"] for i in instances}
    assert len(instances) == len(datasets) + 2  # the SR and the saliency map
    (sr_id,) = [instance for instance, value in modality.items() if value == "SR"]
    sr = pydicom.dcmread(io.BytesIO(orthanc.http.get(f"/instances/{sr_id}/file").content))
    assert sr.StudyInstanceUID == study_uid and read_report(sr).probabilities
    assert_dciodvfy_valid(sr, tmp_path)


def test_studies_fetched_by_dicomweb_are_written_valid_and_unchanged(cohort, orthanc, tmp_path) -> None:
    """The copies fetch_study writes (what /predict's DICOMweb references and the scorer
    read) pass dciodvfy and hold the datasets the PACS holds."""
    from radfusion.serving.dicomweb import DicomwebPolicy, DicomwebRef, fetch_study

    studies, _, _ = cohort
    datasets = renamed(datasets_of(studies[5]))
    for ds in datasets:
        orthanc.http.post("/instances", content=encoded(ds)).raise_for_status()
    ref = DicomwebRef(url=orthanc.dicomweb, study_uid=datasets[0].StudyInstanceUID)

    written = fetch_study(ref, DicomwebPolicy.trusted(timeout_s=60), tmp_path / "fetched")

    originals = {ds.SOPInstanceUID: ds for ds in datasets}
    assert len(written) == len(datasets)
    for path in written:
        copy = pydicom.dcmread(path)
        assert copy == originals[copy.SOPInstanceUID]
        assert_dciodvfy_valid(path)


def cut(ds: pydicom.Dataset) -> bytes:
    """The instance as sent, cut in the middle of its pixel data."""
    data = encoded(ds)
    return data[: len(data) - len(ds.PixelData) // 2]


def test_an_instance_cut_short_fails_alone_and_never_feeds_a_score(server, cohort) -> None:
    """The damaged instance gets its own Failure Reason (0xC000). In a series the model does
    not read (the localizer) the study is scored without it (202); in the scored series the
    study is refused, never scored from the slices that remain (409)."""
    url, _ = server
    studies, _, _ = cohort
    for study, in_scored_series in ((studies[6], False), (studies[7], True)):
        datasets = renamed(datasets_of(study))
        by_series: dict[str, list[pydicom.Dataset]] = {}
        for ds in datasets:
            by_series.setdefault(ds.SeriesInstanceUID, []).append(ds)
        scored = max(by_series.values(), key=len)
        localizer = min(by_series.values(), key=len)
        assert len(localizer) < len(scored)
        victim = (scored if in_scored_series else localizer)[0]
        parts = [cut(ds) if ds is victim else encoded(ds) for ds in datasets]
        body, content_type = stow_body(parts)

        answer = httpx.post(f"{url}/dicom-web/studies", content=body, headers={**AUTH, "content-type": content_type})

        response = pydicom.Dataset.from_json(answer.json())
        failed = referenced(response, "FailedSOPSequence")
        assert failed[victim.SOPInstanceUID] == CANNOT_UNDERSTAND
        assert victim.SOPInstanceUID not in referenced(response, "ReferencedSOPSequence")
        assert "cut short" in answer.headers["warning"]
        if in_scored_series:
            assert answer.status_code == 409, answer.text
            assert len(failed) == len(datasets) and "corrupt_dicom" in answer.headers["warning"]
        else:
            assert answer.status_code == 202, answer.text
            assert set(referenced(response, "ReferencedSOPSequence")) == {
                ds.SOPInstanceUID for ds in datasets if ds is not victim
            }
            results = client_of(url).retrieve_study(datasets[0].StudyInstanceUID)
            assert read_report(next(r for r in results if r.Modality == "SR")).probabilities
