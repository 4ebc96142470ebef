"""The prediction as a DICOM Comprehensive SR (highdicom), placed in the source study.

Content tree (codes from DCM where one fits, else the private scheme 99RADFUSION):

    CONTAINER  Radfusion prediction report
      TEXT       Algorithm Name (DCM 111001)       = model name
      TEXT       Algorithm Version (DCM 111003)    = model version
      CODE       Predicted class                   = the label (multi-label: one per label at p >= 0.5)
      CONTAINER  Class probability   (one per label; classification and multi-label)
        CODE       Class                           = the label
        NUM        Probability (DCM 122157)        = p, unit "1" (UCUM)
      NUM        Risk score                        = survival models: log relative hazard (Cox)
                                                     or cumulative hazard (discrete time), unit "1"
      CONTAINER  Survival probability (discrete-time survival, one per interval end)
        NUM        Time point                      = months, unit "mo" (UCUM)
        NUM        Probability (DCM 122157)        = P(alive at that time), unit "1"
      CODE       Input modality used (one per used modality)
      TEXT       Genomics source                   = "genomics table", "patient not in the genomics table", ...
      TEXT       Clinical source                   = the same for the clinical covariates
                                                     (a model with a clinical block)
      TEXT       Image series selection            = why the scored series was chosen
      TEXT       Geometry corrections              = what the reader repaired (only when it repaired anything)
      IMAGE      Source of Measurement (DCM 121112), one per instance of the scored series

The scored series' instances are also the SR's evidence, so the document references
the source study, series and instances both in its content and in
CurrentRequestedProcedureEvidenceSequence. Two more items appear when they apply:

      TEXT       Study completeness                = what was missing when the study was scored
                                                     anyway (CompletionFlag PARTIAL)
      TEXT       Replaces earlier report           = which version this one supersedes and why

A re-scored study gets the next version: a new instance in the same SR series whose
PredecessorDocumentsSequence names the last version sent. A study that cannot be scored
gets a failure report instead (``build_failure_sr``), in the same SR series:

    CONTAINER  Radfusion prediction report
      TEXT       Algorithm Name, Algorithm Version
      TEXT       No result                         = why no result was produced
      TEXT       Error kind                        = the error's kind (docs/errors.md)
      TEXT       Earlier report                    = when a prediction was sent before: that it
                                                     no longer reflects the study as received

Patient and study attributes come from one source header through
radfusion.serving.reports.demographics (valid, normalised or left empty; identifiers
verbatim), never copied raw."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import highdicom as hd
import pydicom
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import ComprehensiveSRStorage

from radfusion.contract import ModelContract
from radfusion.prediction import Prediction
from radfusion.serving.reports.demographics import patient_and_study

SCHEME = "99RADFUSION"
MANUFACTURER = "radfusion"
SR_SERIES_NUMBER = 9901
SERIES_DESCRIPTION = "radfusion prediction (not for diagnostic use without review)"

REPORT = hd.sr.CodedConcept("RF0001", SCHEME, "Radfusion prediction report")
PREDICTED_CLASS = hd.sr.CodedConcept("RF0002", SCHEME, "Predicted class")
CLASS_PROBABILITY = hd.sr.CodedConcept("RF0003", SCHEME, "Class probability")
CLASS = hd.sr.CodedConcept("RF0004", SCHEME, "Class")
MODALITY_USED = hd.sr.CodedConcept("RF0005", SCHEME, "Input modality used")
GENOMICS_SOURCE = hd.sr.CodedConcept("RF0006", SCHEME, "Genomics source")
CLINICAL_SOURCE = hd.sr.CodedConcept("RF0007", SCHEME, "Clinical source")
SERIES_SELECTION = hd.sr.CodedConcept("RF0008", SCHEME, "Image series selection")
GEOMETRY_CORRECTIONS = hd.sr.CodedConcept("RF0009", SCHEME, "Geometry corrections")
RISK_SCORE = hd.sr.CodedConcept("RF0010", SCHEME, "Risk score")
SURVIVAL_PROBABILITY = hd.sr.CodedConcept("RF0011", SCHEME, "Survival probability")
TIME_POINT = hd.sr.CodedConcept("RF0012", SCHEME, "Time point")
NO_RESULT = hd.sr.CodedConcept("RF0013", SCHEME, "No result")
ERROR_KIND = hd.sr.CodedConcept("RF0014", SCHEME, "Error kind")
COMPLETENESS = hd.sr.CodedConcept("RF0015", SCHEME, "Study completeness")
REPLACES = hd.sr.CodedConcept("RF0016", SCHEME, "Replaces earlier report")
EARLIER_REPORT = hd.sr.CodedConcept("RF0017", SCHEME, "Earlier report")
MONTHS = hd.sr.CodedConcept("mo", "UCUM", "month")
MODALITY_CODES = {
    "image": hd.sr.CodedConcept("RF-IMAGE", SCHEME, "Imaging study"),
    "expression": hd.sr.CodedConcept("RF-EXPRESSION", SCHEME, "Gene expression profile"),
    "mutation": hd.sr.CodedConcept("RF-MUTATION", SCHEME, "Somatic mutation calls"),
    "copy_number": hd.sr.CodedConcept("RF-COPYNUMBER", SCHEME, "Copy number profile"),
    "clinical": hd.sr.CodedConcept("RF-CLINICAL", SCHEME, "Clinical covariates"),
}
_C = hd.sr.RelationshipTypeValues.CONTAINS


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


def modality_code(name: str) -> hd.sr.CodedConcept:
    """Known modalities have fixed codes; any other omics block gets one from its name."""
    return MODALITY_CODES.get(name) or hd.sr.CodedConcept(f"RF-{name.upper()[:12]}", SCHEME, f"Omics block {name}")


def label_code(label: str) -> hd.sr.CodedConcept:
    """A code for an output label: the label itself when it fits a Code Value (16
    characters, no backslash), else a stable hash of it; the meaning is the label."""
    fits = len(label) <= 16 and re.fullmatch(r"[^\\]+", label)
    value = label if fits else "L" + hashlib.sha1(label.encode()).hexdigest()[:15]
    return hd.sr.CodedConcept(value, SCHEME, label[:64])


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


def _number(
    name: hd.sr.CodedConcept, value: float, unit: hd.sr.CodedConcept = codes.UCUM.NoUnits
) -> hd.sr.NumContentItem:
    return hd.sr.NumContentItem(name, float(value), unit, relationship_type=_C)


def _text(name: hd.sr.CodedConcept, value: str) -> hd.sr.TextContentItem:
    return hd.sr.TextContentItem(name, value, relationship_type=_C)


def _group(name: hd.sr.CodedConcept, items: list[hd.sr.ContentItem]) -> hd.sr.ContainerContentItem:
    group = hd.sr.ContainerContentItem(name=name, relationship_type=_C)
    group.ContentSequence = hd.sr.ContentSequence(items)
    return group


def _task_items(prediction: Prediction) -> list[hd.sr.ContentItem]:
    """The typed prediction (radfusion.prediction.Prediction) as content items."""
    if prediction.risk_score is not None:  # survival
        items: list[hd.sr.ContentItem] = [_number(RISK_SCORE, prediction.risk_score)]
        for months, probability in prediction.survival:
            items.append(
                _group(
                    SURVIVAL_PROBABILITY,
                    [_number(TIME_POINT, months, MONTHS), _number(codes.DCM.Probability, probability)],
                )
            )
        return items
    items = [
        hd.sr.CodeContentItem(PREDICTED_CLASS, label_code(label), relationship_type=_C)
        for label in prediction.predicted
    ]
    for label, probability in prediction.probabilities:
        items.append(
            _group(
                CLASS_PROBABILITY,
                [
                    hd.sr.CodeContentItem(CLASS, label_code(label), relationship_type=_C),
                    _number(codes.DCM.Probability, probability),
                ],
            )
        )
    return items


def _algorithm(contract: ModelContract) -> list[hd.sr.ContentItem]:
    return [_text(codes.DCM.AlgorithmName, contract.name), _text(codes.DCM.AlgorithmVersion, contract.version)]


def _root(items: list[hd.sr.ContentItem]) -> hd.sr.ContainerContentItem:
    root = hd.sr.ContainerContentItem(name=REPORT)
    root.ContentSequence = hd.sr.ContentSequence(items)
    return root


def _content(
    contract: ModelContract,
    prediction: Prediction,
    result: dict[str, Any],
    evidence: Sequence[Dataset],
    predecessor: EarlierReport | None,
) -> hd.sr.ContainerContentItem:
    items = [*_algorithm(contract), *_task_items(prediction)]
    items += [
        hd.sr.CodeContentItem(MODALITY_USED, modality_code(m), relationship_type=_C) for m in result["modalities_used"]
    ]
    items.append(_text(GENOMICS_SOURCE, result["genomics_source"]))
    if contract.clinical is not None:
        items.append(_text(CLINICAL_SOURCE, result["clinical_source"]))
    if result.get("series_reason"):
        items.append(_text(SERIES_SELECTION, result["series_reason"]))
    if result.get("geometry_corrections"):
        # A reader should know the scored volume is not exactly what was acquired.
        items.append(_text(GEOMETRY_CORRECTIONS, "; ".join(result["geometry_corrections"])))
    if result.get("completeness"):
        items.append(_text(COMPLETENESS, result["completeness"]))
    if predecessor is not None:
        now = f"; this one on {result['instances_received']}" if result.get("instances_received") else ""
        items.append(
            _text(REPLACES, f"replaces report version {predecessor.version}, based on {predecessor.based_on()}{now}")
        )
    items += [
        hd.sr.ImageContentItem(
            codes.DCM.SourceOfMeasurement,
            referenced_sop_class_uid=ds.SOPClassUID,
            referenced_sop_instance_uid=ds.SOPInstanceUID,
            relationship_type=_C,
        )
        for ds in evidence
    ]
    return _root(items)


def _document(
    evidence: list[Dataset],
    content: hd.sr.ContainerContentItem,
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
    return _document(
        items,
        _content(contract, prediction, result, items, predecessor),
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
    items = [*_algorithm(contract), _text(NO_RESULT, reason), _text(ERROR_KIND, kind)]
    if earlier is not None:
        items.append(
            _text(
                EARLIER_REPORT,
                f"report version {earlier.version}, based on {earlier.based_on()}, was issued before the study "
                f"changed; it does not reflect the study as received now",
            )
        )
    return _document(
        _evidence(evidence, header), _root(items), sr_series_uid, sr_sop_uid, version, complete=True, previous=None
    )


def new_uid() -> str:
    return str(hd.UID())
