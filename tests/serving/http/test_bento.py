"""A bento built from the repository (bentofile.yaml + the project's wheel) is what the
serving install needs, and nothing more: installed into a fresh venv exactly as the
bento's own install script says, it imports the service without torch and decodes a
JPEG-lossless CT with radfusion's reader to the same HU as the uncompressed file."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pydicom
import pytest
import yaml

from tests.support.paths import PROJECT_ROOT as ROOT

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

BIN = Path(sys.executable).parent
JPEG_LOSSLESS_SV1 = "1.2.840.10008.1.2.4.70"

# Runs inside the bento's venv: what the serving install can and cannot import, and the
# JPEG-lossless CT read by radfusion's reader next to the uncompressed original.
PROBE = """
import importlib.util, json, sys
import numpy as np
from radfusion.dicom.pixels import physical_values
from radfusion.dicom.sources import read_dataset
import radfusion.serving.http.service as service

compressed, original = read_dataset(sys.argv[1]), read_dataset(sys.argv[2])
hu = physical_values(compressed)
print(json.dumps({
    "service": hasattr(service, "Radfusion"),
    "transfer_syntax": str(compressed.file_meta.TransferSyntaxUID),
    "shape": list(hu.shape),
    "min": float(hu.min()),
    "max": float(hu.max()),
    "equal_to_uncompressed": bool(np.array_equal(hu, physical_values(original))),
    "importable": {name: importlib.util.find_spec(name) is not None
                   for name in ("torch", "lightning", "monai", "training", "serving", "onnxruntime", "bentoml")},
}))
"""


def _layout_script():
    spec = importlib.util.spec_from_file_location("radfusion_layout_script", ROOT / "scripts" / "layout.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(command: list[str], **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(command, capture_output=True, text=True, check=False, **kwargs)
    assert result.returncode == 0, f"{command}\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    return result


def test_bentofile_wheel_follows_the_project_version() -> None:
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    python = yaml.safe_load((ROOT / "bentofile.yaml").read_text())["python"]
    wheel = f"radfusion-{version}-py3-none-any.whl"
    assert python["wheels"] == [f"dist/{wheel}"]
    assert python["requirements_txt"] == "dist/requirements-serve.txt"
    assert "packages" not in python  # nothing listed by hand
    assert python["lock_packages"] is False


@pytest.fixture(scope="module")
def bento(tmp_path_factory) -> Path:
    """`bentoml build` in a build context holding bentofile.yaml, README, LICENSE and the
    wheel built from the repository, with its own BENTOML_HOME. Returns the bento folder."""
    tmp = tmp_path_factory.mktemp("bento")
    context = tmp / "context"
    context.mkdir()
    for name in ("bentofile.yaml", "README.md", "LICENSE"):
        shutil.copy2(ROOT / name, context / name)
    layout = _layout_script()
    layout.build_wheel(ROOT, context / "dist")
    (context / "dist" / "requirements-serve.txt").write_text(layout.serving_requirements(ROOT))
    home = tmp / "bentoml-home"
    env = dict(os.environ, BENTOML_HOME=str(home), BENTOML_DO_NOT_TRACK="True", PATH=f"{BIN}:{os.environ['PATH']}")
    _run([str(BIN / "bentoml"), "build", "-f", "bentofile.yaml", "."], cwd=context, env=env)
    (bento_dir,) = [p for p in (home / "bentos" / "radfusion").iterdir() if p.is_dir() and p.name != "latest"]
    return bento_dir


def test_bento_carries_the_wheel_and_no_source_tree(bento: Path) -> None:
    python = bento / "env" / "python"
    assert [p.name for p in (python / "wheels").glob("*.whl")] == [
        f"radfusion-{tomllib.loads((ROOT / 'pyproject.toml').read_text())['project']['version']}-py3-none-any.whl"
    ]
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    wanted = project["dependencies"] + extras["serve"] + extras["cpu"]
    text = (python / "requirements.txt").read_text()
    requirements = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]
    assert set(wanted) <= set(requirements), sorted(set(wanted) - set(requirements))
    assert "pylibjpeg-libjpeg>=2.1" in requirements  # JPEG lossless decoding
    assert not any(re.match(r"(torch|lightning|monai|captum|torchmetrics)\b", line) for line in requirements)
    assert not (bento / "src" / "radfusion").exists()
    assert not (bento / "src" / "serving").exists()


@pytest.mark.skipif(not shutil.which("dcmcjpeg"), reason="dcmtk (dcmcjpeg) is not installed")
def test_bento_install_decodes_jpeg_lossless_ct(bento: Path, tmp_path: Path) -> None:
    # A real CT slice shipped in pydicom, JPEG-lossless (process 14, SV1) by dcmtk.
    original = Path(pydicom.data.get_testdata_file("CT_small.dcm"))
    compressed = tmp_path / "CT_small_jpeg_lossless.dcm"
    _run(["dcmcjpeg", "+e1", str(original), str(compressed)])

    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", str(venv)])
    # Exactly what the bento says: its install script (requirements, then its wheels),
    # with pip (no uv on PATH, so pip's cache serves repeated runs).
    env = {key: value for key, value in os.environ.items() if key not in {"PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME"}}
    env.update(VIRTUAL_ENV=str(venv), PATH=f"{venv / 'bin'}:/usr/local/bin:/usr/bin:/bin")
    _run(["bash", str(bento / "env" / "python" / "install.sh")], env=env, timeout=420)

    probe = _run(
        [str(venv / "bin" / "python"), "-c", PROBE, str(compressed), str(original)], cwd=tmp_path, env=env, timeout=120
    )
    found = json.loads(probe.stdout.strip().splitlines()[-1])
    assert found["service"] is True
    assert found["transfer_syntax"] == JPEG_LOSSLESS_SV1
    assert found["shape"] == [128, 128]
    assert found["equal_to_uncompressed"] is True
    assert -1100 < found["min"] < found["max"] < 4000, found
    assert found["importable"] == {
        "torch": False,
        "lightning": False,
        "monai": False,
        "training": False,
        "serving": False,
        "onnxruntime": True,
        "bentoml": True,
    }
