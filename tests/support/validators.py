"""The standard's own checkers on what radfusion writes: dciodvfy (dicom3tools) for IOD
conformance, dsrdump (dcmtk) for Structured Reports. A missing tool skips the test
(.ci/run installs both)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pydicom
import pytest


def _tool(name: str, package: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{package} ({name}) is not installed")
    return path


def dciodvfy_errors(path: Path) -> list[str]:
    """dciodvfy's "Error" lines for one file (warnings are not errors)."""
    checked = subprocess.run(
        [_tool("dciodvfy", "dicom3tools"), str(path)], capture_output=True, text=True, errors="replace", timeout=120
    )
    return [line for line in (checked.stdout + checked.stderr).splitlines() if line.startswith("Error")]


def assert_dciodvfy_valid(obj: Path | pydicom.Dataset, tmp_path: Path | None = None) -> None:
    """0 dciodvfy errors for a file, or for a dataset written to ``tmp_path`` first."""
    if isinstance(obj, pydicom.Dataset):
        assert tmp_path is not None, "a dataset needs a folder to be written to"
        path = tmp_path / f"{obj.SOPInstanceUID}.dcm"
        obj.save_as(path, enforce_file_format=True)
    else:
        path = obj
    errors = dciodvfy_errors(path)
    assert not errors, "\n".join(errors)


def dsrdump(path: Path) -> str:
    """dsrdump's rendering of an SR; fails the test when dsrdump cannot read it."""
    done = subprocess.run(
        [_tool("dsrdump", "dcmtk"), str(path)], capture_output=True, text=True, errors="replace", timeout=60
    )
    assert done.returncode == 0, done.stderr or done.stdout
    return done.stdout
