"""`radfusion deid`: de-identify every DICOM file of a folder tree into another tree.

Output mirrors the input tree's shape, but every folder name is a keyed pseudonym and
every file is named by its new SOP Instance UID, so no name, ID or date in a path
survives. Two CSV files are written beside --out (never inside it, unless asked): the
patient map (original PatientID -> pseudonym, for joining genomics) and the per-file
report (input path, keyed file reference, status, reason). Both hold identifiers, so
they stay with the hospital. A file that is not written is never skipped silently: the
report and the log give its reason (not DICOM, DICOM without the Part-10 preamble and
file meta, a DICOMDIR, a duplicate SOP Instance UID, unreadable, refused), the log by
the file's keyed reference (the report's "ref"), never by its path, and the summary
counts files by reason. Nothing of such a file is written, and the run goes on.
"""

from __future__ import annotations

import csv
import io
import logging
import os
import tempfile
from collections import Counter
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pydicom
import pydicom.config
from pydicom.dataset import Dataset

from radfusion.deid.actions import PatientContext, deidentify_dataset
from radfusion.deid.dates import DateShift
from radfusion.deid.errors import DeidKeyError, DeidPathError
from radfusion.deid.keys import DeidKey
from radfusion.deid.options import DeidOptions
from radfusion.dicom.checks import cut_short
from radfusion.errors import READ_ERRORS, CorruptDicomError, RadfusionInputError

log = logging.getLogger(__name__)


MAP_COLUMNS = ["patient_id", "pseudonym", "key_fingerprint"]
REPORT_COLUMNS = ["input", "ref", "status", "reason", "output"]
MEDIA_DIRECTORY_CLASS = "1.2.840.10008.1.3.10"  # Media Storage Directory Storage (DICOMDIR)
REASON_NOT_DICOM = "not DICOM"
REASON_NO_PREAMBLE = "DICOM without the Part-10 preamble and file meta: not written"
REASON_DICOMDIR = "DICOMDIR (a media directory, not an instance): not written"
REASON_TRUNCATED = "truncated file: a value is shorter than its declared length"
REASON_DUPLICATE = "duplicate SOP Instance UID: an earlier file with it was written"


@dataclass
class DeidSummary:
    files_seen: int = 0
    written: int = 0
    skipped: int = 0
    failed: int = 0
    patients: int = 0
    studies: int = 0
    mapping: str = ""
    report: str = ""
    options: list[str] = field(default_factory=list)  # the applied options' CID 7050 codes
    reasons: dict[str, int] = field(default_factory=dict)  # files not written, by reason
    actions: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def default_side_files(out: Path) -> tuple[Path, Path]:
    """<out>-patients.csv and <out>-files.csv: siblings of the output folder."""
    return out.parent / f"{out.name}-patients.csv", out.parent / f"{out.name}-files.csv"


def deidentify_tree(
    src: Path,
    out: Path,
    key: DeidKey,
    *,
    mapping: Path | None = None,
    report: Path | None = None,
    options: DeidOptions | None = None,
) -> DeidSummary:
    options = options or DeidOptions()
    src, out = src.resolve(), out.resolve()
    _check_paths(src, out)
    default_map, default_report = default_side_files(out)
    mapping = (mapping or default_map).resolve()
    report = (report or default_report).resolve()
    for side in (mapping, report):
        if side.is_relative_to(out):
            log.warning("a side file (mapping or report) is inside the output folder: it holds original identifiers")
    patients = _load_mapping(mapping, key)

    summary = DeidSummary(mapping=str(mapping), report=str(report), options=[c.value for c in options.method_codes])
    with _values_not_quoted_in_logs():
        rows, studies, counts = _deidentify_files(src, out, key, options, patients, summary)
    _write_csv(
        mapping,
        MAP_COLUMNS,
        [
            {"patient_id": pid, "pseudonym": pseudo, "key_fingerprint": key.fingerprint}
            for pid, pseudo in sorted(patients.items())
        ],
    )
    _write_csv(report, REPORT_COLUMNS, rows)
    summary.patients, summary.studies = len(patients), len(studies)
    summary.actions = dict(sorted(counts.items()))
    summary.reasons = dict(sorted(Counter(r["reason"] for r in rows if r["status"] != "written").items()))
    log.info(
        "deid: %d files seen, %d written, %d skipped, %d failed, %d patients, %d studies",
        summary.files_seen,
        summary.written,
        summary.skipped,
        summary.failed,
        summary.patients,
        summary.studies,
    )
    for reason, n in summary.reasons.items():
        log.info("deid: %d files not written: %s", n, reason)
    return summary


@contextmanager
def _values_not_quoted_in_logs():
    """pydicom's read-time validation warnings quote element values (names, IDs): off while
    de-identifying, restored after. Values are checked again when written."""
    previous = pydicom.config.settings.reading_validation_mode
    pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
    try:
        yield
    finally:
        pydicom.config.settings.reading_validation_mode = previous


