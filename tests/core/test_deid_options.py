"""Each PS3.15 E.3 option changes what it should, and only that, and is recorded in
Deidentification Method Code Sequence (CID 7050) and the method text."""

from __future__ import annotations

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from radfusion.deid.actions import DUMMY_TEXT, PatientContext, deidentify_dataset
from radfusion.deid.clean import REMOVED_MARK
from radfusion.deid.dates import DateShift
from radfusion.deid.keys import DeidKey
from radfusion.deid.options import Dates, DeidOptions

KEY = DeidKey.from_text("radfusion-test-key-options-0123")
SHIPPED = "CT_small.dcm"


def _source() -> Dataset:
    ds = pydicom.dcmread(pydicom.data.get_testdata_file(SHIPPED))
    ds.PatientName = "Doe^Janet"
    ds.PatientID = "MRN4471"
    ds.AccessionNumber = "ACC99812"
    ds.StudyDate, ds.StudyTime = "20200315", "101500"
    ds.PatientSex, ds.PatientAge, ds.PatientWeight = "F", "054Y", "61.5"
    ds.SeriesDescription = "CT chest Doe 20200315 MRN4471 call 0612345678 arterial"
    ds.DeviceSerialNumber = "SN-778812"
    ds.InstitutionName = "St Elsewhere"
    item = Dataset()
    item.ValueType, item.RelationshipType = "TEXT", "CONTAINS"
    item.ConceptNameCodeSequence = Sequence([_code("121071", "DCM", "Finding")])
    item.TextValue = "Janet Doe has a 3 cm nodule"
    ds.AcquisitionContextSequence = Sequence([item])
    return ds


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    c = Dataset()
    c.CodeValue, c.CodingSchemeDesignator, c.CodeMeaning = value, scheme, meaning
    return c


def _deid(options: DeidOptions) -> Dataset:
    ds = _source()
    deidentify_dataset(ds, PatientContext(KEY, "DEIDX", DateShift.for_patient(KEY, "MRN4471"), options))
    return ds


def _differences(a: Dataset, b: Dataset) -> set[str]:
    keys = {e.keyword for e in a} | {e.keyword for e in b}
    return {k for k in keys if a.get(k) != b.get(k)}


BASE = DeidOptions()
RECORD = {"DeidentificationMethod", "DeidentificationMethodCodeSequence", "LongitudinalTemporalInformationModified"}


@pytest.mark.parametrize(
    "options, code, changed",
    [
        (
            DeidOptions(dates=Dates.FULL),
            "113106",
            {
                "StudyDate",
                "StudyTime",
                "InstanceCreationDate",
                "InstanceCreationTime",
                "ContentDate",
                "ContentTime",
                "AcquisitionDate",
                "AcquisitionTime",
                "SeriesDate",
                "SeriesTime",
                "TimezoneOffsetFromUTC",
            },
        ),
        (DeidOptions(patient_characteristics=True), "113108", {"PatientSex", "PatientAge", "PatientWeight"}),
        (
            DeidOptions(clean_descriptors=True),
            "113105",
            {
                "SeriesDescription",
                "StudyDescription",
                "ImageComments",
                "AdditionalPatientHistory",
                "ContrastBolusAgent",
            },
        ),
        (DeidOptions(clean_structured_content=True), "113104", {"AcquisitionContextSequence"}),
        (DeidOptions(device_identity=True), "113109", {"DeviceSerialNumber", "StationName"}),
        (DeidOptions(institution_identity=True), "113112", {"InstitutionName", "InstitutionAddress"}),
    ],
)
def test_each_option_changes_its_attributes_and_is_recorded(options, code, changed):
    base, with_option = _deid(BASE), _deid(options)
    diff = _differences(base, with_option) - RECORD
    assert diff and diff <= changed, diff
    codes = [i.CodeValue for i in with_option.DeidentificationMethodCodeSequence]
    assert codes[0] == "113100" and code in codes and code in with_option.DeidentificationMethod
    assert code not in [i.CodeValue for i in base.DeidentificationMethodCodeSequence]


def test_dates_choice_moves_keeps_or_removes():
    modified, full, removed = (_deid(DeidOptions(dates=d)) for d in Dates)
    assert full.StudyDate == "20200315" and full.LongitudinalTemporalInformationModified == "UNMODIFIED"
    assert modified.StudyDate not in ("", "20200315") and modified.LongitudinalTemporalInformationModified == "MODIFIED"
    assert removed.StudyDate == "" and removed.LongitudinalTemporalInformationModified == "REMOVED"
    assert removed.ContentDate == "19000101"  # Z/D: a dummy; no date survives
    assert [i.CodeValue for i in removed.DeidentificationMethodCodeSequence] == ["113100"]


def test_patient_characteristics_kept_only_with_the_option():
    base, kept = _deid(BASE), _deid(DeidOptions(patient_characteristics=True))
    assert (kept.PatientSex, kept.PatientAge, kept.PatientWeight) == ("F", "054Y", 61.5)
    assert base.PatientSex == "" and "PatientAge" not in base and "PatientWeight" not in base


def test_clean_descriptors_keeps_the_text_without_what_identifies():
    base, cleaned = _deid(BASE), _deid(DeidOptions(clean_descriptors=True))
    assert "SeriesDescription" not in base
    text = cleaned.SeriesDescription
    assert text.startswith("CT chest") and text.endswith("arterial")
    for secret in ("Doe", "20200315", "MRN4471", "0612345678"):
        assert secret not in text
    assert text.count(REMOVED_MARK) == 4


def test_structured_content_dummied_by_default_and_cleaned_with_the_option():
    base, cleaned = _deid(BASE), _deid(DeidOptions(clean_structured_content=True))
    # X/Z on a sequence with items: kept (a Type 3 sequence holds 1-n), its text dummied.
    (dummied,) = base.AcquisitionContextSequence
    assert (dummied.ValueType, dummied.RelationshipType, dummied.TextValue) == ("TEXT", "CONTAINS", "DEIDENTIFIED")
    assert dummied.ConceptNameCodeSequence[0].CodeValue == "121071"
    item = cleaned.AcquisitionContextSequence[0]
    assert (item.ValueType, item.RelationshipType) == ("TEXT", "CONTAINS")
    assert item.ConceptNameCodeSequence[0].CodeValue == "121071"
    assert item.TextValue == f"{REMOVED_MARK} {REMOVED_MARK} has a 3 cm nodule"


def test_content_sequence_text_is_a_dummy_without_the_option():
    ds = _source()
    ds.ContentSequence = ds.AcquisitionContextSequence
    deidentify_dataset(ds, PatientContext(KEY, "DEIDX", DateShift.for_patient(KEY, "x"), BASE))
    item = ds.ContentSequence[0]
    assert item.TextValue == DUMMY_TEXT and item.ValueType == "TEXT"
    assert item.ConceptNameCodeSequence[0].CodeMeaning == "Finding"
