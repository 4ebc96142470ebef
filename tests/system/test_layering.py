"""The layout's import rules, checked by import-linter on the installed layout (the
contracts live in pyproject.toml [tool.importlinter]; scripts/layout.py stages
training/ and serving/ as radfusion.training and radfusion.serving first): the core
never imports training, serving or the CLI; training and serving never import each
other; only training reaches torch/Lightning/MONAI/Captum/TorchMetrics; only serving
reaches BentoML; serving's HTTP, scoring and PACS parts are independent."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from tests.support.layout import layout
from tests.support.paths import PROJECT_ROOT as ROOT


def test_import_contracts_hold(tmp_path: Path) -> None:
    code, output = layout.check_imports(ROOT, tmp_path / "layout")
    assert code == 0, output
    assert re.search(r"Contracts: [1-9]\d* kept, 0 broken\.", output), output


def test_staged_layout_is_the_installed_one(tmp_path: Path) -> None:
    layout.stage(ROOT, tmp_path / "layout")
    staged = tmp_path / "layout" / "radfusion"
    for installed, source in (("training", "training"), ("serving/http", "serving/http"), ("dicom", "radfusion/dicom")):
        assert (staged / installed / "__init__.py").resolve() == (ROOT / source / "__init__.py").resolve()
    assert not (tmp_path / "layout" / "training").exists()


@pytest.fixture
def broken_copy(tmp_path: Path) -> Path:
    """A copy of the project's sources with one violation of each kind planted in it."""
    copy = tmp_path / "project"
    copy.mkdir()
    shutil.copy(ROOT / "pyproject.toml", copy / "pyproject.toml")
    for folder in ("radfusion", "training", "serving"):
        shutil.copytree(ROOT / folder, copy / folder, ignore=shutil.ignore_patterns("__pycache__"))

    def plant(path: str, line: str) -> None:
        target = copy / path
        target.write_text(target.read_text() + f"\n\ndef _planted():\n    {line}\n")

    plant("radfusion/contract.py", "from radfusion.training import module")  # core above training
    plant("serving/patients.py", "import torch")  # serving reaches torch
    plant("radfusion/runtime.py", "import monai")  # the core reaches MONAI
    plant("training/export.py", "import bentoml")  # training reaches BentoML
    plant("serving/scoring/__init__.py", "from radfusion.serving.http import service")  # serving parts
    plant("training/data.py", "from radfusion.serving import patients")  # training -> serving
    (copy / "radfusion" / "unplaced.py").write_text('"""A core module no layer names yet."""\n')
    return copy


def test_a_broken_contract_fails_the_check(broken_copy: Path, tmp_path: Path) -> None:
    code, output = layout.check_imports(broken_copy, tmp_path / "layout")
    assert code != 0
    assert re.search(r"Contracts: \d+ kept, 4 broken\.", output), output
    for expected in (
        "radfusion.unplaced",  # the exhaustive layers contract: every core module is placed
        "radfusion.contract -> radfusion.training.module",
        "radfusion.training.data -> radfusion.serving.patients",
        "radfusion.serving.patients -> torch",
        "radfusion.runtime -> monai",
        "radfusion.training.export -> bentoml",
        "radfusion.serving.scoring -> radfusion.serving.http.service",
    ):
        assert expected in output, f"{expected!r} not reported:\n{output}"


def test_a_package_missing_from_the_wheel_list_stops_the_check(tmp_path: Path) -> None:
    # A new package that pyproject does not list would be neither installed nor checked.
    copy = tmp_path / "project"
    copy.mkdir()
    shutil.copy(ROOT / "pyproject.toml", copy / "pyproject.toml")
    for folder in ("radfusion", "training", "serving"):
        shutil.copytree(ROOT / folder, copy / folder, ignore=shutil.ignore_patterns("__pycache__"))
    (copy / "serving" / "newpart").mkdir()
    (copy / "serving" / "newpart" / "__init__.py").write_text("import torch\n")
    with pytest.raises(SystemExit, match=r"serving/newpart/ hold Python files but are not in pyproject"):
        layout.check_imports(copy, tmp_path / "layout")
