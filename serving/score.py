"""Score every study of an archive into one Parquet file: one row per study.

    radfusion score --archive DIR --genomics FILE --model M.onnx --out scores.parquet

Studies are found by content (radfusion.dicom.find_studies), joined to genomics by
PatientID, prepared with the shared preprocessing and run through ONNX Runtime in
batches. A study that cannot be read gets a row with ``error`` set ("<kind>: <reason>")
and never stops the run or costs the other studies of its batch. The Parquet file is
written under a temporary name and renamed, so a reader never sees half a file."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from radfusion.contract import ModelContract
from radfusion.dicom import find_studies
from radfusion.errors import RadfusionInputError
from radfusion.genomics import load_genomics_table, row_as_mapping
from radfusion.predictor import PreparedCase, prepare_case
from radfusion.runtime import OnnxModel
from serving.modelref import resolve_model_path

log = logging.getLogger(__name__)


@dataclass
class _Pending:
    row: dict
    case: PreparedCase


def output_schema(contract: ModelContract) -> pa.Schema:
    return pa.schema(
        [
            ("study_instance_uid", pa.string()),
            ("patient_id", pa.string()),
            ("series_instance_uid", pa.string()),
            ("predicted_label", pa.string()),
            *[(prob_column(label), pa.float64()) for label in contract.labels],
            ("modalities_used", pa.string()),
            ("model_name", pa.string()),
            ("model_version", pa.string()),
            ("error", pa.string()),
        ]
    )


def prob_column(label: str) -> str:
    return f"prob_{label}"


def _empty_row(contract: ModelContract, study_uid: str, patient_id: str) -> dict:
    row = dict.fromkeys(output_schema(contract).names)
    row.update(
        study_instance_uid=study_uid,
        patient_id=patient_id,
        model_name=contract.name,
        model_version=contract.version,
    )
    return row


def _fill(row: dict, contract: ModelContract, case: PreparedCase, probabilities: np.ndarray) -> None:
    for label, p in zip(contract.labels, probabilities):
        row[prob_column(label)] = float(p)
    row["predicted_label"] = contract.labels[int(np.argmax(probabilities))]
    row["modalities_used"] = ",".join(case.inputs.modalities_used)
    row["series_instance_uid"] = case.study.series_uid if case.study is not None else None


def _run(model: OnnxModel, cases: list[PreparedCase]) -> np.ndarray:
    return model.run(
        np.stack([c.inputs.image for c in cases]),
        np.stack([c.inputs.genomics for c in cases]),
        np.stack([c.inputs.presence for c in cases]),
    )


def _flush(model: OnnxModel, pending: list[_Pending]) -> None:
    """Infer a batch; if the batch fails, retry case by case so only the culprit fails."""
    if not pending:
        return
    try:
        probabilities = _run(model, [p.case for p in pending])
    except Exception:  # noqa: BLE001 - isolate the case that breaks the runtime
        for item in pending:
            try:
                _fill(item.row, model.contract, item.case, _run(model, [item.case])[0])
            except Exception as exc:  # noqa: BLE001
                item.row["error"] = f"inference_failed: {type(exc).__name__}"
    else:
        for item, probs in zip(pending, probabilities):
            _fill(item.row, model.contract, item.case, probs)
    pending.clear()


def _prepare(contract: ModelContract, paths: list[Path], genomics: dict | None) -> PreparedCase | str:
    """The prepared case, or the error text for the row."""
    try:
        return prepare_case(contract, paths, genomics)
    except RadfusionInputError as exc:
        return f"{exc.kind}: {exc.message}"
    except Exception as exc:  # noqa: BLE001 - one unreadable study never stops the archive
        # Exception messages can quote header values (names, IDs): keep only the type.
        return f"unprocessable_study: study could not be read ({type(exc).__name__})"


def score_rows(
    model: OnnxModel,
    studies: Iterable[tuple[str, str, list[Path]]],
    genomics: pd.DataFrame | None,
    batch_size: int = 16,
    progress: bool = True,
    total: int | None = None,
) -> list[dict]:
    """Rows for (study_uid, patient_id, paths) items, in input order."""
    contract = model.contract
    rows: list[dict] = []
    pending: list[_Pending] = []
    for study_uid, patient_id, paths in tqdm(
        studies, total=total, desc="scoring", unit="study", disable=not progress
    ):
        row = _empty_row(contract, study_uid, patient_id)
        rows.append(row)
        mapping = row_as_mapping(genomics, patient_id) if genomics is not None else None
        prepared = _prepare(contract, paths, mapping)
        if isinstance(prepared, str):
            row["error"] = prepared
            continue
        pending.append(_Pending(row, prepared))
        if len(pending) >= batch_size:
            _flush(model, pending)
    _flush(model, pending)
    return rows


def write_parquet_atomically(table: pa.Table, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.partial")
    try:
        pq.write_table(table, tmp)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)


def score_archive(
    archive: Path,
    model_path: Path | str,
    out: Path,
    genomics: Path | None = None,
    batch_size: int = 16,
    device: str = "auto",
    progress: bool = True,
) -> dict:
    """Score every study under ``archive``; returns a summary of the run."""
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    started = time.perf_counter()
    archive, out = Path(archive), Path(out)
    model = OnnxModel(resolve_model_path(model_path), device=device)
    table = load_genomics_table(genomics) if genomics is not None else None
    discovery = find_studies(archive)
    log.info(
        "scoring %d studies (%d files skipped) with %s %s on %s",
        len(discovery.studies),
        len(discovery.skipped),
        model.contract.name,
        model.contract.version,
        model.provider,
    )
    studies = (
        (uid, files.patient_id, [h.path for h in files.instances])
        for uid, files in sorted(discovery.studies.items())
    )
    rows = score_rows(model, studies, table, batch_size, progress, total=len(discovery.studies))
    schema = output_schema(model.contract)
    write_parquet_atomically(pa.Table.from_pylist(rows, schema=schema), out)
    failed = sum(row["error"] is not None for row in rows)
    return {
        "studies": len(rows),
        "scored": len(rows) - failed,
        "failed": failed,
        "skipped_files": len(discovery.skipped),
        "out": str(out),
        "model": f"{model.contract.name}:{model.contract.version}",
        "provider": model.provider,
        "seconds": round(time.perf_counter() - started, 3),
    }
