"""The per-study work before inference: bring the study's files to local disk, read
and preprocess them with the shared core (radfusion.predictor.prepare_case), with the
patient's genomics and clinical covariates looked up by the engine
(serving/patients.py). Runs in worker processes (local engine) or Ray tasks;
the same function either way."""

from __future__ import annotations

import os
import signal
import threading
import time
from dataclasses import dataclass

from radfusion.contract import ModelContract
from radfusion.errors import RadfusionInputError
from radfusion.predictor import prepare_case
from radfusion.preprocess import ModelInputs
from radfusion.serving.patient_data import PatientData
from radfusion.serving.scoring.rows import fill_series, new_row
from radfusion.serving.scoring.sources import ScanResult, ScanUnit, StudyRef, local_study_files, scan_unit


@dataclass
class PreparedStudy:
    """A row under construction plus the model inputs (None when the study failed)."""

    row: dict
    inputs: ModelInputs | None


def prepare_study(contract: ModelContract, study: StudyRef, patient: PatientData) -> PreparedStudy:
    started = time.perf_counter()
    row = new_row(contract, study.study_uid, study.patient_id, study.n_instances)
    row.update(patient.sources())
    inputs = None
    try:
        patient.check()  # before any fetch: a study the model cannot take costs nothing
        if contract.uses_image:
            with local_study_files(study) as paths:
                case = prepare_case(contract, paths, patient.genomics, patient.clinical)
        else:
            case = prepare_case(contract, None, patient.genomics, patient.clinical)
        inputs = case.inputs
        if case.study is not None:
            fill_series(row, case.study)
    except RadfusionInputError as exc:
        row["error"] = f"{exc.kind}: {exc.message}"
    except Exception as exc:  # noqa: BLE001 - one unreadable study never stops the archive
        # Exception messages can quote header values (names, IDs): keep only the type.
        row["error"] = f"unprocessable_study: study could not be read ({type(exc).__name__})"
    row["prepare_seconds"] = time.perf_counter() - started
    return PreparedStudy(row, inputs)


# ---- worker-process side of the local engine ----------------------------------------

_contract: ModelContract | None = None


def set_contract(contract: ModelContract) -> None:
    global _contract
    _contract = contract


def init_worker(contract: ModelContract, parent_pid: int) -> None:
    set_contract(contract)
    # Ctrl-C reaches the whole process group: the parent commits and stops the pool.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # A worker outlives a parent killed with SIGKILL (nothing tells it); leave then.
    threading.Thread(target=_exit_with_parent, args=(parent_pid,), daemon=True).start()


def _exit_with_parent(parent_pid: int) -> None:
    while os.getppid() == parent_pid:
        time.sleep(0.5)
    os._exit(0)


def prepare_task(study: StudyRef, patient: PatientData) -> PreparedStudy:
    assert _contract is not None, "worker not initialised"
    return prepare_study(_contract, study, patient)


def scan_task(unit: ScanUnit) -> ScanResult:
    return scan_unit(unit)
