"""radfusion's prediction SR read the way a consumer of measurement reports reads it:
highdicom parses the document as a TID 1500 Measurement Report, and every value is found
by its code (CodeValue and scheme, radfusion.serving.reports.sr_codes), never by its
meaning. Tests compare the plain values this returns with the prediction's numbers."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import highdicom as hd
import pydicom
from highdicom.sr.utils import find_content_items
from pydicom.sr.codedict import codes

from radfusion.serving.reports import sr_codes as rc

# The report's qualitative evaluations that are text, keyed in ``texts`` by these
# constants' meanings (the file's own meanings are not read).
TEXT_CONCEPTS = (
    rc.GENOMICS_SOURCE,
    rc.CLINICAL_SOURCE,
    rc.SERIES_SELECTION,
    rc.GEOMETRY_CORRECTIONS,
    rc.COMPLETENESS,
    rc.REPLACES,
    rc.NO_RESULT,
    rc.ERROR_KIND,
    rc.EARLIER_REPORT,
    rc.PREDICTION_SET,
    rc.RECOMMENDED_TREATMENT,
    rc.TREATMENT_REASON,
)


@dataclass
class PredictionReport:
    algorithms: list[tuple[str, str]] = field(default_factory=list)  # (name, version) of each group
    probabilities: dict[str, float] = field(default_factory=dict)  # label -> p
    predicted: list[str] = field(default_factory=list)  # labels whose Predicted class is Yes
    # labels whose "In conformal prediction set" is Yes; None: the groups say nothing of sets
    prediction_set: list[str] | None = None
    risk_score: float | None = None
    risk_method: hd.sr.CodedConcept | None = None
    survival: list[tuple[float, float]] = field(default_factory=list)  # (months, P(alive))
    no_result: bool = False  # "No algorithms succeeded; without findings"
    texts: dict[str, str] = field(default_factory=dict)
    modalities: list[str] = field(default_factory=list)  # code values of Input modality used
    images: list[str] = field(default_factory=list)  # SOP Instance UIDs in the Image Library


def measurement_report(source: Path | str | pydicom.Dataset) -> hd.sr.MeasurementReport:
    """The document's content, parsed by highdicom (a file through hd.sr.srread)."""
    document = hd.sr.srread(source) if isinstance(source, Path | str) else hd.sr.ComprehensiveSR.from_dataset(source)
    assert isinstance(document.content, hd.sr.MeasurementReport), "not a TID 1500 Measurement Report"
    return document.content


def read_report(source: Path | str | pydicom.Dataset) -> PredictionReport:
    report = measurement_report(source)
    found = PredictionReport()
    for group in report.get_image_measurement_groups():
        _read_group(group, found)
    root = report[0]
    (evaluations,) = find_content_items(root, name=rc.QUALITATIVE_EVALUATIONS, value_type="CONTAINER")
    for concept in TEXT_CONCEPTS:
        items = find_content_items(evaluations, name=concept, value_type="TEXT")
        assert len(items) <= 1, f"{concept.meaning} appears {len(items)} times"
        if items:
            found.texts[concept.meaning] = items[0].value
    modalities = find_content_items(evaluations, name=rc.MODALITY_USED, value_type="CODE")
    found.modalities = [item.value.value for item in modalities]
    for library in find_content_items(root, name=codes.DCM.ImageLibrary, value_type="CONTAINER"):
        images = find_content_items(library, name=codes.SCT.Source, value_type="IMAGE", recursive=True)
        found.images += [item.referenced_sop_instance_uid for item in images]
    return found


def _read_group(group: hd.sr.MeasurementsAndQualitativeEvaluations, found: PredictionReport) -> None:
    found.algorithms.append(_algorithm(group))
    finding = group.finding_type
    if finding is None:  # the risk score's group, or the failure report's
        pass
    elif finding == rc.SURVIVAL:
        (months,) = group.get_measurements(name=rc.DURATION)
        (alive,) = group.get_measurements(name=rc.PROBABILITY)
        assert months.unit == rc.MONTHS and alive.unit == rc.NO_UNITS
        found.survival.append((float(months.value), float(alive.value)))
    else:
        label = finding.meaning
        assert finding == rc.label_code(label), f"finding {finding.value} is not the code of label {label!r}"
        (probability,) = group.get_measurements(name=rc.PROBABILITY)
        found.probabilities[label] = float(probability.value)
        (predicted,) = group.get_qualitative_evaluations(name=rc.PREDICTED_CLASS)
        assert predicted.value in (rc.YES, rc.NO)
        if predicted.value == rc.YES:
            found.predicted.append(label)
        for member in group.get_qualitative_evaluations(name=rc.IN_PREDICTION_SET):
            assert member.value in (rc.YES, rc.NO)
            found.prediction_set = (found.prediction_set or []) + ([label] if member.value == rc.YES else [])
    for risk in group.get_measurements(name=rc.RISK_SCORE):
        assert found.risk_score is None, "two risk scores"
        found.risk_score, found.risk_method = float(risk.value), risk.method
    for summary in group.get_qualitative_evaluations(name=rc.PROCESSING_SUMMARY):
        found.no_result |= summary.value == rc.NOTHING_SUCCEEDED


def _algorithm(group: hd.sr.MeasurementsAndQualitativeEvaluations) -> tuple[str, str]:
    """TID 4019 in the group: Algorithm Name and Version."""
    (name,) = find_content_items(group[0], name=codes.DCM.AlgorithmName, value_type="TEXT")
    (version,) = find_content_items(group[0], name=codes.DCM.AlgorithmVersion, value_type="TEXT")
    return name.value, version.value


def first_scored_study(predictor, cohort: Path):
    """(instance paths, prepared case, prediction) of the first study of a synthetic
    cohort whose patient has a genomics row, scored by ``predictor`` with all its genes."""
    from radfusion.dicom import find_studies
    from radfusion.genomics import load_genomics_table, row_as_mapping

    table = load_genomics_table(cohort / "genomics.parquet")
    study = next(s for s in find_studies(cohort / "dicom").studies.values() if s.patient_id in table.index)
    paths = [h.path for h in study.instances]
    case = predictor.prepare(paths, row_as_mapping(table, study.patient_id))
    (prediction,) = predictor.predictions([case])
    return paths, case, prediction


def write_valid_report(contract, prediction, facts: dict, paths: list[Path], out: Path) -> PredictionReport:
    """The prediction SR of ``facts`` (evidence: the first instances of ``paths``) written
    to ``out``, checked by dciodvfy, read back."""
    from radfusion.serving.reports.sr import build_prediction_sr, new_uid, read_evidence
    from tests.support.validators import assert_dciodvfy_valid

    sr = build_prediction_sr(contract, prediction, facts, read_evidence(paths[:3]), new_uid(), new_uid(), version=1)
    sr.save_as(out, enforce_file_format=True)
    assert_dciodvfy_valid(out)
    return read_report(out)
