"""Real DICOM network peers for the listener tests: Orthanc (Debian package) as the PACS
and the listener as its own process. Loopback only; every wait is bounded."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from tests.support.paths import PROJECT_ROOT

ORTHANC_DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")


def free_loopback_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def dicom_echo(port: int, called: str = "RADFUSION", calling: str = "ECHOSCU", timeout: float = 5.0) -> int | None:
    """C-ECHO status from 127.0.0.1:port, or None when no association."""
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification

    ae = AE(ae_title=calling)
    ae.add_requested_context(Verification)
    ae.acse_timeout = ae.network_timeout = timeout
    assoc = ae.associate("127.0.0.1", port, ae_title=called)
    if not assoc.is_established:
        return None
    try:
        status = assoc.send_c_echo()
        return int(status.Status) if "Status" in status else None
    finally:
        assoc.release()


class OrthancPeer:
    """A running Orthanc: REST at ``url``, DICOMweb at ``dicomweb``, C-STORE SCP at
    ``dicom_port`` with AE title ``aet``."""

    aet = "ORTHANC"

    def __init__(self, url: str, dicom_port: int, log_file: Path):
        import httpx

        self.url = url
        self.dicomweb = f"{url}/dicom-web"
        self.dicom_port = dicom_port
        self.log_file = log_file
        self.http = httpx.Client(base_url=url, timeout=60)

    def upload(self, paths) -> None:
        for path in paths:
            response = self.http.post("/instances", content=Path(path).read_bytes())
            response.raise_for_status()

    def study_id(self, study_uid: str) -> str:
        found = self.http.post("/tools/lookup", content=study_uid).json()
        return next(item["ID"] for item in found if item["Type"] == "Study")

    def add_modality(self, name: str, aet: str, port: int) -> None:
        self.http.put(f"/modalities/{name}", json={"AET": aet, "Host": "127.0.0.1", "Port": port}).raise_for_status()

    def send_study(self, modality: str, study_uid: str) -> dict:
        """C-STORE the study to a modality (synchronous job: returns when done)."""
        response = self.http.post(
            f"/modalities/{modality}/store", json={"Resources": [self.study_id(study_uid)], "Synchronous": True}
        )
        response.raise_for_status()
        return response.json()


class ListenerProcess:
    """``python -m radfusion.serving.pacs.cli listen ...`` as a child process."""

    def __init__(self, args: list[str], port: int, log_file: Path, env: dict | None = None):
        self.port = port
        self.log_file = log_file
        # Readiness is a C-ECHO, from a calling AE title the listener accepts.
        self.calling = args[args.index("--allow-aet") + 1] if "--allow-aet" in args else "ECHOSCU"
        # faulthandler: SIGABRT writes every thread's stack to the log (stop() on a hang).
        environment = {**os.environ, "PYTHONFAULTHANDLER": "1", **(env or {})}
        with open(log_file, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "radfusion.serving.pacs.cli", "listen", "--port", str(port), *args],
                cwd=PROJECT_ROOT,
                env=environment,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while dicom_echo(self.port, calling=self.calling, timeout=2) != 0:
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"listener not ready:\n{self.log()[-3000:]}")
            time.sleep(0.2)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.send_signal(signal.SIGABRT)  # its threads' stacks, then the end
                try:
                    self.process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait(timeout=timeout)
                print(f"listener still up {timeout:.0f} s after signal {sig}:\n{self.log()[-6000:]}", file=sys.stderr)
        return self.process.returncode

    def log(self) -> str:
        return self.log_file.read_text(errors="replace")


def wait_until(check: Callable[[], object], timeout: float, what: str, interval: float = 0.2) -> object:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def pacs_status(work: Path) -> dict:
    result = subprocess.run(
        [sys.executable, "-m", "radfusion.serving.pacs.cli", "pacs-status", "--work", str(work), "--json"],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


class CapturingPacs:
    """A pynetdicom Storage SCP standing in for the PACS (any storage SOP class): keeps
    every dataset it is sent (the listener sends only its result documents)."""

    def __init__(self, port: int):
        from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt

        self.port = port
        self.received: list = []
        ae = AE(ae_title="PACS")
        for context in AllStoragePresentationContexts:
            ae.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)
        self.server = ae.start_server(("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, self._store)])

    def _store(self, event) -> int:
        self.received.append(event.dataset)
        return 0x0000

    @property
    def sr_studies(self) -> set[str]:
        return {str(ds.StudyInstanceUID) for ds in self.received}

    def stop(self) -> None:
        self.server.shutdown()
