"""The local engine: one machine, a pool of worker processes, one ONNX Runtime session.

Three stages overlap. Worker processes read headers (discovery, unit by unit) and
prepare studies (fetch, decode, preprocess); the main process assembles studies from
scanned units, hands them out, batches the prepared ones and runs inference while the
workers go on with the next studies. The work in flight is bounded (``prefetch`` tasks
per worker), so memory stays flat on any archive size.

A worker that dies (a decoder crashing on a hostile file) breaks the pool: the pool is
restarted and the work that was in flight is retried one task at a time, so that only
the study that kills a worker gets an error row ("worker_crashed: ..."). A study stuck
inside one call (where the core's clock, checked between files, cannot stop it) is
stopped the same way: a task running longer than ``stuck_after`` seconds (default: twice
the study's budget of seconds, plus a minute) has its workers killed, and its row says
``study_over_budget``; the other tasks that were in flight are retried alone."""

from __future__ import annotations

import multiprocessing
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Executor, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field

from radfusion.errors import StudyOverBudgetError
from radfusion.limits import StudyBudget
from radfusion.runtime import OnnxModel
from radfusion.serving.patients import PatientTables
from radfusion.serving.scoring import prepare
from radfusion.serving.scoring.inference import infer_batch
from radfusion.serving.scoring.prepare import PreparedStudy
from radfusion.serving.scoring.progress import Progress
from radfusion.serving.scoring.rows import WorkerCrashedError, new_row
from radfusion.serving.scoring.sources import ScanResult, ScanUnit, StudyAssembler, StudyRef, is_dicomweb, list_units
from radfusion.serving.scoring.writer import PartWriter

# Keep this many studies found but not yet handed out, per worker, before scanning more.
READY_PER_WORKER = 8
# How often the engine looks for stuck tasks while it waits for results.
POLL_SECONDS = 1.0
# A scan unit may take this much longer per file than a study before it counts as stuck.
SCAN_SECONDS_PER_FILE = 0.1

Task = ScanUnit | StudyRef


@dataclass
class EngineStats:
    discovered: int = 0  # studies found in the archive (a re-released study counts once more)
    already_done: int = 0  # found with a committed row from an earlier run: not scored again
    skipped_files: int = 0  # files that are not readable DICOM (or zip)
    skipped_by_reason: dict[str, int] = field(default_factory=dict)  # those files, by reason
    failed_units: dict[str, int] = field(default_factory=dict)  # folders/zips not readable at all, by reason


class _InlineExecutor(Executor):
    """``--workers 0``: everything in the main process, in order (debugging, tiny jobs)."""

    def submit(self, fn, /, *args, **kwargs) -> Future:
        future: Future = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except Exception as exc:  # noqa: BLE001 - delivered through the future, as a pool would
            future.set_exception(exc)
        return future


