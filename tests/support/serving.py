"""A `bentoml serve` of the project's service started by a test, for the tests that
signal or kill its processes (a fixture's server would not survive them)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

from radfusion.serving.http.launch import PROJECT_ROOT, free_port, serve_command, serve_env, wait_ready


@contextlib.contextmanager
def serving(model: Path, env: dict[str, str], log: Path) -> Iterator[tuple[subprocess.Popen, str]]:
    """`bentoml serve` of ``model`` on a free loopback port, ready: its process (for
    signals) and URL; killed at the end if the test left it running."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            serve_command("127.0.0.1", port),
            env=serve_env(model, env),
            cwd=PROJECT_ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_ready(process, url, 120, log)
        yield process, url
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=15)
