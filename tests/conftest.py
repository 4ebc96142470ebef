"""Shared fixtures: a tiny synthetic cohort and a real (untrained) ONNX fusion model
built for it. Both are session-scoped and written once under pytest's tmp folder.

Add generic fixtures here; keep test-specific ones in their test modules."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# BentoML phones home unless told not to; no test may reach the network.
os.environ.setdefault("BENTOML_DO_NOT_TRACK", "True")

TINY_COHORT = dict(n_patients=10, seed=7, n_genes=100, n_slices=10, rows=32, cols=32, rle_fraction=0.25)
# The synthetic studies have ~5 mm slices and ~6 mm pixels: 10 x 32 x 32 voxels span
# ~50 x 192 x 192 mm, which this grid covers (8 x 6 mm, 16 x 12 mm).
TINY_TARGET_SHAPE = (8, 16, 16)
TINY_TARGET_SPACING = (6.0, 12.0, 12.0)


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
    """The model contract for the tiny cohort: its genomics columns as omics blocks
    (expression, mutation; training-style mean/std), a small image grid, labels
    non-responder/responder, no clinical block."""
    from radfusion.contract import ImageGeometry, ModelContract
    from radfusion.genomics import feature_columns, load_genomics_table, split_blocks
    from radfusion.preprocess import fit_omics_block

    table = load_genomics_table(tiny_cohort / "genomics.parquet")
    blocks = [fit_omics_block(table, name, f) for name, f in split_blocks(feature_columns(table)).items()]
    return ModelContract(
        name="tiny-fusion",
        version="0.0.1-test",
        task="classification:response",
        labels=["non-responder", "responder"],
        positive_label="responder",
        image=ImageGeometry(
            spatial_dims=3,
            target_shape=TINY_TARGET_SHAPE,
            target_spacing=TINY_TARGET_SPACING,
            window=(-150.0, 250.0),
            modalities=("CT",),
            min_slices=4,
        ),
        omics=blocks,
        trained_modalities=["image", "genomics"],
        may_be_missing=["image", "genomics"],
        cohort_hash="tiny",
    )


def tiny_net(contract, seed: int = 0):
    """A small untrained FusionNet for ``contract`` (seeded weights)."""
    import torch

    from training.model import FusionNet

    torch.manual_seed(seed)
    return FusionNet(
        omics_sizes={b.name: len(b.features) for b in contract.omics},
        n_clinical=len(contract.clinical.features) if contract.clinical else 0,
        n_classes=len(contract.labels),
        modalities=tuple(contract.trained_modalities),
        image_encoder="resnet",
        image_widths=(4, 4, 8, 8),
        embed_dim=16,
        genomics_hidden=32,
    ).eval()


@pytest.fixture(scope="session")
def tiny_onnx_model(tmp_path_factory: pytest.TempPathFactory, tiny_contract) -> Path:
    """A real ONNX fusion model (untrained, seeded weights) with the contract embedded,
    exported by training.export exactly as `radfusion export` does."""
    from training.export import export_onnx

    path = tmp_path_factory.mktemp("tiny_model") / "model.onnx"
    export_onnx(tiny_net(tiny_contract), tiny_contract, path)
    return path


@pytest.fixture(scope="session")
def evidence_run(tmp_path_factory: pytest.TempPathFactory):
    """(checkpoint, module, data module, Evidence) of the model every evidence test
    shares: trained once per session (tests/evidence_support.py), analysed once."""
    from evidence_support import EVIDENCE_SALIENCY_CASES, train_evidence_model

    from training.checkpoints import load_datamodule, load_module
    from training.evidence.run import run_evidence

    checkpoint = train_evidence_model(tmp_path_factory.mktemp("evidence"))
    module, dm = load_module(checkpoint), load_datamodule(checkpoint)
    return checkpoint, module, dm, run_evidence(module, dm, saliency_cases=EVIDENCE_SALIENCY_CASES)


@pytest.fixture(scope="session")
def bentoml_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A private BentoML home (model store, bentos) for tests that run BentoML."""
    return tmp_path_factory.mktemp("bentoml_home")


# --------------------------------------------------------- DICOM network peers (PACS)
# Real peers for the listener tests: Orthanc (Debian package) as the PACS and the
# listener as its own process. Loopback only; every wait is bounded.

import json as _json
import shutil as _shutil
import signal as _signal
import socket as _socket
import subprocess as _subprocess
import sys as _sys
import time as _time

PROJECT_ROOT = Path(__file__).resolve().parent.parent
ORTHANC_DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")


def free_loopback_port() -> int:
    with _socket.socket() as s:
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
        response = self.http.post(f"/modalities/{modality}/store", json={"Resources": [self.study_id(study_uid)], "Synchronous": True})
        response.raise_for_status()
        return response.json()


@pytest.fixture(scope="session")
def orthanc(tmp_path_factory: pytest.TempPathFactory):
    """Orthanc with the DICOMweb plugin on loopback ports, for the session."""
    if not _shutil.which("Orthanc") or not ORTHANC_DICOMWEB_PLUGIN.is_file():
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
    (root / "orthanc.json").write_text(_json.dumps(config))
    log_file = root / "orthanc.log"
    with open(log_file, "wb") as log:
        process = _subprocess.Popen(["Orthanc", str(root / "orthanc.json")], stdout=log, stderr=_subprocess.STDOUT)
    url = f"http://127.0.0.1:{http_port}"
    try:
        deadline = _time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{url}/system", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if process.poll() is not None or _time.monotonic() > deadline:
                raise RuntimeError(f"Orthanc did not start:\n{log_file.read_text(errors='replace')[-3000:]}")
            _time.sleep(0.1)
        peer = OrthancPeer(url, dicom_port, log_file)
        yield peer
        peer.http.close()
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except _subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=15)


class ListenerProcess:
    """``python -m serving.pacs.cli listen ...`` as a child process."""

    def __init__(self, args: list[str], port: int, log_file: Path, env: dict | None = None):
        self.port = port
        self.log_file = log_file
        # Readiness is a C-ECHO, from a calling AE title the listener accepts.
        self.calling = args[args.index("--allow-aet") + 1] if "--allow-aet" in args else "ECHOSCU"
        environment = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT), **(env or {})}
        with open(log_file, "ab") as log:
            self.process = _subprocess.Popen(
                [_sys.executable, "-m", "serving.pacs.cli", "listen", "--port", str(port), *args],
                cwd=PROJECT_ROOT, env=environment, stdout=log, stderr=_subprocess.STDOUT,
            )

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = _time.monotonic() + timeout
        while dicom_echo(self.port, calling=self.calling, timeout=2) != 0:
            if self.process.poll() is not None or _time.monotonic() > deadline:
                raise RuntimeError(f"listener not ready:\n{self.log()[-3000:]}")
            _time.sleep(0.2)

    def stop(self, sig: int = _signal.SIGTERM, timeout: float = 20.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout=timeout)
            except _subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=timeout)
        return self.process.returncode

    def log(self) -> str:
        return self.log_file.read_text(errors="replace")


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
