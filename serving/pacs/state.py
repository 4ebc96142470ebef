"""Listener state in SQLite: every study and instance the listener has accepted, and
where each study stands.

    received --quiet and complete--> pending --scored--> scored --sent--> sent
        ^                               |                    |
        '-- more instances -------------'    retry with backoff, then failed

A study is committed here before its instances are acknowledged to the sender, so a
restart finds every acknowledged study and resumes it from its status; each instance's
arrival time and what its header says about its series (serving/pacs/completeness.py)
are kept, so completeness is judged the same way after a restart. Status changes made
by the pipeline are conditional on the status it read: a study that received new
instances while it was being scored goes back to ``received`` and the stale result is
dropped instead of sent.

New instances reopen a study in any status, scored and sent included: the next SR
supersedes the last one sent. Every SR document issued (prediction, or the failure
report of a study that could not be scored) is a row of ``results``: its version, what
it was based on, whether it was delivered. ``purged`` marks a study whose received
files were deleted after the retention period; its rows stay, as the record of what
was received.

Retention counts from the moment nothing is left to deliver: the prediction SR was
sent, or the study failed and its failure report was sent (or ran out of attempts, or
there is none). A failure report still being retried keeps its study's files: it is
one of them, and the PACS has not been told yet."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any


class Status(StrEnum):
    RECEIVED = "received"  # instances arriving; not yet quiet and complete
    PENDING = "pending"  # complete, waiting to be scored (or to retry scoring)
    SCORED = "scored"  # SR written to disk, waiting to be sent (or to retry sending)
    SENT = "sent"  # SR delivered to every destination
    FAILED = "failed"  # bad input, or out of attempts


FINAL = (Status.SENT, Status.FAILED)


class OnResend(StrEnum):
    """What a study that was already scored does when instances it already has arrive
    again. (Instances it did not have always reopen it.)"""

    IGNORE = "ignore"  # re-sent instances are stored but change nothing
    RESCORE = "rescore"  # scored again; the new SR is the next version of the old one


class Arrival(StrEnum):
    NEW = "new"
    DUPLICATE = "duplicate"
    OWN_RESULT = "own_result"  # one of our SRs coming back from the PACS
    DISCARDED = "discarded"  # a re-sent instance of a study whose files were deleted, which it does not reopen


@dataclass(frozen=True)
class StudyRecord:
    study_uid: str
    status: Status
    n_instances: int
    first_received: float
    last_received: float
    attempts: int
    next_attempt: float
    last_error: str | None
    failed_at: str | None  # the status a failed study failed in (pending: scoring, scored: sending)
    version: int  # SR documents issued so far (predictions and failure reports)
    sr_series_uid: str | None
    sr_sop_uid: str | None  # the latest prediction SR
    sr_path: str | None
    result: dict[str, Any] | None
    updated: float
    purged: float | None = None  # when the received files were deleted


@dataclass(frozen=True)
class InstanceRecord:
    sop_uid: str
    series_uid: str
    sop_class_uid: str
    path: str
    received: float
    hints: dict[str, Any]


@dataclass(frozen=True)
class SentReport:
    """A prediction SR that was delivered."""

    sop_uid: str
    series_uid: str
    version: int
    n_instances: int | None


@dataclass(frozen=True)
class Notice:
    """A failure report waiting to be delivered."""

    study_uid: str
    sop_uid: str
    version: int
    path: str
    attempts: int


_SCHEMA = """
CREATE TABLE IF NOT EXISTS studies (
    study_uid TEXT PRIMARY KEY,
    status TEXT NOT NULL,
    n_instances INTEGER NOT NULL DEFAULT 0,
    first_received REAL NOT NULL,
    last_received REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt REAL NOT NULL DEFAULT 0,
    last_error TEXT,
    failed_at TEXT,
    version INTEGER NOT NULL DEFAULT 0,
    sr_series_uid TEXT,
    sr_sop_uid TEXT,
    sr_path TEXT,
    result TEXT,
    updated REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS instances (
    sop_uid TEXT PRIMARY KEY,
    study_uid TEXT NOT NULL REFERENCES studies(study_uid),
    series_uid TEXT NOT NULL,
    sop_class_uid TEXT NOT NULL,
    path TEXT NOT NULL,
    received REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS instances_by_study ON instances(study_uid);
CREATE INDEX IF NOT EXISTS studies_by_status ON studies(status, next_attempt);
CREATE TABLE IF NOT EXISTS results (
    sop_uid TEXT PRIMARY KEY,
    study_uid TEXT NOT NULL,
    version INTEGER NOT NULL
);
"""

# Columns added since the first release: a state file written by an older listener
# gets them when it is opened (and its delivered SRs are marked as such).
_ADDED_COLUMNS = (
    ("studies", "purged", "REAL"),
    ("instances", "hints", "TEXT"),
    ("results", "kind", "TEXT NOT NULL DEFAULT 'prediction'"),
    ("results", "path", "TEXT"),
    ("results", "n_instances", "INTEGER"),
    ("results", "sent", "REAL"),
    ("results", "attempts", "INTEGER NOT NULL DEFAULT 0"),
    ("results", "next_attempt", "REAL NOT NULL DEFAULT 0"),
)
_BACKFILL_SENT = """
UPDATE results SET sent = (SELECT s.updated FROM studies s WHERE s.study_uid = results.study_uid)
WHERE sent IS NULL AND sop_uid IN (SELECT sr_sop_uid FROM studies WHERE status = 'sent')
"""


def backoff_seconds(attempts: int, base: float, cap: float) -> float:
    """Delay before attempt ``attempts + 1``: base, 2 base, 4 base, ... up to cap."""
    return min(cap, base * 2 ** max(0, attempts - 1))


class StudyState:
    """One SQLite file shared by the SCP's association threads and the pipeline thread
    (one connection behind a lock: writes are tiny and SQLite serialises them anyway)."""

    def __init__(self, path: Path | str):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30)
        self._db.row_factory = sqlite3.Row
        self._lock = threading.RLock()
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")  # an acknowledged instance survives power loss
            self._db.executescript(_SCHEMA)
            self._add_columns()

    def _add_columns(self) -> None:
        with self._tx() as db:
            added = False
            for table, column, declaration in _ADDED_COLUMNS:
                if column not in {row["name"] for row in db.execute(f"PRAGMA table_info({table})")}:
                    db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {declaration}")
                    added = added or (table, column) == ("results", "sent")
            if added:
                db.execute(_BACKFILL_SENT)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    # ------------------------------------------------------------------ the SCP side

    def record_instance(
        self,
        study_uid: str,
        series_uid: str,
        sop_uid: str,
        sop_class_uid: str,
        path: str,
        on_resend: OnResend,
        now: float | None = None,
        hints: dict[str, Any] | None = None,
        file_restored: bool = False,
    ) -> Arrival:
        """``file_restored``: the instance was known but its file was gone (deleted after
        the retention period) and has just been written again."""
        now = time.time() if now is None else now
        with self._tx() as db:
            if db.execute("SELECT 1 FROM results WHERE sop_uid = ?", (sop_uid,)).fetchone():
                return Arrival.OWN_RESULT
            row = db.execute("SELECT status, purged FROM studies WHERE study_uid = ?", (study_uid,)).fetchone()
            if row is None:
                db.execute(
                    "INSERT INTO studies (study_uid, status, first_received, last_received, updated)"
                    " VALUES (?, ?, ?, ?, ?)",
                    (study_uid, Status.RECEIVED.value, now, now, now),
                )
            inserted = db.execute(
                "INSERT OR IGNORE INTO instances (sop_uid, study_uid, series_uid, sop_class_uid, path, received, hints)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (sop_uid, study_uid, series_uid, sop_class_uid, path, now, json.dumps(hints or {})),
            ).rowcount
            arrival = Arrival.NEW if inserted else Arrival.DUPLICATE
            status = Status(row["status"]) if row else Status.RECEIVED
            purged = row is not None and row["purged"] is not None
            if self._reopens(status, arrival, on_resend, file_restored):
                db.execute(
                    "UPDATE studies SET status = ?, last_received = ?, attempts = 0, next_attempt = 0,"
                    " last_error = NULL, purged = NULL, updated = ? WHERE study_uid = ?",
                    (Status.RECEIVED.value, now, now, study_uid),
                )
            elif purged:
                return Arrival.DISCARDED
            db.execute(
                "UPDATE studies SET n_instances = (SELECT COUNT(*) FROM instances WHERE study_uid = ?)"
                " WHERE study_uid = ?",
                (study_uid, study_uid),
            )
            return arrival

    @staticmethod
    def _reopens(status: Status, arrival: Arrival, on_resend: OnResend, file_restored: bool) -> bool:
        """Whether an arriving instance sends the study back to ``received``."""
        if status in (Status.RECEIVED, Status.PENDING) or arrival is Arrival.NEW:
            return True  # still arriving, or what the last result lacked: nothing received stays unscored
        if on_resend is OnResend.RESCORE:
            return True
        # A failed study sent again after its files were deleted: what it lacked is back.
        return status is Status.FAILED and file_restored

    # ------------------------------------------------------------- the pipeline side

    def quiet(self, received_before: float) -> list[StudyRecord]:
        """Studies still ``received`` whose last instance arrived before ``received_before``."""
        with self._lock:
            rows = self._db.execute(
                "SELECT * FROM studies WHERE status = ? AND last_received <= ? ORDER BY last_received",
                (Status.RECEIVED.value, received_before),
            ).fetchall()
        return [_record(r) for r in rows]

    def promote(self, study_uid: str, last_received: float, now: float | None = None) -> bool:
        """received -> pending, unless an instance arrived since ``last_received`` was read."""
        now = time.time() if now is None else now
        with self._tx() as db:
            return bool(
                db.execute(
                    "UPDATE studies SET status = ?, attempts = 0, next_attempt = ?, updated = ?"
                    " WHERE study_uid = ? AND status = ? AND last_received = ?",
                    (Status.PENDING.value, now, now, study_uid, Status.RECEIVED.value, last_received),
                ).rowcount
            )

    def due(self, status: Status, now: float | None = None, limit: int = 100) -> list[StudyRecord]:
        now = time.time() if now is None else now
        with self._lock:
            rows = self._db.execute(
                "SELECT * FROM studies WHERE status = ? AND next_attempt <= ? ORDER BY next_attempt, first_received"
                " LIMIT ?",
                (status.value, now, limit),
            ).fetchall()
        return [_record(r) for r in rows]

    def get(self, study_uid: str) -> StudyRecord | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM studies WHERE study_uid = ?", (study_uid,)).fetchone()
        return _record(row) if row else None

    def instances(self, study_uid: str) -> list[InstanceRecord]:
        with self._lock:
            rows = self._db.execute(
                "SELECT sop_uid, series_uid, sop_class_uid, path, received, hints FROM instances"
                " WHERE study_uid = ? ORDER BY received",
                (study_uid,),
            ).fetchall()
        return [InstanceRecord(**{**dict(r), "hints": json.loads(r["hints"] or "{}")}) for r in rows]

    def mark_scored(
        self,
        study_uid: str,
        version: int,
        sr_series_uid: str,
        sr_sop_uid: str,
        sr_path: str,
        result: dict[str, Any],
        now: float | None = None,
        n_instances: int | None = None,
    ) -> bool:
        """pending -> scored. False (nothing changed) when the study left ``pending``
        meanwhile (more instances arrived): that result is stale."""
        now = time.time() if now is None else now
        with self._tx() as db:
            changed = db.execute(
                "UPDATE studies SET status = ?, version = ?, sr_series_uid = ?, sr_sop_uid = ?, sr_path = ?,"
                " result = ?, attempts = 0, next_attempt = ?, last_error = NULL, updated = ?"
                " WHERE study_uid = ? AND status = ?",
                (
                    Status.SCORED.value,
                    version,
                    sr_series_uid,
                    sr_sop_uid,
                    sr_path,
                    json.dumps(result),
                    now,
                    now,
                    study_uid,
                    Status.PENDING.value,
                ),
            ).rowcount
            if changed:
                db.execute(
                    "INSERT OR IGNORE INTO results (sop_uid, study_uid, version, kind, path, n_instances)"
                    " VALUES (?, ?, ?, 'prediction', ?, ?)",
                    (sr_sop_uid, study_uid, version, sr_path, n_instances),
                )
            return bool(changed)

    def mark_sent(self, study_uid: str, sr_sop_uid: str, now: float | None = None) -> bool:
        now = time.time() if now is None else now
        with self._tx() as db:
            changed = db.execute(
                "UPDATE studies SET status = ?, attempts = 0, last_error = NULL, updated = ?"
                " WHERE study_uid = ? AND status = ? AND sr_sop_uid = ?",
                (Status.SENT.value, now, study_uid, Status.SCORED.value, sr_sop_uid),
            ).rowcount
            if changed:
                db.execute("UPDATE results SET sent = ? WHERE sop_uid = ?", (now, sr_sop_uid))
            return bool(changed)

    def last_sent_prediction(self, study_uid: str) -> SentReport | None:
        """The prediction SR the PACS holds for the study, newest first: what a new
        version supersedes."""
        with self._lock:
            row = self._db.execute(
                "SELECT r.sop_uid, s.sr_series_uid AS series_uid, r.version, r.n_instances FROM results r"
                " JOIN studies s ON s.study_uid = r.study_uid"
                " WHERE r.study_uid = ? AND r.kind = 'prediction' AND r.sent IS NOT NULL"
                " ORDER BY r.version DESC LIMIT 1",
                (study_uid,),
            ).fetchone()
        return SentReport(**dict(row)) if row else None

    def mark_retry(
        self,
        study_uid: str,
        status: Status,
        error: str,
        max_attempts: int,
        backoff_base: float,
        backoff_cap: float,
        now: float | None = None,
    ) -> Status | None:
        """Count a failed attempt at ``status``: schedule the next one with backoff, or
        give up (failed) after ``max_attempts``. None when the study left ``status``."""
        now = time.time() if now is None else now
        with self._tx() as db:
            row = db.execute(
                "SELECT attempts FROM studies WHERE study_uid = ? AND status = ?", (study_uid, status.value)
            ).fetchone()
            if row is None:
                return None
            attempts = row["attempts"] + 1
            new_status = Status.FAILED if attempts >= max_attempts else status
            db.execute(
                "UPDATE studies SET status = ?, attempts = ?, next_attempt = ?, last_error = ?, failed_at = ?,"
                " updated = ? WHERE study_uid = ?",
                (
                    new_status.value,
                    attempts,
                    now + backoff_seconds(attempts, backoff_base, backoff_cap),
                    error,
                    status.value,
                    now,
                    study_uid,
                ),
            )
            return new_status

    def mark_failed(self, study_uid: str, status: Status, error: str, now: float | None = None) -> bool:
        """A failure that retrying cannot fix (bad input)."""
        now = time.time() if now is None else now
        with self._tx() as db:
            return bool(
                db.execute(
                    "UPDATE studies SET status = ?, attempts = attempts + 1, last_error = ?, failed_at = ?,"
                    " updated = ? WHERE study_uid = ? AND status = ?",
                    (Status.FAILED.value, error, status.value, now, study_uid, status.value),
                ).rowcount
            )

    def requeue_failed(self, now: float | None = None) -> int:
        """Failed studies get a fresh set of attempts at the step they failed in
        (scoring, or sending the SR already written): after the cause was fixed. A
        study whose files were deleted must be sent again instead."""
        now = time.time() if now is None else now
        with self._tx() as db:
            return db.execute(
                "UPDATE studies SET status = COALESCE(failed_at, ?), attempts = 0, next_attempt = 0, updated = ?"
                " WHERE status = ? AND purged IS NULL",
                (Status.PENDING.value, now, Status.FAILED.value),
            ).rowcount

    # ------------------------------------------------------------ failure reports

    def add_notice(
        self,
        study_uid: str,
        version: int,
        sr_series_uid: str,
        sop_uid: str,
        path: str,
        n_instances: int,
        now: float | None = None,
    ) -> bool:
        """Record the failure report of a failed study as its SR version ``version``.
        False when the study changed meanwhile (reopened): the report is stale."""
        now = time.time() if now is None else now
        with self._tx() as db:
            changed = db.execute(
                "UPDATE studies SET version = ?, sr_series_uid = COALESCE(sr_series_uid, ?), updated = ?"
                " WHERE study_uid = ? AND status = ? AND version = ?",
                (version, sr_series_uid, now, study_uid, Status.FAILED.value, version - 1),
            ).rowcount
            if changed:
                db.execute(
                    "INSERT INTO results (sop_uid, study_uid, version, kind, path, n_instances, next_attempt)"
                    " VALUES (?, ?, ?, 'failure', ?, ?, ?)",
                    (sop_uid, study_uid, version, path, n_instances, now),
                )
            return bool(changed)

    def notices_due(self, max_attempts: int, now: float | None = None) -> list[Notice]:
        """Undelivered failure reports that are still the study's latest document."""
        now = time.time() if now is None else now
        with self._lock:
            rows = self._db.execute(
                "SELECT r.study_uid, r.sop_uid, r.version, r.path, r.attempts FROM results r"
                " JOIN studies s ON s.study_uid = r.study_uid"
                " WHERE r.kind = 'failure' AND r.sent IS NULL AND r.attempts < ? AND r.next_attempt <= ?"
                " AND s.status = ? AND s.version = r.version AND s.purged IS NULL ORDER BY r.next_attempt",
                (max_attempts, now, Status.FAILED.value),
            ).fetchall()
        return [Notice(**dict(r)) for r in rows]

    def mark_notice_sent(self, sop_uid: str, now: float | None = None) -> None:
        """The failure report was delivered: the study's retention period starts now."""
        now = time.time() if now is None else now
        with self._tx() as db:
            db.execute("UPDATE results SET sent = ? WHERE sop_uid = ?", (now, sop_uid))
            db.execute(
                "UPDATE studies SET updated = ? WHERE status = ? AND (study_uid, version) IN"
                " (SELECT study_uid, version FROM results WHERE sop_uid = ?)",
                (now, Status.FAILED.value, sop_uid),
            )

    def mark_notice_retry(self, sop_uid: str, backoff_base: float, backoff_cap: float, now: float | None = None) -> int:
        """Count a failed delivery of a failure report; returns the attempts so far."""
        now = time.time() if now is None else now
        with self._tx() as db:
            row = db.execute("SELECT attempts FROM results WHERE sop_uid = ?", (sop_uid,)).fetchone()
            attempts = (row["attempts"] if row else 0) + 1
            db.execute(
                "UPDATE results SET attempts = ?, next_attempt = ? WHERE sop_uid = ?",
                (attempts, now + backoff_seconds(attempts, backoff_base, backoff_cap), sop_uid),
            )
            return attempts

    # ------------------------------------------------------------------ retention

    def expired(self, final_before: float, notice_attempts: int = 0) -> list[str]:
        """Studies whose files are still kept and that had nothing left to deliver
        before ``final_before``. ``notice_attempts``: the delivery attempts a failure
        report gets (0: failure reports are not delivered, they keep nothing)."""
        with self._lock:
            rows = self._db.execute(
                f"SELECT study_uid FROM studies WHERE {_FINAL}", self._final_args(final_before, notice_attempts)
            ).fetchall()
        return [r["study_uid"] for r in rows]

    def claim_purge(
        self, study_uid: str, final_before: float, now: float | None = None, notice_attempts: int = 0
    ) -> list[str] | None:
        """Mark the study purged and return the files to delete (received instances and
        SR documents), or None when it changed meanwhile. An instance that arrives after
        this is not in the list, whatever the timing."""
        now = time.time() if now is None else now
        with self._tx() as db:
            claimed = db.execute(
                f"UPDATE studies SET purged = ? WHERE study_uid = ? AND {_FINAL}",
                (now, study_uid, *self._final_args(final_before, notice_attempts)),
            ).rowcount
            if not claimed:
                return None
            return _study_files(db, study_uid)

    def purged_files(self) -> dict[str, list[str]]:
        """Files of purged studies, by study: all deleted, unless a process stopped
        between claiming a purge and deleting (or between writing a discarded instance
        and deleting it). A restarted listener deletes what is left."""
        with self._lock:
            studies = self._db.execute("SELECT study_uid FROM studies WHERE purged IS NOT NULL").fetchall()
            return {r["study_uid"]: _study_files(self._db, r["study_uid"]) for r in studies}

    @staticmethod
    def _final_args(final_before: float, notice_attempts: int) -> tuple:
        return (Status.SENT.value, Status.FAILED.value, final_before, notice_attempts)

    # ------------------------------------------------------------------------ status

    def studies(self) -> list[StudyRecord]:
        with self._lock:
            rows = self._db.execute("SELECT * FROM studies ORDER BY first_received").fetchall()
        return [_record(r) for r in rows]

    def counts(self) -> dict[str, int]:
        with self._lock:
            rows = self._db.execute("SELECT status, COUNT(*) AS n FROM studies GROUP BY status").fetchall()
        found = {r["status"]: r["n"] for r in rows}
        return {s.value: found.get(s.value, 0) for s in Status}


# A study with nothing left to deliver, final before a time, its files not yet deleted:
# sent, or failed with no failure report still to deliver (its latest, unsent, with
# attempts left). Parameters: sent, failed, final_before, notice_attempts.
_FINAL = """status IN (?, ?) AND updated <= ? AND purged IS NULL AND NOT EXISTS (
    SELECT 1 FROM results r WHERE r.study_uid = studies.study_uid AND r.kind = 'failure'
    AND r.version = studies.version AND r.sent IS NULL AND r.attempts < ?)"""


def _study_files(db: sqlite3.Connection, study_uid: str) -> list[str]:
    """Every file the listener holds for a study: received instances and SR documents."""
    instances = db.execute("SELECT path FROM instances WHERE study_uid = ?", (study_uid,)).fetchall()
    results = db.execute("SELECT path FROM results WHERE study_uid = ? AND path IS NOT NULL", (study_uid,)).fetchall()
    sr = db.execute("SELECT sr_path FROM studies WHERE study_uid = ?", (study_uid,)).fetchone()
    paths = [r["path"] for r in instances] + [r["path"] for r in results]
    paths += [sr["sr_path"]] if sr and sr["sr_path"] else []
    return list(dict.fromkeys(paths))


def _record(row: sqlite3.Row) -> StudyRecord:
    data = dict(row)
    data["status"] = Status(data["status"])
    data["result"] = json.loads(data["result"]) if data["result"] else None
    return StudyRecord(**data)
