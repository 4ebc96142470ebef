"""No server process outlives whoever started it: a `bentoml serve` killed with SIGKILL
(its workers run in their own sessions, so nothing signals them) takes its workers with
it within seconds, and a server started by ``running_server`` stops when the launching
process dies without stopping it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import httpx
import psutil
import pytest

from radfusion.serving.http.launch import PROJECT_ROOT
from tests.support.serving import serving

pytestmark = pytest.mark.slow

TOKEN = "orphan-test-token"


def alive(processes: list[psutil.Process]) -> list[psutil.Process]:
    found = []
    for p in processes:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                found.append(p)
        except psutil.NoSuchProcess:
            continue
    return found


def gone_within(processes: list[psutil.Process], seconds: float) -> float:
    """Seconds until every process in ``processes`` has exited (fails after ``seconds``)."""
    started = time.monotonic()
    while alive(processes):
        if time.monotonic() - started > seconds:
            left = [(p.pid, " ".join(p.cmdline()[-8:])) for p in alive(processes)]
            for p in alive(processes):  # leave nothing behind, whatever the outcome
                p.kill()
            pytest.fail(f"still running {seconds:.0f} s later: {left}")
        time.sleep(0.1)
    return time.monotonic() - started


def workers_of(server: psutil.Process) -> list[psutil.Process]:
    workers = [p for p in server.children(recursive=True) if "_bentoml_impl.worker.service" in p.cmdline()]
    assert len(workers) == 2, [p.cmdline() for p in workers]  # the API and the model service
    return workers


def test_workers_exit_when_the_server_is_killed(tiny_onnx_model: Path, bentoml_home: Path, tmp_path: Path) -> None:
    env = {"BENTOML_HOME": str(bentoml_home), "RADFUSION_API_TOKENS": TOKEN}
    log = tmp_path / "serve.log"
    with serving(tiny_onnx_model, env, log) as (process, url):
        workers = workers_of(psutil.Process(process.pid))
        assert all(w.ppid() == process.pid for w in workers)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)
        took = gone_within(workers, 10.0)
    assert took < 10.0
    with pytest.raises(httpx.ConnectError):  # nobody holds the port any more
        httpx.get(f"{url}/readyz", timeout=2)
    assert "the process that started it is gone; stopping" in log.read_text(errors="replace")


LAUNCHER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from radfusion.serving.http.launch import running_server
    env = {"BENTOML_HOME": sys.argv[2], "RADFUSION_API_TOKENS": "orphan-test-token"}
    with running_server(Path(sys.argv[1]), timeout=120, env=env, log_file=Path(sys.argv[3])) as url:
        print(url, flush=True)
        time.sleep(600)
    """
)


def test_a_server_stops_when_its_launcher_dies(tiny_onnx_model: Path, bentoml_home: Path, tmp_path: Path) -> None:
    """``running_server``'s process killed with SIGKILL (no fixture teardown, no SIGTERM
    to the server): the server and its workers stop by themselves."""
    log = tmp_path / "serve.log"
    launcher = subprocess.Popen(
        [sys.executable, "-c", LAUNCHER, str(tiny_onnx_model), str(bentoml_home), str(log)],
        cwd=PROJECT_ROOT,
        env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)},
        stdout=subprocess.PIPE,
        text=True,
    )
    server: list[psutil.Process] = []
    try:
        assert launcher.stdout is not None
        url = launcher.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:"), log.read_text(errors="replace")[-3000:] if log.exists() else ""
        serve = psutil.Process(launcher.pid).children()
        assert len(serve) == 1
        server = [serve[0], *workers_of(serve[0])]
        launcher.send_signal(signal.SIGKILL)
        launcher.wait(timeout=10)
        took = gone_within(server, 45.0)
    finally:
        if launcher.poll() is None:
            launcher.kill()
            launcher.wait(timeout=10)
        for p in alive(server):
            p.kill()
    assert took < 45.0
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{url}/readyz", timeout=2)
