"""The PACS round trip against real peers: Orthanc (Debian package) sends studies by
C-STORE to `radfusion listen` (its own process); the listener scores them and stores a
Structured Report back into each study by C-STORE; the SR is found in Orthanc by
QIDO-RS, read back by WADO-RS, checked against radfusion.predictor.Predictor on the
same study, and parsed by dcmtk's dsrdump.

The scenario runs once for the module (``round_trip``); the tests check what it left."""

from __future__ import annotations

import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pytest

from radfusion.dicom import find_studies
from radfusion.genomics import load_genomics_table, row_as_mapping
from radfusion.predictor import Predictor
from tests.support.dicom_series import fresh_copy
from tests.support.peers import pacs_status, wait_until
from tests.support.prediction_sr import read_report

pytestmark = pytest.mark.slow

QUIET_SECONDS = 1.0
TOL = 1e-5


def sr_content(ds: pydicom.Dataset) -> dict:
    """The SR's values, found by code (tests.support.prediction_sr), as plain values."""
    report = read_report(ds)
    ((name, version),) = set(report.algorithms)
    return {
        **report.texts,
        "Algorithm Name": name,
        "Algorithm Version": version,
        "Predicted class": ",".join(report.predicted),
        "probabilities": report.probabilities,
        "modalities": report.modalities,
        "images": report.images,
    }


@dataclass
class Case:
    study_uid: str
    paths: list[Path]
    genes: dict | None
    expected: dict  # Predictor's answer
    series_uid: str  # the series the model scored
    sop_uids: list[str]


@dataclass
class RoundTrip:
    cases: list[Case]
    srs: dict[str, list[pydicom.Dataset]]  # study uid -> SRs found in Orthanc by QIDO
    seconds: float  # C-STORE of the first study to both SRs in Orthanc
    status_after_first: dict
    status_after_resend: dict
    log: str


@pytest.fixture(scope="module")
def round_trip(orthanc, start_listener, tiny_cohort: Path, tiny_onnx_model: Path, tmp_path_factory) -> RoundTrip:
    from dicomweb_client import DICOMwebClient

    predictor = Predictor.load(tiny_onnx_model, device="cpu")
    table = load_genomics_table(tiny_cohort / "genomics.parquet")
    studies = sorted(find_studies(tiny_cohort / "dicom").studies.values(), key=lambda s: s.patient_id)
    # Copies under new UIDs: other tests send results of the cohort's studies to the same Orthanc.
    copies = tmp_path_factory.mktemp("round_trip_studies")
    with_genes = fresh_copy(next(s for s in studies if s.patient_id in table.index), copies / "with")
    without_genes = fresh_copy(next(s for s in studies if s.patient_id not in table.index), copies / "without")
    cases = []
    for study in (with_genes, without_genes):
        paths = [h.path for h in study.instances]
        genes = row_as_mapping(table, study.patient_id)
        prepared = predictor.prepare(paths, genes)
        cases.append(
            Case(
                study.study_uid,
                paths,
                genes,
                predictor.predict([prepared])[0],
                prepared.study.series_uid,
                prepared.study.sop_uids,
            )
        )
        orthanc.upload(paths)

    work = tmp_path_factory.mktemp("listener_work")
    listener = start_listener(
        [
            "--model",
            str(tiny_onnx_model),
            "--work",
            str(work),
            "--allow-aet",
            orthanc.aet,
            "--genomics",
            str(tiny_cohort / "genomics.parquet"),
            "--quiet-seconds",
            str(QUIET_SECONDS),
            "--poll-seconds",
            "0.2",
            "--send-to",
            f"{orthanc.aet}@127.0.0.1:{orthanc.dicom_port}",
        ]
    )
    orthanc.add_modality("radfusion", "RADFUSION", listener.port)
    client = DICOMwebClient(orthanc.dicomweb)

    def sr_series(study_uid: str) -> list[dict]:
        return client.search_for_series(study_uid, search_filters={"Modality": "SR"})

    started = time.monotonic()
    for case in cases:
        orthanc.send_study("radfusion", case.study_uid)
    wait_until(lambda: all(sr_series(c.study_uid) for c in cases), 60, "both SRs in Orthanc (QIDO-RS)")
    seconds = time.monotonic() - started
    wait_until(lambda: pacs_status(work)["counts"]["sent"] == 2, 20, "both studies marked sent")
    status_after_first = pacs_status(work)

    # The PACS sends the first study again: it must not be scored a second time.
    orthanc.send_study("radfusion", cases[0].study_uid)
    time.sleep(QUIET_SECONDS + 1.5)  # past the quiet period and several pipeline ticks
    status_after_resend = pacs_status(work)

    srs = {}
    for case in cases:
        srs[case.study_uid] = [
            client.retrieve_instance(case.study_uid, series["0020000E"]["Value"][0], instance["00080018"]["Value"][0])
            for series in sr_series(case.study_uid)
            for instance in client.search_for_instances(case.study_uid, series["0020000E"]["Value"][0])
        ]
    listener.stop()
    return RoundTrip(cases, srs, seconds, status_after_first, status_after_resend, listener.log())


