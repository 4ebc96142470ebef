"""SIGTERM drain across the two BentoML services (BentoML 1.4.40).

On SIGTERM `bentoml serve` signals all its workers at once. Each worker's uvicorn
stops accepting connections and finishes the requests it has in flight, so an API
request still reading its upload or decoding DICOM when the signal arrives would then
find the model service gone. Two fixes, both needed (tests/serving/http/test_service_security.py):

- ``defer_shutdown_until_callers_exit``: the model service's workers keep serving until
  the sibling API workers (same parent, another service name) have exited, which they
  do once their in-flight requests are done, and only then pass the signal on to
  uvicorn. The wait is bounded by ``max_wait_s``.
- ``keep_sockets_until_workers_stop``: BentoML's arbiter deletes the folder holding the
  model service's unix socket as the first step of stopping, so API requests that need
  a new connection to the model service fail at once (only pooled connections still
  work). Patched so the folder goes once every worker has stopped."""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable

log = logging.getLogger("bentoml.radfusion")

_SERVICE_NAME_FLAG = "--service-name"


def _service_name(cmdline: list[str]) -> str | None:
    if _SERVICE_NAME_FLAG in cmdline:
        index = cmdline.index(_SERVICE_NAME_FLAG)
        if index + 1 < len(cmdline):
            return cmdline[index + 1]
    return None


def _caller_workers(own_service: str) -> list:
    """Sibling worker processes of other services (the callers of this one)."""
    import psutil

    try:
        siblings = psutil.Process(os.getppid()).children()
    except psutil.Error:
        return []
    callers = []
    for process in siblings:
        if process.pid == os.getpid():
            continue
        try:
            name = _service_name(process.cmdline())
        except psutil.Error:
            continue  # already gone
        if name is not None and name != own_service:
            callers.append(process)
    return callers


def _wait_for_callers(own_service: str, max_wait_s: float) -> None:
    import psutil

    deadline = time.monotonic() + max_wait_s
    while time.monotonic() < deadline:
        alive = [p for p in _caller_workers(own_service) if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        if not alive:
            return
        time.sleep(0.1)
    log.warning("%s: callers still running after %.0f s; stopping anyway", own_service, max_wait_s)


def defer_shutdown_until_callers_exit(own_service: str, max_wait_s: float) -> None:
    """Wrap the current SIGTERM/SIGINT handlers (uvicorn's) so they run only once the
    API workers are gone. Call from the worker's main thread, after uvicorn installed
    its handlers (i.e. from the service's __init__)."""
    if threading.current_thread() is not threading.main_thread():
        return
    for sig in (signal.SIGTERM, signal.SIGINT):
        previous = signal.getsignal(sig)
        if not callable(previous):
            continue

        def deferred(signum: int, frame, previous: Callable = previous) -> None:
            def later() -> None:
                _wait_for_callers(own_service, max_wait_s)
                previous(signum, frame)  # uvicorn's handler: sets should_exit, which its loop polls

            threading.Thread(target=later, name="drain-wait", daemon=True).start()

        signal.signal(sig, deferred)


def keep_sockets_until_workers_stop() -> None:
    """Patch BentoML's circus Arbiter (in the `bentoml serve` process, which imports the
    service module) to run its exit stack, which removes the unix socket folder, after
    the watchers stopped instead of before. Idempotent; only for the blocking arbiter
    `bentoml serve` uses (no externally provided event loop)."""
    from bentoml._internal.utils.circus import Arbiter
    from circus.arbiter import Arbiter as CircusArbiter

    if getattr(Arbiter, "_radfusion_drain_patch", False):
        return
    original_start, original_stop = Arbiter.start, Arbiter.stop

    def start(self, cb=None) -> None:
        if self._provided_loop:
            return original_start(self, cb)
        self.exit_stack.__enter__()
        try:
            future = CircusArbiter.start(self, cb)  # blocks until every watcher stopped
            if exc := future.exception():
                raise exc
        finally:
            self.exit_stack.__exit__(None, None, None)

    def stop(self):
        if self._provided_loop:
            return original_stop(self)
        return CircusArbiter.stop(self)  # the exit stack runs when start() returns

    Arbiter.start, Arbiter.stop = start, stop  # type: ignore[method-assign]  # the patch itself
    Arbiter._radfusion_drain_patch = True
