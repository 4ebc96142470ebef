"""Where radfusion keeps what it can recompute (the study index of a DICOM tree, the
decoded training images): a folder of the operator's choosing, never inside the input
data, which may be read-only and must stay as the hospital gave it.

The folder: ``RADFUSION_CACHE_DIR``, else ``$XDG_CACHE_HOME/radfusion``, else
``~/.cache/radfusion`` (training's ``data.cache_dir`` overrides it for one run). What is
cached there is derived from patient data (study indexes name patients; images are
pixel data): keep it where the data itself may be kept."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from radfusion.errors import UserError

CACHE_ENV = "RADFUSION_CACHE_DIR"


def cache_root() -> Path:
    """The cache folder, absolute (the demo's stages run in another working folder);
    not created here: ``make_private`` does."""
    chosen = os.environ.get(CACHE_ENV)
    if chosen:
        return Path(chosen).resolve()
    base = os.environ.get("XDG_CACHE_HOME")
    if not base:
        try:
            base = str(Path.home() / ".cache")
        except RuntimeError as exc:  # no HOME and no passwd entry (some containers)
            raise UserError(f"no cache folder: {exc}", f"set {CACHE_ENV} to a folder for radfusion's caches") from exc
    return (Path(base) / "radfusion").resolve()


def make_private(folder: Path) -> Path:
    """Create ``folder`` (and its parents) readable by its owner only: what it holds is
    derived from patient data."""
    missing = [f for f in (folder, *folder.parents) if not f.exists()]
    for f in reversed(missing):  # mkdir(parents=True) would give the parents the umask's mode
        f.mkdir(mode=0o700, exist_ok=True)
    return folder


def source_key(path: Path) -> str:
    """A name for an input folder's entries in the cache: a hash of its absolute path,
    so two cohorts never share entries and no path (which may name a patient) is
    written in the cache's file names."""
    return hashlib.sha256(str(Path(path).resolve()).encode()).hexdigest()[:16]
