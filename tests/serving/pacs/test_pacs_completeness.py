"""What the listener reads from headers it cannot trust: the hints each instance gives
about its series and the completeness judged from them (serving/pacs/completeness.py),
and the patient/study attributes an SR may carry (serving/reports/demographics.py)."""

from __future__ import annotations

import pytest
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.tag import Tag

from radfusion.serving.pacs.completeness import ReceivedInstance, assess, hints_of
from radfusion.serving.reports.demographics import patient_and_study


def axial(k: int, **extra) -> dict:
    """Hints of slice k of an axial stack with 5 mm steps, numbered from 1."""
    return {"number": k + 1, "orientation": "1.00,0.00,0.00,0.00,1.00,0.00", "position": 5.0 * k, **extra}


def study(*series: list[dict], on_disk: bool = True) -> list[ReceivedInstance]:
    return [ReceivedInstance(f"s{i}", h, on_disk) for i, group in enumerate(series) for h in group]


def test_hints_from_a_header() -> None:
    ds = Dataset()
    ds.SeriesNumber, ds.InstanceNumber, ds.AcquisitionNumber, ds.ImagesInAcquisition = 3, 7, 1, 25
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.ImagePositionPatient = [-10.0, 20.0, 35.5]
    assert hints_of(ds) == {
        "series_number": 3,
        "number": 7,
        "acquisition": 1,
        "images_in_acquisition": 25,
        "orientation": "1.00,0.00,0.00,0.00,1.00,0.00",
        "position": 35.5,
    }


def raw(ds: Dataset, keyword: str, vr: str, value: bytes) -> None:
    """An element as it came off the wire, decoded only when read (as the SCP sees it)."""
    tag = Tag(keyword)
    ds[tag] = RawDataElement(tag, vr, len(value), value, 0, True, True)


def test_hints_of_damaged_headers_are_left_out() -> None:
    ds = Dataset()
    raw(ds, "InstanceNumber", "IS", b"abc ")
    raw(ds, "ImagesInAcquisition", "IS", b"-4")
    raw(ds, "NumberOfTemporalPositions", "IS", b"999999999 ")
    raw(ds, "AcquisitionNumber", "IS", b"1\\2")
    raw(ds, "SeriesNumber", "IS", b"\xff\xfe")
    ds.ImageOrientationPatient = [0, 0, 0, 0, 0, 0]  # no normal
    raw(ds, "ImagePositionPatient", "DS", b"1.0\\nan\\3")
    nested = Dataset()
    for _ in range(50):
        outer = Dataset()
        outer.ReferencedImageSequence = Sequence([nested])
        nested = outer
    ds.ReferencedImageSequence = Sequence([nested])
    assert hints_of(ds) == {}


def test_a_whole_stack_is_complete() -> None:
    found = assess(study([axial(k, images_in_acquisition=10, acquisition=1) for k in range(10)]))
    assert found.complete and (found.received, found.missing_declared, found.missing_files) == (10, 0, 0)
    assert found.note() == "complete"


def test_first_half_of_a_declared_acquisition_is_incomplete() -> None:
    """The outage case: slices 1-12 of 25, numbered and spaced without a hole; only
    ImagesInAcquisition tells."""
    found = assess(study([axial(k, images_in_acquisition=25, acquisition=1, series_number=2) for k in range(12)]))
    assert (found.complete, found.missing_declared) == (False, 13)
    assert found.reasons == ("series 2: 12 received, ImagesInAcquisition 25",)


def test_an_acquisition_split_over_two_series_counts_both() -> None:
    """A scanner that counts ImagesInAcquisition over every reconstruction of it."""
    soft = [axial(k, images_in_acquisition=20, acquisition=1) for k in range(10)]
    lung = [axial(k, images_in_acquisition=20, acquisition=1) for k in range(10)]
    assert assess(study(soft, lung)).complete


@pytest.mark.parametrize(
    "received, missing, why",
    [
        ([k for k in range(10) if k != 6], 1, "instance numbers 1-10 with 1 missing"),
        (list(range(13, 25)), 13, "instance numbers 1-25 with 13 missing"),
    ],
)
def test_holes_in_numbers_and_positions(received: list[int], missing: int, why: str) -> None:
    found = assess(study([axial(k) for k in received]))
    assert found.missing_declared == missing
    assert found.reasons[0].endswith(why)


