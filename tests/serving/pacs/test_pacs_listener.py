"""`radfusion listen` as its own process against dcmtk's echoscu and storescu: allowed
and refused AE titles, instances on disk and in the state as they arrive, a crash
before the quiet period ended, and the restarted listener finishing the study and
storing its SR in Orthanc by STOW-RS."""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from pathlib import Path

import pydicom
import pytest

from radfusion.dicom import find_studies
from radfusion.serving.pacs.storage import study_key
from tests.support.dicom_series import fresh_copy
from tests.support.peers import pacs_status

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not shutil.which("storescu") or not shutil.which("echoscu"), reason="dcmtk is not installed"),
]

ALLOWED = "STORESCU"


def run(command: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="module")
def uncompressed_study(tiny_cohort: Path, tmp_path_factory: pytest.TempPathFactory):
    """A study stored uncompressed (storescu proposes only uncompressed transfer syntaxes),
    copied under new UIDs: other tests send results of the cohort's studies to the same
    Orthanc."""
    for study in sorted(find_studies(tiny_cohort / "dicom").studies.values(), key=lambda s: s.patient_id):
        syntaxes = {
            pydicom.dcmread(h.path, stop_before_pixels=True).file_meta.TransferSyntaxUID for h in study.instances
        }
        if syntaxes <= {pydicom.uid.ExplicitVRLittleEndian, pydicom.uid.ImplicitVRLittleEndian}:
            return fresh_copy(study, tmp_path_factory.mktemp("uncompressed_study"))
    raise AssertionError("the tiny cohort has no uncompressed study")


def test_echoscu_and_refused_ae_titles(start_listener, tiny_onnx_model: Path, tmp_path: Path) -> None:
    listener = start_listener(
        ["--model", str(tiny_onnx_model), "--work", str(tmp_path / "work"), "--allow-aet", ALLOWED]
    )
    port = str(listener.port)
    ok = run(["echoscu", "-aet", ALLOWED, "-aec", "RADFUSION", "127.0.0.1", port])
    assert ok.returncode == 0, ok.stderr
    intruder = run(["echoscu", "-aet", "INTRUDER", "-aec", "RADFUSION", "127.0.0.1", port])
    assert intruder.returncode != 0 and "Association Rejected" in intruder.stderr + intruder.stdout
    wrong_called = run(["echoscu", "-aet", ALLOWED, "-aec", "SOMEONEELSE", "127.0.0.1", port])
    assert wrong_called.returncode != 0 and "Association Rejected" in wrong_called.stderr + wrong_called.stdout
    assert listener.stop() == 0  # SIGTERM: a clean exit


def test_storescu_then_crash_then_restart_sends_sr_by_stow(
    start_listener, orthanc, tiny_onnx_model: Path, uncompressed_study, tmp_path: Path
) -> None:
    from dicomweb_client import DICOMwebClient

    work = tmp_path / "work"
    study = uncompressed_study
    paths = [str(h.path) for h in study.instances]
    common = ["--model", str(tiny_onnx_model), "--work", str(work), "--allow-aet", ALLOWED, "--poll-seconds", "0.2"]

    # 1. A listener with a long quiet period receives the study by storescu ...
    first = start_listener([*common, "--quiet-seconds", "600"])
    stored = run(["storescu", "-aet", ALLOWED, "-aec", "RADFUSION", "127.0.0.1", str(first.port), *paths])
    assert stored.returncode == 0, stored.stderr
    status = pacs_status(work)
    (row,) = status["studies"]
    assert (row["status"], row["instances"]) == ("received", len(paths))
    on_disk = sorted((work / "studies" / study_key(study.study_uid)).glob("*.dcm"))
    assert len(on_disk) == len(paths)  # each instance written as it arrived
    assert {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in on_disk} == {
        h.sop_uid for h in study.instances
    }

    # 2. ... and dies before the study is complete (no chance to clean up).
    assert first.stop(signal.SIGKILL) == -signal.SIGKILL

    # 3. A new listener on the same folder finishes the study and stores the SR by STOW-RS.
    second = start_listener([*common, "--quiet-seconds", "0.5", "--stow-url", orthanc.dicomweb])
    client = DICOMwebClient(orthanc.dicomweb)
    deadline = time.monotonic() + 60
    while not (found := client.search_for_series(study.study_uid, search_filters={"Modality": "SR"})):
        assert time.monotonic() < deadline, f"no SR in Orthanc:\n{second.log()[-2000:]}"
        time.sleep(0.2)
    (series,) = found
    (instance,) = client.search_for_instances(study.study_uid, series["0020000E"]["Value"][0])
    (row,) = pacs_status(work)["studies"]
    assert (row["status"], row["version"], row["attempts"]) == ("sent", 1, 0)
    assert "resumed: {'received': 1," in second.log()
    assert "STOW-RS" in second.log()
    sr = client.retrieve_instance(study.study_uid, series["0020000E"]["Value"][0], instance["00080018"]["Value"][0])
    assert sr.CurrentRequestedProcedureEvidenceSequence[0].StudyInstanceUID == study.study_uid
