"""`radfusion listen --send-saliency` against Orthanc (Debian package): Orthanc sends a
study by C-STORE, the listener scores it and stores both the prediction SR and the
saliency map (a Parametric Map on the scored series) back into the study by C-STORE;
both are found in Orthanc by QIDO-RS, the map read back by WADO-RS is valid per
dciodvfy and sits on the scored series' slices."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest

from radfusion.dicom import find_studies
from radfusion.predictor import Predictor
from tests.support.dicom_series import fresh_copy
from tests.support.peers import pacs_status, wait_until
from tests.support.validators import assert_dciodvfy_valid

pytestmark = pytest.mark.slow

PARAMETRIC_MAP = "1.2.840.10008.5.1.4.1.1.30"

QUIET_SECONDS = 1.0


def test_listener_sends_sr_and_saliency_map(
    orthanc, start_listener, tiny_cohort: Path, tiny_onnx_model: Path, tmp_path: Path
) -> None:
    from dicomweb_client import DICOMwebClient

    # A copy under new UIDs: other tests send results of the cohort's studies to the same Orthanc.
    study = fresh_copy(
        sorted(find_studies(tiny_cohort / "dicom").studies.values(), key=lambda s: s.patient_id)[-1],
        tmp_path / "study",
    )
    paths = [h.path for h in study.instances]
    scored = Predictor.load(tiny_onnx_model, device="cpu").prepare(paths, None).study
    orthanc.upload(paths)
    work = tmp_path / "work"
    listener = start_listener(
        [
            *("--model", str(tiny_onnx_model), "--work", str(work), "--allow-aet", orthanc.aet),
            *("--quiet-seconds", str(QUIET_SECONDS), "--poll-seconds", "0.2"),
            *("--send-to", f"{orthanc.aet}@127.0.0.1:{orthanc.dicom_port}"),
            *("--send-saliency", "--saliency-windows", "27"),
        ]
    )
    orthanc.add_modality("radfusion-saliency", "RADFUSION", listener.port)
    client = DICOMwebClient(orthanc.dicomweb)

    def series_of(modality: str) -> list[dict]:
        return client.search_for_series(study.study_uid, search_filters={"Modality": modality})

    orthanc.send_study("radfusion-saliency", study.study_uid)
    wait_until(lambda: series_of("SR") and series_of("OT"), 60, "the SR and the saliency map in Orthanc (QIDO-RS)")
    wait_until(lambda: pacs_status(work)["counts"]["sent"] == 1, 20, "the study marked sent")
    listener.stop()
    log = listener.log()

    (pm_series,) = series_of("OT")
    pm_series_uid = pm_series["0020000E"]["Value"][0]
    (instance,) = client.search_for_instances(study.study_uid, pm_series_uid)
    pm = client.retrieve_instance(study.study_uid, pm_series_uid, instance["00080018"]["Value"][0])
    assert pm.SOPClassUID == PARAMETRIC_MAP and pm.StudyInstanceUID == study.study_uid
    assert_dciodvfy_valid(pm, tmp_path)

    headers = {h.SOPInstanceUID: h for h in (pydicom.dcmread(p, stop_before_pixels=True) for p in paths)}
    assert int(pm.NumberOfFrames) == len(scored.sop_uids)
    assert pm.ReferencedSeriesSequence[0].SeriesInstanceUID == scored.series_uid
    for frame in pm.PerFrameFunctionalGroupsSequence:
        (source,) = frame.DerivationImageSequence[0].SourceImageSequence
        assert source.ReferencedSOPInstanceUID in scored.sop_uids
        np.testing.assert_allclose(
            frame.PlanePositionSequence[0].ImagePositionPatient,
            headers[source.ReferencedSOPInstanceUID].ImagePositionPatient,
            atol=1e-4,
        )
    assert pm.FrameOfReferenceUID == headers[scored.sop_uids[0]].FrameOfReferenceUID
    assert np.ptp(pm.pixel_array) > 0  # a map, not a blank

    (sr_series,) = series_of("SR")
    assert sr_series["0020000E"]["Value"][0] != pm_series_uid
    assert "SR v1 sent" in log and "saliency map v1 sent" in log
    for identifier in (study.study_uid, scored.series_uid, pm.SOPInstanceUID, str(study.patient_id)):
        assert identifier not in log


def test_a_map_that_cannot_be_written_costs_the_sr_nothing(
    orthanc, start_listener, tiny_cohort: Path, tiny_onnx_model: Path, tmp_path: Path
) -> None:
    """The map's file name is taken by a folder: the map fails, the SR still goes."""
    from dicomweb_client import DICOMwebClient

    from radfusion.serving.pacs.storage import WorkDir, saliency_path

    # A copy under new UIDs: other tests send results of the cohort's studies to the same Orthanc.
    study = fresh_copy(
        sorted(find_studies(tiny_cohort / "dicom").studies.values(), key=lambda s: s.patient_id)[-2],
        tmp_path / "study",
    )
    orthanc.upload([h.path for h in study.instances])
    work = WorkDir(tmp_path / "work")
    saliency_path(work.result_path(study.study_uid, 1)).mkdir()
    listener = start_listener(
        [
            *("--model", str(tiny_onnx_model), "--work", str(work.root), "--allow-aet", orthanc.aet),
            *("--quiet-seconds", str(QUIET_SECONDS), "--poll-seconds", "0.2"),
            *("--send-to", f"{orthanc.aet}@127.0.0.1:{orthanc.dicom_port}"),
            *("--send-saliency", "--saliency-windows", "8"),
        ]
    )
    orthanc.add_modality("radfusion-no-map", "RADFUSION", listener.port)
    client = DICOMwebClient(orthanc.dicomweb)
    orthanc.send_study("radfusion-no-map", study.study_uid)
    wait_until(lambda: pacs_status(work.root)["counts"]["sent"] == 1, 60, "the study marked sent")
    listener.stop()
    log = listener.log()
    assert len(client.search_for_series(study.study_uid, search_filters={"Modality": "SR"})) == 1
    assert not client.search_for_series(study.study_uid, search_filters={"Modality": "OT"})
    assert "saliency map not written (IsADirectoryError)" in log and "SR v1 sent" in log
    assert study.study_uid not in log
