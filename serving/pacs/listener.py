"""The listener process: the Storage SCP in background threads, and the pipeline ticking
in the foreground until SIGTERM/SIGINT (``radfusion listen``)."""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from radfusion.explain import ExplainSettings
from radfusion.limits import StudyBudget
from radfusion.runtime import OnnxModel
from radfusion.serving.pacs.pipeline import Pipeline, RetryPolicy
from radfusion.serving.pacs.predict import StudyPredictor
from radfusion.serving.pacs.scp import StoreHandler, start_scp
from radfusion.serving.pacs.send import CStoreSender, DicomPeer, StowSender
from radfusion.serving.pacs.state import OnResend, StudyState
from radfusion.serving.pacs.storage import WorkDir
from radfusion.serving.patients import PatientTables

log = logging.getLogger("radfusion.pacs")


@dataclass
class ListenerConfig:
    model: Path
    work: Path
    ae_title: str = "RADFUSION"
    host: str = "127.0.0.1"
    port: int = 11112
    allowed_calling: list[str] = field(default_factory=list)  # empty: any calling AE title
    genomics: Path | None = None
    clinical: Path | None = None
    quiet_seconds: float = 30.0
    max_wait_seconds: float = 600.0  # a quiet study with instances missing waits this long for them
    report_failures: bool = True  # a study that cannot be scored gets an SR saying why
    # Received files kept this long once nothing is left to deliver (0: deleted as soon as
    # the result is sent); None: for ever.
    keep_hours: float | None = 24.0
    budget: StudyBudget = field(default_factory=StudyBudget)
    send_to: list[DicomPeer] = field(default_factory=list)
    stow_url: str | None = None
    stow_token: str | None = None
    on_resend: OnResend = OnResend.IGNORE
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    poll_seconds: float = 1.0
    device: str = "auto"
    shutdown_grace_seconds: float = 10.0
    # Send a saliency map (where the model looked) with each SR: None for none, else
    # its occlusion windows (1 + windows model rows per study).
    saliency_windows: int | None = None


def build_pipeline(config: ListenerConfig, state: StudyState, work: WorkDir) -> Pipeline:
    model = OnnxModel(config.model, device=config.device)
    patients = PatientTables.from_paths(model.contract, config.genomics, config.clinical)
    predictor = StudyPredictor(model, patients, config.budget)
    senders: list[CStoreSender | StowSender] = [CStoreSender(peer, config.ae_title) for peer in config.send_to]
    if config.stow_url:
        senders.append(StowSender(config.stow_url, config.stow_token))
    log.info(
        "model %s %s on %s; genomics table: %s; clinical table: %s; destinations: %s",
        model.contract.name,
        model.contract.version,
        model.provider,
        _table_note(patients.genomics, model.contract.uses_genomics),
        _table_note(patients.clinical, model.contract.uses_clinical),
        ", ".join(map(str, senders)) or "none (SRs stay on disk)",
    )
    return Pipeline(
        state,
        work,
        predictor,
        senders,
        config.quiet_seconds,
        config.retry,
        max_wait_seconds=config.max_wait_seconds,
        report_failures=config.report_failures,
        keep_seconds=None if config.keep_hours is None else config.keep_hours * 3600.0,
        # The map is the first pass's voxel map: the second pass only places the peak.
        saliency=(
            None
            if config.saliency_windows is None
            else ExplainSettings(max_windows=config.saliency_windows, refine_windows=0)
        ),
    )


def _table_note(table, used: bool) -> str:
    return "not used by the model" if not used else ("yes" if table is not None else "none")


def _retention_note(keep_hours: float | None) -> str:
    if keep_hours is None:
        return "kept for ever"
    if keep_hours == 0:
        return "deleted as soon as the result is sent"
    return f"deleted {keep_hours:g} h after the result is sent"


def _delete_leftovers(state: StudyState, work: WorkDir) -> None:
    """Delete what remains of purged studies: files a stopped process had claimed for
    deletion but not yet deleted."""
    left = {study: paths for study, paths in state.purged_files().items() if any(map(os.path.exists, paths))}
    for study_uid, paths in left.items():
        work.delete_files(study_uid, paths)
    if left:
        log.info("deleted the files of %d studies left by an earlier process past their retention", len(left))


def _finish_associations(server, grace: float) -> None:
    """Let open associations finish for up to ``grace`` seconds, then abort them: their
    senders were not told "stored" for what was in flight, and send it again."""
    deadline = time.monotonic() + grace
    while server.active_associations and time.monotonic() < deadline:
        time.sleep(0.1)
    for assoc in server.active_associations:
        assoc.abort()


def stop_on_signals() -> list[int]:
    """SIGTERM/SIGINT, from now on, as a list the serve loop polls (empty until one
    arrives); handlers are only installed from the main thread. A handler runs in the
    main thread between two bytecodes, possibly while that thread holds the lock inside
    ``Event.wait``: setting the stop Event from it can deadlock the process (CPython
    issue 126434), so the handler takes no lock and only appends."""
    signalled: list[int] = []
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda signum, _frame: signalled.append(signum))
    return signalled


def run_listener(config: ListenerConfig, stop: threading.Event | None = None) -> None:
    """Serve until ``stop`` is set or, when run from the main thread, SIGTERM/SIGINT arrives.

    Studies left pending by an earlier process are picked up by the first tick: their
    state is in SQLite, their instances on disk. So is the retention policy, which the
    first tick applies to what earlier processes kept; files an earlier process was
    deleting when it stopped are deleted before the SCP starts."""
    work = WorkDir(config.work)
    state = StudyState(work.state_path)
    try:
        pipeline = build_pipeline(config, state, work)  # a table that cannot serve the model stops here
    except BaseException:
        state.close()
        raise
    # Installed once there is something to drain; a signal during the model load ends
    # the process the default way, which loses nothing.
    stop = stop or threading.Event()
    signalled = stop_on_signals()
    _delete_leftovers(state, work)
    server = start_scp(
        config.host,
        config.port,
        config.ae_title,
        config.allowed_calling,
        StoreHandler(work, state, config.on_resend),
    )
    log.info(
        "listening as %s on %s:%d (calling AE titles: %s); resumed: %s",
        config.ae_title,
        config.host,
        config.port,
        ", ".join(config.allowed_calling) or "any",
        state.counts(),
    )
    log.info(
        "a study is complete %g s after its last instance (up to %g s more while instances are missing);"
        " failure reports: %s; received files %s",
        config.quiet_seconds,
        config.max_wait_seconds,
        "on" if config.report_failures else "off",
        _retention_note(config.keep_hours),
    )
    try:
        while not (stop.is_set() or signalled):
            try:
                pipeline.tick()
            except Exception:  # never let one bad tick stop the listener
                log.exception("pipeline tick failed")
            stop.wait(config.poll_seconds)
    finally:
        server.shutdown()  # no new associations
        _finish_associations(server, config.shutdown_grace_seconds)
        state.close()
        log.info("listener stopped")
