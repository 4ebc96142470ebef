"""Scorer progress: a bar with rate and ETA on a terminal, plain log lines otherwise."""

from __future__ import annotations

import io
import logging
import re

from radfusion.serving.scoring.progress import Progress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_terminal_gets_a_bar_with_rate_eta_and_failures() -> None:
    screen = Terminal()
    progress = Progress(stream=screen)
    progress.found(4)
    progress.advance([{"error": None}, {"error": "corrupt_dicom: pixel data cannot be decoded"}])
    progress.close()
    final = screen.getvalue().split("\r")[-1]
    assert re.search(r"50%\|.*\| 2/4 \[\d\d:\d\d<\d\d:\d\d, +[\d.]+study/s, failed=1\]", final), final


def test_elsewhere_plain_log_lines_with_counts_rate_and_eta(caplog) -> None:
    pipe = io.StringIO()  # not a terminal: no bar at all
    progress = Progress(stream=pipe, interval_s=0.0)
    with caplog.at_level(logging.INFO, logger="radfusion.serving.scoring.score"):
        progress.found(10)
        progress.advance([{"error": None}] * 3)  # discovery still going: total "10+", no ETA
        progress.discovery_finished()
        progress.advance([{"error": "fetch_failed: x"}])
        progress.close()
    lines = [r.getMessage() for r in caplog.records]
    assert re.fullmatch(r"scored 3/10\+ studies \(0 failed\), [\d.]+ studies/s, ETA \?", lines[0])
    assert re.fullmatch(r"scored 4/10 studies \(1 failed\), [\d.]+ studies/s, ETA \d+ s", lines[1])
    assert pipe.getvalue() == ""


def test_disabled_progress_says_nothing(caplog) -> None:
    with caplog.at_level(logging.INFO, logger="radfusion.serving.scoring.score"):
        progress = Progress(enabled=False, stream=Terminal(), interval_s=0.0)
        progress.found(2)
        progress.advance([{"error": None}])
        progress.close()
    assert caplog.records == []