def _deidentify_files(
    src: Path, out: Path, key: DeidKey, options: DeidOptions, patients: dict[str, str], summary: DeidSummary
) -> tuple[list[dict[str, str]], set[str], Counter]:
    rows: list[dict[str, str]] = []
    studies: set[str] = set()
    counts: Counter = Counter()
    written_uids: set[str] = set()
    for path in sorted(p for p in src.rglob("*") if p.is_file()):
        summary.files_seen += 1
        rel = path.relative_to(src)
        row = {"input": rel.as_posix(), "ref": key.path_name(rel.as_posix()), "status": "", "reason": "", "output": ""}
        if not _has_dicom_preamble(path):
            row.update(status="skipped", reason=REASON_NO_PREAMBLE if _is_raw_dicom(path) else REASON_NOT_DICOM)
            summary.skipped += 1
        else:
            try:
                written, study_uid = _deidentify_file(path, rel, out, key, options, patients, counts, written_uids)
            except _NotAnInstance as exc:
                row.update(status="skipped", reason=str(exc))
                summary.skipped += 1
            except RadfusionInputError as exc:
                row.update(status="failed", reason=exc.message)
                summary.failed += 1
            except READ_ERRORS as exc:
                # The exception text may quote element values: keep only its type.
                row.update(status="failed", reason=f"unreadable or corrupt DICOM ({type(exc).__name__})")
                summary.failed += 1
            else:
                row.update(status="written", output=written.relative_to(out).as_posix())
                summary.written += 1
                studies.add(study_uid)
        if row["status"] != "written":
            log.info("deid: file %s %s: %s", row["ref"], row["status"], row["reason"])
        rows.append(row)
    return rows, studies, counts


class _NotAnInstance(Exception):
    """A DICOM file that is not a composite instance (a DICOMDIR): skipped by reason."""


def _check_paths(src: Path, out: Path) -> None:
    if not src.is_dir():
        raise DeidPathError("--dicom is not a folder")
    if out == src or out.is_relative_to(src):
        raise DeidPathError("--out must not be --dicom or inside it (its files would be read as input)")


def _has_dicom_preamble(path: Path) -> bool:
    with path.open("rb") as f:
        head = f.read(132)
    return len(head) == 132 and head[128:132] == b"DICM"


def _is_raw_dicom(path: Path) -> bool:
    """A dataset written without preamble and file meta (pre-Part-10 or a raw dump)?"""
    try:
        ds = pydicom.dcmread(io.BytesIO(path.read_bytes()), force=True, specific_tags=["SOPClassUID"])
    except Exception:  # noqa: BLE001 - anything unparseable is simply "not DICOM"
        return False
    return bool(ds.get("SOPClassUID"))


def _patient_key(ds: Dataset) -> str:
    """The identity a pseudonym stands for: PatientID, else the study (one patient per study)."""
    pid = str(ds.get("PatientID", "") or "").strip()
    return pid or f"study:{ds.get('StudyInstanceUID', '')}"


def _deidentify_file(
    path: Path,
    rel: Path,
    out: Path,
    key: DeidKey,
    options: DeidOptions,
    patients: dict[str, str],
    counts: Counter,
    written_uids: set[str],
) -> tuple[Path, str]:
    # From bytes, so that pydicom's own warnings cannot quote the (possibly identifying) path.
    ds = pydicom.dcmread(io.BytesIO(path.read_bytes()))
    if cut_short(ds):
        raise CorruptDicomError(REASON_TRUNCATED)
    media_class = str(getattr(ds, "file_meta", Dataset()).get("MediaStorageSOPClassUID", ""))
    if media_class == MEDIA_DIRECTORY_CLASS or "DirectoryRecordSequence" in ds:
        raise _NotAnInstance(REASON_DICOMDIR)
    if "SOPClassUID" not in ds or "SOPInstanceUID" not in ds:
        raise CorruptDicomError("not a DICOM instance: no SOP Class UID or SOP Instance UID")
    ds.decode()  # fail here, not half-way through writing, on a broken character set
    patient_key = _patient_key(ds)
    pseudonym = key.patient_pseudonym(patient_key)
    ctx = PatientContext(
        key=key,
        pseudonym=pseudonym,
        shift=DateShift.for_patient(key, patient_key),
        options=options,
    )
    deidentify_dataset(ds, ctx)
    if str(ds.SOPInstanceUID) in written_uids:
        raise CorruptDicomError(REASON_DUPLICATE)
    parts = rel.parent.parts
    folder = out.joinpath(*[key.path_name("/".join(parts[: i + 1])) for i in range(len(parts))])
    target = folder / f"{ds.SOPInstanceUID}.dcm"
    _save_atomically(ds, target)
    written_uids.add(str(ds.SOPInstanceUID))
    patients[patient_key] = pseudonym
    counts.update(ctx.counts)
    return target, str(ds.get("StudyInstanceUID", ""))


def _save_atomically(ds: Dataset, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, suffix=".partial")
    os.close(fd)
    try:
        ds.save_as(tmp)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _load_mapping(path: Path, key: DeidKey) -> dict[str, str]:
    """An existing patient map is extended, never overwritten with another key's pseudonyms."""
    if not path.exists():
        return {}
    with path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if any(r.get("key_fingerprint") != key.fingerprint for r in rows):
        raise DeidKeyError("the mapping file was written with another key: use that key or another --mapping")
    return {r["patient_id"]: r["pseudonym"] for r in rows}


def _write_csv(path: Path, columns: list[str], rows: list[dict[str, str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    with tmp.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)
