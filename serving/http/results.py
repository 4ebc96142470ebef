"""The results of STOW-RS studies (prediction and failure SRs), kept on disk so that a
client retrieves them with WADO-RS, also after the service restarted.

Layout: ``<root>/<study UID>/<series UID>/<SOP instance UID>.dcm`` (``.failure.dcm``
for a report that the study could not be scored, ``.map.dcm`` for a saliency map: only
reports count as a study's versions); the UIDs are checked to be UIDs
before they name a path. A file is written under a temporary name
and renamed into place, so a crash leaves no half-written result. Bounded twice: a
result older than the retention period is deleted, and beyond the size cap the oldest
go first. Both are enforced on every write and when the service starts."""

from __future__ import annotations

import fcntl
import io
import os
import re
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset

from radfusion.serving.http.delivery import CLAIMED, MARKER
from radfusion.serving.http.stow import ResultNotFoundError

_UID = re.compile(r"[0-9]+(\.[0-9]+)*")
_FAILURE = ".failure.dcm"
_MAP = ".map.dcm"
_SUFFIX = {"prediction": ".dcm", "failure": _FAILURE, "map": _MAP}


@dataclass(frozen=True)
class EarlierResult:
    """The last result kept for a study: its SR series, instance, version and kind."""

    series_uid: str
    sop_uid: str
    version: int
    is_prediction: bool


def _checked(uid: str) -> str:
    if len(uid) > 64 or not _UID.fullmatch(uid):
        raise ResultNotFoundError("not a DICOM UID")
    return uid


class ResultStore:
    def __init__(self, root: Path, keep_seconds: float, max_bytes: int):
        self.root = root
        self.keep_seconds = keep_seconds
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._version_lock = threading.Lock()
        root.mkdir(parents=True, exist_ok=True)
        self.purge()

    @contextmanager
    def versioning(self) -> Iterator[None]:
        """Held while a study's latest version is read and the next one kept, so that two
        requests for one study (threads of a worker, or the service's worker processes)
        never issue the same version."""
        with self._version_lock, open(self.root / ".versions.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def put(self, result: Dataset, kind: str = "prediction") -> Path:
        """Keep ``result`` (durably, under its UIDs), then apply the bounds. ``kind``:
        "prediction" or "failure" (an SR, a version of the study's result) or "map"."""
        buffer = io.BytesIO()
        result.save_as(buffer, enforce_file_format=True)
        folder = self.root / _checked(result.StudyInstanceUID) / _checked(result.SeriesInstanceUID)
        target = folder / (_checked(result.SOPInstanceUID) + _SUFFIX[kind])
        with self._lock:
            folder.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=folder, prefix=".writing-", delete=False) as out:
                out.write(buffer.getvalue())
                out.flush()
                os.fsync(out.fileno())
            os.replace(out.name, target)
        self.purge(keep=target)
        return target

    def find(self, study_uid: str, series_uid: str | None = None, sop_uid: str | None = None) -> list[Path]:
        """The kept results of a study (or one series, or one instance), oldest first;
        ResultNotFoundError when there is none."""
        folder = self.root / _checked(study_uid)
        if series_uid is not None:
            folder = folder / _checked(series_uid)
        if sop_uid is not None:
            candidates = [folder / f"{_checked(sop_uid)}{suffix}" for suffix in _SUFFIX.values()]
            found = [path for path in candidates if path.is_file()]
        else:
            found = [p for p, _ in sorted(_stats(folder.glob("**/*.dcm")), key=lambda f: f[1].st_mtime)]
        if not found:
            raise ResultNotFoundError("this service holds no result for it")
        return found

    def latest(self, study_uid: str) -> EarlierResult | None:
        """The newest report of the study, read from its header (survives a restart)."""
        try:
            newest = [path for path in self.find(study_uid) if not path.name.endswith(_MAP)][-1]
            ds = pydicom.dcmread(newest, stop_before_pixels=True)
        except (ResultNotFoundError, IndexError, OSError):
            return None
        version = int(ds.get("InstanceNumber") or 1)
        return EarlierResult(ds.SeriesInstanceUID, ds.SOPInstanceUID, version, not newest.name.endswith(_FAILURE))

    def purge(self, now: float | None = None, keep: Path | None = None) -> int:
        """Delete results past the retention period, then the oldest beyond the size cap;
        never ``keep`` (the result just written, even when it alone exceeds the cap)."""
        now = time.time() if now is None else now
        with self._lock:
            files = sorted(_stats(self.root.glob("*/*/*.dcm")), key=lambda f: f[1].st_mtime)
            deleted = 0
            total = sum(stat.st_size for _, stat in files)
            for path, stat in files:
                if now - stat.st_mtime <= self.keep_seconds and total <= self.max_bytes:
                    break
                if path == keep:
                    continue
                for gone in (path, *(path.with_name(path.name + s) for s in (MARKER, CLAIMED))):
                    gone.unlink(missing_ok=True)  # an undelivered result's marker goes with it
                total -= stat.st_size
                deleted += 1
            for folder in sorted(self.root.glob("*/*"), reverse=True) + sorted(self.root.glob("*")):
                if folder.is_dir() and not any(folder.iterdir()):
                    folder.rmdir()
        return deleted


def _stats(paths: Iterable[Path]) -> Iterator[tuple[Path, os.stat_result]]:
    """Each path that still exists, with its stat (another worker may purge at once)."""
    for path in paths:
        try:
            yield path, path.stat()
        except FileNotFoundError:
            continue