def test_position_gap_without_numbers() -> None:
    hints = [{k: v for k, v in axial(k).items() if k != "number"} for k in (0, 1, 2, 5, 6)]
    found = assess(study(hints))
    assert found.missing_declared == 2 and "slice positions with 2 gap(s)" in found.reasons[0]


def test_sparse_numbering_and_irregular_spacing_are_not_losses() -> None:
    by_hundreds = [{"number": 100 * (k + 1)} for k in range(5)]
    irregular = [{"orientation": "1.00,0.00,0.00,0.00,1.00,0.00", "position": p} for p in (0, 1, 2, 3, 50, 120, 400)]
    numbered_per_acquisition = [{"number": k % 5 + 1, "acquisition": k // 5} for k in range(10)]
    assert assess(study(by_hundreds, numbered_per_acquisition)).complete
    assert assess(study(irregular)).complete


def test_temporal_positions_and_slices() -> None:
    dynamic = [{"temporal_positions": 3, "temporal_position": t} for t in (1, 1, 3, 3)]
    found = assess(study(dynamic))
    assert found.missing_declared == 2 and "temporal positions 2 of 3" in found.reasons[0]
    pet = [{"slices": 8, "time_slices": 2} for _ in range(10)]
    assert assess(study(pet)).missing_declared == 6


def test_files_gone_from_disk_are_counted_apart() -> None:
    found = assess(study([axial(k) for k in range(4)], on_disk=False))
    assert (found.complete, found.missing_declared, found.missing_files) == (False, 0, 4)
    assert found.note() == "4 of 4 received instance(s) are no longer on disk"


# ------------------------------------------------------------------ demographics


def header(**values) -> Dataset:
    ds = Dataset()
    for keyword, value in values.items():
        setattr(ds, keyword, value)
    return ds


def test_odd_demographics_are_normalised_or_left_empty() -> None:
    out = patient_and_study(
        header(
            PatientName="Doe^" + "J" * 90 + "^Middle",
            PatientSex="U",
            PatientBirthDate="1960-06-17",
            PatientAge="45",
            PatientWeight="-3",
            StudyDate="2024.02.30",  # no 30 February
            StudyTime="14:05:09",
            StudyDescription="CT\x07 CHEST\\ABDOMEN",
            ReferringPhysicianName="Who^Ever\x1b[31m",
        )
    )
    assert len(str(out.PatientName)) == 64 and str(out.PatientName).startswith("Doe^JJJ")
    assert str(out.PatientName).endswith("^Middle")
    assert (out.PatientSex, out.PatientBirthDate, out.PatientAge) == ("", "19600617", "045Y")
    assert "PatientWeight" not in out
    assert (out.StudyDate, out.StudyTime) == ("", "140509")
    assert out.StudyDescription == "CT CHEST"  # control character dropped, first of two values
    assert str(out.ReferringPhysicianName) == "Who^Ever[31m"
    assert "SpecificCharacterSet" not in out  # all ASCII


def test_valid_values_and_identifiers_are_kept_verbatim() -> None:
    long_id = "ID-" + "9" * 70  # over-long, but the PACS files the study under it
    out = patient_and_study(
        header(
            PatientName="Müller^Jörg",
            PatientID=long_id,
            AccessionNumber="ACC 1",
            StudyInstanceUID="1.2.3.4",
            PatientSex="female",
            PatientBirthDate="19600617",
            StudyTime="101010.123",
        )
    )
    assert str(out.PatientName) == "Müller^Jörg" and out.SpecificCharacterSet == "ISO_IR 192"
    assert (out.PatientID, out.AccessionNumber, out.StudyInstanceUID) == (long_id, "ACC 1", "1.2.3.4")
    assert (out.PatientSex, out.PatientBirthDate, out.StudyTime) == ("F", "19600617", "101010.123")
    assert out.StudyID == "" and out.ReferringPhysicianName == ""  # type 2: present, empty


def test_no_header_gives_empty_type2_attributes() -> None:
    out = patient_and_study(None)
    assert {e.keyword for e in out} == {
        "PatientName",
        "PatientID",
        "PatientBirthDate",
        "PatientSex",
        "StudyDate",
        "StudyTime",
        "ReferringPhysicianName",
        "StudyID",
        "AccessionNumber",
    }
    assert all(e.value in ("", None) for e in out)
