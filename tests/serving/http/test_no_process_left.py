"""The end-of-session check of tests/conftest.py (the service tests start the servers
it watches for): a session that leaves a process running fails, names it and stops it;
a process that is not the session's is left alone."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil

from tests.support.paths import PROJECT_ROOT

LEAKING = textwrap.dedent(
    """
    import subprocess, sys

    def test_leaves_a_child_running():
        subprocess.Popen(["sleep", "300"])

    def test_leaves_an_orphan_named_like_ours():
        # Started through a parent that exits at once: re-parented, no longer a descendant.
        orphan = [sys.executable, "-c", "import time; time.sleep(300)", "radfusion-orphan"]
        spawn = f"import subprocess; subprocess.Popen({orphan!r}, start_new_session=True)"
        subprocess.run([sys.executable, "-c", spawn], check=True)
    """
)
CLEAN = "def test_nothing_started():\n    assert True\n"


def nested_session(tmp_path: Path, source: str) -> subprocess.CompletedProcess:
    """pytest on ``source`` with this repository's conftest as a plugin."""
    (tmp_path / "test_nested.py").write_text(source)
    env = {k: v for k, v in os.environ.items() if k != "RADFUSION_TEST_SESSION"}
    env["PYTHONPATH"] = str(PROJECT_ROOT)
    env["RADFUSION_TEST_LEFTOVER_GRACE_S"] = "1"
    return subprocess.run(
        [
            *(sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "tests.conftest"),
            *("--rootdir", str(tmp_path), "-c", os.devnull, str(tmp_path / "test_nested.py")),
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_a_session_that_leaves_processes_fails_and_stops_them(tmp_path: Path) -> None:
    result = nested_session(tmp_path, LEAKING)
    out = result.stdout
    assert "2 passed" in out, out[-3000:]
    assert result.returncode == 1, out[-3000:]
    assert "2 processes started by this test session were left behind (now killed):" in out
    reported = {int(pid): line for pid, line in re.findall(r"pid (\d+) \(parent \d+\): (.*)", out)}
    assert sorted(line.split()[-1] for line in reported.values()) == ["300", "radfusion-orphan"], reported
    time.sleep(0.5)
    assert not [pid for pid in reported if running(pid)]


def test_a_clean_session_passes_beside_a_process_that_is_not_its_own(tmp_path: Path) -> None:
    """A process named like ours, started before the session and not by it, is not its
    leftover (another session's server on the same machine)."""
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)", "radfusion-bystander"])
    try:
        result = nested_session(tmp_path, CLEAN)
        assert result.returncode == 0, result.stdout[-3000:]
        assert "left behind" not in result.stdout
        assert bystander.poll() is None
    finally:
        bystander.kill()
        bystander.wait(timeout=10)
