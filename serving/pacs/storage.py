"""Where the listener keeps what it received and what it produced, under one folder:

    <work>/state.sqlite
    <work>/studies/<study key>/<instance key>.dcm   received instances
    <work>/results/<study key>-v<version>.dcm      SR documents

Keys are hashes of the UIDs: paths and log lines then carry no DICOM identifier, and a
study's key is stable across restarts. Files are written to a temporary name, flushed
to disk and renamed, so a file under its final name is always complete."""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
from pathlib import Path

STATE_FILE = "state.sqlite"


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

    def remove_study_dir(self, study_uid: str) -> None:
        """Remove a study's folder of received instances once it is empty."""
        # Not empty (an instance arrived meanwhile) or already gone: left as it is.
        with contextlib.suppress(OSError):
            (self.studies / study_key(study_uid)).rmdir()


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
