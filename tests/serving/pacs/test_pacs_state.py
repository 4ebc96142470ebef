"""The listener's SQLite state on its own: status transitions, what a re-sent study
does under each policy, retries with backoff, stale results, restart, status output."""

from __future__ import annotations

from pathlib import Path

import pytest

from radfusion.serving.pacs.state import (
    Arrival,
    OnResend,
    Status,
    StudyState,
    backoff_seconds,
)
from radfusion.serving.pacs.status import format_table, status_report
from radfusion.serving.pacs.storage import study_key

STUDY = "1.2.3.4.5"


@pytest.fixture
def state(tmp_path: Path) -> StudyState:
    state = StudyState(tmp_path / "state.sqlite")
    yield state
    state.close()


def receive(
    state: StudyState, sops: list[str], now: float, policy: OnResend = OnResend.IGNORE, study: str = STUDY
) -> list[Arrival]:
    return [
        state.record_instance(study, "1.2.3.4.5.1", sop, "1.2.840.10008.5.1.4.1.1.2", f"/x/{sop}", policy, now=now)
        for sop in sops
    ]


def score(state: StudyState, now: float, sr_sop: str = "9.9.1", study: str = STUDY) -> bool:
    version = state.get(study).version + 1
    return state.mark_scored(study, version, "9.9", sr_sop, f"/r/{version}", {"predicted_label": "responder"}, now=now)


def test_quiet_period_decides_completion(state: StudyState) -> None:
    assert receive(state, ["1", "2"], now=100.0) == [Arrival.NEW, Arrival.NEW]
    receive(state, ["3"], now=104.0)  # the quiet period restarts with each instance
    assert state.promote_quiet(5.0, now=108.9) == 0
    assert state.get(STUDY).status is Status.RECEIVED
    assert state.promote_quiet(5.0, now=109.0) == 1
    record = state.get(STUDY)
    assert (record.status, record.n_instances) == (Status.PENDING, 3)
    assert [r.study_uid for r in state.due(Status.PENDING, now=109.0)] == [STUDY]


def test_pending_study_receiving_more_waits_again(state: StudyState) -> None:
    receive(state, ["1"], now=0.0)
    state.promote_quiet(1.0, now=2.0)
    receive(state, ["2"], now=3.0)
    assert state.get(STUDY).status is Status.RECEIVED
    assert not score(state, now=3.5)  # a result computed from the old instance set is stale
    assert state.get(STUDY).status is Status.RECEIVED and state.get(STUDY).version == 0


@pytest.mark.parametrize(
    "policy, expected_status",
    [(OnResend.IGNORE, Status.SENT), (OnResend.RESCORE, Status.RECEIVED)],
)
def test_resent_study_policy(state: StudyState, policy: OnResend, expected_status: Status) -> None:
    receive(state, ["1", "2"], now=0.0, policy=policy)
    state.promote_quiet(1.0, now=2.0)
    assert score(state, now=2.0)
    assert state.mark_sent(STUDY, "9.9.1", now=3.0)
    assert receive(state, ["1", "2"], now=10.0, policy=policy) == [Arrival.DUPLICATE, Arrival.DUPLICATE]
    record = state.get(STUDY)
    assert record.status is expected_status
    assert record.n_instances == 2 and record.version == 1
    if policy is OnResend.RESCORE:
        state.promote_quiet(1.0, now=12.0)
        assert score(state, now=12.0, sr_sop="9.9.2")
        assert state.get(STUDY).version == 2


def test_own_sr_coming_back_is_not_an_instance(state: StudyState) -> None:
    receive(state, ["1"], now=0.0)
    state.promote_quiet(1.0, now=2.0)
    score(state, now=2.0, sr_sop="9.9.1")
    assert receive(state, ["9.9.1"], now=5.0, policy=OnResend.RESCORE) == [Arrival.OWN_RESULT]
    record = state.get(STUDY)
    assert (record.status, record.n_instances) == (Status.SCORED, 1)


def test_retries_back_off_then_fail_and_requeue(state: StudyState) -> None:
    assert [backoff_seconds(n, 10, 60) for n in (1, 2, 3, 4, 5)] == [10, 20, 40, 60, 60]
    receive(state, ["1"], now=0.0)
    state.promote_quiet(1.0, now=1.0)
    score(state, now=1.0)
    outcomes, delays = [], []
    now = 1.0
    for _ in range(3):
        assert [r.study_uid for r in state.due(Status.SCORED, now=now)] == [STUDY]
        outcomes.append(state.mark_retry(STUDY, Status.SCORED, "peer down", 3, 10.0, 600.0, now=now))
        delays.append(state.get(STUDY).next_attempt - now)
        assert state.due(Status.SCORED, now=now + delays[-1] - 0.01) == []  # not before its time
        now += delays[-1]
    assert outcomes == [Status.SCORED, Status.SCORED, Status.FAILED]
    assert delays[:2] == [10.0, 20.0]
    failed = state.get(STUDY)
    assert (failed.attempts, failed.last_error, failed.failed_at) == (3, "peer down", "scored")
    assert state.counts()["failed"] == 1
    assert state.requeue_failed(now=now) == 1
    requeued = state.get(STUDY)
    assert (requeued.status, requeued.attempts, requeued.version) == (Status.SCORED, 0, 1)  # sends the same SR


def test_bad_input_fails_without_retry(state: StudyState) -> None:
    receive(state, ["1"], now=0.0)
    state.promote_quiet(1.0, now=1.0)
    assert state.mark_failed(STUDY, Status.PENDING, "no_image_series: nothing to score", now=1.0)
    assert state.due(Status.PENDING, now=1e12) == []
    # New instances may be what was missing: the study gets another chance.
    receive(state, ["2"], now=5.0)
    assert state.get(STUDY).status is Status.RECEIVED and state.get(STUDY).last_error is None


def test_state_survives_reopening(tmp_path: Path) -> None:
    first = StudyState(tmp_path / "state.sqlite")
    receive(first, ["1", "2", "3"], now=0.0)
    first.close()  # the process stops (or dies: every change is committed)
    second = StudyState(tmp_path / "state.sqlite")
    assert second.promote_quiet(1.0, now=10.0) == 1
    assert second.get(STUDY).n_instances == 3 and len(second.instances(STUDY)) == 3
    second.close()


def test_status_report_hides_uids_unless_asked(state: StudyState) -> None:
    receive(state, ["1"], now=0.0)
    receive(state, ["a"], now=0.0, study="7.7.7")
    state.promote_quiet(1.0, now=1.0)
    score(state, now=1.0)
    state.mark_retry(STUDY, Status.SCORED, "association with X@h:1 rejected", 5, 10.0, 600.0, now=1.0)
    report = status_report(state, now=4.0)
    assert report["counts"] == {"received": 0, "pending": 1, "scored": 1, "sent": 0, "failed": 0}
    row = next(r for r in report["studies"] if r["study"] == study_key(STUDY))
    assert (row["status"], row["attempts"], row["retry_in_s"]) == ("scored", 1, 7.0)
    table = format_table(report)
    assert STUDY not in table and study_key(STUDY) in table and "rejected" in table
    assert STUDY in format_table(status_report(state, show_uids=True, now=4.0))
