"""scripts/layout.py, loaded as a module for the tests that stage the installed layout or
build the project's wheel (scripts/ is not a package)."""

from __future__ import annotations

import importlib.util

from tests.support.paths import PROJECT_ROOT


def _load():
    spec = importlib.util.spec_from_file_location("radfusion_layout_script", PROJECT_ROOT / "scripts" / "layout.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


layout = _load()
