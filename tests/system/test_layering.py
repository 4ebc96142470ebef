"""The layout's promises, checked on the source: training/ and serving/ never import
each other, and the core imports neither (nor torch, lightning or monai) at module
level, so serving's install stays small."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.support.paths import PROJECT_ROOT as ROOT

HEAVY = {"torch", "lightning", "monai", "torchmetrics"}


def _imported_top_modules(path: Path, module_level_only: bool) -> set[str]:
    tree = ast.parse(path.read_text())
    nodes = tree.body if module_level_only else list(ast.walk(tree))
    found: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found


def _files(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


@pytest.mark.parametrize("package, forbidden", [("training", {"serving"}), ("serving", {"training"} | HEAVY)])
def test_training_and_serving_never_import_each_other(package, forbidden):
    offenders = {
        str(path.relative_to(ROOT)): sorted(_imported_top_modules(path, module_level_only=False) & forbidden)
        for path in _files(package)
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_core_has_no_heavy_module_level_imports():
    # radfusion/cli/__init__.py and demo.py reach training/serving lazily inside functions.
    offenders = {
        str(path.relative_to(ROOT)): sorted(_imported_top_modules(path, module_level_only=True) & (HEAVY | {"training", "serving", "bentoml"}))
        for path in _files("radfusion")
    }
    assert {k: v for k, v in offenders.items() if v} == {}