class LocalEngine:
    def __init__(
        self,
        model: OnnxModel,
        workers: int,
        batch_size: int,
        prefetch: int = 4,
        prepare_fn: Callable[..., PreparedStudy] = prepare.prepare_task,
        budget: StudyBudget | None = None,
        stuck_after: float | None = None,
    ):
        self.model, self.contract = model, model.contract
        self.workers, self.batch_size = workers, batch_size
        self.max_in_flight = max(1, workers * prefetch)
        self.prepare_fn = prepare_fn  # module-level, so that it pickles to the workers
        self.budget = budget or StudyBudget()
        # The core stops a study at budget.max_seconds between files; a task still
        # running well after that is stuck inside one call.
        self.stuck_after = 2 * self.budget.max_seconds + 60 if stuck_after is None else stuck_after

    def run(self, archive: str, patients: PatientTables, writer: PartWriter, progress: Progress) -> EngineStats:
        self.stats = EngineStats()
        self._patients, self._writer, self._progress = patients, writer, progress
        self._units: Iterator[ScanUnit] | None = iter(list_units(archive))
        self._assembler = StudyAssembler(str(archive).rstrip("/") if is_dicomweb(archive) else None)
        self._assembled = False
        self._ready: deque[StudyRef] = deque()
        self._suspects: deque[Task] = deque()  # in flight when a worker died
        self._in_flight: dict[Future, Task] = {}
        self._running_since: dict[Future, float] = {}
        self._stuck: set[Future] = set()
        self._batch: list[PreparedStudy] = []
        self._pool = self._new_pool()
        try:
            self._loop()
            self._infer(len(self._batch))
        finally:
            self._pool.shutdown(wait=True, cancel_futures=True)
        self.stats.skipped_files = self._assembler.skipped_files
        self.stats.skipped_by_reason = dict(sorted(self._assembler.skipped_by_reason.items()))
        self.stats.failed_units = dict(sorted(self._assembler.failed_units.items()))
        return self.stats

    def _loop(self) -> None:
        while True:
            if self._suspects:
                if not self._in_flight:
                    self._submit(self._suspects.popleft())
            else:
                self._feed_scans()
                self._feed_prepares()
            if not self._in_flight:
                if self._assembled and not self._ready and not self._suspects:
                    return
                continue
            done, _ = wait(self._in_flight, timeout=POLL_SECONDS, return_when=FIRST_COMPLETED)
            self._stop_stuck()  # on every pass: other workers' results may keep arriving
            if not done:
                continue
            self._collect(done)
            while len(self._batch) >= self.batch_size:
                self._infer(self.batch_size)
            if self._batch and not any(isinstance(t, StudyRef) for t in self._in_flight.values()):
                self._infer(len(self._batch))  # nothing else coming soon: do not sit on a partial batch

    def _feed_scans(self) -> None:
        scans = sum(isinstance(t, ScanUnit) for t in self._in_flight.values())
        low_water = max(1, self.workers) * READY_PER_WORKER
        while self._units is not None and scans < max(1, self.workers) and len(self._ready) < low_water:
            unit = next(self._units, None)
            if unit is None:
                self._units = None
                break
            self._submit(unit)
            scans += 1
        if self._units is None and not scans and not self._assembled:
            self._assembled = True
            self._release(self._assembler.finish())
            self._progress.discovery_finished()

    def _feed_prepares(self) -> None:
        while self._ready and len(self._in_flight) < self.max_in_flight:
            self._submit(self._ready.popleft())

    def _submit(self, task: Task) -> None:
        future: Future[ScanResult | PreparedStudy]
        if isinstance(task, ScanUnit):
            future = self._pool.submit(prepare.scan_task, task)
        else:
            # Looked up here, in the main process: the tables are loaded once, and each
            # worker receives only its patient's values.
            future = self._pool.submit(self.prepare_fn, task, self._patients.lookup(task.patient_id))
        self._in_flight[future] = task

    def _stop_stuck(self) -> None:
        """Kill the workers when a task has run past its limit: the pool breaks, and
        _restart_pool gives the stuck task its row."""
        if self.workers == 0:
            return  # in this process: nothing can be stopped from outside
        now = time.monotonic()
        for future, task in self._in_flight.items():
            if future.running():
                started = self._running_since.setdefault(future, now)
                if now - started > self._limit(task):
                    self._stuck.add(future)
        if self._stuck:
            # The executor offers no way to stop one task: its processes are killed,
            # which it reports as a broken pool, as for a crashed worker.
            for process in list(getattr(self._pool, "_processes", {}).values()):
                process.kill()

    def _limit(self, task: Task) -> float:
        if isinstance(task, ScanUnit):
            return self.stuck_after + SCAN_SECONDS_PER_FILE * len(task.names)
        return self.stuck_after

    def _collect(self, done) -> None:
        broken = False
        for future in done:
            try:
                result = future.result()
            except BrokenProcessPool:
                broken = True
                continue
            task = self._in_flight.pop(future)
            self._running_since.pop(future, None)
            if isinstance(task, ScanUnit):
                self._release(self._assembler.add(result))
            elif result.inputs is None:
                self._emit([result.row])
            else:
                self._batch.append(result)
        if broken:
            self._restart_pool()

    def _release(self, studies: list[StudyRef]) -> None:
        for study in studies:
            self.stats.discovered += 1
            if self._writer.should_score(study):
                self._ready.append(study)
                self._progress.found(1)
            else:
                self.stats.already_done += 1

    def _infer(self, n: int) -> None:
        batch, self._batch = self._batch[:n], self._batch[n:]
        infer_batch(self.model, batch)
        self._emit([p.row for p in batch])

    def _emit(self, rows: list[dict]) -> None:
        for row in rows:
            self._writer.add(row)
        self._progress.advance(rows)

    def _new_pool(self) -> Executor:
        if self.workers == 0:
            prepare.set_contract(self.contract, self.budget)
            return _InlineExecutor()
        # spawn, not fork: the parent holds threads (ORT, the pool's) that a fork copies broken.
        return ProcessPoolExecutor(
            max_workers=self.workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=prepare.init_worker,
            initargs=(self.contract, self.budget),
        )

    def _restart_pool(self) -> None:
        """A worker died, or was killed because a task was stuck. A stuck task is the
        culprit; else a task alone in flight is; otherwise every task that was in flight
        becomes a suspect, to be retried alone."""
        lost = list(self._in_flight.items())
        stuck = [task for future, task in lost if future in self._stuck]
        self._in_flight.clear()
        self._running_since.clear()
        self._stuck.clear()
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._pool = self._new_pool()
        if stuck:
            for task in stuck:
                self._fail(task, StudyOverBudgetError.kind, f"reading it took more than {self._limit(task):g} s")
            self._suspects.extend(task for _, task in lost if task not in stuck)
        elif len(lost) > 1:
            self._suspects.extend(task for _, task in lost)
        else:
            self._fail(lost[0][1], WorkerCrashedError.kind, "the process preparing this study died")

    def _fail(self, task: Task, kind: str, why: str) -> None:
        if isinstance(task, StudyRef):
            row = new_row(self.contract, task.study_uid, task.patient_id, task.n_instances)
            row["error"] = f"{kind}: {why}"
            self._emit([row])
            return
        # A unit whose headers kill (or hang) the reader: its files count as unreadable,
        # and the walk goes on past it in order.
        reason = f"{kind}: {why.replace('this study', 'this unit')}"
        result = ScanResult(index=task.index, position=task.path, skipped=[reason] * max(1, len(task.names)))
        result.failed = reason
        self._release(self._assembler.add(result))
