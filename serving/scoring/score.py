"""Score every study of an archive into one Parquet file: one row per study.

    radfusion score --archive DIR|ZIP|URL --genomics FILE [--clinical FILE] --model M.onnx --out scores.parquet

The archive is a folder tree (any ``*.zip`` inside is read too), a zip file, or a
DICOMweb root URL (QIDO-RS lists the studies, WADO-RS fetches each one). Studies are
joined to genomics and clinical covariates by PatientID (serving/patients.py;
each row says where both came from, why its series was chosen and what geometry was
repaired), prepared with the shared preprocessing in worker processes and run through
ONNX Runtime in batches, all three stages overlapping (serving/scoring/local_engine.py),
or on Ray Data with ``engine="ray"`` (serving/scoring/ray_engine.py).

A study that cannot be read or fetched, or that would cost more than its budget
(radfusion.limits.StudyBudget, set with ``study_budget``: stored bytes and files, counted
as zip members and DICOMweb instances stream in, decoded bytes, voxels, seconds) gets a
row with ``error`` set ("<kind>: <reason>", kinds as in docs/errors.md) and never stops
the run or costs the other studies of its batch. A file whose identifiers cannot be read
belongs to no study: it is skipped, and the summary counts it by reason
(``skipped_by_reason``), as it counts folders and zips that could not be read at all
(``failed_units``); neither names a file. Rows are committed in part
files and compacted at the end (serving/scoring/writer.py): interrupt the run (Ctrl-C,
kill -9) and run the same command again, and every study still ends with exactly one
row. The output file is only ever replaced whole."""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections import Counter
from pathlib import Path

import pyarrow as pa

from radfusion.limits import StudyBudget
from radfusion.runtime import OnnxModel
from radfusion.serving.modelref import resolve_model_path
from radfusion.serving.patients import PatientTable, PatientTableError, PatientTables
from radfusion.serving.scoring.progress import Progress
from radfusion.serving.scoring.rows import error_kind, output_schema, prob_column
from radfusion.serving.scoring.sources import is_dicomweb
from radfusion.serving.scoring.writer import PartWriter, ResumeError

__all__ = ["PatientTableError", "ResumeError", "output_schema", "prob_column", "score_archive"]

log = logging.getLogger(__name__)


def default_workers() -> int:
    return max(1, os.cpu_count() or 1)


