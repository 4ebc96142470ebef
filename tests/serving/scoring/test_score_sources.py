"""Where studies come from: zip archives (alone or inside a folder tree), studies split
across folders, and a real DICOMweb server (Orthanc on loopback). Every source must give
the same rows as scoring the plain folder."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.request
import zipfile
from pathlib import Path

import pandas as pd
import pytest

from radfusion.dicom import find_studies
from radfusion.limits import StudyBudget
from radfusion.serving.patients import PatientData
from radfusion.serving.scoring.prepare import prepare_study
from radfusion.serving.scoring.rows import RETRY_ON_RESUME, TIMING_COLUMNS, error_kind
from radfusion.serving.scoring.score import score_archive
from radfusion.serving.scoring.sources import FileRef, ScanUnit, StudyRef, local_study_files, scan_unit
from radfusion.serving.study_files import BadArchiveError, Budget, UploadTooLargeError
from tests.support.peers import free_loopback_port

TOL = 1e-6
ORTHANC = shutil.which("Orthanc")
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")


def results(path: Path) -> pd.DataFrame:
    return pd.read_parquet(path).drop(columns=list(TIMING_COLUMNS)).set_index("study_instance_uid")


@pytest.fixture(scope="module")
def folder_reference(tiny_cohort: Path, tiny_onnx_model: Path, tmp_path_factory) -> pd.DataFrame:
    out = tmp_path_factory.mktemp("folder_reference") / "scores.parquet"
    score_archive(
        tiny_cohort / "dicom",
        tiny_onnx_model,
        out,
        genomics=tiny_cohort / "genomics.parquet",
        device="cpu",
        progress=False,
        workers=0,
    )
    return results(out)


def zip_folders(folders: list[Path], zip_path: Path, base: Path) -> None:
    with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_DEFLATED) as archive:
        for folder in folders:
            for path in sorted(folder.rglob("*")):
                if path.is_file():
                    archive.write(path, path.relative_to(base))


def test_zip_archives_score_like_the_folder(
    tiny_cohort: Path, tiny_onnx_model: Path, folder_reference, tmp_path: Path
) -> None:
    """A folder holding plain studies, a zip of several studies and a broken zip; and a
    single zip file holding every study."""
    dicom = tiny_cohort / "dicom"
    study_dirs = sorted(
        {h.path.relative_to(dicom).parts[0] for s in find_studies(dicom).studies.values() for h in s.instances}
    )
    assert len(study_dirs) == 10  # one top folder per study in the synthetic layout
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for name in study_dirs[:4]:
        shutil.copytree(dicom / name, mixed / name)
    zip_folders([dicom / n for n in study_dirs[4:]], mixed / "more_studies.zip", dicom)
    (mixed / "broken.zip").write_bytes(b"PK\x03\x04 not really a zip")
    single = tmp_path / "all.zip"
    zip_folders([dicom / n for n in study_dirs], single, dicom)

    common = dict(genomics=tiny_cohort / "genomics.parquet", device="cpu", progress=False, workers=2, batch_size=4)
    summary = score_archive(mixed, tiny_onnx_model, tmp_path / "mixed.parquet", **common)
    assert (summary["studies"], summary["scored"], summary["skipped_files"]) == (10, 10, 1)
    pd.testing.assert_frame_equal(results(tmp_path / "mixed.parquet"), folder_reference, atol=TOL)

    summary = score_archive(single, tiny_onnx_model, tmp_path / "single.parquet", **common)
    assert (summary["studies"], summary["scored"], summary["skipped_files"]) == (10, 10, 0)
    pd.testing.assert_frame_equal(results(tmp_path / "single.parquet"), folder_reference, atol=TOL)


def test_a_study_split_across_folders_is_rescored_whole(
    tiny_cohort: Path, tiny_onnx_model: Path, folder_reference, tmp_path: Path
) -> None:
    """Half the files of one study sit in a folder visited last: the study is released
    with the first half, released again with all its files, and keeps one row."""
    archive = tmp_path / "archive"
    shutil.copytree(tiny_cohort / "dicom", archive)
    studies = find_studies(archive).studies
    split_uid = sorted(studies)[0]
    late = archive / "zz_late_files"
    late.mkdir()
    moved = [h.path for h in studies[split_uid].instances][::2]
    for i, path in enumerate(moved):
        shutil.move(path, late / f"{i:03d}.dcm")

    out = tmp_path / "split.parquet"
    summary = score_archive(
        archive,
        tiny_onnx_model,
        out,
        genomics=tiny_cohort / "genomics.parquet",
        device="cpu",
        progress=False,
        workers=2,
        batch_size=4,
        chunk_size=2,
    )
    assert summary["studies"] == 10 and summary["processed_this_run"] == 11  # the split study twice
    rows = results(out)
    assert rows.loc[split_uid, "n_instances"] == len(studies[split_uid].instances)
    pd.testing.assert_frame_equal(rows, folder_reference, atol=TOL)


# ---- DICOMweb: a real Orthanc on loopback --------------------------------------------


@pytest.fixture(scope="module")
def orthanc(tiny_cohort: Path, tmp_path_factory):
    """Orthanc with the DICOMweb plugin, loaded with the tiny cohort; yields its DICOMweb root."""
    if ORTHANC is None or not DICOMWEB_PLUGIN.exists():
        pytest.skip(
            "Orthanc with the DICOMweb plugin is not installed "
            "(apt-get install orthanc orthanc-dicomweb; .ci/run installs it)"
        )
    work = tmp_path_factory.mktemp("orthanc")
    http_port = free_loopback_port()
    config = {
        "Name": "radfusion-test",
        "HttpPort": http_port,
        "DicomPort": free_loopback_port(),
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "StorageDirectory": str(work / "storage"),
        "IndexDirectory": str(work / "index"),
        "Plugins": [str(DICOMWEB_PLUGIN)],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
    }
    (work / "orthanc.json").write_text(json.dumps(config))
    with open(work / "orthanc.log", "w") as log:
        process = subprocess.Popen([ORTHANC, str(work / "orthanc.json")], stdout=log, stderr=subprocess.STDOUT)
        base = f"http://127.0.0.1:{http_port}"
        try:
            deadline = time.monotonic() + 20
            while True:
                try:
                    urllib.request.urlopen(f"{base}/system", timeout=1).read()
                    break
                except OSError:
                    assert process.poll() is None and time.monotonic() < deadline, (work / "orthanc.log").read_text()[
                        -2000:
                    ]
                    time.sleep(0.1)
            for path in sorted((tiny_cohort / "dicom").rglob("*.dcm")):
                if ".radfusion" not in path.parts:
                    request = urllib.request.Request(f"{base}/instances", data=path.read_bytes(), method="POST")
                    urllib.request.urlopen(request, timeout=10).read()
            yield f"{base}/dicom-web"
        finally:
            process.terminate()
            process.wait(timeout=10)


def test_dicomweb_server_scores_like_the_folder(
    orthanc: str, tiny_cohort: Path, tiny_onnx_model: Path, folder_reference, tmp_path: Path
) -> None:
    out = tmp_path / "dicomweb.parquet"
    summary = score_archive(
        orthanc,
        tiny_onnx_model,
        out,
        genomics=tiny_cohort / "genomics.parquet",
        device="cpu",
        progress=False,
        workers=2,
        batch_size=4,
    )
    assert (summary["studies"], summary["scored"]) == (10, 10)
    pd.testing.assert_frame_equal(results(out), folder_reference, atol=TOL)


def test_a_study_the_server_does_not_have_is_an_error_row_of_the_shared_client(orthanc: str, tiny_contract) -> None:
    """The scorer fetches through radfusion.serving.dicomweb: the same kind as an HTTP caller gets."""
    missing = StudyRef("1.2.826.0.1.3680043.8.498.999999", "P", 3, dicomweb_url=orthanc)
    prepared = prepare_study(tiny_contract, missing, PatientData())
    assert prepared.inputs is None
    assert prepared.row["error"].startswith("dicomweb_study_not_found: ")
    assert error_kind(prepared.row["error"]) not in RETRY_ON_RESUME


def test_an_unreachable_server_is_a_retryable_error_row(tiny_contract) -> None:
    gone = StudyRef(
        "1.2.826.0.1.3680043.8.498.1", "P", 3, dicomweb_url=f"http://127.0.0.1:{free_loopback_port()}/dicom-web"
    )
    prepared = prepare_study(tiny_contract, gone, PatientData())
    assert prepared.inputs is None
    assert error_kind(prepared.row["error"]) == "dicomweb_unavailable" in RETRY_ON_RESUME


# ------------------------------------------------------------- zip members under a budget


def _zipped_study(tiny_cohort: Path, tmp_path: Path) -> StudyRef:
    """The first study of the tiny cohort, zipped, as discovery finds it."""
    study = next(iter(find_studies(tiny_cohort / "dicom").studies.values()))
    archive = tmp_path / "study.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        for i, instance in enumerate(study.instances):
            zf.write(instance.path, f"series/{i:03d}.dcm")
    result = scan_unit(ScanUnit("zip", str(archive)))
    files = tuple(ref for _, _, ref, _ in result.found)
    return StudyRef(study.study_uid, study.patient_id, len(files), files=files)


def test_zip_members_are_streamed_under_the_study_budget(tiny_cohort: Path, tmp_path: Path) -> None:
    study = _zipped_study(tiny_cohort, tmp_path)
    total = sum(zipfile.ZipFile(study.files[0].path).getinfo(f.member).file_size for f in study.files)
    with local_study_files(study, Budget.of(total, len(study.files))) as paths:
        assert len(paths) == len(study.files) and sum(p.stat().st_size for p in paths) == total
        folder = paths[0].parent
    assert not folder.exists()  # the private folder is removed afterwards
    with (
        # Refused from the members' declared sizes, before any is written.
        pytest.raises(UploadTooLargeError, match="zip members declare"),
        local_study_files(study, Budget.of(total - 1, len(study.files))),
    ):
        pass
    with (
        pytest.raises(UploadTooLargeError, match="files"),
        local_study_files(study, Budget.of(total, len(study.files) - 1)),
    ):
        pass


def test_a_study_over_budget_is_its_own_error_row(tiny_cohort: Path, tiny_contract, tmp_path) -> None:
    study = _zipped_study(tiny_cohort, tmp_path)
    prepared = prepare_study(tiny_contract, study, PatientData(), StudyBudget(max_bytes=1000))
    assert prepared.inputs is None and error_kind(prepared.row["error"]) == "upload_too_large"


def test_a_broken_zip_is_skipped_at_discovery_and_a_member_gone_later_is_bad_archive(tmp_path: Path) -> None:
    broken = tmp_path / "broken.zip"
    broken.write_bytes(b"PK\x03\x04 not really a zip")
    result = scan_unit(ScanUnit("zip", str(broken)))
    assert result.found == [] and result.skipped == [result.failed]
    assert result.failed == "bad_archive: not a readable zip archive (BadZipFile)"
    study = StudyRef("1.2.3", "P", 1, files=(FileRef(str(broken), "a.dcm"),))
    with pytest.raises(BadArchiveError), local_study_files(study):
        pass
