"""The model service's continuous batching (radfusion.serving.http.model_batches):
calls queued during a run share the next one, each caller gets its own rows back, and a
late, failing or abandoned call costs no other call its answer."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator

import numpy as np
import pytest

from radfusion.serving.http.model_batches import ModelBatches


class Overloaded(Exception):
    pass


class GatedModel:
    """Doubles its rows; each run waits for ``gate`` while ``hold`` is set, and records
    the rows it ran."""

    def __init__(self) -> None:
        self.runs: list[list[float]] = []
        self.hold = threading.Event()
        self.gate = threading.Event()
        self.started = threading.Event()

    def __call__(self, rows: np.ndarray) -> np.ndarray:
        self.started.set()
        if self.hold.is_set():
            assert self.gate.wait(10)
        if np.any(rows < 0):
            raise ValueError("a negative case")
        self.runs.append(rows[:, 0].tolist())
        return rows * 2


OPENED: list[ModelBatches] = []


@pytest.fixture(autouse=True)
def closed_after() -> Iterator[None]:
    yield
    while OPENED:
        OPENED.pop().close()


def batches_of(model, **kwargs) -> ModelBatches:
    options = {"max_rows": 8, "max_wait_s": 30.0, "overloaded": Overloaded} | kwargs
    batches = ModelBatches(model, **options)
    OPENED.append(batches)
    return batches


def answered_within(seconds: float, *awaitables) -> list:
    """Every answer (or exception), failing the test if any is still missing after
    ``seconds``: a call taken from the queue must never be left unanswered."""

    async def gather() -> list:
        return await asyncio.wait_for(asyncio.gather(*awaitables, return_exceptions=True), seconds)

    return asyncio.run(gather())


def case(*values: float) -> np.ndarray:
    return np.asarray(values, dtype=np.float32).reshape(-1, 1)


async def behind_a_running_call(
    model: GatedModel, batches: ModelBatches, calls: list[np.ndarray], held_s: float = 0.05
) -> list:
    """``calls`` made while a first call's run is held for ``held_s``; then the run goes on."""
    model.hold.set()
    first = asyncio.ensure_future(batches(case(100)))
    await asyncio.to_thread(model.started.wait, 10)
    later = [asyncio.ensure_future(batches(rows)) for rows in calls]
    await asyncio.sleep(held_s)
    model.gate.set()
    return await asyncio.gather(first, *later, return_exceptions=True)


def test_calls_queued_during_a_run_share_the_next_run() -> None:
    model = GatedModel()
    answers = asyncio.run(behind_a_running_call(model, batches_of(model), [case(1), case(2, 3), case(4)]))
    assert model.runs == [[100], [1, 2, 3, 4]]
    assert [a[:, 0].tolist() for a in answers] == [[200], [2], [4, 6], [8]]


def test_a_run_takes_at_most_max_rows_and_a_larger_call_runs_alone() -> None:
    model = GatedModel()
    calls = [case(1, 2), case(3, 4), case(5, 6), case(7, 8, 9, 10, 11)]
    answers = asyncio.run(behind_a_running_call(model, batches_of(model, max_rows=4), calls))
    assert model.runs == [[100], [1, 2, 3, 4], [5, 6], [7, 8, 9, 10, 11]]
    assert [a[:, 0].tolist() for a in answers[1:]] == [[2, 4], [6, 8], [10, 12], [14, 16, 18, 20, 22]]


def test_without_batching_each_call_runs_alone() -> None:
    model = GatedModel()
    asyncio.run(behind_a_running_call(model, batches_of(model, batching=False), [case(1), case(2, 3), case(4)]))
    assert model.runs == [[100], [1], [2, 3], [4]]


def test_a_failing_call_fails_alone() -> None:
    model = GatedModel()
    answers = asyncio.run(behind_a_running_call(model, batches_of(model), [case(1), case(-1), case(2)]))
    assert isinstance(answers[2], ValueError)
    assert [answers[1][:, 0].tolist(), answers[3][:, 0].tolist()] == [[2], [4]]
    assert model.runs == [[100], [1], [2]]  # the merged run failed: each call again, alone


def test_a_call_that_waited_too_long_is_answered_overloaded_and_the_rest_run() -> None:
    model = GatedModel()
    batches = batches_of(model, max_wait_s=0.3)
    answers = asyncio.run(behind_a_running_call(model, batches, [case(1), case(2)], held_s=1.0))
    assert answers[0][:, 0].tolist() == [200]  # run at once
    assert all(isinstance(a, Overloaded) for a in answers[1:])  # waited 1 s behind it
    assert model.runs == [[100]]

    async def one_more() -> np.ndarray:
        return await batches(case(3))

    assert asyncio.run(one_more())[:, 0].tolist() == [6]  # the next call, not late, runs


def test_an_abandoned_call_is_not_run() -> None:
    model = GatedModel()
    batches = batches_of(model)

    async def scenario() -> list:
        model.hold.set()
        first = asyncio.ensure_future(batches(case(100)))
        await asyncio.to_thread(model.started.wait, 10)
        abandoned = asyncio.ensure_future(batches(case(1)))
        kept = asyncio.ensure_future(batches(case(2)))
        await asyncio.sleep(0.01)
        abandoned.cancel()
        model.gate.set()
        return await asyncio.gather(first, kept)

    answers = asyncio.run(scenario())
    assert answers[1][:, 0].tolist() == [4]
    assert model.runs == [[100], [2]]


