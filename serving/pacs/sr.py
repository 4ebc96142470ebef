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
CurrentRequestedProcedureEvidenceSequence. A re-scored study gets the next version: a
new instance in the same SR series whose PredecessorDocumentsSequence names the old."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import highdicom as hd
import pydicom
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from radfusion.contract import ModelContract
from radfusion.prediction import Prediction

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
MONTHS = hd.sr.CodedConcept("mo", "UCUM", "month")
MODALITY_CODES = {
    "image": hd.sr.CodedConcept("RF-IMAGE", SCHEME, "Imaging study"),
    "expression": hd.sr.CodedConcept("RF-EXPRESSION", SCHEME, "Gene expression profile"),
    "mutation": hd.sr.CodedConcept("RF-MUTATION", SCHEME, "Somatic mutation calls"),
    "copy_number": hd.sr.CodedConcept("RF-COPYNUMBER", SCHEME, "Copy number profile"),
    "clinical": hd.sr.CodedConcept("RF-CLINICAL", SCHEME, "Clinical covariates"),
}


def modality_code(name: str) -> hd.sr.CodedConcept:
    """Known modalities have fixed codes; any other omics block gets one from its name."""
    return MODALITY_CODES.get(name) or hd.sr.CodedConcept(f"RF-{name.upper()[:12]}", SCHEME, f"Omics block {name}")


# Attributes highdicom copies from the first evidence instance; real studies may lack
# some of these type 2 attributes, which are then written empty.
_COPIED_EMPTY_IF_MISSING = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "AccessionNumber",
    "StudyID",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
)


def label_code(label: str) -> hd.sr.CodedConcept:
    """A code for an output label: the label itself when it fits a Code Value (16
    characters, no backslash), else a stable hash of it; the meaning is the label."""
    fits = len(label) <= 16 and re.fullmatch(r"[^\\]+", label)
    value = label if fits else "L" + hashlib.sha1(label.encode()).hexdigest()[:15]
    return hd.sr.CodedConcept(value, SCHEME, label[:64])


def read_evidence(paths: Sequence[Path]) -> list[Dataset]:
    """Headers of the source instances (no pixel data), the first one completed with
    empty type 2 patient/study attributes it lacks."""
    evidence: list[Dataset] = [pydicom.dcmread(p, stop_before_pixels=True) for p in paths]
    first = evidence[0]
    for keyword in _COPIED_EMPTY_IF_MISSING:
        if keyword not in first:
            setattr(first, keyword, "")
    return evidence


def _number(
    name: hd.sr.CodedConcept, value: float, unit: hd.sr.CodedConcept = codes.UCUM.NoUnits
) -> hd.sr.NumContentItem:
    return hd.sr.NumContentItem(name, float(value), unit, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS)


def _group(name: hd.sr.CodedConcept, items: list[hd.sr.ContentItem]) -> hd.sr.ContainerContentItem:
    group = hd.sr.ContainerContentItem(name=name, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS)
    group.ContentSequence = hd.sr.ContentSequence(items)
    return group


def _task_items(prediction: Prediction) -> list[hd.sr.ContentItem]:
    """The typed prediction (radfusion.prediction.Prediction) as content items."""
    C = hd.sr.RelationshipTypeValues.CONTAINS
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
        hd.sr.CodeContentItem(PREDICTED_CLASS, label_code(label), relationship_type=C) for label in prediction.predicted
    ]
    for label, probability in prediction.probabilities:
        items.append(
            _group(
                CLASS_PROBABILITY,
                [
                    hd.sr.CodeContentItem(CLASS, label_code(label), relationship_type=C),
                    _number(codes.DCM.Probability, probability),
                ],
            )
        )
    return items


def _content(
    contract: ModelContract, prediction: Prediction, result: dict[str, Any], evidence: Sequence[Dataset]
) -> hd.sr.ContainerContentItem:
    C = hd.sr.RelationshipTypeValues.CONTAINS
    root = hd.sr.ContainerContentItem(name=REPORT)
    items: list[hd.sr.ContentItem] = [
        hd.sr.TextContentItem(codes.DCM.AlgorithmName, contract.name, relationship_type=C),
        hd.sr.TextContentItem(codes.DCM.AlgorithmVersion, contract.version, relationship_type=C),
        *_task_items(prediction),
    ]
    items += [
        hd.sr.CodeContentItem(MODALITY_USED, modality_code(m), relationship_type=C) for m in result["modalities_used"]
    ]
    items.append(hd.sr.TextContentItem(GENOMICS_SOURCE, result["genomics_source"], relationship_type=C))
    if contract.clinical is not None:
        items.append(hd.sr.TextContentItem(CLINICAL_SOURCE, result["clinical_source"], relationship_type=C))
    if result.get("series_reason"):
        items.append(hd.sr.TextContentItem(SERIES_SELECTION, result["series_reason"], relationship_type=C))
    if result.get("geometry_corrections"):
        # A reader should know the scored volume is not exactly what was acquired.
        note = "; ".join(result["geometry_corrections"])
        items.append(hd.sr.TextContentItem(GEOMETRY_CORRECTIONS, note, relationship_type=C))
    items += [
        hd.sr.ImageContentItem(
            codes.DCM.SourceOfMeasurement,
            referenced_sop_class_uid=ds.SOPClassUID,
            referenced_sop_instance_uid=ds.SOPInstanceUID,
            relationship_type=C,
        )
        for ds in evidence
    ]
    root.ContentSequence = hd.sr.ContentSequence(items)
    return root


def build_prediction_sr(
    contract: ModelContract,
    prediction: Prediction,
    result: dict[str, Any],
    evidence: Sequence[Dataset],
    sr_series_uid: str,
    sr_sop_uid: str,
    version: int,
    previous: Dataset | None = None,
) -> hd.sr.ComprehensiveSR:
    """``prediction``: what the report states; ``result``: the case's other facts
    ("modalities_used", "genomics_source", "clinical_source", "series_reason",
    "geometry_corrections"; serving/pacs/predict.py); ``evidence``: headers of the
    scored series' instances (read_evidence)."""
    sr = hd.sr.ComprehensiveSR(
        evidence=list(evidence),
        content=_content(contract, prediction, result, evidence),
        series_instance_uid=sr_series_uid,
        series_number=SR_SERIES_NUMBER,
        sop_instance_uid=sr_sop_uid,
        instance_number=version,
        manufacturer=MANUFACTURER,
        is_complete=True,
        is_final=False,  # a model's output, not verified by a reader
        previous_versions=[previous] if previous is not None else None,
        series_description=SERIES_DESCRIPTION,
    )
    return sr


def new_uid() -> str:
    return str(hd.UID())
