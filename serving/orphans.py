"""Worker processes exit when whoever started them is gone.

A worker outlives a parent killed with SIGKILL (nothing signals it): it is re-parented
to init and keeps its model, its memory and, for `bentoml serve`'s workers (each in its
own session), its share of the listening socket. ``exit_with_parent`` watches for that
in each service worker and each scorer worker process; ``stop_with_launcher`` does the
same for `bentoml serve` itself when it was started by
``radfusion.serving.http.launch.running_server`` (tests, the demo) and that process
dies without stopping it.

Both poll ``os.getppid()``: PR_SET_PDEATHSIG would follow the parent *thread* that
forked the process, not the parent process."""

from __future__ import annotations

import logging
import os
import signal
import threading
import time

log = logging.getLogger("radfusion.serving")

LAUNCHER_PID_ENV = "RADFUSION_LAUNCHER_PID"
POLL_S = 0.5

_watching = False


def _stop_when_orphaned(parent: int, what: str, grace_s: float) -> None:
    while os.getppid() == parent:
        time.sleep(POLL_S)
    log.warning("%s: the process that started it is gone; stopping", what)
    os.kill(os.getpid(), signal.SIGTERM)  # a graceful stop first: in-flight requests end
    time.sleep(grace_s)
    os._exit(0)


def _watch(parent: int, what: str, grace_s: float) -> None:
    global _watching
    if _watching:
        return
    _watching = True
    threading.Thread(
        target=_stop_when_orphaned, args=(parent, what, grace_s), name="exit-with-parent", daemon=True
    ).start()


def exit_with_parent(grace_s: float = 5.0) -> None:
    """Stop this worker (SIGTERM, then exit after ``grace_s``) once the process that
    started it is gone. Idempotent; call first thing in the worker."""
    _watch(os.getppid(), "worker", grace_s)


def stop_with_launcher(grace_s: float = 30.0) -> None:
    """In `bentoml serve` started by ``running_server``: stop the server (SIGTERM: it
    stops its workers) once the launching process is gone. Does nothing in any other
    process (the workers inherit the variable but not that parent)."""
    launcher = os.environ.get(LAUNCHER_PID_ENV, "")
    if launcher.isdigit() and int(launcher) == os.getppid():
        _watch(int(launcher), "bentoml serve", grace_s)
