"""A bento built from the repository (bentofile.yaml + the project's wheel) is what the
serving install needs, and nothing more: installed into a fresh venv exactly as the
bento's own install script says, it imports the service without torch and decodes a
JPEG-lossless CT with radfusion's reader to the same HU as the uncompressed file."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import httpx
import pydicom
import pytest
import yaml

from tests.support.layout import layout
from tests.support.paths import PROJECT_ROOT as ROOT
from tests.support.peers import free_loopback_port

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


def build_bento(folder: Path, env: dict[str, str] | None = None) -> tuple[str, Path]:
    """`bentoml build` as `make bento` runs it: a build context holding bentofile.yaml,
    README, LICENSE and the wheel built from the repository, with BENTOML_HOME under
    ``folder``. Returns the bento's tag and folder."""
    context = folder / "context"
    context.mkdir(parents=True)
    for name in ("bentofile.yaml", "README.md", "LICENSE"):
        shutil.copy2(ROOT / name, context / name)
    layout.build_wheel(ROOT, context / "dist")
    (context / "dist" / "requirements-serve.txt").write_text(layout.serving_requirements(ROOT))
    env = {
        **(env or {k: v for k, v in os.environ.items() if k != "RADFUSION_MODEL"}),
        "BENTOML_HOME": str(folder / "bentoml-home"),
        "BENTOML_DO_NOT_TRACK": "True",
        "PATH": f"{BIN}:{os.environ['PATH']}",
    }
    built = _run([str(BIN / "bentoml"), "build", "-f", "bentofile.yaml", "--output", "tag", "."], cwd=context, env=env)
    tag = built.stdout.strip().splitlines()[-1].removeprefix("__tag__:")
    name, version = tag.split(":")
    return tag, folder / "bentoml-home" / "bentos" / name / version


@pytest.fixture(scope="module")
def bento(tmp_path_factory) -> Path:
    return build_bento(tmp_path_factory.mktemp("bento"))[1]


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


REGISTER = """
import json, shutil, sys
from pathlib import Path
import bentoml
from radfusion.serving.modelref import resolve_model_path
with bentoml.models.create("tiny-fusion:0.0.1-test") as model:
    shutil.copyfile(sys.argv[1], Path(model.path) / "model.onnx")
print(json.dumps({"tag": str(model.tag), "resolved": str(resolve_model_path("tiny-fusion:latest"))}))
"""


