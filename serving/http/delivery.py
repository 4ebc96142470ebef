"""STOW-RS results on their way to the PACS, delivered in the background.

Each kept result that has a PACS to go to gets a marker beside it in the result store
(``<result>.send``: the attempts so far and when the next is due); a background thread
of each API worker sends what is due (at once for a new result), with a growing wait
after each failure, until the PACS takes it or the result leaves the store (retention
or size cap). The STOW-RS request that produced the result never waits for the PACS.
Markers live on disk, so a restarted service goes on where it stopped. Several workers
share one store: a worker claims a marker by renaming it (one rename wins), and a claim
left by a worker that died is taken back after STALE_CLAIM_S."""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset

log = logging.getLogger("bentoml.radfusion")

MARKER = ".send"
CLAIMED = ".sending"
# Seconds before attempt 2, 3, ...; the last value repeats.
BACKOFF_S = (30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)
STALE_CLAIM_S = 600.0

Send = Callable[[Dataset], str | None]  # the refusal, or None when the PACS took it


def _backoff(attempts: int) -> float:
    return BACKOFF_S[min(attempts, len(BACKOFF_S)) - 1]


class Outbox:
    def __init__(self, root: Path, send: Send, clock: Callable[[], float] = time.time):
        self.root = root
        self.send = send
        self.clock = clock
        self._wake = threading.Event()

    def wake(self) -> None:
        """Deliver now (a result was just kept), not at the next poll."""
        self._wake.set()

    def hold(self, result: Path, attempts: int = 0) -> None:
        """``result`` is to be delivered: at once when never tried (``attempts`` 0), else
        after the wait that ``attempts`` failures earn."""
        marker = result.with_name(result.name + MARKER)
        state = {"attempts": attempts, "next_at": self.clock() + (_backoff(attempts) if attempts else 0.0)}
        temporary = result.with_name(f".{result.name}{MARKER}.{os.getpid()}.{threading.get_ident()}")
        temporary.write_text(json.dumps(state))
        os.replace(temporary, marker)

    def pending(self) -> int:
        return sum(1 for _ in self.root.glob(f"*/*/*{MARKER}"))

    def deliver_due(self) -> tuple[int, int]:
        """Send every result whose next attempt is due; (delivered, still pending)."""
        now = self.clock()
        self._take_back_stale_claims(now)
        delivered = failed = 0
        for marker in sorted(self.root.glob(f"*/*/*{MARKER}")):
            try:
                state = json.loads(marker.read_text())
            except (OSError, ValueError):
                continue  # being replaced by another worker, or gone
            if float(state.get("next_at", 0)) > now:
                continue
            claimed = marker.with_name(marker.name.removesuffix(MARKER) + CLAIMED)
            try:
                os.rename(marker, claimed)
                os.utime(claimed)  # the claim's age, for _take_back_stale_claims
            except OSError:
                continue  # another worker took it
            outcome = self._attempt(claimed, int(state.get("attempts", 0)))
            delivered += outcome is True
            failed += outcome is False
        if delivered or failed:
            log.info("result delivery: %d delivered, %d to retry", delivered, failed)
        return delivered, self.pending()

    def _attempt(self, claimed: Path, attempts: int) -> bool | None:
        result = claimed.with_name(claimed.name.removesuffix(CLAIMED))
        try:
            dataset = pydicom.dcmread(result)
        except OSError:  # the store let it go (retention, size cap): nothing left to send
            claimed.unlink(missing_ok=True)
            return None
        refusal = self.send(dataset)
        if refusal is None:
            claimed.unlink(missing_ok=True)
            return True
        log.warning(
            "result delivery: attempt %d failed (next in %.0f s): %s", attempts + 1, _backoff(attempts + 1), refusal
        )
        self.hold(result, attempts + 1)
        claimed.unlink(missing_ok=True)
        return False

    def _take_back_stale_claims(self, now: float) -> None:
        for claimed in self.root.glob(f"*/*/*{CLAIMED}"):
            try:
                if now - claimed.stat().st_mtime > STALE_CLAIM_S:
                    os.rename(claimed, claimed.with_name(claimed.name.removesuffix(CLAIMED) + MARKER))
            except OSError:
                continue

    def run(self, stop: threading.Event, poll_s: float = 15.0) -> None:
        """The background loop of an API worker (a daemon thread): a round when woken,
        and every ``poll_s`` for retries that came due (and other workers' leftovers)."""
        while not stop.is_set():
            self._wake.wait(poll_s)
            self._wake.clear()
            try:
                self.deliver_due()
            except Exception as exc:  # noqa: BLE001 - the loop outlives any one bad round
                log.error("result delivery round failed (%s)", type(exc).__name__)
