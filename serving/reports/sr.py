"""The prediction report as a DICOM Comprehensive SR document (highdicom), placed in the
source study. Its content is a TID 1500 Measurement Report
(radfusion.serving.reports.measurement_report); the private codes it uses are declared
in CodingSchemeIdentificationSequence.

The scored series' instances are the report's evidence: listed in its Image Library and
in CurrentRequestedProcedureEvidenceSequence. A re-scored study gets the next version: a
new instance in the same SR series whose PredecessorDocumentsSequence names the last
version sent, and whose report says which version it replaces. A study that cannot be
scored gets a failure report instead (``build_failure_sr``), in the same SR series.

Patient and study attributes come from one source header through
radfusion.serving.reports.demographics (valid, normalised or left empty; identifiers
verbatim), never copied raw."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import highdicom as hd
import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import ComprehensiveSRStorage

from radfusion.contract import ModelContract
from radfusion.prediction import Prediction
from radfusion.serving.reports.demographics import patient_and_study
from radfusion.serving.reports.measurement_report import MANUFACTURER, failure_report, prediction_report
from radfusion.serving.reports.sr_codes import coding_scheme

SR_SERIES_NUMBER = 9901
SERIES_DESCRIPTION = "radfusion prediction (not for diagnostic use without review)"


@dataclass(frozen=True)
class EarlierReport:
    """A prediction SR this listener sent before for the same study."""

    study_uid: str
    series_uid: str
    sop_uid: str
    version: int
    instances: int | None  # how many instances of the study it was based on

    def as_dataset(self) -> Dataset:
        ds = Dataset()
        ds.SOPClassUID = ComprehensiveSRStorage
        ds.SOPInstanceUID = self.sop_uid
        ds.StudyInstanceUID = self.study_uid
        ds.SeriesInstanceUID = self.series_uid
        return ds

    def based_on(self) -> str:
        return f"{self.instances} instances" if self.instances is not None else "the instances received then"


def read_evidence(paths: Sequence[Path]) -> list[Dataset]:
    """Headers of the source instances (no pixel data)."""
    return [pydicom.dcmread(p, stop_before_pixels=True) for p in paths]


def reference_dataset(study_uid: str, series_uid: str, sop_uid: str, sop_class_uid: str) -> Dataset:
    """An instance as SR evidence: its four UIDs and nothing else."""
    ds = Dataset()
    ds.SOPClassUID = sop_class_uid
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    return ds


def _evidence(evidence: Sequence[Dataset], header: Dataset | None) -> list[Dataset]:
    """Evidence reduced to its UIDs; the first item also carries the patient and study
    attributes of ``header`` (default: the first evidence), normalised."""
    if not evidence:
        raise ValueError("an SR needs at least one evidence instance")
    references = [
        reference_dataset(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID, ds.SOPClassUID)
        for ds in evidence
    ]
    first = patient_and_study(header if header is not None else evidence[0])
    first.update(references[0])  # the study the SR goes into is the evidence's, whatever the header says
    return [first, *references[1:]]


class _RadfusionSR(hd.sr.ComprehensiveSR):
    """highdicom copies every Patient and Study module attribute of the first evidence
    instance, looked up through that instance's IOD (unknown for a private SOP class);
    the first evidence here holds exactly the normalised attributes to copy."""

    def copy_patient_and_study_information(self, dataset: Dataset) -> None:
        for element in dataset:
            if element.keyword not in ("SOPClassUID", "SOPInstanceUID", "SeriesInstanceUID"):
                self[element.tag] = element


def _document(
    evidence: list[Dataset],
    content: hd.sr.MeasurementReport,
    sr_series_uid: str,
    sr_sop_uid: str,
    version: int,
    complete: bool,
    previous: list[Dataset] | None,
) -> hd.sr.ComprehensiveSR:
    charset = evidence[0].get("SpecificCharacterSet")
    return _RadfusionSR(
        evidence=evidence,
        content=content,
        series_instance_uid=sr_series_uid,
        series_number=SR_SERIES_NUMBER,
        sop_instance_uid=sr_sop_uid,
        instance_number=version,
        manufacturer=MANUFACTURER,
        is_complete=complete,
        is_final=False,  # a model's output, not verified by a reader
        previous_versions=previous,
        series_description=SERIES_DESCRIPTION,
        specific_character_set=charset,
        coding_schemes=[coding_scheme()],
    )


def build_prediction_sr(
    contract: ModelContract,
    prediction: Prediction,
    result: dict[str, Any],
    evidence: Sequence[Dataset],
    sr_series_uid: str,
    sr_sop_uid: str,
    version: int,
    predecessor: EarlierReport | None = None,
    header: Dataset | None = None,
) -> hd.sr.ComprehensiveSR:
    """``prediction``: what the report states; ``result``: the case's other facts
    ("modalities_used", "genomics_source", "clinical_source", "series_reason",
    "geometry_corrections", "completeness", "instances_received"; serving/pacs/predict.py
    and the pipeline); ``evidence``: the scored series' instances (headers, or
    reference_dataset); ``header``: where patient and study attributes come from
    (default: the first evidence); ``predecessor``: the report this one supersedes."""
    items = _evidence(evidence, header)
    replaces = None
    if predecessor is not None:
        now = f"; this one on {result['instances_received']}" if result.get("instances_received") else ""
        replaces = f"replaces report version {predecessor.version}, based on {predecessor.based_on()}{now}"
    return _document(
        items,
        prediction_report(contract, prediction, result, items, replaces),
        sr_series_uid,
        sr_sop_uid,
        version,
        complete=not result.get("completeness"),
        previous=[predecessor.as_dataset()] if predecessor is not None else None,
    )


def build_failure_sr(
    contract: ModelContract,
    kind: str,
    reason: str,
    evidence: Sequence[Dataset],
    sr_series_uid: str,
    sr_sop_uid: str,
    version: int,
    earlier: EarlierReport | None = None,
    header: Dataset | None = None,
) -> hd.sr.ComprehensiveSR:
    """Why no result was produced for the study (``kind``: the error kind, ``reason``:
    its message, free of identifiers). ``evidence``: the instances received;
    ``earlier``: a prediction sent before, which the reader is told is outdated."""
    outdated = None
    if earlier is not None:
        outdated = (
            f"report version {earlier.version}, based on {earlier.based_on()}, was issued before the study "
            f"changed; it does not reflect the study as received now"
        )
    return _document(
        _evidence(evidence, header),
        failure_report(contract, kind, reason, outdated),
        sr_series_uid,
        sr_sop_uid,
        version,
        complete=True,
        previous=None,
    )


def new_uid() -> str:
    return str(hd.UID())
