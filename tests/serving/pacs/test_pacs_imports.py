"""The PACS listener is part of the serving install: importing it must not pull in
torch, Lightning or MONAI. Checked in a fresh interpreter."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.support.paths import PROJECT_ROOT as ROOT

FORBIDDEN = ("torch", "lightning", "pytorch_lightning", "monai")

PROBE = """
import json, sys
import radfusion.serving.pacs.cli, radfusion.serving.pacs.listener, radfusion.serving.pacs.status
roots = sorted({name.split(".")[0] for name in sys.modules})
print(json.dumps(roots))
"""


def test_pacs_listener_imports_no_training_stack(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-3000:]
    loaded = set(json.loads(result.stdout.strip().splitlines()[-1]))
    assert {"pynetdicom", "highdicom", "pydicom"} <= loaded  # the probe really imported the listener
    assert loaded.isdisjoint(FORBIDDEN), f"radfusion.serving.pacs imported {sorted(loaded & set(FORBIDDEN))}"
