"""One import root: pyproject's package list is the folder tree (radfusion/ as radfusion,
training/ as radfusion.training, serving/ as radfusion.serving), and the wheel installs
exactly one top-level package, radfusion, with `import training` and `import serving`
failing where it is installed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.support.layout import layout
from tests.support.paths import PROJECT_ROOT as ROOT

# Top-level folder -> the package it installs as.
ROOTS = {"radfusion": "radfusion", "training": "radfusion.training", "serving": "radfusion.serving"}


def _folder_tree() -> dict[str, str]:
    """Package name -> folder, for every folder with an __init__.py under the three roots."""
    found = {}
    for folder, package in ROOTS.items():
        for init in sorted((ROOT / folder).rglob("__init__.py")):
            relative = init.parent.relative_to(ROOT / folder)
            name = ".".join([package, *relative.parts])
            found[name] = init.parent.relative_to(ROOT).as_posix()
    return found


def test_package_list_is_the_folder_tree() -> None:
    assert layout.package_folders(ROOT) == _folder_tree()


def test_every_folder_with_python_files_is_a_package() -> None:
    # A folder without __init__.py would be left out of the wheel without a word.
    orphans = sorted(
        path.parent.relative_to(ROOT).as_posix()
        for folder in ROOTS
        for path in (ROOT / folder).rglob("*.py")
        if "__pycache__" not in path.parts and not (path.parent / "__init__.py").exists()
    )
    assert orphans == []


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    return layout.build_wheel(ROOT, tmp_path_factory.mktemp("wheel"))


@pytest.mark.slow
def test_wheel_packages_are_the_folder_tree(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    packages = {Path(name).parent.as_posix().replace("/", ".") for name in names if name.endswith("/__init__.py")}
    assert packages == set(_folder_tree())
    assert {name.split("/")[0] for name in names} == {"radfusion", wheel.name.split("-py3")[0] + ".dist-info"}
    assert "radfusion/deid/" in {name.rsplit("/", 1)[0] + "/" for name in names if name.endswith(".csv")}


PROBE = """
import importlib.util, json, os, sysconfig

def found(name):
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:  # its parent package is missing
        return False

print(json.dumps({
    "site_packages": sorted(os.listdir(sysconfig.get_paths()["purelib"])),
    "found": {name: found(name) for name in ("radfusion", "training", "serving")},
    "subpackages": [found(name) for name in ("radfusion.training", "radfusion.serving.http")],
}))
"""


def _probe(python: Path, cwd: Path, env: dict[str, str]) -> dict:
    result = subprocess.run([str(python), "-c", PROBE], capture_output=True, text=True, cwd=cwd, env=env, check=False)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_wheel_installs_one_top_level_package(wheel: Path, tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    env = {key: value for key, value in os.environ.items() if key not in {"PYTHONPATH", "VIRTUAL_ENV"}}
    before = _probe(python, tmp_path, env)
    assert before["found"] == {"radfusion": False, "training": False, "serving": False}
    # The dev venv's pip installs into the fresh one: no index, no dependencies.
    pip = [sys.executable, "-m", "pip", "--python", str(python)]
    subprocess.run([*pip, "install", "--quiet", "--no-deps", "--no-index", str(wheel)], check=True, env=env)
    after = _probe(python, tmp_path, env)

    added = sorted(set(after["site_packages"]) - set(before["site_packages"]))
    assert added == ["radfusion", wheel.name.split("-py3")[0] + ".dist-info"]
    assert after["found"] == {"radfusion": True, "training": False, "serving": False}
    assert after["subpackages"] == [True, True]
    for name in ("training", "serving"):
        result = subprocess.run(
            [str(python), "-c", f"import {name}"], capture_output=True, text=True, cwd=tmp_path, env=env, check=False
        )
        assert result.returncode != 0 and "ModuleNotFoundError" in result.stderr