@pytest.mark.parametrize(
    "answer", [lambda rows: rows[:1], lambda rows: None, lambda rows: {"a": 1}], ids=["short", "none", "dict"]
)
def test_a_model_answer_that_is_not_one_row_per_case_is_an_error(answer) -> None:
    batches = batches_of(answer)
    (error,) = answered_within(10, batches(case(1, 2)))
    assert isinstance(error, RuntimeError) and "to 2 rows" in str(error)


@pytest.mark.parametrize("raised", [SystemExit, StopIteration, KeyboardInterrupt])
def test_a_run_raising_anything_answers_its_callers_and_the_thread_goes_on(raised) -> None:
    calls = []

    def model(rows: np.ndarray) -> np.ndarray:
        calls.append(len(rows))
        if len(calls) == 1:
            raise raised()
        return rows

    batches = batches_of(model)
    (error,) = answered_within(10, batches(case(1)))
    assert isinstance(error, (RuntimeError, raised)) and not isinstance(error, asyncio.TimeoutError)
    assert batches.alive()
    assert answered_within(10, batches(case(2)))[0][:, 0].tolist() == [2]


def test_calls_that_are_not_rows_are_refused_before_they_queue() -> None:
    model = GatedModel()
    batches = batches_of(model)
    for bad in (np.float32(1.0), np.asarray(1.0), np.zeros((0, 1), np.float32), [[1.0]]):
        (error,) = answered_within(10, batches(bad))
        assert isinstance(error, ValueError)
    assert model.runs == []


def test_metrics_that_fail_cost_no_answer() -> None:
    def on_run(calls: int, rows: int) -> None:
        raise RuntimeError("metrics down")

    batches = batches_of(lambda rows: rows * 2, on_run=on_run)
    first, second = answered_within(10, batches(case(1)), batches(case(2)))
    assert (first[:, 0].tolist(), second[:, 0].tolist()) == ([2], [4])


def test_late_calls_are_answered_even_when_the_overload_error_cannot_be_made() -> None:
    def overloaded() -> BaseException:
        raise TypeError("no such error")

    model = GatedModel()
    batches = batches_of(model, max_wait_s=0.3, overloaded=overloaded)
    answers = asyncio.run(behind_a_running_call(model, batches, [case(1)], held_s=1.0))
    assert isinstance(answers[1], RuntimeError) and "overloaded" in str(answers[1])


def test_a_call_is_shed_at_once_when_the_queue_ahead_would_outlast_the_wait() -> None:
    """After a run of one case that took 1 s, a call with 6 cases queued ahead of it would
    wait about 6 s: with 2.5 s allowed it is refused at once; the calls ahead run."""
    model = GatedModel()
    batches = batches_of(model, max_wait_s=2.5)
    model.hold.set()
    model.gate.clear()

    async def scenario() -> tuple:
        first = asyncio.ensure_future(batches(case(100)))
        await asyncio.to_thread(model.started.wait, 10)
        await asyncio.sleep(1.0)
        model.gate.set()
        await first  # the pace: about 1 s a case
        model.gate.clear()
        model.started.clear()
        running = asyncio.ensure_future(batches(case(200)))
        await asyncio.to_thread(model.started.wait, 10)
        ahead = [asyncio.ensure_future(batches(case(1))), asyncio.ensure_future(batches(case(2, 3, 4, 5, 6)))]
        await asyncio.sleep(0)
        began = time.monotonic()
        with pytest.raises(Overloaded):
            await batches(case(7))
        refused_after = time.monotonic() - began
        model.gate.set()
        return refused_after, await asyncio.gather(running, *ahead)

    refused_after, answers = asyncio.run(scenario())
    assert refused_after < 0.5
    assert [a[:, 0].tolist() for a in answers] == [[400], [2], [4, 6, 8, 10, 12]]
    assert model.runs == [[100], [200], [1, 2, 3, 4, 5, 6]]


def test_callers_on_two_event_loops_get_their_own_rows() -> None:
    batches = batches_of(lambda rows: rows * 2)
    results: dict[int, list] = {}

    def caller(value: int) -> None:
        async def calls() -> list:
            return await asyncio.gather(*(batches(case(value, i)) for i in range(20)))

        results[value] = asyncio.run(calls())

    threads = [threading.Thread(target=caller, args=(v,)) for v in (1000, 2000)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    for value, answers in results.items():
        assert [a[:, 0].tolist() for a in answers] == [[2 * value, 2 * i] for i in range(20)]
    assert sorted(results) == [1000, 2000]


def test_closing_answers_the_queued_calls_and_ends_the_thread() -> None:
    model = GatedModel()
    batches = ModelBatches(model, max_rows=8, max_wait_s=30.0, overloaded=Overloaded)

    async def scenario() -> list:
        model.hold.set()
        first = asyncio.ensure_future(batches(case(100)))
        await asyncio.to_thread(model.started.wait, 10)
        queued = asyncio.ensure_future(batches(case(1)))
        await asyncio.sleep(0.05)
        closing = asyncio.ensure_future(asyncio.to_thread(batches.close))
        await asyncio.sleep(0.05)
        model.gate.set()
        await closing
        return await asyncio.gather(first, queued, return_exceptions=True)

    first, queued = asyncio.run(scenario())
    assert first[:, 0].tolist() == [200]  # the run going on finishes
    assert isinstance(queued, Overloaded)
    assert not batches.alive()


def test_each_run_is_reported() -> None:
    model = GatedModel()
    reported: list[tuple[int, int]] = []
    batches = batches_of(model, on_run=lambda calls, rows: reported.append((calls, rows)))
    asyncio.run(behind_a_running_call(model, batches, [case(1), case(2, 3)]))
    assert reported == [(1, 1), (2, 3)]
