"""bench/gpu_serving.sh on a machine without a GPU: it must say so, exit 0, install
nothing and write nothing (the GPU path itself runs only where a GPU is lent)."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.paths import PROJECT_ROOT as ROOT

if str(ROOT) not in sys.path:  # bench/ is a folder of the checkout, not an installed package
    sys.path.insert(0, str(ROOT))

from bench.gpu_serving import gpu_names, provider_options


def fake_nvidia_smi(folder: Path, exit_code: int) -> Path:
    """An nvidia-smi that fails as it does where the driver is missing."""
    folder.mkdir(parents=True, exist_ok=True)
    tool = folder / "nvidia-smi"
    tool.write_text(
        "#!/bin/sh\n"
        "echo 'NVIDIA-SMI has failed because it could not communicate with the driver' >&2\n"
        f"exit {exit_code}\n"
    )
    tool.chmod(tool.stat().st_mode | stat.S_IXUSR)
    return folder


@pytest.mark.parametrize("driver", ["absent", "failing"])
def test_script_without_a_gpu_exits_cleanly(tmp_path: Path, driver: str) -> None:
    bin_dir = fake_nvidia_smi(tmp_path / "bin", 9) if driver == "failing" else tmp_path / "empty"
    bin_dir.mkdir(exist_ok=True)
    # Only system tools plus the fake: no real nvidia-smi can be found.
    env = {**os.environ, "PATH": os.pathsep.join([str(bin_dir), "/usr/bin", "/bin"]), "VENV": str(tmp_path / "venv")}
    out = tmp_path / "out"
    run = subprocess.run(
        ["bash", str(ROOT / "bench" / "gpu_serving.sh"), str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    assert "no NVIDIA GPU here" in run.stdout
    assert not (tmp_path / "venv").exists()  # nothing installed
    assert list(out.iterdir()) == []  # nothing measured, nothing written


def test_python_entry_without_a_gpu(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("PATH", str(fake_nvidia_smi(tmp_path / "bin", 9)))
    assert gpu_names() == []
    out = tmp_path / "gpu.json"
    run = subprocess.run(
        [sys.executable, "-m", "bench.gpu_serving", "--out", str(out)],
        cwd=ROOT,
        env={**os.environ, "PATH": str(tmp_path / "bin")},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    assert "no NVIDIA GPU found" in run.stdout and not out.exists()


def test_providers_are_named_explicitly_with_a_tensorrt_profile(tmp_path: Path) -> None:
    shapes = {"image": [1, 32, 48, 48], "genomics": [300], "presence": [3]}
    assert provider_options("CPUExecutionProvider", tmp_path, shapes) == ["CPUExecutionProvider"]
    cuda = provider_options("CUDAExecutionProvider", tmp_path, shapes)
    assert cuda[0][0] == "CUDAExecutionProvider" and cuda[-1] == "CPUExecutionProvider"
    trt_name, trt = provider_options("TensorrtExecutionProvider", tmp_path, shapes)[0]
    assert trt_name == "TensorrtExecutionProvider"
    assert trt["trt_profile_min_shapes"] == "image:1x1x32x48x48,genomics:1x300,presence:1x3"
    assert trt["trt_profile_max_shapes"] == "image:32x1x32x48x48,genomics:32x300,presence:32x3"
    assert trt["trt_engine_cache_enable"] and trt["trt_engine_cache_path"] == str(tmp_path)
