"""Shared fixtures: a tiny synthetic cohort and a real (untrained) ONNX fusion model
built for it. Both are session-scoped and written once under pytest's tmp folder.

Add generic fixtures here; keep test-specific ones in their test modules."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import psutil
import pytest

from tests.support.peers import (
    ORTHANC_DICOMWEB_PLUGIN,
    ListenerProcess,
    OrthancPeer,
    free_loopback_port,
)
from tests.support.tiny import TINY_COHORT, tiny_contract_of, tiny_net

# BentoML phones home unless told not to; no test may reach the network.
os.environ.setdefault("BENTOML_DO_NOT_TRACK", "True")
# The study index and image caches of this session's cohorts (and of the processes it
# starts) in a folder of its own, not the user's cache.
os.environ.setdefault("RADFUSION_CACHE_DIR", tempfile.mkdtemp(prefix="radfusion-test-cache-"))
# Inherited by every process this session starts (servers, their workers, Orthanc):
# how the end-of-session check tells this session's processes from another session's
# running beside it on the same machine, even once they are orphans.
SESSION_ENV = "RADFUSION_TEST_SESSION"
os.environ[SESSION_ENV] = uuid.uuid4().hex


@pytest.fixture(scope="session")
def tiny_cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 10-patient synthetic cohort: out/dicom/**, genomics.parquet, clinical.csv, truth.json.
    Some patients have no genomics (the generator's default missing fraction)."""
    from radfusion.synth import generate_cohort

    out = tmp_path_factory.mktemp("tiny_cohort")
    generate_cohort(out, workers=1, **TINY_COHORT)
    return out


@pytest.fixture(scope="session")
def tiny_contract(tiny_cohort: Path):
    """The model contract for the tiny cohort (tests.support.tiny.tiny_contract_of)."""
    return tiny_contract_of(tiny_cohort)


@pytest.fixture(scope="session")
def tiny_onnx_model(tmp_path_factory: pytest.TempPathFactory, tiny_contract) -> Path:
    """A real ONNX fusion model (untrained, seeded weights) with the contract embedded,
    exported by radfusion.training.export exactly as `radfusion export` does."""
    from radfusion.training.export import export_onnx

    path = tmp_path_factory.mktemp("tiny_model") / "model.onnx"
    export_onnx(tiny_net(tiny_contract), tiny_contract, path)
    return path


@pytest.fixture(scope="session")
def evidence_run(tmp_path_factory: pytest.TempPathFactory):
    """(checkpoint, module, data module, Evidence) of the model every evidence test
    shares: trained once per session (tests/support/evidence_support.py), analysed once."""
    from radfusion.training.checkpoints import load_datamodule, load_module
    from radfusion.training.evidence.run import run_evidence
    from tests.support.evidence_support import (
        EVIDENCE_SALIENCY_CASES,
        train_evidence_model,
    )

    checkpoint = train_evidence_model(tmp_path_factory.mktemp("evidence"))
    module, dm = load_module(checkpoint), load_datamodule(checkpoint)
    ev = run_evidence(module, dm, saliency_cases=EVIDENCE_SALIENCY_CASES)
    if os.environ.get("RADFUSION_EVIDENCE_SUMMARY"):
        # The figures behind the truth tests, for runs under perturbed floats (docs/evidence.md).
        from radfusion.training.evidence.run import write_summary

        write_summary(ev, Path(os.environ["RADFUSION_EVIDENCE_SUMMARY"]))
    return checkpoint, module, dm, ev


