"""The listener on partial genomics tables (in-process, on a test clock): a patient whose
row lacks 40 of the 100 expression genes is scored with them imputed, one whose row
lacks 4 of the 5 mutation calls with that block absent. The result record, the
prediction SR and ``radfusion pacs-status`` each say so, and the prediction is the local
Predictor's on the same values."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from radfusion.dicom import find_studies
from radfusion.genomics import load_genomics_table
from radfusion.predictor import Predictor
from radfusion.runtime import OnnxModel
from radfusion.serving.pacs.pipeline import Pipeline, RetryPolicy
from radfusion.serving.pacs.predict import StudyPredictor
from radfusion.serving.pacs.state import Status, StudyState
from radfusion.serving.pacs.status import format_table, status_report
from radfusion.serving.pacs.storage import WorkDir
from radfusion.serving.patients import PatientTables
from radfusion.serving.reports import sr_codes as rc
from tests.support.prediction_sr import read_report
from tests.support.received import deliver

QUIET = 1.0
TOL = 1e-5


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


def test_listener_imputes_partial_rows_and_says_so(tiny_cohort: Path, tiny_onnx_model: Path, tmp_path: Path) -> None:
    table = load_genomics_table(tiny_cohort / "genomics.parquet")
    studies = sorted(find_studies(tiny_cohort / "dicom").studies.values(), key=lambda s: s.patient_id)
    partial, sparse = [s for s in studies if s.patient_id in table.index and table.loc[s.patient_id].notna().all()][:2]
    model = OnnxModel(tiny_onnx_model, device="cpu")
    expression, mutation = (b.features for b in model.contract.omics)
    table.loc[partial.patient_id, expression[60:]] = np.nan
    table.loc[sparse.patient_id, mutation[1:]] = np.nan
    genomics = tmp_path / "genomics.parquet"
    table.reset_index().to_parquet(genomics)

    predictor = StudyPredictor(model, PatientTables.from_paths(model.contract, genomics))
    work = WorkDir(tmp_path / "work")
    state = StudyState(work.state_path)
    clock = Clock()
    try:
        pipeline = Pipeline(state, work, predictor, [], QUIET, RetryPolicy(3, 0.5, 10.0), clock)
        for study in (partial, sparse):
            deliver(state, work, [h.path for h in study.instances], now=clock.now)
        clock.now += QUIET
        assert pipeline.tick().scored == 2
        reference = Predictor.load(tiny_onnx_model, device="cpu")
        expected_blocks = {
            partial.study_uid: {
                "expression": {"imputed": 40, "of": 100, "treated_as_absent": False},
                "mutation": {"imputed": 0, "of": 5, "treated_as_absent": False},
            },
            sparse.study_uid: {
                "expression": {"imputed": 0, "of": 100, "treated_as_absent": False},
                "mutation": {"imputed": 4, "of": 5, "treated_as_absent": True},
            },
        }
        for study in (partial, sparse):
            record = state.get(study.study_uid)
            assert record.status is Status.SCORED
            assert record.result["imputation"]["blocks"] == expected_blocks[study.study_uid]
            genes = table.loc[study.patient_id].to_dict()  # NaN where the row has no value
            want = reference.predict([reference.prepare([h.path for h in study.instances], genes)])[0]
            assert record.result["imputation"] == want["imputation"]
            assert record.result["modalities_used"] == want["modalities_used"]
            assert record.result["probabilities"] == pytest.approx(want["probabilities"], abs=TOL)
        assert state.get(sparse.study_uid).result["modalities_used"] == ["image", "expression"]

        sr = read_report(state.get(sparse.study_uid).sr_path)
        assert sr.modalities == [rc.modality_code(m).value for m in ("image", "expression")]
        rows = {row["study"]: row for row in status_report(state)["studies"]}
        summaries = {row["imputed"] for row in rows.values()}
        assert summaries == {"expression 40/100", "mutation absent (4/5 missing)"}
        table_text = format_table(status_report(state))
        assert "expression 40/100" in table_text and "mutation absent (4/5 missing)" in table_text
    finally:
        state.close()
