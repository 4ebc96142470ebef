"""The prediction as a TID 1500 Measurement Report (highdicom's MeasurementReport), so
any consumer of measurement reports reads it: one TID 1501 measurement group per model
output, each naming the algorithm (TID 4019), and the facts of how the study was scored
as the report's qualitative evaluations. Codes: radfusion.serving.reports.sr_codes.

    CONTAINER  Imaging Measurement Report (DCM 126000), template 1500
      Language, Observer = the model as a device (TID 1004), Procedure reported = Imaging procedure
      CONTAINER  Image Library (DCM 111028) > Image Library Group
        IMAGE      Source (SCT 260753009), one per instance of the scored series
      CONTAINER  Imaging Measurements (DCM 126010)
        CONTAINER  Measurement Group (DCM 125007), template 1501:
          Tracking Identifier and UID; Algorithm Name, Version, Family, Manufacturer (TID 4019)
          classification, multi-label (subtype: a classification), one group per label:
            CODE  Finding (DCM 121071)      = the label (private scheme)
            NUM   Probability (DCM 122157)  = p, unit "1"
            CODE  Predicted class           = Yes / No (SCT): the arg-max label, or every label at p >= 0.5
          survival, one group:
            NUM   Risk score                = log relative hazard (Cox) or cumulative hazard
                                              (discrete time), unit "1"; its Measurement Method says which
          discrete-time survival, one group per interval end:
            CODE  Finding (DCM 121071)      = Survival
            NUM   Duration (SCT 103335007)  = months from the study, unit "mo"
            NUM   Probability (DCM 122157)  = P(alive then), unit "1"
      CONTAINER  Qualitative Evaluations (UMLS C0034375)
        CODE  Input modality used = the modality (one per used modality)
        TEXT  Imputed input features, one per given table block: "<block>: <n> of <m> features
              imputed" (radfusion.preprocess: training values), or, for a block with more
              missing than the model imputes, "... missing ...; treated as absent"
        CODE  Input treated as absent = the block's modality (one per such block)
        TEXT  Unseen categorical levels: "<block>: <covariates>" fed as the "other" level
        TEXT  Genomics source, Clinical source (a model with a clinical block), Image series
              selection, Geometry corrections (when the reader repaired anything), Study
              completeness (scored with instances missing), Replaces earlier report

A study that cannot be scored gets the same report with one group that says so (CAD
Processing and Findings Summary = "No algorithms succeeded; without findings") and, as
qualitative evaluations, TEXT No result, Error kind and, when a prediction was sent
before, Earlier report."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.uid import generate_uid

from radfusion.contract import ModelContract
from radfusion.prediction import Prediction, survival_key
from radfusion.serving.reports import sr_codes as rc

MANUFACTURER = "radfusion"
_CONTAINS = hd.sr.RelationshipTypeValues.CONTAINS


def prediction_report(
    contract: ModelContract,
    prediction: Prediction,
    result: dict[str, Any],
    sources: Sequence[Dataset],
    replaces: str | None,
) -> hd.sr.MeasurementReport:
    """``result``: the case's facts (see build_prediction_sr); ``sources``: the scored
    series' instances; ``replaces``: why this report supersedes an earlier one."""
    groups = _survival_groups(contract, prediction) if prediction.is_survival else _label_groups(contract, prediction)
    texts = _facts(contract, result, replaces) + _prediction_set(contract, prediction)
    return _report(contract, groups, texts, sources)


def failure_report(contract: ModelContract, kind: str, reason: str, earlier: str | None) -> hd.sr.MeasurementReport:
    """No result for the study: ``reason`` why, ``kind`` the error kind, ``earlier`` what
    became of a prediction sent before."""
    outcome = hd.sr.QualitativeEvaluation(rc.PROCESSING_SUMMARY, rc.NOTHING_SUCCEEDED)
    texts = [_text(rc.NO_RESULT, reason), _text(rc.ERROR_KIND, kind)]
    if earlier is not None:
        texts.append(_text(rc.EARLIER_REPORT, earlier))
    return _report(contract, [_group(contract, "radfusion prediction", evaluations=[outcome])], texts, ())


