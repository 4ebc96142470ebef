"""The codes of the prediction report: standard ones (DCM, SCT, UCUM, UMLS) wherever a
concept has one, and the private scheme 99RADFUSION for the rest — the model's own
labels, the input modalities and the facts of how a study was scored.

The private scheme is declared in the document's CodingSchemeIdentificationSequence
(``coding_scheme``), so a consumer meeting one of its codes knows whose it is. Codes of
this scheme never change meaning: a reader keys on them, not on their meanings. The
constants are pydicom Codes (immutable); highdicom makes each content item its own copy."""

from __future__ import annotations

import hashlib
import re

from highdicom.coding_schemes import CodingSchemeIdentificationItem
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

SCHEME = "99RADFUSION"


def coding_scheme() -> CodingSchemeIdentificationItem:
    """The private scheme's declaration, an item of CodingSchemeIdentificationSequence."""
    return CodingSchemeIdentificationItem(
        designator=SCHEME, name="radfusion prediction report codes", responsible_organization="radfusion"
    )


# Standard concepts.
PROBABILITY = codes.DCM.Probability  # 122157
DURATION = codes.SCT.Duration  # 103335007: the time from the study a survival probability holds for
MONTHS = codes.UCUM.Month
NO_UNITS = codes.UCUM.NoUnits
YES, NO = codes.SCT.Yes, codes.SCT.No
ALGORITHM_FAMILY = codes.DCM.ArtificialIntelligence  # 123110
PROCEDURE = codes.SCT.ImagingProcedure  # 363679005, CID 100
PROCESSING_SUMMARY = codes.DCM.CADProcessingAndFindingsSummary  # 111017
NOTHING_SUCCEEDED = Code("111245", "DCM", "No algorithms succeeded; without findings")
# TID 1500's container for qualitative evaluations of the whole report (not in pydicom's dictionary).
QUALITATIVE_EVALUATIONS = Code("C0034375", "UMLS", "Qualitative Evaluations")


def _private(value: str, meaning: str) -> Code:
    return Code(value, SCHEME, meaning)


# Private concepts: what the model predicts and how the study was scored.
PREDICTED_CLASS = _private("RF0002", "Predicted class")  # SCT Yes/No in a label's group
MODALITY_USED = _private("RF0005", "Input modality used")
GENOMICS_SOURCE = _private("RF0006", "Genomics source")
CLINICAL_SOURCE = _private("RF0007", "Clinical source")
SERIES_SELECTION = _private("RF0008", "Image series selection")
GEOMETRY_CORRECTIONS = _private("RF0009", "Geometry corrections")
RISK_SCORE = _private("RF0010", "Risk score")
SURVIVAL = _private("RF0011", "Survival")  # the finding of a survival curve point's group
NO_RESULT = _private("RF0013", "No result")
ERROR_KIND = _private("RF0014", "Error kind")
COMPLETENESS = _private("RF0015", "Study completeness")
REPLACES = _private("RF0016", "Replaces earlier report")
EARLIER_REPORT = _private("RF0017", "Earlier report")
# The missing-data policy's account of the case (radfusion.preprocess.ModelInputs.imputation):
# per given input block, how many of its features took training values; a block with
# more missing than the model imputes, fed as absent; categorical values the model
# never learned, fed as "other". No DCM or SCT concept says this of a model's input.
IMPUTED_FEATURES = _private("RF0020", "Imputed input features")
TREATED_AS_ABSENT = _private("RF0021", "Input treated as absent")
UNSEEN_LEVELS = _private("RF0022", "Unseen categorical levels")
# Conformal prediction sets (radfusion.conformal): per label whether the set holds it
# (SCT Yes/No in the label's group), and the set with its coverage as text.
IN_PREDICTION_SET = _private("RF0023", "In conformal prediction set")
PREDICTION_SET = _private("RF0024", "Conformal prediction set")
# A model with a treatment covariate: the recommended treatment and why (the benefit,
# its interval, the margin), or why there is no ranking (radfusion.treatment).
RECOMMENDED_TREATMENT = _private("RF0025", "Recommended treatment")
TREATMENT_REASON = _private("RF0026", "Treatment recommendation reason")
# How the risk score was computed (Measurement Method of the risk score).
RISK_METHODS = {
    "survival:cox": _private("RF0018", "Log relative hazard (Cox model)"),
    "survival:discrete": _private("RF0019", "Cumulative hazard (discrete-time model)"),
}
MODALITY_CODES = {
    "image": _private("RF-IMAGE", "Imaging study"),
    "expression": _private("RF-EXPRESSION", "Gene expression profile"),
    "mutation": _private("RF-MUTATION", "Somatic mutation calls"),
    "copy_number": _private("RF-COPYNUMBER", "Copy number profile"),
    "clinical": _private("RF-CLINICAL", "Clinical covariates"),
}


def modality_code(name: str) -> Code:
    """Known modalities have fixed codes; any other omics block gets one from its name."""
    return MODALITY_CODES.get(name) or _private(f"RF-{name.upper()[:12]}", f"Omics block {name}")


def label_code(label: str) -> Code:
    """A code for an output label: the label itself when it fits a Code Value (16
    characters, no backslash), else a stable hash of it; the meaning is the label."""
    fits = len(label) <= 16 and re.fullmatch(r"[^\\]+", label)
    value = label if fits else "L" + hashlib.sha1(label.encode()).hexdigest()[:15]
    return _private(value, label[:64])
