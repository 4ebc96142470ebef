"""Start the BentoML service as `bentoml serve` in a subprocess: for `radfusion serve`
(in the foreground) and for the demo and tests (``running_server``, on a free loopback
port, stopped with SIGTERM on exit).

Both refuse to start a service nobody could call safely: without an API token it needs
RADFUSION_AUTH=off, and that only on a loopback host. `radfusion serve` with no token
configured makes one for the run and prints it (a hospital sets its own)."""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path

from radfusion.serving.http.auth import (
    AUTH_ENV,
    TOKENS_ENV,
    AuthNotConfiguredError,
    auth_off_from_env,
    check_auth_config,
    is_loopback,
    tokens_from_env,
)
from radfusion.serving.modelref import MODEL_ENV, ModelNotFoundError, looks_like_tag, read_model_contract
from radfusion.serving.orphans import LAUNCHER_PID_ENV
from radfusion.serving.patients import PatientTables
from radfusion.serving.settings import ServiceSettings, declared_from_env, launch_from_env

PROJECT_ROOT = Path(__file__).resolve().parents[2]
SERVICE = "radfusion.serving.http.service:Radfusion"
# BentoML restarts a worker whose service failed to start instead of exiting: watch for it.
STARTUP_FAILED = b"Application startup failed"


class ServerStartError(RuntimeError):
    pass


def _bentoml_executable() -> list[str]:
    exe = Path(sys.executable).with_name("bentoml")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "bentoml"]


def serve_command(host: str, port: int, service: str = SERVICE) -> list[str]:
    return [*_bentoml_executable(), "serve", service, "--host", host, "--port", str(port)]


def serve_env(model: str | Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("BENTOML_DO_NOT_TRACK", "True")
    env[MODEL_ENV] = str(Path(model).resolve()) if Path(model).exists() else str(model)
    # The service is imported from the project root, whatever the caller's cwd.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PROJECT_ROOT), env.get("PYTHONPATH")]))
    env.update(extra or {})
    return env


def check_model_ref(model: str | Path) -> None:
    """Fail before starting anything when ``model`` is neither a file nor a tag."""
    if not Path(model).is_file() and not (isinstance(model, str) and looks_like_tag(model)):
        raise ModelNotFoundError(f"model {str(model)!r} is neither an existing file nor a BentoML model tag")


def check_auth_for_host(env: Mapping[str, str], host: str) -> None:
    """AuthNotConfiguredError unless tokens are set, or auth is off on a loopback host."""
    check_auth_config(env)
    if auth_off_from_env(env) and not tokens_from_env(env) and not is_loopback(host):
        raise AuthNotConfiguredError(f"{AUTH_ENV}=off is for loopback development runs; {host} is not loopback")


def serve_forever(model: str | Path, host: str = "127.0.0.1", port: int = 3000) -> None:
    """Run the server in the foreground: this process becomes `bentoml serve`, so
    Ctrl-C and SIGTERM reach the server itself and it stops its workers. With no token
    configured (and auth not off) one is made for this run and printed once.

    What would stop the service from starting fails here, before anything starts:
    ModelNotFoundError (no such file, a tag not in the model store, a file that is not
    a model radfusion exported), SettingsError (a RADFUSION_* variable the service
    cannot use), PatientTableError (a genomics or clinical table it cannot use) and
    AuthNotConfiguredError."""
    check_model_ref(model)
    env = serve_env(model)
    launch_from_env(env)
    settings = ServiceSettings.from_env(env)
    declared_from_env(env)
    contract = read_model_contract(model)
    # The tables every worker loads at start, read once here: a bad one stops this
    # command, not the workers in a restart loop.
    PatientTables.from_paths(contract, settings.genomics_table, settings.clinical_table)
    made_token = not tokens_from_env(env) and not auth_off_from_env(env)
    if made_token:
        env[TOKENS_ENV] = secrets.token_urlsafe(24)
    check_auth_for_host(env, host)
    if made_token:
        print(
            f"{TOKENS_ENV} is not set: this run accepts the token it made for itself:\n"
            f"    Authorization: Bearer {env[TOKENS_ENV]}",
            file=sys.stderr,
            flush=True,
        )
    command = serve_command(host, port)
    os.chdir(PROJECT_ROOT)
    os.execve(command[0], command, env)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/readyz", timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _stop(process: subprocess.Popen, grace: float) -> int:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            # Kill the whole group: the server's workers are its children.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=grace)
    return process.returncode


@contextlib.contextmanager
def running_server(
    model: str | Path,
    host: str = "127.0.0.1",
    port: int | None = None,
    timeout: float = 90.0,
    env: Mapping[str, str] | None = None,
    log_file: Path | None = None,
    service: str = SERVICE,
) -> Iterator[str]:
    """Start `bentoml serve`, wait for /readyz, yield the base URL, stop it on exit.

    ``env`` adds variables (e.g. BENTOML_HOME, upload limits, RADFUSION_API_TOKENS:
    without a token, or RADFUSION_AUTH=off on a loopback host, AuthNotConfiguredError is
    raised before anything starts). The server's output goes to ``log_file`` (default:
    a temporary file, removed on exit); a failed start raises ServerStartError with the
    end of that log. ``service``: another service of radfusion.serving.http.service (the benchmark
    serves the model service alone)."""
    check_model_ref(model)
    check_auth_for_host(serve_env(model, env), host)
    # The server stops itself should this process die without stopping it (radfusion/serving/orphans.py).
    env = {**(env or {}), LAUNCHER_PID_ENV: str(os.getpid())}
    port = port or free_port(host)
    url = f"http://{host}:{port}"
    own_log = log_file is None
    if log_file is None:
        fd, name = tempfile.mkstemp(prefix="radfusion-serve-", suffix=".log")
        os.close(fd)
        log_file = Path(name)
    try:
        with open(log_file, "wb") as out:
            process = subprocess.Popen(
                serve_command(host, port, service),
                env=serve_env(model, env),
                cwd=PROJECT_ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group, so a kill reaches the workers
            )
            try:
                wait_ready(process, url, timeout, log_file)
                yield url
            finally:
                _stop(process, grace=15.0)
    finally:
        if own_log:
            log_file.unlink(missing_ok=True)


def wait_ready(process: subprocess.Popen, url: str, timeout: float, log_file: Path) -> None:
    """Until the `bentoml serve` ``process`` answers /readyz at ``url``; ServerStartError
    with the end of its log if it exits, fails to start or takes longer than ``timeout``."""
    deadline = time.monotonic() + timeout
    while not _ready(url):
        log = log_file.read_bytes()
        if process.poll() is not None:
            raise ServerStartError(f"bentoml serve exited with {process.returncode}:\n{_tail(log)}")
        if STARTUP_FAILED in log:
            raise ServerStartError(f"the service failed to start:\n{_tail(log)}")
        if time.monotonic() > deadline:
            raise ServerStartError(f"server not ready within {timeout:.0f} s:\n{_tail(log)}")
        time.sleep(0.25)


def _tail(log: bytes, lines: int = 25) -> str:
    return "\n".join(log.decode(errors="replace").splitlines()[-lines:])
