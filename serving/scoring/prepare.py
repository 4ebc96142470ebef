"""The per-study work before inference: bring the study's files to local disk, read
and preprocess them with the shared core (radfusion.predictor.prepare_case), with the
patient's genomics and clinical covariates looked up by the engine
(serving/patients.py). Runs in worker processes (local engine) or Ray tasks;
the same function either way.

Each study is read under its own budget (radfusion.limits.StudyBudget: stored bytes,
files, decoded bytes, voxels after resampling, seconds): the same byte and file limits
bound the zip members and DICOMweb instances brought to disk, and the rest is checked
by the core before each piece of work. Whatever the files hold, the study ends as its
row: an error is mapped to its kind at this one boundary (radfusion.errors.input_error).

``prepare_patient`` is the same for a table-only run (no study: the patient's
genomics and clinical covariates alone), with the same row and the same boundary."""

from __future__ import annotations

import logging
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from radfusion import log_privacy
from radfusion.contract import ModelContract
from radfusion.errors import input_error
from radfusion.limits import StudyBudget, StudyClock
from radfusion.predictor import PreparedCase, prepare_case
from radfusion.preprocess import ModelInputs
from radfusion.serving.orphans import exit_with_parent
from radfusion.serving.patient_data import PatientData
from radfusion.serving.scoring.rows import fill_imputation, fill_series, new_row
from radfusion.serving.scoring.sources import (
    ScanResult,
    ScanUnit,
    StudyRef,
    local_study_files,
    scan_unit,
)
from radfusion.serving.study_files import Budget


@dataclass
class PreparedStudy:
    """A row under construction plus the model inputs (None when the study failed)."""

    row: dict
    inputs: ModelInputs | None


def prepare_study(
    contract: ModelContract, study: StudyRef, patient: PatientData, budget: StudyBudget | None = None
) -> PreparedStudy:
    budget = budget or StudyBudget()
    row = new_row(contract, study.study_uid, study.patient_id, study.n_instances)
    return _prepare(row, patient, lambda: _read_case(contract, study, patient, budget), "the study's files")


def prepare_patient(contract: ModelContract, patient_id: str, patient: PatientData) -> PreparedStudy:
    """A table-only run's case: the patient's table values alone (no study), under the
    same boundary as a study's. The row's study columns stay empty."""
    row = new_row(contract, None, patient_id, 0)
    return _prepare(
        row, patient, lambda: prepare_case(contract, None, patient.genomics, patient.clinical), "the patient's tables"
    )


def _prepare(row: dict, patient: PatientData, read: Callable[[], PreparedCase], where: str) -> PreparedStudy:
    started = time.perf_counter()
    row.update(patient.sources())
    inputs = None
    try:
        patient.check()  # before any fetch: a study the model cannot take costs nothing
        case = read()
        inputs = case.inputs  # finite as float32: the core checks (invalid_value)
        fill_imputation(row, inputs)
        if case.study is not None:
            fill_series(row, case.study)
    except Exception as exc:  # noqa: BLE001 - one case never stops the run
        # input_error keeps the kind and never quotes the library's message (names, IDs, paths).
        error = input_error(exc, where)
        row["error"] = f"{error.kind}: {error.message}"
        inputs = None
    row["prepare_seconds"] = time.perf_counter() - started
    return PreparedStudy(row, inputs)


def _read_case(contract: ModelContract, study: StudyRef, patient: PatientData, budget: StudyBudget) -> PreparedCase:
    if not contract.uses_image:
        return prepare_case(contract, None, patient.genomics, patient.clinical, budget=budget)
    clock = budget.start()
    with local_study_files(study, Budget.of(budget.max_bytes, budget.max_files)) as paths:
        clock.check_time("bringing its files to disk")
        return prepare_case(contract, paths, patient.genomics, patient.clinical, budget=_left(budget, clock))


def _left(budget: StudyBudget, clock: StudyClock) -> StudyBudget:
    """What is left of the study's seconds once its files are on disk: the core's own
    clock starts when it is called."""
    return replace(budget, max_seconds=max(0.0, budget.max_seconds - (time.monotonic() - clock.started)))


# ---- worker-process side of the local engine ----------------------------------------

_contract: ModelContract | None = None
_budget: StudyBudget | None = None


def set_contract(contract: ModelContract, budget: StudyBudget | None = None) -> None:
    global _contract, _budget
    _contract, _budget = contract, budget


def init_worker(contract: ModelContract, budget: StudyBudget | None = None) -> None:
    # First: reader warnings quote UIDs and paths (folders named after patients). They
    # reach stderr as in the parent process, rewritten.
    log_privacy.install()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    set_contract(contract, budget)
    # Ctrl-C reaches the whole process group: the parent commits and stops the pool.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # A worker outlives a parent killed with SIGKILL (nothing tells it); leave then.
    exit_with_parent(grace_s=0.0)


def prepare_task(study: StudyRef, patient: PatientData) -> PreparedStudy:
    assert _contract is not None, "worker not initialised"
    return prepare_study(_contract, study, patient, _budget)


def scan_task(unit: ScanUnit) -> ScanResult:
    return scan_unit(unit)
