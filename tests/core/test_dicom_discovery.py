"""Discovery over zip archives and DICOMDIR media, and objects without images (SR)
skipped with a reason; series selection by rules with its structured record."""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ComprehensiveSRStorage, ExplicitVRLittleEndian, generate_uid

from radfusion.contract import ImageGeometry
from radfusion.dicom import SelectionRules, find_studies, load_volume, select_series
from radfusion.errors import NoImageSeriesError
from radfusion.study import read_study_image
from tests.support.dicom_series import AXIAL, CORONAL, ground_truth, write_series

TEST_FILES = Path(pydicom.__file__).parent / "data" / "test_files"
GEOMETRY = ImageGeometry(target_shape=(9, 5, 4), target_spacing=(5.0, 2.0, 3.0), window=(-400.0, 0.0), min_slices=4)


def _sr(study_uid: str) -> Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ComprehensiveSRStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = ComprehensiveSRStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "SR"
    ds.PatientID = "TEST0001"
    return ds


def test_a_zipped_study_is_discovered_and_read_without_extracting(tmp_path: Path) -> None:
    study = generate_uid()
    G = ground_truth((9, 5, 4))
    _, series_uid = write_series(tmp_path / "files" / "CT", G, study_uid=study)
    _sr(study).save_as(tmp_path / "files" / "report.dcm", enforce_file_format=True)
    archive = tmp_path / "in" / "study.zip"
    archive.parent.mkdir()
    with zipfile.ZipFile(archive, "w") as z:
        for path in sorted((tmp_path / "files").rglob("*")):
            if path.is_file():
                z.write(path, path.relative_to(tmp_path / "files").as_posix())
        z.writestr("__MACOSX/CT/._junk", b"resource fork")
        z.writestr("inner.zip", b"PK\x05\x06" + bytes(18))
    shutil.rmtree(tmp_path / "files")

    discovery = find_studies(tmp_path / "in")
    assert list(discovery.studies) == [study]
    members = [h.path for h in discovery.studies[study].instances]
    assert len(members) == 9 and all(p.parent == archive / "CT" for p in members)
    assert sorted((p.relative_to(tmp_path / "in").as_posix(), why) for p, why in discovery.skipped) == [
        ("study.zip/inner.zip", "zip archive inside a zip archive is not opened"),
        ("study.zip/report.dcm", "DICOM object without an image: Comprehensive SR Storage (SR)"),
    ]
    assert np.array_equal(load_volume(members).voxels, G.astype(np.float32))
    image = read_study_image(archive, GEOMETRY)
    assert image.series_uid == series_uid and image.image.shape == (1, 9, 5, 4)
    assert image.skipped == [
        "inner.zip: zip archive inside a zip archive is not opened",
        "report.dcm: DICOM object without an image: Comprehensive SR Storage (SR)",
    ]


def test_a_study_of_reports_only_has_no_image_series(tmp_path: Path) -> None:
    _sr(generate_uid()).save_as(tmp_path / "sr.dcm", enforce_file_format=True)
    with pytest.raises(NoImageSeriesError) as info:
        read_study_image(tmp_path, GEOMETRY)
    assert info.value.message == (
        "no image instances: 1 file(s) skipped, e.g. DICOM object without an image: Comprehensive SR Storage (SR)"
    )


def test_dicomdir_media_index_is_used_and_missing_instances_reported(tmp_path: Path) -> None:
    media = tmp_path / "media"
    shutil.copytree(TEST_FILES / "dicomdirtests", media)
    (media / "77654033" / "CT2" / "17136").unlink()
    discovery = find_studies(media / "DICOMDIR")  # the index itself as the root
    skipped = {p.relative_to(media).as_posix(): why for p, why in discovery.skipped}
    assert skipped == {
        "77654033/CT2/17136": "listed in DICOMDIR but missing on the media",
        "DICOMDIR": "DICOMDIR media index (31 instances listed)",
    }
    n = sum(len(s.instances) for s in discovery.studies.values())
    assert n == 30 and len(discovery.studies) == 6
    # walking the folder finds the same instances, once each
    walked = find_studies(media)
    assert sorted(h.path for s in walked.studies.values() for h in s.instances) == sorted(
        h.path for s in discovery.studies.values() for h in s.instances
    )


def test_selection_rules_plane_description_and_thinnest_first(tmp_path: Path) -> None:
    study = generate_uid()
    _, axial_thick = write_series(tmp_path / "a", ground_truth((10, 5, 4)), study_uid=study)
    _, axial_thin = write_series(tmp_path / "b", ground_truth((8, 5, 4)), study_uid=study)
    _, coronal = write_series(tmp_path / "c", ground_truth((6, 5, 4)), CORONAL, study_uid=study)
    for folder, description, thickness, number in (
        ("a", "CHEST 5mm", 5.0, 2),
        ("b", "Chest 1.0 B30f", 1.0, 3),
        ("c", "COR MPR", 3.0, 4),
    ):
        for path in (tmp_path / folder).iterdir():
            ds = pydicom.dcmread(path)
            ds.SeriesDescription, ds.SliceThickness, ds.SeriesNumber = description, thickness, number
            ds.save_as(path, enforce_file_format=True)
    headers = find_studies(tmp_path).studies[study].instances

    choice = select_series(headers, rules=SelectionRules(min_slices=4))
    assert choice.series_uid == axial_thin  # thinnest slices first by default
    assert choice.reason == "CT series with 8 slices, thinnest slices, then most slices of 3 candidates"
    assert select_series(headers, rules=SelectionRules(min_slices=4, description=r"5\s*mm")).series_uid == axial_thick
    by_plane = select_series(headers, rules=SelectionRules(min_slices=4, plane="coronal"))
    assert by_plane.series_uid == coronal
    assert by_plane.rejected == {axial_thick: "plane axial is not coronal", axial_thin: "plane axial is not coronal"}

    record = choice.to_record()
    assert {k: record[k] for k in ("series_uid", "series_description", "n_slices", "slice_thickness", "plane")} == {
        "series_uid": axial_thin,
        "series_description": "Chest 1.0 B30f",
        "n_slices": 8,
        "slice_thickness": 1.0,
        "plane": "axial",
    }
    assert record["rules"] == {
        "modalities": ["CT"],
        "min_slices": 4,
        "plane": None,
        "description": "",
        "prefer": "thinnest",
    }
    assert [(c["series_number"], c["plane"], c["outcome"]) for c in record["candidates"]] == [
        (2, "axial", "candidate, ranked lower"),
        (3, "axial", "chosen"),
        (4, "coronal", "candidate, ranked lower"),
    ]

    with pytest.raises(NoImageSeriesError, match="description does not match 'arterial'"):
        select_series(headers, rules=SelectionRules(min_slices=4, description="arterial"))
    with pytest.raises(ValueError):
        SelectionRules(plane="oblique")


def test_contract_rules_reach_read_study_image(tmp_path: Path) -> None:
    study = generate_uid()
    write_series(tmp_path / "ax", ground_truth((9, 5, 4)), AXIAL, study_uid=study)
    _, coronal = write_series(tmp_path / "cor", ground_truth((9, 5, 4)), CORONAL, study_uid=study)
    geometry = ImageGeometry(**{**GEOMETRY.__dict__, "series_plane": "coronal"})
    image = read_study_image(tmp_path, geometry)
    assert image.series_uid == coronal
    assert image.selection["plane"] == "coronal" and image.selection["rules"]["plane"] == "coronal"
