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


def promote_quiet(state: StudyState, quiet: float, now: float) -> int:
    """received -> pending for every study quiet for ``quiet`` seconds (what the
    pipeline does when the headers show nothing missing)."""
    return sum(state.promote(r.study_uid, r.last_received, now=now) for r in state.quiet(now - quiet))


def score(state: StudyState, now: float, sr_sop: str = "9.9.1", study: str = STUDY) -> bool:
    version = state.get(study).version + 1
    return state.mark_scored(study, version, "9.9", sr_sop, f"/r/{version}", {"predicted_label": "responder"}, now=now)


def test_quiet_period_decides_completion(state: StudyState) -> None:
    assert receive(state, ["1", "2"], now=100.0) == [Arrival.NEW, Arrival.NEW]
    receive(state, ["3"], now=104.0)  # the quiet period restarts with each instance
    assert promote_quiet(state, 5.0, now=108.9) == 0
    assert state.get(STUDY).status is Status.RECEIVED
    assert promote_quiet(state, 5.0, now=109.0) == 1
    record = state.get(STUDY)
    assert (record.status, record.n_instances) == (Status.PENDING, 3)
    assert [r.study_uid for r in state.due(Status.PENDING, now=109.0)] == [STUDY]


def test_pending_study_receiving_more_waits_again(state: StudyState) -> None:
    receive(state, ["1"], now=0.0)
    promote_quiet(state, 1.0, now=2.0)
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
    promote_quiet(state, 1.0, now=2.0)
    assert score(state, now=2.0)
    assert state.mark_sent(STUDY, "9.9.1", now=3.0)
    assert receive(state, ["1", "2"], now=10.0, policy=policy) == [Arrival.DUPLICATE, Arrival.DUPLICATE]
    record = state.get(STUDY)
    assert record.status is expected_status
    assert record.n_instances == 2 and record.version == 1
    if policy is OnResend.RESCORE:
        promote_quiet(state, 1.0, now=12.0)
        assert score(state, now=12.0, sr_sop="9.9.2")
        assert state.get(STUDY).version == 2


def test_own_sr_coming_back_is_not_an_instance(state: StudyState) -> None:
    receive(state, ["1"], now=0.0)
    promote_quiet(state, 1.0, now=2.0)
    score(state, now=2.0, sr_sop="9.9.1")
    assert receive(state, ["9.9.1"], now=5.0, policy=OnResend.RESCORE) == [Arrival.OWN_RESULT]
    record = state.get(STUDY)
    assert (record.status, record.n_instances) == (Status.SCORED, 1)


def test_retries_back_off_then_fail_and_requeue(state: StudyState) -> None:
    assert [backoff_seconds(n, 10, 60) for n in (1, 2, 3, 4, 5)] == [10, 20, 40, 60, 60]
    receive(state, ["1"], now=0.0)
    promote_quiet(state, 1.0, now=1.0)
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
    promote_quiet(state, 1.0, now=1.0)
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
    assert promote_quiet(second, 1.0, now=10.0) == 1
    assert second.get(STUDY).n_instances == 3 and len(second.instances(STUDY)) == 3
    second.close()


def test_status_report_hides_uids_unless_asked(state: StudyState) -> None:
    receive(state, ["1"], now=0.0)
    receive(state, ["a"], now=0.0, study="7.7.7")
    promote_quiet(state, 1.0, now=1.0)
    score(state, now=1.0)
    state.mark_retry(STUDY, Status.SCORED, "association with X@h:1 rejected", 5, 10.0, 600.0, now=1.0)
    report = status_report(state, now=4.0)
    assert report["counts"] == {"received": 0, "pending": 1, "scored": 1, "sent": 0, "failed": 0}
    row = next(r for r in report["studies"] if r["study"] == study_key(STUDY))
    assert (row["status"], row["attempts"], row["retry_in_s"]) == ("scored", 1, 7.0)
    table = format_table(report)
    assert STUDY not in table and study_key(STUDY) in table and "rejected" in table
    assert STUDY in format_table(status_report(state, show_uids=True, now=4.0))


def sent(state: StudyState, now: float, sr_sop: str = "9.9.1") -> None:
    """Receive instances 1 and 2, score and send them as ``sr_sop``."""
    receive(state, ["1", "2"], now=now)
    promote_quiet(state, 1.0, now=now + 1)
    assert score(state, now=now + 1, sr_sop=sr_sop)
    assert state.mark_sent(STUDY, sr_sop, now=now + 2)


def test_new_instance_reopens_a_sent_study_under_either_policy(state: StudyState) -> None:
    sent(state, now=0.0)
    assert state.last_sent_prediction(STUDY).sop_uid == "9.9.1"
    assert receive(state, ["3"], now=10.0) == [Arrival.NEW]  # IGNORE: still reopens, it was not scored
    record = state.get(STUDY)
    assert (record.status, record.n_instances, record.last_received) == (Status.RECEIVED, 3, 10.0)
    promote_quiet(state, 1.0, now=11.0)
    assert score(state, now=11.0, sr_sop="9.9.2")
    assert state.get(STUDY).version == 2
    assert state.last_sent_prediction(STUDY).sop_uid == "9.9.1"  # 9.9.2 not delivered yet
    assert state.mark_sent(STUDY, "9.9.2", now=12.0)
    latest = state.last_sent_prediction(STUDY)
    assert (latest.sop_uid, latest.version, latest.series_uid) == ("9.9.2", 2, "9.9")


