"""The prediction SR as a TID 1500 Measurement Report, for every task's typed prediction
(radfusion.prediction.Prediction): classification, subtype (a multi-class
classification), multi-label and both survival forms. Each report is written, checked by
dciodvfy and dsrdump, parsed back by highdicom as a Measurement Report, and its values,
found by code (tests.support.prediction_sr), compared with the prediction's numbers."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest

from radfusion.contract import ClinicalSpec
from radfusion.dicom import find_studies
from radfusion.prediction import Prediction
from radfusion.serving.reports import sr_codes as rc
from radfusion.serving.reports.sr import (
    EarlierReport,
    build_failure_sr,
    build_prediction_sr,
    new_uid,
    read_evidence,
    reference_dataset,
)
from tests.support.prediction_sr import measurement_report, read_report
from tests.support.validators import assert_dciodvfy_valid, dsrdump

# DS holds 16 characters: a value keeps at least 13 significant digits.
REL = 1e-9
# Designators of PS3.16 Table 8-1 a document may use without declaring them.
STANDARD_SCHEMES = {"DCM", "SCT", "UCUM", "UMLS", "RFC5646"}
LONG_LABEL = "a label longer than sixteen characters"
# task -> (labels, time bins, model outputs)
TASKS = {
    "classification:response": (["non-responder", "responder"], [], [0.3, 0.7]),
    "classification:subtype": (["S1", "S2", "S3"], [], [0.2, 0.5, 0.3]),
    "multilabel:drugs": (["drug_a", "drug_b", LONG_LABEL], [], [0.9, 0.2, 0.5]),
    "survival:cox": (["risk"], [], [0.8]),
    "survival:discrete": (["t12", "t24", "t36"], [12.0, 24.0, 36.0], [-2.0, -1.0, 0.5]),
}
FACTS = {"modalities_used": ["image", "expression"], "genomics_source": "genomics table"}


@pytest.fixture(scope="module")
def evidence(tiny_cohort: Path) -> list[pydicom.Dataset]:
    study = sorted(find_studies(tiny_cohort / "dicom").studies.values(), key=lambda s: s.patient_id)[0]
    return read_evidence([h.path for h in study.instances][:3])


def _task(tiny_contract, task: str) -> tuple:
    labels, time_bins, outputs = TASKS[task]
    contract = dataclasses.replace(tiny_contract, task=task, labels=labels, time_bins=time_bins)
    return contract, Prediction.from_outputs(contract, np.array(outputs))


def _read(contract, prediction: Prediction, evidence):
    """The report built in memory, read back by code."""
    return read_report(build_prediction_sr(contract, prediction, FACTS, evidence, new_uid(), new_uid(), version=1))


def _written(sr: hd.sr.ComprehensiveSR, tmp_path: Path) -> Path:
    path = tmp_path / f"{sr.SOPInstanceUID}.dcm"
    sr.save_as(path, enforce_file_format=True)
    assert_dciodvfy_valid(path)
    assert "Imaging Measurement Report" in dsrdump(path)
    return path


def _schemes(ds: pydicom.Dataset) -> set[str]:
    """Every CodingSchemeDesignator in the dataset, at any depth."""
    found = set()
    for element in ds.iterall():
        if element.keyword == "CodingSchemeDesignator" and element.value:
            found.add(element.value)
    return found


@pytest.mark.parametrize("task", list(TASKS))
def test_each_task_is_a_measurement_report_found_by_code(tiny_contract, evidence, task: str, tmp_path: Path) -> None:
    contract, prediction = _task(tiny_contract, task)
    sr = build_prediction_sr(contract, prediction, FACTS, evidence, new_uid(), new_uid(), version=1)
    report = read_report(_written(sr, tmp_path))
    assert report.algorithms and set(report.algorithms) == {(contract.name, contract.version)}
    if prediction.is_survival:
        assert report.risk_score == pytest.approx(prediction.risk_score, rel=REL)
        assert report.risk_method == rc.RISK_METHODS[task]
        assert [t for t, _ in report.survival] == [t for t, _ in prediction.survival]
        assert [p for _, p in report.survival] == pytest.approx([p for _, p in prediction.survival], rel=REL)
        assert not report.probabilities and not report.predicted
    else:
        assert report.probabilities == pytest.approx(dict(prediction.probabilities), rel=REL)
        assert report.predicted == list(prediction.predicted)
        assert report.risk_score is None and not report.survival
    assert not report.no_result


def test_discrete_survival_curve_falls_and_cox_has_no_curve(tiny_contract, evidence) -> None:
    for task, points in (("survival:discrete", 3), ("survival:cox", 0)):
        curve = [p for _, p in _read(*_task(tiny_contract, task), evidence).survival]
        assert len(curve) == points and curve == sorted(curve, reverse=True)


def test_predicted_labels_follow_the_task(tiny_contract, evidence) -> None:
    """Multi-label: every label at p >= 0.5 (0.5 included); classification: the arg-max."""
    assert _read(*_task(tiny_contract, "multilabel:drugs"), evidence).predicted == ["drug_a", LONG_LABEL]
    assert _read(*_task(tiny_contract, "classification:subtype"), evidence).predicted == ["S2"]


def test_labels_are_private_codes_and_long_labels_are_hashed(tiny_contract, evidence) -> None:
    contract, prediction = _task(tiny_contract, "multilabel:drugs")
    sr = build_prediction_sr(contract, prediction, FACTS, evidence, new_uid(), new_uid(), 1)
    findings = [g.finding_type for g in measurement_report(sr).get_image_measurement_groups()]
    assert [(f.value, f.scheme_designator, f.meaning) for f in findings] == [
        ("drug_a", rc.SCHEME, "drug_a"),
        ("drug_b", rc.SCHEME, "drug_b"),
        (rc.label_code(LONG_LABEL).value, rc.SCHEME, LONG_LABEL),
    ]
    assert findings[2].value.startswith("L") and len(findings[2].value) == 16


def test_private_scheme_is_declared_and_the_only_non_standard_one(tiny_contract, evidence) -> None:
    contract, prediction = _task(tiny_contract, "survival:discrete")
    sr = build_prediction_sr(contract, prediction, FACTS, evidence, new_uid(), new_uid(), 1)
    (declared,) = sr.CodingSchemeIdentificationSequence
    assert declared.CodingSchemeDesignator == rc.SCHEME
    assert declared.CodingSchemeName and declared.CodingSchemeResponsibleOrganization == "radfusion"
    assert _schemes(sr) - STANDARD_SCHEMES == {rc.SCHEME}
    template = sr.ContentTemplateSequence[0]
    assert (template.MappingResource, template.TemplateIdentifier) == ("DCMR", "1500")
    assert sr.ConceptNameCodeSequence[0].CodeValue == "126000"  # Imaging Measurement Report


def test_report_keeps_inputs_series_choice_and_evidence(tiny_contract, evidence, tmp_path: Path) -> None:
    contract = dataclasses.replace(tiny_contract, clinical=ClinicalSpec(numeric={"age": [60.0, 10.0]}))
    prediction = Prediction.from_outputs(contract, np.array([0.4, 0.6]))
    facts = {
        "modalities_used": ["image", "expression", "clinical", "proteomics"],
        "genomics_source": "patient not in the genomics table",
        "clinical_source": "clinical table",
        "series_reason": "CT series with 3 slices",
        "geometry_corrections": ["gap filled", "tilt corrected"],
        "completeness": "2 of 5 instances missing",
        "instances_received": "3 instances",
    }
    earlier = EarlierReport(evidence[0].StudyInstanceUID, "1.2.3.4", "1.2.3.5", version=1, instances=7)
    sr = build_prediction_sr(contract, prediction, facts, evidence, new_uid(), new_uid(), 2, predecessor=earlier)
    report = read_report(_written(sr, tmp_path))
    assert report.modalities == ["RF-IMAGE", "RF-EXPRESSION", "RF-CLINICAL", "RF-PROTEOMICS"]
    assert report.texts == {
        "Genomics source": "patient not in the genomics table",
        "Clinical source": "clinical table",
        "Image series selection": "CT series with 3 slices",
        "Geometry corrections": "gap filled; tilt corrected",
        "Study completeness": "2 of 5 instances missing",
        "Replaces earlier report": "replaces report version 1, based on 7 instances; this one on 3 instances",
    }
    uids = [ds.SOPInstanceUID for ds in evidence]
    assert report.images == uids
    (study,) = sr.CurrentRequestedProcedureEvidenceSequence
    assert [i.ReferencedSOPInstanceUID for s in study.ReferencedSeriesSequence for i in s.ReferencedSOPSequence] == uids
    (predecessor,) = sr.PredecessorDocumentsSequence
    assert predecessor.ReferencedSeriesSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID == "1.2.3.5"
    assert sr.CompletionFlag == "PARTIAL" and sr.InstanceNumber == 2
    assert sr.StudyInstanceUID == evidence[0].StudyInstanceUID and sr.PatientID == evidence[0].PatientID


def test_failure_report_is_a_valid_measurement_report_without_result(tiny_contract, evidence, tmp_path: Path) -> None:
    received = [
        reference_dataset(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID, ds.SOPClassUID)
        for ds in evidence
    ]
    earlier = EarlierReport(evidence[0].StudyInstanceUID, "1.2.3.4", "1.2.3.5", version=1, instances=None)
    sr = build_failure_sr(
        tiny_contract, "corrupt_dicom", "file 2 is truncated", received, new_uid(), new_uid(), 2, earlier, evidence[0]
    )
    report = read_report(_written(sr, tmp_path))
    assert report.no_result and report.algorithms == [(tiny_contract.name, tiny_contract.version)]
    assert not report.probabilities and report.risk_score is None and not report.survival and not report.images
    assert report.texts == {
        "No result": "file 2 is truncated",
        "Error kind": "corrupt_dicom",
        "Earlier report": "report version 1, based on the instances received then, was issued before the study "
        "changed; it does not reflect the study as received now",
    }
    assert _schemes(sr) - STANDARD_SCHEMES == {rc.SCHEME} and sr.CodingSchemeIdentificationSequence
    assert "PredecessorDocumentsSequence" not in sr and sr.CompletionFlag == "COMPLETE"