def _label_groups(contract: ModelContract, prediction: Prediction) -> list[hd.sr.MeasurementsAndQualitativeEvaluations]:
    groups = []
    for label, probability in prediction.probabilities:
        predicted = rc.YES if label in prediction.predicted else rc.NO
        evaluations = [hd.sr.QualitativeEvaluation(rc.PREDICTED_CLASS, predicted)]
        if prediction.prediction_set is not None:
            member = rc.YES if label in prediction.prediction_set else rc.NO
            evaluations.append(hd.sr.QualitativeEvaluation(rc.IN_PREDICTION_SET, member))
        groups.append(
            _group(
                contract,
                f"class {label}",
                finding=rc.label_code(label),
                measurements=[hd.sr.Measurement(rc.PROBABILITY, probability, rc.NO_UNITS)],
                evaluations=evaluations,
            )
        )
    return groups


def _prediction_set(contract: ModelContract, prediction: Prediction) -> list[hd.sr.ContentItem]:
    """The conformal set as a reader says it: its labels (or that none fits) and the coverage."""
    if prediction.prediction_set is None or contract.conformal is None:
        return []
    labels = " or ".join(prediction.prediction_set) if prediction.prediction_set else "no label fits this case"
    statement = f"{labels} (coverage {prediction.set_coverage:.0%}, {contract.conformal.method})"
    return [_text(rc.PREDICTION_SET, statement)]


def _survival_groups(
    contract: ModelContract, prediction: Prediction
) -> list[hd.sr.MeasurementsAndQualitativeEvaluations]:
    assert prediction.risk_score is not None  # every survival prediction has one
    risk = hd.sr.Measurement(rc.RISK_SCORE, prediction.risk_score, rc.NO_UNITS, method=rc.RISK_METHODS[prediction.kind])
    groups = [_group(contract, "risk score", measurements=[risk])]
    for months, probability in prediction.survival:
        horizon = hd.sr.Measurement(rc.DURATION, months, rc.MONTHS)
        alive = hd.sr.Measurement(rc.PROBABILITY, probability, rc.NO_UNITS)
        name = f"survival at {survival_key(months)} months"
        groups.append(_group(contract, name, finding=rc.SURVIVAL, measurements=[horizon, alive]))
    return groups


def _group(
    contract: ModelContract,
    identifier: str,
    finding: Code | None = None,
    measurements: Sequence[hd.sr.Measurement] = (),
    evaluations: Sequence[hd.sr.QualitativeEvaluation] = (),
) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    algorithm = hd.sr.AlgorithmIdentification(
        name=contract.name, version=contract.version, family=rc.ALGORITHM_FAMILY, manufacturer=MANUFACTURER
    )
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier=identifier),
        finding_type=finding,
        algorithm_id=algorithm,
        measurements=list(measurements) or None,
        qualitative_evaluations=list(evaluations) or None,
    )


def _facts(contract: ModelContract, result: dict[str, Any], replaces: str | None) -> list[hd.sr.ContentItem]:
    items: list[hd.sr.ContentItem] = [
        hd.sr.CodeContentItem(rc.MODALITY_USED, rc.modality_code(m), relationship_type=_CONTAINS)
        for m in result["modalities_used"]
    ]
    items += _imputation(result.get("imputation"))
    items += _treatment(result.get("treatment_ranking"))
    items.append(_text(rc.GENOMICS_SOURCE, result["genomics_source"]))
    if contract.clinical is not None:
        items.append(_text(rc.CLINICAL_SOURCE, result["clinical_source"]))
    if result.get("series_reason"):
        items.append(_text(rc.SERIES_SELECTION, result["series_reason"]))
    if result.get("geometry_corrections"):
        # A reader should know the scored volume is not exactly what was acquired.
        items.append(_text(rc.GEOMETRY_CORRECTIONS, "; ".join(result["geometry_corrections"])))
    if result.get("completeness"):
        items.append(_text(rc.COMPLETENESS, result["completeness"]))
    if replaces is not None:
        items.append(_text(rc.REPLACES, replaces))
    return items


