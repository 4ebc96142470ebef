"""Progress: a tqdm bar with rate and ETA on a terminal, a plain log line every few
seconds otherwise (CI logs, batch schedulers). Only counts are shown: never a patient
name or identifier."""

from __future__ import annotations

import logging
import sys
import time

from tqdm import tqdm

log = logging.getLogger("radfusion.serving.scoring.score")


class Progress:
    def __init__(self, enabled: bool = True, interval_s: float = 5.0, stream=None, unit: str = "study"):
        stream = stream or sys.stderr
        self.enabled = enabled
        # What a row is: a study (archive runs) or a patient (table-only runs).
        self.unit, self.units = unit, "studies" if unit == "study" else f"{unit}s"
        self.interval_s = interval_s
        self.total = 0  # rows found that need scoring (grows during discovery)
        self.discovering = True
        self.done = 0
        self.failed = 0
        self._started = time.monotonic()
        self._last_line = self._started
        tty = enabled and hasattr(stream, "isatty") and stream.isatty()
        self._bar = tqdm(total=0, desc="scoring", unit=unit, file=stream, dynamic_ncols=True) if tty else None

    def found(self, n: int) -> None:
        self.total += n
        if self._bar is not None:
            self._bar.total = self.total
            self._bar.refresh()

    def discovery_finished(self) -> None:
        self.discovering = False

    def advance(self, rows: list[dict]) -> None:
        self.done += len(rows)
        self.failed += sum(row["error"] is not None for row in rows)
        if self._bar is not None:
            self._bar.set_postfix(failed=self.failed, refresh=False)
            self._bar.update(len(rows))
        elif self.enabled and time.monotonic() - self._last_line >= self.interval_s:
            self._last_line = time.monotonic()
            log.info("%s", self.line())

    def rate(self) -> float:
        elapsed = time.monotonic() - self._started
        return self.done / elapsed if elapsed > 0 else 0.0

    def line(self) -> str:
        rate = self.rate()
        total = f"{self.total}{'+' if self.discovering else ''}"
        eta = f"{(self.total - self.done) / rate:.0f} s" if rate > 0 and not self.discovering else "?"
        return f"scored {self.done}/{total} {self.units} ({self.failed} failed), {rate:.1f} {self.units}/s, ETA {eta}"

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        elif self.enabled:
            log.info("%s", self.line())