def test_sr_is_in_orthanc_in_the_right_study(round_trip: RoundTrip) -> None:
    for case in round_trip.cases:
        (sr,) = round_trip.srs[case.study_uid]  # exactly one SR per study
        assert sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.33"  # Comprehensive SR
        assert sr.Modality == "SR" and sr.StudyInstanceUID == case.study_uid
        assert sr.Manufacturer == "radfusion" and sr.CompletionFlag == "COMPLETE"
    assert round_trip.seconds < 30, f"round trip took {round_trip.seconds:.1f} s"


def test_sr_references_the_scored_series_and_instances(round_trip: RoundTrip) -> None:
    for case in round_trip.cases:
        (sr,) = round_trip.srs[case.study_uid]
        (evidence,) = sr.CurrentRequestedProcedureEvidenceSequence
        assert evidence.StudyInstanceUID == case.study_uid
        (series,) = evidence.ReferencedSeriesSequence
        assert series.SeriesInstanceUID == case.series_uid
        assert sorted(i.ReferencedSOPInstanceUID for i in series.ReferencedSOPSequence) == sorted(case.sop_uids)
        assert sorted(sr_content(sr)["images"]) == sorted(case.sop_uids)


def test_sr_holds_the_prediction_as_coded_content(round_trip: RoundTrip) -> None:
    with_genes, without_genes = round_trip.cases
    for case, modalities in ((with_genes, ["RF-IMAGE", "RF-EXPRESSION", "RF-MUTATION"]), (without_genes, ["RF-IMAGE"])):
        (sr,) = round_trip.srs[case.study_uid]
        content = sr_content(sr)
        assert content["Algorithm Name"] == "tiny-fusion"
        assert content["Algorithm Version"] == "0.0.1-test"
        assert content["Predicted class"] == case.expected["predicted_label"]
        assert content["probabilities"] == pytest.approx(case.expected["probabilities"], abs=TOL)
        assert content["modalities"] == modalities
    assert (
        sr_content(round_trip.srs[without_genes.study_uid][0])["Genomics source"] == "patient not in the genomics table"
    )
    assert sr_content(round_trip.srs[with_genes.study_uid][0])["Genomics source"] == "genomics table"
    for case in round_trip.cases:
        content = sr_content(round_trip.srs[case.study_uid][0])
        assert content["Image series selection"].startswith("CT series with 10 slices")
        assert (
            "Clinical source" not in content and "Geometry corrections" not in content
        )  # no clinical block, no repair


def test_dsrdump_parses_the_sr(round_trip: RoundTrip, tmp_path: Path) -> None:
    if not shutil.which("dsrdump"):
        pytest.skip("dcmtk is not installed")
    for case in round_trip.cases:
        path = tmp_path / "sr.dcm"
        round_trip.srs[case.study_uid][0].save_as(path, enforce_file_format=True)
        result = subprocess.run(["dsrdump", str(path)], capture_output=True, text=True, timeout=30)
        assert result.returncode == 0 and not result.stderr.strip(), result.stderr
        assert "Comprehensive SR Document" in result.stdout
        assert '(,,"Algorithm Name")="tiny-fusion"' in result.stdout
        assert result.stdout.count('IMAGE:(,,"Source (attribute)")') == len(case.sop_uids)  # the Image Library


def test_status_and_resend_scored_once(round_trip: RoundTrip) -> None:
    first, again = round_trip.status_after_first, round_trip.status_after_resend
    assert first["counts"] == {"received": 0, "pending": 0, "scored": 0, "sent": 2, "failed": 0}
    assert again["counts"] == first["counts"]
    assert [s["version"] for s in again["studies"]] == [1, 1]
    assert round_trip.log.count(" scored v") == 2  # one scoring per study, none for the re-send
    labels = {s["predicted_label"] for s in first["studies"]}
    assert labels <= {"responder", "non-responder"} and all(s["last_error"] is None for s in first["studies"])


def test_listener_logs_hold_no_identifiers(round_trip: RoundTrip, tiny_cohort: Path) -> None:
    assert "listening as RADFUSION" in round_trip.log and "SR v1 sent" in round_trip.log
    for case in round_trip.cases:
        ds = pydicom.dcmread(case.paths[0], stop_before_pixels=True)
        for value in (case.study_uid, case.series_uid, str(ds.PatientID), str(ds.PatientName).split("^")[0]):
            assert value not in round_trip.log
        for sr in round_trip.srs[case.study_uid]:
            assert sr.SOPInstanceUID not in round_trip.log