def test_a_bento_built_with_a_model_tag_records_the_model_and_serves_it(tiny_onnx_model: Path, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "RADFUSION_MODEL"}
    env.update(BENTOML_DO_NOT_TRACK="True", BENTOML_HOME=str(tmp_path / "bentoml-home"))
    registered = _run([sys.executable, "-c", REGISTER, str(tiny_onnx_model)], cwd=tmp_path, env=env, timeout=120)
    info = json.loads(registered.stdout.strip().splitlines()[-1])
    assert info["tag"] == "tiny-fusion:0.0.1-test"
    resolved = Path(info["resolved"])
    assert resolved.name == "model.onnx" and resolved.read_bytes() == tiny_onnx_model.read_bytes()

    env["RADFUSION_MODEL"] = "tiny-fusion:0.0.1-test"  # a tag: the bento records the model
    tag, bento = build_bento(tmp_path, env)
    manifest = yaml.safe_load((bento / "bento.yaml").read_text())
    assert manifest["service"] == "radfusion.serving.http.service:Radfusion"
    services = {s["name"]: s for s in manifest["services"]}
    assert set(services) == {"radfusion", "radfusion_model"}
    # BentoML 1.4 records the model against the service that declares it; push and
    # containerize take it from the model store by that tag.
    assert [m["tag"] for m in services["radfusion_model"]["models"]] == ["tiny-fusion:0.0.1-test"]
    assert services["radfusion"]["dependencies"] == [{"service": "radfusion_model"}]

    # The built bento serves the model from the store, with a token, from a folder
    # outside this checkout.
    serve_env = {**env, "RADFUSION_API_TOKENS": "bento-token"}
    port = free_loopback_port()
    with open(tmp_path / "serve.log", "wb") as log:
        server = subprocess.Popen(
            [str(BIN / "bentoml"), "serve", tag, "--host", "127.0.0.1", "--port", str(port)],
            cwd=tmp_path,
            env=serve_env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while not _answers(f"{url}/readyz"):
            assert server.poll() is None and time.monotonic() < deadline, (tmp_path / "serve.log").read_text()[-3000:]
            time.sleep(0.25)
        contract = httpx.get(f"{url}/contract", headers={"X-API-Key": "bento-token"}, timeout=30)
        assert contract.status_code == 200 and contract.json()["name"] == "tiny-fusion"
        assert httpx.get(f"{url}/contract", timeout=30).status_code == 401
    finally:
        if server.poll() is None:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait(timeout=15)
    assert server.returncode == 0, (tmp_path / "serve.log").read_text()[-3000:]


def _network_off() -> list[str]:
    """A prefix that runs a command with no network at all (a new, empty network
    namespace) where the kernel allows it; an empty prefix otherwise, and then the
    environment of the caller points every package index and proxy at a closed port."""
    unshare = shutil.which("unshare")
    if unshare and subprocess.run([unshare, "-rn", "true"], capture_output=True, check=False).returncode == 0:
        return [unshare, "-rn"]
    return []


def test_make_bento_builds_offline(tmp_path: Path) -> None:
    """`make bento` as a user runs it in a checkout whose venv is installed, with pip's
    index disabled, every index and proxy pointed at a closed loopback port and, where
    the kernel allows, no network namespace at all: the bento comes from the project's
    own wheel and metadata, and neither BentoML nor the Makefile fetches anything."""
    venv = Path(sys.prefix)
    stamp = venv / ".radfusion-installed"
    assert stamp.is_file(), "the tests run from the venv that `make venv` (scripts/bootstrap.sh) installs"
    # The tracked files with their times, as a fresh clone has them: the venv's stamp
    # stays newer than pyproject.toml, so `make`'s venv step installs nothing.
    checkout = tmp_path / "checkout"
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    for name in filter(None, tracked.decode().split("\0")):
        source = ROOT / name
        if source.is_file():
            (checkout / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, checkout / name)
    if stamp.stat().st_mtime < (checkout / "pyproject.toml").stat().st_mtime:
        pytest.fail("pyproject.toml is newer than the venv: run `make venv` first (it installs, which needs an index)")
    closed = f"http://127.0.0.1:{free_loopback_port()}"
    env = {key: value for key, value in os.environ.items() if key not in {"RADFUSION_MODEL", "PYTHONPATH"}}
    env.update(
        VENV=str(venv),
        BENTOML_HOME=str(tmp_path / "bentoml-home"),
        PIP_NO_INDEX="1",
        PIP_INDEX_URL=f"{closed}/simple",
        PIP_FIND_LINKS="",
        UV_OFFLINE="1",
        UV_INDEX_URL=f"{closed}/simple",
        UV_DEFAULT_INDEX=f"{closed}/simple",
        HTTP_PROXY=closed,
        HTTPS_PROXY=closed,
        http_proxy=closed,
        https_proxy=closed,
        NO_PROXY="",
    )
    built = _run([*_network_off(), "make", "--no-print-directory", "bento"], cwd=checkout, env=env, timeout=420)
    assert "Successfully built Bento" in built.stdout + built.stderr
    bentos = list((tmp_path / "bentoml-home" / "bentos" / "radfusion").glob("*/bento.yaml"))
    assert len(bentos) == 1, bentos
    bento = bentos[0].parent
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert [p.name for p in (bento / "env" / "python" / "wheels").glob("*.whl")] == [
        f"radfusion-{version}-py3-none-any.whl"
    ]
    assert yaml.safe_load(bentos[0].read_text())["service"] == "radfusion.serving.http.service:Radfusion"


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False
