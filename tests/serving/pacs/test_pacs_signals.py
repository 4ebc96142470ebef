"""SIGTERM stops the listener wherever it finds the main thread. The handler runs in the
main thread between two bytecodes; when that thread is inside ``stop.wait(...)`` holding
the Event's lock, a handler that sets the Event waits for that lock for ever and the
listener can only be killed (seen once in CI: SIGTERM, 20 s, still running)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from tests.support.peers import PROJECT_ROOT

# In its own process: the handlers it installs, and a deadlock if there is one, stay there.
SIGNAL_INSIDE_THE_WAIT = textwrap.dedent(
    """
    import os, signal, threading
    from radfusion.serving.pacs.listener import stop_on_signals

    stop = threading.Event()
    signalled = stop_on_signals()
    with stop._cond:  # the lock Event.wait holds between its checks
        os.kill(os.getpid(), signal.SIGTERM)
        for _ in range(1000):  # bytecodes: the handler runs here, the lock still held
            pass
    print(signalled == [signal.SIGTERM], flush=True)
    """
)


def test_sigterm_while_the_main_thread_holds_the_stop_lock_is_seen_without_deadlock() -> None:
    result = subprocess.run(
        [sys.executable, "-c", SIGNAL_INSIDE_THE_WAIT], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=60
    )
    assert (result.returncode, result.stdout.strip()) == (0, "True"), result.stderr
