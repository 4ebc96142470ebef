"""Where the listener keeps what it received and what it produced, under one folder:

    <work>/state.sqlite
    <work>/studies/<study key>/<instance key>.dcm   received instances
    <work>/results/<study key>-v<version>.dcm      SR documents
    <work>/results/<study key>-v<version>-saliency.dcm   saliency maps (--send-saliency)

Keys are hashes of the UIDs: paths and log lines then carry no DICOM identifier, and a
study's key is stable across restarts. Files are written to a temporary name, flushed
to disk and renamed, so a file under its final name is always complete."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import threading
from pathlib import Path

STATE_FILE = "state.sqlite"

log = logging.getLogger("radfusion.pacs")


def study_key(study_uid: str) -> str:
    """Short stable name for a study in logs, paths and the status table."""
    return hashlib.sha256(study_uid.encode()).hexdigest()[:12]


def _instance_key(sop_uid: str) -> str:
    return hashlib.sha256(sop_uid.encode()).hexdigest()[:20]


class WorkDir:
    def __init__(self, root: Path | str):
        self.root = Path(root)
        self.studies = self.root / "studies"
        self.results = self.root / "results"
        for folder in (self.root, self.studies, self.results):
            folder.mkdir(parents=True, exist_ok=True)

    @property
    def state_path(self) -> Path:
        return self.root / STATE_FILE

    def instance_path(self, study_uid: str, sop_uid: str) -> Path:
        return self.studies / study_key(study_uid) / f"{_instance_key(sop_uid)}.dcm"

    def result_path(self, study_uid: str, version: int) -> Path:
        return self.results / f"{study_key(study_uid)}-v{version}.dcm"

    def delete_files(self, study_uid: str, paths: list[str]) -> int:
        """Delete a study's files (already gone: fine), the saliency map beside each of its
        SR documents, and its emptied folder; returns how many could not be deleted (each
        logged, by the reason only)."""
        files = [Path(p) for p in paths]
        files += [saliency_path(f) for f in files if f.parent == self.results]
        failed = 0
        for path in files:
            try:
                path.unlink(missing_ok=True)
            except OSError as exc:
                failed += 1
                log.warning("study %s: a file could not be deleted (%s)", study_key(study_uid), type(exc).__name__)
        self.remove_study_dir(study_uid)
        return failed

    def remove_study_dir(self, study_uid: str) -> None:
        """Remove a study's folder of received instances once it is empty."""
        # Not empty (an instance arrived meanwhile) or already gone: left as it is.
        with contextlib.suppress(OSError):
            (self.studies / study_key(study_uid)).rmdir()


def saliency_path(sr_path: Path) -> Path:
    """Where the saliency map of the SR at ``sr_path`` is kept (beside it)."""
    return sr_path.with_name(f"{sr_path.stem}-saliency.dcm")


def write_durably(path: Path, data: bytes) -> None:
    """Write ``data`` so that ``path`` exists only once it is complete and on disk."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # Unique per thread: two associations may deliver the same instance at once.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    with open(tmp, "wb") as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path)
