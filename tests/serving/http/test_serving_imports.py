"""Serving runs the ONNX model only: importing it must not pull in torch, Lightning or
MONAI (a small, fast-starting serving install). Checked in a fresh interpreter."""

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
import radfusion.serving.http.service, radfusion.serving.scoring.score, radfusion.serving.http.launch, \
radfusion.serving.modelref, radfusion.serving.study_files, radfusion.serving.http.hardening
assert "Radfusion" in dir(radfusion.serving.http.service) and callable(radfusion.serving.scoring.score.score_archive)
roots = sorted({name.split(".")[0] for name in sys.modules})
print(json.dumps(roots))
"""


def test_serving_imports_no_training_stack(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "RADFUSION_MODEL"}
    env.update(BENTOML_DO_NOT_TRACK="True", BENTOML_HOME=str(tmp_path / "bentoml"), PYTHONPATH=str(ROOT))
    result = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-3000:]
    loaded = set(json.loads(result.stdout.strip().splitlines()[-1]))
    assert {"bentoml", "pydicom", "pyarrow"} <= loaded  # the probe really imported serving
    assert loaded.isdisjoint(FORBIDDEN), f"serving imported {sorted(loaded & set(FORBIDDEN))}"