def test_instance_hints_and_arrival_times_survive_a_restart(tmp_path: Path) -> None:
    first = StudyState(tmp_path / "state.sqlite")
    first.record_instance(STUDY, "5.5", "1", "1.2.840.10008.5.1.4.1.1.2", "/x/1", OnResend.IGNORE, 7.0, {"number": 1})
    first.close()
    second = StudyState(tmp_path / "state.sqlite")
    (instance,) = second.instances(STUDY)
    assert (instance.received, instance.hints) == (7.0, {"number": 1})
    assert [r.study_uid for r in second.quiet(received_before=7.0)] == [STUDY]
    assert second.quiet(received_before=6.9) == []
    assert not second.promote(STUDY, last_received=6.0, now=8.0)  # read before a newer instance: refused
    assert second.promote(STUDY, last_received=7.0, now=8.0)
    second.close()


def test_failure_report_is_a_version_and_goes_stale_when_the_study_reopens(state: StudyState) -> None:
    receive(state, ["1"], now=0.0)
    promote_quiet(state, 1.0, now=1.0)
    assert state.mark_failed(STUDY, Status.PENDING, "corrupt_dicom: broken", now=1.0)
    assert not state.add_notice(STUDY, 2, "9.9", "9.9.7", "/r/2", 1, now=1.0)  # not the next version
    assert state.add_notice(STUDY, 1, "9.9", "9.9.7", "/r/1", 1, now=1.0)
    assert receive(state, ["9.9.7"], now=1.5) == [Arrival.OWN_RESULT]  # the PACS sends it back
    (notice,) = state.notices_due(max_attempts=3, now=1.0)
    assert (notice.sop_uid, notice.version, notice.attempts) == ("9.9.7", 1, 0)
    assert state.mark_notice_retry("9.9.7", 10.0, 60.0, now=1.0) == 1
    assert state.notices_due(3, now=10.9) == [] and len(state.notices_due(3, now=11.0)) == 1
    receive(state, ["2"], now=12.0)  # reopened: a report about the old study is not sent
    assert state.notices_due(3, now=100.0) == []
    assert state.get(STUDY).version == 1  # the next SR is version 2


def test_retention_claims_files_and_what_a_purged_study_does_with_arrivals(state: StudyState) -> None:
    sent(state, now=0.0)
    assert state.expired(final_before=1.9) == [] and state.expired(final_before=2.0) == [STUDY]
    assert sorted(state.claim_purge(STUDY, final_before=2.0, now=5.0)) == ["/r/1", "/x/1", "/x/2"]
    assert state.claim_purge(STUDY, final_before=2.0, now=5.0) is None  # once
    assert state.get(STUDY).purged == 5.0 and state.expired(final_before=100.0) == []
    # The same instances again under IGNORE change nothing and are not kept.
    assert receive(state, ["1"], now=6.0) == [Arrival.DISCARDED]
    assert state.get(STUDY).status is Status.SENT
    # A new one reopens it; the deleted ones are then missing (the pipeline waits for them).
    assert receive(state, ["3"], now=7.0) == [Arrival.NEW]
    record = state.get(STUDY)
    assert (record.status, record.purged, record.n_instances) == (Status.RECEIVED, None, 3)


def test_a_failed_study_whose_files_were_deleted_is_requeued_only_by_sending_it_again(state: StudyState) -> None:
    receive(state, ["1"], now=0.0)
    promote_quiet(state, 1.0, now=1.0)
    state.mark_failed(STUDY, Status.PENDING, "no_image_series: nothing to score", now=1.0)
    assert state.claim_purge(STUDY, final_before=1.0, now=2.0) == ["/x/1"]
    assert state.requeue_failed(now=3.0) == 0
    resent = state.record_instance(
        STUDY, "5.5", "1", "1.2.840.10008.5.1.4.1.1.2", "/x/1", OnResend.IGNORE, 4.0, None, True
    )
    assert resent is Arrival.DUPLICATE  # the operator re-sent it, and the file is back
    assert state.get(STUDY).status is Status.RECEIVED


def test_an_older_state_file_is_upgraded_in_place(tmp_path: Path) -> None:
    """A state file written before results carried kinds, paths and delivery times."""
    import sqlite3

    path = tmp_path / "state.sqlite"
    db = sqlite3.connect(path)
    db.executescript(
        """
        CREATE TABLE studies (study_uid TEXT PRIMARY KEY, status TEXT NOT NULL, n_instances INTEGER NOT NULL
            DEFAULT 0, first_received REAL NOT NULL, last_received REAL NOT NULL, attempts INTEGER NOT NULL
            DEFAULT 0, next_attempt REAL NOT NULL DEFAULT 0, last_error TEXT, failed_at TEXT, version INTEGER
            NOT NULL DEFAULT 0, sr_series_uid TEXT, sr_sop_uid TEXT, sr_path TEXT, result TEXT, updated REAL NOT NULL);
        CREATE TABLE instances (sop_uid TEXT PRIMARY KEY, study_uid TEXT NOT NULL, series_uid TEXT NOT NULL,
            sop_class_uid TEXT NOT NULL, path TEXT NOT NULL, received REAL NOT NULL);
        CREATE TABLE results (sop_uid TEXT PRIMARY KEY, study_uid TEXT NOT NULL, version INTEGER NOT NULL);
        INSERT INTO studies VALUES ('1.2.3.4.5', 'sent', 1, 0, 0, 0, 0, NULL, NULL, 1, '9.9', '9.9.1', '/r/1',
            '{}', 3.0);
        INSERT INTO instances VALUES ('1', '1.2.3.4.5', '5.5', '1.2.840.10008.5.1.4.1.1.2', '/x/1', 0);
        INSERT INTO results VALUES ('9.9.1', '1.2.3.4.5', 1);
        """
    )
    db.close()
    state = StudyState(path)
    try:
        assert state.last_sent_prediction(STUDY) is not None
        assert state.instances(STUDY)[0].hints == {} and state.get(STUDY).purged is None
        assert receive(state, ["2"], now=10.0) == [Arrival.NEW]
    finally:
        state.close()
