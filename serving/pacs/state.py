"""Listener state in SQLite: every study and instance the listener has accepted, and
where each study stands.

    received --quiet period--> pending --scored--> scored --sent--> sent
        ^                         |                   |
        '-- more instances -------'    retry with backoff, then failed

A study is committed here before its instances are acknowledged to the sender, so a
restart finds every acknowledged study and resumes it from its status. Status changes
made by the pipeline are conditional on the status it read: a study that received new
instances while it was being scored goes back to ``received`` and the stale result is
dropped instead of sent."""

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
    RECEIVED = "received"  # instances arriving; not yet quiet long enough
    PENDING = "pending"  # complete, waiting to be scored (or to retry scoring)
    SCORED = "scored"  # SR written to disk, waiting to be sent (or to retry sending)
    SENT = "sent"  # SR delivered to every destination
    FAILED = "failed"  # bad input, or out of attempts


class OnResend(StrEnum):
    """What a study that was already scored does when its instances arrive again."""

    IGNORE = "ignore"  # scored once; re-sent instances are stored but change nothing
    RESCORE = "rescore"  # scored again; the new SR is the next version of the old one


class Arrival(StrEnum):
    NEW = "new"
    DUPLICATE = "duplicate"
    OWN_RESULT = "own_result"  # one of our SRs coming back from the PACS


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
    version: int
    sr_series_uid: str | None
    sr_sop_uid: str | None
    sr_path: str | None
    result: dict[str, Any] | None
    updated: float


@dataclass(frozen=True)
class InstanceRecord:
    sop_uid: str
    series_uid: str
    sop_class_uid: str
    path: str


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
    ) -> Arrival:
        now = time.time() if now is None else now
        with self._tx() as db:
            if db.execute("SELECT 1 FROM results WHERE sop_uid = ?", (sop_uid,)).fetchone():
                return Arrival.OWN_RESULT
            row = db.execute("SELECT status FROM studies WHERE study_uid = ?", (study_uid,)).fetchone()
            if row is None:
                db.execute(
                    "INSERT INTO studies (study_uid, status, first_received, last_received, updated)"
                    " VALUES (?, ?, ?, ?, ?)",
                    (study_uid, Status.RECEIVED.value, now, now, now),
                )
            inserted = db.execute(
                "INSERT OR IGNORE INTO instances (sop_uid, study_uid, series_uid, sop_class_uid, path, received)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (sop_uid, study_uid, series_uid, sop_class_uid, path, now),
            ).rowcount
            arrival = Arrival.NEW if inserted else Arrival.DUPLICATE
            status = Status(row["status"]) if row else Status.RECEIVED
            if self._reopens(status, arrival, on_resend):
                db.execute(
                    "UPDATE studies SET status = ?, last_received = ?, attempts = 0, next_attempt = 0,"
                    " last_error = NULL, updated = ? WHERE study_uid = ?",
                    (Status.RECEIVED.value, now, now, study_uid),
                )
            db.execute(
                "UPDATE studies SET n_instances = (SELECT COUNT(*) FROM instances WHERE study_uid = ?)"
                " WHERE study_uid = ?",
                (study_uid, study_uid),
            )
            return arrival

    @staticmethod
    def _reopens(status: Status, arrival: Arrival, on_resend: OnResend) -> bool:
        """Whether an arriving instance sends the study back to ``received``."""
        if status in (Status.RECEIVED, Status.PENDING):
            return True  # still arriving: the quiet period starts again
        if status is Status.FAILED:
            # New instances may be what was missing; a plain re-send only under RESCORE.
            return arrival is Arrival.NEW or on_resend is OnResend.RESCORE
        return on_resend is OnResend.RESCORE  # scored or sent

    # ------------------------------------------------------------- the pipeline side

    def promote_quiet(self, quiet_seconds: float, now: float | None = None) -> int:
        """received -> pending for studies with no instance for ``quiet_seconds``."""
        now = time.time() if now is None else now
        with self._tx() as db:
            return db.execute(
                "UPDATE studies SET status = ?, attempts = 0, next_attempt = ?, updated = ?"
                " WHERE status = ? AND last_received <= ?",
                (Status.PENDING.value, now, now, Status.RECEIVED.value, now - quiet_seconds),
            ).rowcount

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
                "SELECT sop_uid, series_uid, sop_class_uid, path FROM instances WHERE study_uid = ? ORDER BY received",
                (study_uid,),
            ).fetchall()
        return [InstanceRecord(**dict(r)) for r in rows]

    def mark_scored(
        self,
        study_uid: str,
        version: int,
        sr_series_uid: str,
        sr_sop_uid: str,
        sr_path: str,
        result: dict[str, Any],
        now: float | None = None,
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
                    "INSERT OR IGNORE INTO results (sop_uid, study_uid, version) VALUES (?, ?, ?)",
                    (sr_sop_uid, study_uid, version),
                )
            return bool(changed)

    def mark_sent(self, study_uid: str, sr_sop_uid: str, now: float | None = None) -> bool:
        now = time.time() if now is None else now
        with self._tx() as db:
            return bool(
                db.execute(
                    "UPDATE studies SET status = ?, attempts = 0, last_error = NULL, updated = ?"
                    " WHERE study_uid = ? AND status = ? AND sr_sop_uid = ?",
                    (Status.SENT.value, now, study_uid, Status.SCORED.value, sr_sop_uid),
                ).rowcount
            )

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
        (scoring, or sending the SR already written): after the cause was fixed."""
        now = time.time() if now is None else now
        with self._tx() as db:
            return db.execute(
                "UPDATE studies SET status = COALESCE(failed_at, ?), attempts = 0, next_attempt = 0, updated = ?"
                " WHERE status = ?",
                (Status.PENDING.value, now, Status.FAILED.value),
            ).rowcount

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


def _record(row: sqlite3.Row) -> StudyRecord:
    data = dict(row)
    data["status"] = Status(data["status"])
    data["result"] = json.loads(data["result"]) if data["result"] else None
    return StudyRecord(**data)
