"""Continuous batching for the model service: one thread runs the model on the calls
queued while its last run went on (up to ``max_rows`` cases), the moment that run ends.

Why not BentoML's adaptive batching: its dispatcher lives on the event loop. It polls
there every millisecond while a batch runs, and starts the next batch only when the loop
comes back to it, after the last batch's answers are written; under closed-loop clients
its batches settled into a small one and a large one in turn, with the model idle
between them (bench/serving.py, ``service_efficiency``). Here the loop only queues calls
and hands back answers; the model thread never waits for it.

Load is shed with ``overloaded()`` (the model service's 503): at once, when the cases
queued ahead of a call would take longer than ``max_wait_s`` at the pace of the last
runs; and when the thread comes to a call that has waited longer than that all the
same. A call whose caller gave up is dropped. When a merged run fails, its calls run
again one by one, so that a bad call fails alone. Every call taken from the queue is
answered, whatever happens to its run.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import threading
import time
import typing as t
from dataclasses import dataclass

import numpy as np

log = logging.getLogger("bentoml.radfusion")

# How fast the pace of runs (seconds per case) follows the latest run.
PACE_WEIGHT = 0.2


@dataclass(eq=False)
class _Call:
    rows: np.ndarray
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop
    queued_at: float


class ModelBatches:
    """``await batches(rows)``: ``run``'s output rows for ``rows`` (an array of one or
    more rows), run with the other calls queued at the time. ``max_rows``: most cases in
    one run (a call with more runs alone); ``batching=False``: one call per run.
    ``on_run(calls, rows)`` is told of each run (metrics)."""

    def __init__(
        self,
        run: t.Callable[[np.ndarray], np.ndarray],
        *,
        max_rows: int,
        max_wait_s: float,
        overloaded: t.Callable[[], BaseException],
        batching: bool = True,
        on_run: t.Callable[[int, int], None] | None = None,
    ) -> None:
        self._run = run
        self._max_rows = max_rows if batching else 1
        self._max_wait_s = max_wait_s
        self._overloaded = overloaded
        self._on_run = on_run
        self._queue: collections.deque[_Call] = collections.deque()
        self._queued_rows = 0
        self._seconds_per_row: float | None = None
        self._closed = False
        self._queued = threading.Condition()
        self._thread = threading.Thread(target=self._serve, name="model-batches", daemon=True)
        self._thread.start()

    def alive(self) -> bool:
        return self._thread.is_alive()

    def close(self) -> None:
        """Stop the thread after its current run; calls still queued are answered
        overloaded."""
        with self._queued:
            self._closed = True
            left = list(self._queue)
            self._queue.clear()
            self._queued_rows = 0
            self._queued.notify()
        _settle([(call, self._overloaded_error()) for call in left])
        self._thread.join()

    async def __call__(self, rows: np.ndarray) -> np.ndarray:
        if not isinstance(rows, np.ndarray) or rows.ndim < 1 or len(rows) == 0:
            raise ValueError(f"a model call takes one or more rows, not {type(rows).__name__} {np.shape(rows)}")
        loop = asyncio.get_running_loop()
        call = _Call(rows, loop.create_future(), loop, time.monotonic())
        with self._queued:
            pace = self._seconds_per_row
            # The wait before this call's run: the cases queued ahead of it (the run going
            # on is not counted, so a call that finds the queue empty is never shed here).
            shed = self._closed or (pace is not None and self._queued_rows * pace > self._max_wait_s)
            if not shed:
                self._queue.append(call)
                self._queued_rows += len(rows)
                self._queued.notify()
        if shed:
            raise self._overloaded_error()
        return await call.future

    def _overloaded_error(self) -> BaseException:
        try:
            return self._overloaded()
        except Exception:  # noqa: BLE001 - a late call is answered whatever the factory does
            return RuntimeError("the model service is overloaded")

    def _serve(self) -> None:
        while True:
            taken = self._next_calls()
            if taken is None:
                return
            calls, late = taken
            _settle([(call, self._overloaded_error()) for call in late])
            if not calls:
                continue
            try:
                self._run_together(calls)
            except BaseException as exc:  # noqa: BLE001 - the thread must outlive any run: callers wait on it
                log.error("model batch failed outside its run: %s", type(exc).__name__)
                _settle([(call, RuntimeError("the model batch failed")) for call in calls])

    def _next_calls(self) -> tuple[list[_Call], list[_Call]] | None:
        """The queued calls for the next run, oldest first, and those that waited too
        long; those given up are dropped. None once closed."""
        with self._queued:
            while not self._queue and not self._closed:
                self._queued.wait()
            if self._closed:
                return None
            now = time.monotonic()
            calls: list[_Call] = []
            late: list[_Call] = []
            rows = 0
            while self._queue and (not calls or rows + len(self._queue[0].rows) <= self._max_rows):
                call = self._queue.popleft()
                self._queued_rows -= len(call.rows)
                if call.future.cancelled():
                    continue
                if now - call.queued_at > self._max_wait_s:
                    late.append(call)
                    continue
                calls.append(call)
                rows += len(call.rows)
            return calls, late

    def _run_together(self, calls: list[_Call]) -> None:
        rows = sum(len(call.rows) for call in calls)
        started = time.monotonic()
        try:
            batch = calls[0].rows if len(calls) == 1 else np.concatenate([call.rows for call in calls])
            outputs = np.asarray(self._run(batch))
            if outputs.ndim < 1 or len(outputs) != rows:
                raise RuntimeError(f"the model answered {outputs.shape} to {rows} rows")
            ends = np.cumsum([len(call.rows) for call in calls])
            answers: list[tuple[_Call, t.Any]] = [
                (call, outputs[end - len(call.rows) : end]) for call, end in zip(calls, ends, strict=True)
            ]
        except Exception as exc:  # noqa: BLE001 - the model's error is its callers' answer
            if len(calls) == 1:
                _settle([(calls[0], exc)])
            else:
                for call in calls:
                    self._run_together([call])
            return
        _settle(answers)
        self._keep_pace(rows, time.monotonic() - started)
        if self._on_run is not None:
            try:
                self._on_run(len(calls), rows)
            except Exception:  # metrics must not stop the model thread
                log.exception("model batch metrics failed")

    def _keep_pace(self, rows: int, seconds: float) -> None:
        pace = seconds / rows
        with self._queued:
            last = self._seconds_per_row
            self._seconds_per_row = pace if last is None else (1 - PACE_WEIGHT) * last + PACE_WEIGHT * pace


def _settle(answers: list[tuple[_Call, t.Any]]) -> None:
    """Each call's answer (an output or an exception), set on its caller's event loop."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[_Call, t.Any]]] = collections.defaultdict(list)
    for call, answer in answers:
        by_loop[call.loop].append((call, answer))
    for loop, settled in by_loop.items():
        with contextlib.suppress(RuntimeError):  # that loop is closed: nobody is waiting
            loop.call_soon_threadsafe(_set_all, settled)


def _set_all(answers: list[tuple[_Call, t.Any]]) -> None:
    for call, answer in answers:
        if call.future.done():
            continue
        try:
            if isinstance(answer, BaseException):
                call.future.set_exception(answer)
            else:
                call.future.set_result(answer)
        except Exception as exc:  # noqa: BLE001 - one asyncio will not carry (StopIteration)
            call.future.set_exception(RuntimeError(f"the model failed: {type(answer).__name__} ({exc})"))
