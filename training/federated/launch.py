"""Flower's deployment runtime driven for radfusion: the SuperLink (server), one
SuperNode per site, and `flwr run` submitting the run, each a process of its own.
`simulate` starts them all on loopback; a consortium starts the same processes on
their own hosts (`radfusion federate server|site|run`).

Flower's command-line programs are called (not its internals): they are the
interface Flower keeps stable, and what a site's operator runs by hand."""

from __future__ import annotations

import json
import logging
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import tomli_w

from radfusion.training.federated.job import FederatedJob
from radfusion.training.federated.pki import Pki

log = logging.getLogger(__name__)

CONNECTION = "radfusion"
# The Flower app `flwr run` submits: its components are radfusion's own modules,
# installed at the server and at every site (Flower installs nothing at run time).
APP_PYPROJECT = {
    "build-system": {"requires": ["hatchling"], "build-backend": "hatchling.build"},
    "project": {"name": "radfusion-federation", "version": "1.0.0", "dependencies": []},
    "tool": {
        "hatch": {"build": {"targets": {"wheel": {"packages": ["."]}}}},
        "flwr": {
            "app": {
                "publisher": "radfusion",
                "components": {
                    "serverapp": "radfusion.training.federated.server_app:app",
                    "clientapp": "radfusion.training.federated.client_app:app",
                },
                "config": {},
            }
        },
    },
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def flower_env(home: Path, threads: int = 0) -> dict[str, str]:
    """Flower's programs from this environment, its CLI state under ``home``; torch's
    threads capped when sites share a machine (0: as is)."""
    env = dict(os.environ)
    if threads:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["FLWR_HOME"] = str(home)
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def superlink_command(pki: Pki | None, host: str, port: int, state: Path) -> list[str]:
    state.mkdir(parents=True, exist_ok=True)
    tls = (
        ["--insecure"]
        if pki is None
        else [
            "--ssl-ca-certfile",
            str(pki.ca),
            "--ssl-certfile",
            str(pki.server_cert),
            "--ssl-keyfile",
            str(pki.server_key),
        ]
    )
    auth = [] if pki is None else ["--enable-supernode-auth"]
    return [
        "flower-superlink", *tls, *auth,
        "--host", host, "--port", str(port),
        # The run state in a file: a restarted SuperLink knows its nodes and runs.
        "--database", str(state / "superlink.db"),
        "--disable-runtime-dependency-installation",
    ]  # fmt: skip


def supernode_command(
    superlink: str, ca: Path | None, key: Path | None, cohort: Path, work: Path, port: int
) -> list[str]:
    tls = ["--insecure"] if ca is None else ["--root-certificates", str(ca)]
    auth = [] if key is None else ["--auth-supernode-private-key", str(key)]
    config = f"cohort={_toml_string(str(cohort.resolve()))} work={_toml_string(str(work.resolve()))}"
    return [
        "flower-supernode", *tls, *auth,
        "--superlink", superlink, "--node-config", config,
        "--host", "127.0.0.1", "--port", str(port),
    ]  # fmt: skip


def _toml_string(text: str) -> str:
    return tomli_w.dumps({"v": text}).split("=", 1)[1].strip()


def write_connection(home: Path, superlink: str, ca: Path | None) -> None:
    """The `flwr` CLI's connection to the SuperLink ($FLWR_HOME/config.toml)."""
    home.mkdir(parents=True, exist_ok=True)
    conn: dict = {"address": superlink}
    conn.update({"insecure": True} if ca is None else {"root-certificates": str(ca.resolve())})
    (home / "config.toml").write_text(tomli_w.dumps({"superlink": {"default": CONNECTION, CONNECTION: conn}}))


def register_site(home: Path, public_key: Path) -> None:
    _flwr(home, ["supernode", "register", str(public_key), CONNECTION], timeout=60)


def _flwr(home: Path, args: list[str], timeout: float, log_to: Path | None = None) -> str:
    out = subprocess.run(
        ["flwr", *args], env=flower_env(home), capture_output=True, text=True, timeout=timeout, check=False
    )
    if log_to is not None:
        log_to.write_text(out.stdout + out.stderr)
    if out.returncode != 0:
        raise RuntimeError(f"flwr {args[0]} failed: {_plain_error(out.stderr + out.stdout)}")
    return out.stdout


def _plain_error(text: str) -> str:
    """Flower's error box as one line: the text inside the box, without its frame."""
    lines = [line.strip(" │╭╮╰╯─\n") for line in text.splitlines()]
    words = " ".join(line for line in lines if line and not line.startswith("Error"))
    return words[-400:] or "no message"


def submit(home: Path, job: FederatedJob, out: Path, timeout: float) -> None:
    """`flwr run` the job and follow it to its end, its log on stderr and in
    <out>/server.log. A run that fails or writes no checkpoint is an error naming the
    server's last error line."""
    app = out / "flower-app"
    app.mkdir(parents=True, exist_ok=True)
    # The job is the app's own config (Flower accepts overrides only of keys it has).
    project = json.loads(json.dumps(APP_PYPROJECT))
    project["tool"]["flwr"]["app"]["config"] = job.run_config()
    (app / "pyproject.toml").write_text(tomli_w.dumps(project))
    command = ["flwr", "run", str(app), CONNECTION, "--stream"]
    started = time.time()
    with (out / "server.log").open("w") as log_file:
        proc = subprocess.Popen(
            command, env=flower_env(home), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        watchdog = threading.Timer(timeout, proc.kill)  # also when the run prints nothing
        watchdog.daemon = True
        watchdog.start()
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                log_file.write(line)
                log_file.flush()
                sys.stderr.write(line)
            proc.wait()
            expired = not watchdog.is_alive() and watchdog.finished.is_set() and proc.returncode < 0
        finally:  # also when this process is stopped (SystemExit from SIGTERM, Ctrl-C)
            watchdog.cancel()
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
    if expired:
        raise RuntimeError(f"the run took longer than --timeout {timeout:.0f} s")
    written = out / "checkpoints" / "best.ckpt"
    # A resubmitted run's folder holds the checkpoint of the run before: this one's is newer.
    if proc.returncode != 0 or not written.is_file() or written.stat().st_mtime < started:
        raise RuntimeError(f"the federated run failed: {last_error(out / 'server.log')}")


def last_error(log_file: Path) -> str:
    """The server's last error line (an exception's message), else the log's last line."""
    lines = [line.strip(" │╭╮╰╯─\n") for line in log_file.read_text(errors="replace").splitlines()]
    lines = [line for line in lines if line]
    errors = [line for line in lines if re.match(r"^[A-Za-z_.]*(Error|Exception)\b.*:", line)]
    return (errors or lines or ["no output"])[-1][-500:]


@contextmanager
def processes(home: Path, logs: Path, threads: int = 0) -> Iterator[Callable[[str, list[str]], subprocess.Popen]]:
    """Start long-running Flower processes (each with its log file); all are stopped
    on leaving, whatever happened."""
    started: list[subprocess.Popen] = []
    logs.mkdir(parents=True, exist_ok=True)

    def start(name: str, command: list[str]) -> subprocess.Popen:
        log.info("starting %s: %s", name, shlex.join(command[:1]))
        with (logs / "commands.txt").open("a") as f:  # what ran, for the operator
            f.write(f"{name}: {shlex.join(command)}\n")
        with (logs / f"{name}.log").open("ab") as f:
            proc = subprocess.Popen(
                command, env=flower_env(home, threads), stdout=f, stderr=subprocess.STDOUT, start_new_session=True
            )
        started.append(proc)
        return proc

    try:
        yield start
    finally:
        for proc in reversed(started):
            if proc.poll() is None:
                os.killpg(proc.pid, 15)
        for proc in started:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, 9)


def wait_for_port(port: int, proc: subprocess.Popen, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited ({proc.returncode}) before it listened on port {port}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.3)
    raise RuntimeError(f"{what} did not listen on port {port} within {timeout:.0f} s")


def simulate(
    job: FederatedJob, sites: dict[str, Path], out: Path, secure: bool = True, timeout: float = 3600, threads: int = 1
) -> Path:
    """All of a federation on this machine, on loopback: the SuperLink with TLS and
    SuperNode authentication, one SuperNode per site (its cohort, its work folder),
    then the run. Returns the checkpoint."""
    from radfusion.training.federated.pki import make_pki

    out.mkdir(parents=True, exist_ok=True)
    home = out / "flower-home"
    # A fresh SuperLink state: the nodes of an earlier simulation of this folder are gone,
    # and a SuperLink that remembered them would send them the run's first round.
    shutil.rmtree(out / "superlink-state", ignore_errors=True)
    pki = make_pki(out / "pki", list(sites), ["127.0.0.1", "localhost"]) if secure else None
    port = free_port()
    superlink = f"127.0.0.1:{port}"
    with processes(home, out / "logs", threads) as start:
        link = start("superlink", superlink_command(pki, "127.0.0.1", port, out / "superlink-state"))
        wait_for_port(port, link, "the SuperLink")
        write_connection(home, superlink, pki.ca if pki else None)
        for name, cohort in sites.items():
            if pki is not None:
                register_site(home, pki.site_public_key(name))
            node_port = free_port()
            command = supernode_command(
                superlink,
                pki.ca if pki else None,
                pki.site_key(name) if pki else None,
                cohort,
                out / "sites" / name,
                node_port,
            )
            wait_for_port(node_port, start(f"site-{name}", command), f"site {name}'s SuperNode")
        submit(home, job, out, timeout)
    return out / "checkpoints" / "best.ckpt"
