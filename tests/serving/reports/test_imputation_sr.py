"""The prediction SR states what the missing-data policy did to the case (the answer's
``imputation``): per given block, how many features were imputed, which block was
treated as absent (coded, as the modalities used are), which categorical values the
model never learned. Written from a real partial-panel case, checked by dciodvfy, read
back by code."""

from __future__ import annotations

import math
from pathlib import Path

import pydicom
import pytest
from highdicom.sr.utils import find_content_items

from radfusion.dicom import find_studies
from radfusion.genomics import load_genomics_table, row_as_mapping
from radfusion.predictor import Predictor
from radfusion.serving.reports import sr_codes as rc
from radfusion.serving.reports.facts import prediction_facts
from radfusion.serving.reports.sr import build_prediction_sr, new_uid, read_evidence
from tests.support.prediction_sr import measurement_report, read_report
from tests.support.validators import assert_dciodvfy_valid


@pytest.fixture(scope="module")
def partial_case(tiny_cohort: Path, tiny_onnx_model: Path):
    """(predictor, case, prediction, evidence) of a study whose genes lack 40 of the 100
    expression genes (imputed) and 4 of the 5 mutation calls (past the cap: absent)."""
    predictor = Predictor.load(tiny_onnx_model, device="cpu")
    table = load_genomics_table(tiny_cohort / "genomics.parquet")
    studies = sorted(find_studies(tiny_cohort / "dicom").studies.values(), key=lambda s: s.patient_id)
    study = next(s for s in studies if s.patient_id in table.index)
    genes = {k: v for k, v in row_as_mapping(table, study.patient_id).items() if not math.isnan(float(v))}
    expression, mutation = (b.features for b in predictor.contract.omics)
    dropped = set(expression[60:]) | set(mutation[1:])
    paths = [h.path for h in study.instances]
    case = predictor.prepare(paths, {k: v for k, v in genes.items() if k not in dropped})
    (prediction,) = predictor.predictions([case])
    return predictor, case, prediction, read_evidence(paths[:3])


def _evaluations(sr: pydicom.Dataset):
    (container,) = find_content_items(
        measurement_report(sr)[0], name=rc.QUALITATIVE_EVALUATIONS, value_type="CONTAINER"
    )
    return container


def _texts(sr, concept) -> list[str]:
    return [item.value for item in find_content_items(_evaluations(sr), name=concept, value_type="TEXT")]


def _codes(sr, concept) -> list[str]:
    return [item.value.value for item in find_content_items(_evaluations(sr), name=concept, value_type="CODE")]


def test_the_report_states_imputed_and_absent_blocks(partial_case, tmp_path: Path) -> None:
    predictor, case, prediction, evidence = partial_case
    facts = prediction_facts(predictor.contract, case, prediction, {"genomics_source": "request"})
    assert facts["imputation"]["blocks"] == {
        "expression": {"imputed": 40, "of": 100, "treated_as_absent": False},
        "mutation": {"imputed": 4, "of": 5, "treated_as_absent": True},
    }
    sr = build_prediction_sr(predictor.contract, prediction, facts, evidence, new_uid(), new_uid(), version=1)
    path = tmp_path / "sr.dcm"
    sr.save_as(path, enforce_file_format=True)
    assert_dciodvfy_valid(path)
    written = pydicom.dcmread(path)
    assert _texts(written, rc.IMPUTED_FEATURES) == [
        "expression: 40 of 100 features imputed",
        "mutation: 4 of 5 features missing, more than the model imputes; treated as absent",
    ]
    assert _codes(written, rc.TREATED_AS_ABSENT) == [rc.modality_code("mutation").value]
    assert not _texts(written, rc.UNSEEN_LEVELS)
    # The rest of the report reads as before; the absent block is not among the inputs used.
    report = read_report(path)
    assert report.modalities == [rc.modality_code(m).value for m in ("image", "expression")]
    assert report.probabilities == pytest.approx(dict(prediction.probabilities), rel=1e-9)


def test_unseen_levels_are_stated_and_a_result_without_imputation_says_nothing(partial_case) -> None:
    predictor, case, prediction, evidence = partial_case
    facts = prediction_facts(predictor.contract, case, prediction, {"genomics_source": "request"})
    facts["imputation"]["blocks"]["clinical"] = {
        "imputed": 0,
        "of": 3,
        "treated_as_absent": False,
        "unseen_levels": ["sex", "site"],
    }
    sr = build_prediction_sr(predictor.contract, prediction, facts, evidence, new_uid(), new_uid(), version=1)
    assert _texts(sr, rc.UNSEEN_LEVELS) == ["clinical: sex, site"]
    assert "clinical: 0 of 3 features imputed" in _texts(sr, rc.IMPUTED_FEATURES)
    # A result recorded before the policy (no "imputation") gets no such items.
    del facts["imputation"]
    sr = build_prediction_sr(predictor.contract, prediction, facts, evidence, new_uid(), new_uid(), version=1)
    assert not _texts(sr, rc.IMPUTED_FEATURES) and not _codes(sr, rc.TREATED_AS_ABSENT)
