"""Score the patients of a table, without images: one row per patient.

    radfusion score --genomics FILE [--clinical FILE] --model M.onnx --out scores.parquet

For a model that needs no image (genomics only, clinical only, genomics + clinical, or
a fusion model that may miss its image, then fed as absent). The patients are those
of the tables the model uses (a patient in one table and not the other gets what the
model makes of that, or a ``patient_data_missing`` row where the model requires both).
Each patient goes through the same preprocessing, missing-data policy included, and
the same row schema as an archive run (serving/scoring/rows.py; study and series
columns empty), with the same boundary: a patient whose values cannot be used (too
much missing, a value that is not a number) gets a row with ``error`` set and never
stops the run. Rows are committed and compacted as in an archive run
(serving/scoring/writer.py, keyed by ``patient_id``): run the same command again after
an interruption and every patient still ends with exactly one row.

Everything runs in this process: a patient's table row takes microseconds to prepare,
so worker processes would cost more than they save; inference runs in batches."""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from pathlib import Path

import pyarrow as pa

from radfusion.runtime import OnnxModel
from radfusion.serving.modelref import resolve_model_path
from radfusion.serving.patients import PatientTableError, PatientTables
from radfusion.serving.scoring.inference import infer_batch
from radfusion.serving.scoring.prepare import PreparedStudy, prepare_patient
from radfusion.serving.scoring.progress import Progress
from radfusion.serving.scoring.rows import error_kind, output_schema
from radfusion.serving.scoring.score import run_identity
from radfusion.serving.scoring.writer import PartWriter

__all__ = ["patient_ids", "score_table"]

log = logging.getLogger(__name__)


def score_table(
    model_path: Path | str,
    out: Path,
    genomics: Path | None = None,
    clinical: Path | None = None,
    batch_size: int = 256,
    device: str = "auto",
    progress: bool = True,
    *,
    chunk_size: int = 256,
    fresh: bool = False,
    threads: int | None = None,
) -> dict:
    """Score every patient of the ``genomics`` / ``clinical`` tables the model uses;
    returns a summary of the run. A model that requires an image, or no table the
    model uses, raises PatientTableError (as a table the model requires but lacks)."""
    if batch_size < 1 or chunk_size < 1:
        raise ValueError("batch_size and chunk_size must be at least 1")
    started = time.perf_counter()
    out = Path(out)
    model_file = resolve_model_path(model_path)
    model = OnnxModel(model_file, device=device, threads=threads)
    contract = model.contract
    if contract.uses_image and not contract.may_miss("image"):
        raise PatientTableError("the model requires an image for every case: score it on an archive (--archive)")
    patients = PatientTables.from_paths(contract, genomics, clinical)
    if patients.genomics is None and patients.clinical is None:
        uses = [
            kind for kind, used in (("genomics", contract.uses_genomics), ("clinical", contract.uses_clinical)) if used
        ]
        raise PatientTableError(f"scoring without an archive needs the model's {' or '.join(uses)} table")
    writer = PartWriter(
        out,
        output_schema(contract),
        run_identity(model, model_file, patients, None),
        chunk_size=chunk_size,
        fresh=fresh,
        key="patient_id",
    )
    meter = Progress(enabled=progress, unit="patient")
    ids = patient_ids(patients)
    todo = [pid for pid in ids if writer.needs(pid)]
    meter.found(len(todo))
    meter.discovery_finished()
    log.info("scoring %d patients (%d from earlier runs) with %s", len(todo), len(ids) - len(todo), contract.name)
    with writer.guarded():
        for start in range(0, len(todo), batch_size):
            prepared = [
                prepare_patient(contract, pid, patients.lookup(pid)) for pid in todo[start : start + batch_size]
            ]
            _infer(model, prepared)
            rows = [p.row for p in prepared]
            for row in rows:
                writer.add(row)
            meter.advance(rows)
        meter.close()
        result = writer.finish()
    seconds = time.perf_counter() - started
    summary = _summary(result, writer.committed_this_run, len(ids) - len(todo), seconds)
    summary.update(
        out=str(out), model=f"{contract.name}:{contract.version}", provider=model.provider, batch_size=batch_size
    )
    log.info("scored %d, failed %d %s", summary["scored"], summary["failed"], summary["failed_by_reason"])
    return summary


def patient_ids(patients: PatientTables) -> list[str]:
    """Every patient of the tables the model uses, in id order."""
    ids: set[str] = set()
    for table in (patients.genomics, patients.clinical):
        if table is not None:
            ids.update(str(pid) for pid in table.frame.index)
    return sorted(ids)


def _infer(model: OnnxModel, prepared: list[PreparedStudy]) -> None:
    infer_batch(model, [p for p in prepared if p.inputs is not None])


def _summary(result: pa.Table, processed: int, earlier: int, seconds: float) -> dict:
    errors = result.column("error").to_pylist()
    by_reason = Counter(error_kind(e) for e in errors if e is not None)
    failed = sum(by_reason.values())
    imputed = [n for n in result.column("imputed_features").to_pylist() if n]
    absent = Counter(b for text in result.column("absent_blocks").to_pylist() if text for b in text.split(","))
    unseen = Counter(
        covariate
        for text in result.column("imputation").to_pylist()
        if text
        for fill in json.loads(text).values()
        for covariate in fill.get("unseen_levels", [])
    )
    return {
        "patients": result.num_rows,
        "scored": result.num_rows - failed,
        "failed": failed,
        "failed_by_reason": dict(sorted(by_reason.items())),
        **{
            column: dict(sorted(Counter(v for v in result.column(column).to_pylist() if v is not None).items()))
            for column in ("genomics_source", "clinical_source")
        },
        # The missing-data policy at work: patients with imputed values, blocks fed as
        # absent (too much missing) and covariates with a level the model never learned.
        "patients_imputed": len(imputed),
        "imputed_features": sum(imputed),
        "absent_blocks": dict(sorted(absent.items())),
        "unseen_levels": dict(sorted(unseen.items())),
        "processed_this_run": processed,
        "taken_from_earlier_runs": earlier,
        "seconds": round(seconds, 3),
        "patients_per_second": round(processed / seconds, 2) if seconds > 0 else 0.0,
    }