def score_archive(
    archive: Path | str,
    model_path: Path | str,
    out: Path,
    genomics: Path | None = None,
    batch_size: int = 16,
    device: str = "auto",
    progress: bool = True,
    *,
    workers: int | None = None,
    engine: str = "local",
    chunk_size: int = 256,
    fresh: bool = False,
    threads: int | None = None,
    ray_actors: int = 1,
    gpus_per_actor: float = 0.0,
    clinical: Path | None = None,
    study_budget: StudyBudget | None = None,
) -> dict:
    """Score every study of ``archive``; returns a summary of the run.

    ``workers``: processes that read and preprocess studies (0: all in this process).
    ``chunk_size``: rows per committed part file. ``fresh``: ignore earlier results.
    ``threads``: ONNX Runtime intra-op threads (default: the cores the workers leave
    free, at least 1; ORT's choice with the Ray engine or ``workers=0``).
    ``ray_actors`` / ``gpus_per_actor``: the Ray engine's inference actor pool.
    ``genomics`` / ``clinical``: tables joined on PatientID; a table the model requires
    but that is not given, or that lacks the model's columns, raises PatientTableError.
    ``study_budget``: what one study may cost (default: StudyBudget's defaults)."""
    if batch_size < 1 or chunk_size < 1:
        raise ValueError("batch_size and chunk_size must be at least 1")
    if engine not in ("local", "ray"):
        raise ValueError(f"unknown engine {engine!r} (use 'local' or 'ray')")
    workers = default_workers() if workers is None else workers
    study_budget = study_budget or StudyBudget()
    if threads is None and engine == "local" and workers > 0:
        # The workers keep their cores busy; more ORT threads than the cores they leave
        # free only fight them for CPU (and spin-wait between batches).
        threads = max(1, (os.cpu_count() or 1) - workers)
    started = time.perf_counter()
    out = Path(out)
    archive = str(archive) if is_dicomweb(archive) else str(Path(archive).resolve())
    model_file = resolve_model_path(model_path)
    model = OnnxModel(model_file, device=device, threads=threads)
    patients = PatientTables.from_paths(model.contract, genomics, clinical)
    identity = run_identity(model, model_file, patients, archive)
    writer = PartWriter(out, output_schema(model.contract), identity, chunk_size=chunk_size, fresh=fresh)
    log.info(
        "scoring with %s on %s, engine %s, %d workers, batch %d",
        identity["model"],
        model.provider,
        engine,
        workers,
        batch_size,
    )
    meter = Progress(enabled=progress)
    with writer.guarded():
        if engine == "ray":
            from radfusion.serving.scoring.ray_engine import RayEngine

            stats = RayEngine(
                model_file, model.contract, batch_size, ray_actors, gpus_per_actor, device, budget=study_budget
            ).run(archive, patients, writer, meter)
        else:
            from radfusion.serving.scoring.local_engine import LocalEngine

            stats = LocalEngine(model, workers, batch_size, budget=study_budget).run(archive, patients, writer, meter)
        meter.close()
        result = writer.finish()
    seconds = time.perf_counter() - started
    summary = _summary(result, stats, writer.committed_this_run, seconds)
    summary.update(
        out=str(out),
        model=identity["model"],
        provider=model.provider,
        engine=engine,
        workers=workers,
        batch_size=batch_size,
        threads=threads,
    )
    log.info(
        "scored %d, failed %d %s, %.1f studies/s",
        summary["scored"],
        summary["failed"],
        summary["failed_by_reason"],
        summary["studies_per_second"],
    )
    if summary["skipped_files"] or summary["failed_units"]:
        log.warning(
            "%d file(s) belong to no study %s; %d folder(s)/zip(s) could not be read %s",
            summary["skipped_files"],
            summary["skipped_by_reason"],
            sum(summary["failed_units"].values()),
            summary["failed_units"],
        )
    return summary


def _summary(result: pa.Table, stats, processed: int, seconds: float) -> dict:
    errors = result.column("error").to_pylist()
    by_reason = Counter(error_kind(e) for e in errors if e is not None)
    failed = sum(by_reason.values())
    sources = {
        column: dict(sorted(Counter(v for v in result.column(column).to_pylist() if v is not None).items()))
        for column in ("genomics_source", "clinical_source")
    }
    corrected = sum(bool(c) for c in result.column("geometry_corrections").to_pylist())
    return {
        "studies": result.num_rows,
        "scored": result.num_rows - failed,
        "failed": failed,
        "failed_by_reason": dict(sorted(by_reason.items())),
        "skipped_files": stats.skipped_files,
        "skipped_by_reason": stats.skipped_by_reason,  # files that belong to no study found
        "failed_units": stats.failed_units,  # folders and zip files not readable at all
        "geometry_corrected": corrected,  # studies whose series the reader repaired
        **sources,
        "processed_this_run": processed,
        "taken_from_earlier_runs": stats.already_done,
        "seconds": round(seconds, 3),
        "studies_per_second": round(processed / seconds, 2) if seconds > 0 else 0.0,
    }


def run_identity(model: OnnxModel, model_file: Path, patients: PatientTables, archive: str | None) -> dict:
    """What a run's rows depend on; a resume must match it (serving/scoring/writer.py).
    ``archive`` None: a table-only run (serving/scoring/table.py)."""
    return {
        "model": f"{model.contract.name}:{model.contract.version}",
        "model_sha256": file_sha256(model_file),
        # Tables the model does not use change no row: they do not stop a resume.
        "genomics_sha256": _table_sha256(patients.genomics),
        "clinical_sha256": _table_sha256(patients.clinical),
        "archive": archive,
    }


def _table_sha256(table: PatientTable | None) -> str | None:
    return file_sha256(table.path) if table is not None and table.path is not None else None


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
