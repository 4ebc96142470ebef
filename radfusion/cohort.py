"""A training cohort on disk: DICOM studies + genomics table + clinical/outcome table,
joined by PatientID. Study discovery is cached by a fingerprint of the file tree so
that several training runs over one cohort read headers once."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

import pandas as pd

from radfusion.cache import cache_root, make_private, source_key
from radfusion.dicom import find_studies

# Where radfusion 0.1 kept its caches, inside the input tree: skipped when a tree is
# fingerprinted, as a tree that still holds one is otherwise unchanged.
CACHE_DIR = ".radfusion"


def tree_fingerprint(root: Path) -> str:
    """Hash of relative paths, sizes and mtimes: changes when any file does."""
    digest = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        if CACHE_DIR in dirnames:
            dirnames.remove(CACHE_DIR)
        for name in sorted(filenames):
            path = Path(dirpath) / name
            stat = path.stat()
            digest.update(f"{path.relative_to(root)}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def index_studies(dicom_root: Path, cache_dir: Path | None = None) -> pd.DataFrame:
    """One row per study: patient_id, study_uid, files (list of paths relative to root).
    Kept in ``cache_dir`` (default radfusion.cache.cache_root()) until a file changes."""
    dicom_root = Path(dicom_root)
    fingerprint = tree_fingerprint(dicom_root)
    cache = Path(cache_dir or cache_root()) / "studies" / f"{source_key(dicom_root)}-{fingerprint[:16]}.parquet"
    if cache.exists():
        return pd.read_parquet(cache)
    discovery = find_studies(dicom_root)
    rows = [
        {
            "patient_id": study.patient_id,
            "study_uid": uid,
            "files": sorted(str(h.path.relative_to(dicom_root)) for h in study.instances),
        }
        for uid, study in sorted(discovery.studies.items())
    ]
    table = pd.DataFrame(rows, columns=["patient_id", "study_uid", "files"])
    make_private(cache.parent)
    # A name of its own: runs on other processes or nodes may index the same tree.
    handle, tmp = tempfile.mkstemp(dir=cache.parent, suffix=".tmp")
    os.close(handle)
    table.to_parquet(tmp)
    Path(tmp).replace(cache)
    return table


def cohort_hash(*paths: Path) -> str:
    """Identity of the data a model was trained on, recorded in its contract."""
    digest = hashlib.sha256()
    for path in paths:
        path = Path(path)
        if path.is_dir():
            digest.update(tree_fingerprint(path).encode())
        elif path.exists():
            digest.update(path.read_bytes())
        else:  # a part the cohort does not have (no dicom/ folder, no genomics table)
            digest.update(f"absent:{path.name}".encode())
    return digest.hexdigest()[:16]