def _treatment(ranking: dict[str, Any] | None) -> list[hd.sr.ContentItem]:
    """The treatment ranking's recommendation and its reason (None: the model ranks no
    treatments); a case that cannot be ranked states why."""
    if ranking is None:
        return []
    items: list[hd.sr.ContentItem] = []
    if ranking.get("available"):
        items.append(_text(rc.RECOMMENDED_TREATMENT, ranking["recommended"]))
    items.append(_text(rc.TREATMENT_REASON, ranking["reason"]))
    return items


def _imputation(imputation: dict[str, Any] | None) -> list[hd.sr.ContentItem]:
    """What the missing-data policy did to each given block (``imputation``: the
    answer's, radfusion.preprocess.ModelInputs.imputation; None: a result from before
    the policy, which says nothing)."""
    items: list[hd.sr.ContentItem] = []
    for block, fill in (imputation or {}).get("blocks", {}).items():
        counted = f"{block}: {fill['imputed']} of {fill['of']} features"
        if fill["treated_as_absent"]:
            items.append(
                _text(rc.IMPUTED_FEATURES, f"{counted} missing, more than the model imputes; treated as absent")
            )
            items.append(
                hd.sr.CodeContentItem(rc.TREATED_AS_ABSENT, rc.modality_code(block), relationship_type=_CONTAINS)
            )
        else:
            items.append(_text(rc.IMPUTED_FEATURES, f"{counted} imputed"))
        if fill.get("unseen_levels"):
            items.append(_text(rc.UNSEEN_LEVELS, f"{block}: {', '.join(fill['unseen_levels'])}"))
    return items


def _report(
    contract: ModelContract,
    groups: list[hd.sr.MeasurementsAndQualitativeEvaluations],
    evaluations: Sequence[hd.sr.ContentItem],
    sources: Sequence[Dataset],
) -> hd.sr.MeasurementReport:
    report = hd.sr.MeasurementReport(
        observation_context=_observer(contract),
        procedure_reported=rc.PROCEDURE,
        imaging_measurements=groups,
        title=codes.cid7021.ImagingMeasurementReport,
    )
    content = report[0].ContentSequence
    if sources:
        # The template puts the library before the measurements (highdicom's own
        # ImageLibrary needs full image headers; the evidence here may be UIDs only).
        content.insert(len(content) - 1, _image_library(sources))
    content.append(_container(rc.QUALITATIVE_EVALUATIONS, evaluations))
    return report


def _observer(contract: ModelContract) -> hd.sr.ObservationContext:
    """The model as the observing device; its UID is derived from its name and version,
    so every report of one model version names the same device."""
    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=generate_uid(entropy_srcs=[MANUFACTURER, contract.name, contract.version]),
        name=contract.name,
        manufacturer_name=MANUFACTURER,
        model_name=contract.name,
    )
    return hd.sr.ObservationContext(
        observer_device_context=hd.sr.ObserverContext(
            observer_type=codes.cid270.Device, observer_identifying_attributes=device
        )
    )


def _image_library(sources: Sequence[Dataset]) -> hd.sr.ContainerContentItem:
    images = [
        hd.sr.ImageContentItem(
            codes.SCT.Source,
            referenced_sop_class_uid=ds.SOPClassUID,
            referenced_sop_instance_uid=ds.SOPInstanceUID,
            relationship_type=_CONTAINS,
        )
        for ds in sources
    ]
    return _container(codes.DCM.ImageLibrary, [_container(codes.DCM.ImageLibraryGroup, images)])


def _container(name: Code, items: Sequence[hd.sr.ContentItem]) -> hd.sr.ContainerContentItem:
    container = hd.sr.ContainerContentItem(name=name, relationship_type=_CONTAINS)
    container.ContentSequence = hd.sr.ContentSequence(items)
    return container


def _text(name: Code, value: str) -> hd.sr.TextContentItem:
    return hd.sr.TextContentItem(name, value, relationship_type=_CONTAINS)