@pytest.fixture(scope="session")
def bentoml_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A private BentoML home (model store, bentos) for tests that run BentoML."""
    return tmp_path_factory.mktemp("bentoml_home")


@pytest.fixture(scope="session")
def orthanc(tmp_path_factory: pytest.TempPathFactory):
    """Orthanc with the DICOMweb plugin on loopback ports, for the session."""
    if not shutil.which("Orthanc") or not ORTHANC_DICOMWEB_PLUGIN.is_file():
        pytest.skip("Orthanc with the DICOMweb plugin is not installed (apt-get install orthanc orthanc-dicomweb)")
    import httpx

    root = tmp_path_factory.mktemp("orthanc")
    http_port, dicom_port = free_loopback_port(), free_loopback_port()
    config = {
        "Name": "radfusion-test",
        "StorageDirectory": str(root / "storage"),
        "IndexDirectory": str(root / "index"),
        "HttpPort": http_port,
        "DicomPort": dicom_port,
        "DicomAet": OrthancPeer.aet,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "Plugins": [str(ORTHANC_DICOMWEB_PLUGIN)],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
        "DicomModalities": {},
        "DicomScuTimeout": 15,
        "SaveJobs": False,
    }
    (root / "orthanc.json").write_text(json.dumps(config))
    log_file = root / "orthanc.log"
    with open(log_file, "wb") as log:
        process = subprocess.Popen(["Orthanc", str(root / "orthanc.json")], stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{http_port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{url}/system", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"Orthanc did not start:\n{log_file.read_text(errors='replace')[-3000:]}")
            time.sleep(0.1)
        peer = OrthancPeer(url, dicom_port, log_file)
        yield peer
        peer.http.close()
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=15)


@pytest.fixture(scope="module")
def start_listener(tmp_path_factory: pytest.TempPathFactory):
    """Factory: start_listener(args, port=None, env=None) -> a ready ListenerProcess
    (its log in a fresh folder); every listener still running is stopped at the end
    of the module."""
    started: list[ListenerProcess] = []

    def start(args: list[str], port: int | None = None, env: dict | None = None, ready: bool = True) -> ListenerProcess:
        log_file = tmp_path_factory.mktemp("listener") / "listener.log"
        listener = ListenerProcess(args, port or free_loopback_port(), log_file, env)
        started.append(listener)
        if ready:
            listener.wait_ready()
        return listener

    yield start
    for listener in started:
        listener.stop()


# ------------------------------------------------------------------ no process left behind

# Processes of ours by name, wherever they were re-parented.
_OURS = re.compile(r"radfusion|bentoml|orthanc|storescp", re.IGNORECASE)
# The interpreter's own helpers, direct children that end with it: not left behind.
_INTERPRETER_HELPERS = (
    "multiprocessing.resource_tracker",
    "multiprocessing.forkserver",
    "joblib.externals.loky",
    "torch._inductor.compile_worker",
)
# Servers stopped by the last teardown may still be exiting (the check's own test
# shortens it for the sessions it runs).
LEFTOVER_GRACE_S = float(os.environ.get("RADFUSION_TEST_LEFTOVER_GRACE_S", "15"))
_before: set[tuple[int, float]] = set()


def _identity(process: psutil.Process) -> tuple[int, float]:
    return process.pid, process.create_time()


def _running() -> set[tuple[int, float]]:
    found = set()
    for process in psutil.process_iter():
        try:
            found.add(_identity(process))
        except psutil.Error:
            continue
    return found


def pytest_sessionstart(session: pytest.Session) -> None:
    _before.update(_running())


def _is_interpreter_helper(process: psutil.Process, me: psutil.Process) -> bool:
    return process.ppid() == me.pid and any(h in " ".join(process.cmdline()) for h in _INTERPRETER_HELPERS)


def _ours_by_name(process: psutil.Process) -> bool:
    """Started during this session, named like one of ours, and carrying this session's marker."""
    if _identity(process) in _before or not _OURS.search(" ".join(process.cmdline())):
        return False
    try:
        return process.environ().get(SESSION_ENV) == os.environ[SESSION_ENV]
    except psutil.AccessDenied:
        return False  # another user's process: not this session's


def leftover_processes() -> list[psutil.Process]:
    """Processes this session started that are still running: descendants of this
    process, and processes of ours re-parented elsewhere (orphans)."""
    me = psutil.Process()
    exempt = {me.pid, *(p.pid for p in me.parents())}
    descendants = {p.pid for p in me.children(recursive=True)}
    left = []
    for process in psutil.process_iter():
        if process.pid in exempt:
            continue
        try:
            if process.status() == psutil.STATUS_ZOMBIE or _is_interpreter_helper(process, me):
                continue
            if process.pid in descendants or _ours_by_name(process):
                left.append(process)
        except psutil.Error:
            continue  # exited while we looked
    return left


def _describe(process: psutil.Process) -> str:
    try:
        return f"pid {process.pid} (parent {process.ppid()}): {' '.join(process.cmdline())[:200]}"
    except psutil.Error:
        return f"pid {process.pid}: exited"


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Fail the session when a process it started is still running once its last
    teardown is done (after a grace period for servers still stopping), and stop them."""
    if hasattr(session.config, "workerinput"):
        return  # an xdist worker: the controller checks, once, for all of them
    deadline = time.monotonic() + LEFTOVER_GRACE_S
    while (left := leftover_processes()) and time.monotonic() < deadline:
        time.sleep(0.5)
    if not left:
        return
    lines = [_describe(p) for p in left]
    for process in left:
        with contextlib.suppress(psutil.Error):
            process.send_signal(signal.SIGKILL)
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    message = f"{len(left)} processes started by this test session were left behind (now killed):"
    if reporter is not None:
        reporter.write_sep("=", "processes left behind", red=True)
        reporter.write_line(message)
        for line in lines:
            reporter.write_line(f"  {line}")
    else:
        print(message, *lines, sep="\n  ")
    if session.exitstatus in (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED):
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
