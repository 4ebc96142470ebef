"""`radfusion listen` (its own process, dcmtk's storescu as the modality) with a survival
and a multi-label model: each study is scored without an error in the listener's log,
its SR states the model's answer (equal to radfusion.predictor.Predictor's on the same
study) and passes dciodvfy. Before radfusion.prediction, every such study failed the
pipeline tick (it read "predicted_label", which these tasks do not have)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pydicom
import pytest

from radfusion.dicom import find_studies
from radfusion.genomics import load_genomics_table, row_as_mapping
from radfusion.predictor import Predictor
from radfusion.serving.pacs.storage import WorkDir
from tests.support.prediction_sr import read_report
from tests.support.task_models import export_task_model
from tests.support.validators import assert_dciodvfy_valid

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not shutil.which("storescu"), reason="dcmtk is not installed"),
]

CALLING = "STORESCU"
TOL = 1e-5


@pytest.fixture(scope="module")
def study(tiny_cohort: Path):
    """A study stored uncompressed (storescu proposes only uncompressed syntaxes), of a
    patient in the genomics table."""
    table = load_genomics_table(tiny_cohort / "genomics.parquet")
    plain = {pydicom.uid.ExplicitVRLittleEndian, pydicom.uid.ImplicitVRLittleEndian}
    for candidate in sorted(find_studies(tiny_cohort / "dicom").studies.values(), key=lambda s: s.patient_id):
        syntaxes = {
            pydicom.dcmread(h.path, stop_before_pixels=True).file_meta.TransferSyntaxUID for h in candidate.instances
        }
        if syntaxes <= plain and row_as_mapping(table, candidate.patient_id) is not None:
            return candidate
    raise AssertionError("the tiny cohort has no uncompressed study with genomics")


def listen_and_score(
    start_listener, model: Path, study, tiny_cohort: Path, work: Path
) -> tuple[pydicom.Dataset, Path, str]:
    """Send ``study`` to a fresh listener; wait until it is scored. (SR, its file, log)."""
    listener = start_listener(
        [
            "--model",
            str(model),
            "--work",
            str(work),
            "--allow-aet",
            CALLING,
            "--genomics",
            str(tiny_cohort / "genomics.parquet"),
            "--quiet-seconds",
            "0.5",
            "--poll-seconds",
            "0.2",
            "--device",
            "cpu",
        ]
    )
    sent = subprocess.run(
        [
            "storescu",
            "-aet",
            CALLING,
            "-aec",
            "RADFUSION",
            "127.0.0.1",
            str(listener.port),
            *[str(h.path) for h in study.instances],
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert sent.returncode == 0, sent.stderr
    path = WorkDir(work).result_path(study.study_uid, 1)
    deadline = time.monotonic() + 60
    while not (path.is_file() and " scored v1" in listener.log()):
        assert time.monotonic() < deadline and "tick failed" not in listener.log(), listener.log()[-3000:]
        time.sleep(0.2)
    assert listener.stop() == 0
    return pydicom.dcmread(path), path, listener.log()


def expected_answer(model: Path, study, tiny_cohort: Path) -> dict:
    predictor = Predictor.load(model, device="cpu")
    genomics = row_as_mapping(load_genomics_table(tiny_cohort / "genomics.parquet"), study.patient_id)
    (answer,) = predictor.predict([predictor.prepare([h.path for h in study.instances], genomics)])
    return answer


def assert_clean_log(log: str) -> None:
    problems = [
        line for line in log.splitlines() if re.search(r" (ERROR|WARNING|CRITICAL) |Traceback|tick failed", line)
    ]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("task", ["survival:cox", "survival:discrete"])
def test_survival_model_through_the_listener(
    task: str, start_listener, tiny_contract, study, tiny_cohort: Path, tmp_path: Path
) -> None:
    model = export_task_model(tiny_contract, task, tmp_path)
    sr, path, log = listen_and_score(start_listener, model, study, tiny_cohort, tmp_path / "work")
    assert_clean_log(log)
    assert re.search(r" scored v1: risk -?\d", log)
    assert_dciodvfy_valid(path)
    expected = expected_answer(model, study, tiny_cohort)
    report = read_report(sr)
    assert report.risk_score == pytest.approx(expected["risk_score"], abs=TOL)
    assert not report.predicted and not report.probabilities
    if task == "survival:discrete":
        assert [months for months, _ in report.survival] == [12.0, 24.0, 36.0]
        assert [p for _, p in report.survival] == pytest.approx(
            list(expected["survival_probabilities"].values()), abs=TOL
        )
    else:
        assert not report.survival


def test_multilabel_model_through_the_listener(
    start_listener, tiny_contract, study, tiny_cohort: Path, tmp_path: Path
) -> None:
    model = export_task_model(tiny_contract, "multilabel:drugs", tmp_path)
    sr, path, log = listen_and_score(start_listener, model, study, tiny_cohort, tmp_path / "work")
    assert_clean_log(log)
    assert_dciodvfy_valid(path)
    expected = expected_answer(model, study, tiny_cohort)
    report = read_report(sr)
    assert report.predicted == expected["predicted_labels"]
    assert report.probabilities == pytest.approx(expected["probabilities"], abs=TOL)
    status = subprocess.run(
        [sys.executable, "-m", "radfusion.serving.pacs.cli", "pacs-status", "--work", str(tmp_path / "work")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert status.returncode == 0 and ("+".join(expected["predicted_labels"]) or "(no label)") in status.stdout
