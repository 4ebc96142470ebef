"""What happens to a study after its instances arrived: one ``tick`` moves every study
that is due one step along received -> pending -> scored -> sent.

Bad input (a study the model cannot take: no CT series, broken geometry...) fails at
once with its reason: retrying cannot fix it. Anything else (a PACS that is down, an
unexpected error) is retried with exponential backoff and fails after
``RetryPolicy.max_attempts``; ``radfusion pacs-status`` shows both."""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pydicom

from radfusion.errors import RadfusionInputError
from radfusion.serving.pacs.predict import StudyPredictor
from radfusion.serving.pacs.send import CStoreSender, SendError, StowSender
from radfusion.serving.pacs.sr import build_prediction_sr, new_uid, read_evidence
from radfusion.serving.pacs.state import Status, StudyRecord, StudyState
from radfusion.serving.pacs.storage import WorkDir, study_key, write_durably

log = logging.getLogger("radfusion.pacs")


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 5
    base_seconds: float = 10.0
    cap_seconds: float = 600.0


@dataclass
class TickReport:
    completed: int = 0  # received -> pending
    scored: int = 0
    sent: int = 0
    retried: int = 0
    failed: int = 0
    errors: list[str] = field(default_factory=list)


class Pipeline:
    def __init__(
        self,
        state: StudyState,
        work: WorkDir,
        predictor: StudyPredictor,
        senders: Sequence[CStoreSender | StowSender],
        quiet_seconds: float,
        retry: RetryPolicy = RetryPolicy(),
        clock: Callable[[], float] = time.time,
    ):
        self.state = state
        self.work = work
        self.predictor = predictor
        self.senders = list(senders)
        self.quiet_seconds = quiet_seconds
        self.retry = retry
        self.clock = clock

    def tick(self) -> TickReport:
        report = TickReport()
        report.completed = self.state.promote_quiet(self.quiet_seconds, now=self.clock())
        for record in self.state.due(Status.PENDING, now=self.clock()):
            self._score(record, report)
        if self.senders:  # without a destination the SR stays on disk, status "scored"
            for record in self.state.due(Status.SCORED, now=self.clock()):
                self._send(record, report)
        return report

    # ------------------------------------------------------------------------ score

    def _score(self, record: StudyRecord, report: TickReport) -> None:
        key = study_key(record.study_uid)
        instances = self.state.instances(record.study_uid)
        try:
            prediction = self.predictor.predict([Path(i.path) for i in instances])
        except RadfusionInputError as exc:
            self.state.mark_failed(record.study_uid, Status.PENDING, f"{exc.kind}: {exc.message}", now=self.clock())
            report.failed += 1
            log.warning("study %s not scored: %s", key, exc.kind)
            return
        except Exception as exc:  # noqa: BLE001 - one study's failure is retried; the listener goes on
            self._retry(record, Status.PENDING, f"scoring error ({type(exc).__name__})", report)
            return

        study = prediction.case.study
        by_sop = {i.sop_uid: Path(i.path) for i in instances}
        sources = [by_sop[uid] for uid in study.sop_uids if uid in by_sop] if study else list(by_sop.values())
        version = record.version + 1
        sr_series_uid = record.sr_series_uid or new_uid()
        sr_sop_uid = new_uid()
        previous = pydicom.dcmread(record.sr_path) if record.sr_path and Path(record.sr_path).is_file() else None
        try:
            sr = build_prediction_sr(
                self.predictor.contract,
                prediction.prediction,
                prediction.result,
                read_evidence(sources),
                sr_series_uid,
                sr_sop_uid,
                version,
                previous,
            )
            path = self.work.result_path(record.study_uid, version)
            buffer = io.BytesIO()
            sr.save_as(buffer, enforce_file_format=True)
            write_durably(path, buffer.getvalue())
        except Exception as exc:  # noqa: BLE001 - one study's failure is retried; the listener goes on
            self._retry(record, Status.PENDING, f"SR not written ({type(exc).__name__})", report)
            return
        if self.state.mark_scored(
            record.study_uid, version, sr_series_uid, sr_sop_uid, str(path), prediction.result, now=self.clock()
        ):
            report.scored += 1
            log.info(
                "study %s scored v%d: %s (modalities %s)",
                key,
                version,
                prediction.prediction.summary(),
                ",".join(prediction.result["modalities_used"]),
            )
        else:  # more instances arrived while scoring: scored again after the quiet period
            path.unlink(missing_ok=True)
            log.info("study %s changed while scoring; result dropped", key)

    # ------------------------------------------------------------------------- send

    def _send(self, record: StudyRecord, report: TickReport) -> None:
        assert record.sr_path and record.sr_sop_uid
        try:
            dataset = pydicom.dcmread(record.sr_path)
            for sender in self.senders:
                sender.send(dataset)
        except SendError as exc:
            self._retry(record, Status.SCORED, str(exc), report)
            return
        except Exception as exc:  # noqa: BLE001 - one study's failure is retried; the listener goes on
            self._retry(record, Status.SCORED, f"sending failed ({type(exc).__name__})", report)
            return
        if self.state.mark_sent(record.study_uid, record.sr_sop_uid, now=self.clock()):
            report.sent += 1
            log.info(
                "study %s: SR v%d sent to %s",
                study_key(record.study_uid),
                record.version,
                ", ".join(map(str, self.senders)),
            )

    def _retry(self, record: StudyRecord, status: Status, error: str, report: TickReport) -> None:
        outcome = self.state.mark_retry(
            record.study_uid,
            status,
            error,
            self.retry.max_attempts,
            self.retry.base_seconds,
            self.retry.cap_seconds,
            now=self.clock(),
        )
        report.errors.append(error)
        if outcome is Status.FAILED:
            report.failed += 1
            log.error(
                "study %s failed after %d attempts: %s", study_key(record.study_uid), self.retry.max_attempts, error
            )
        elif outcome is not None:
            report.retried += 1
            log.warning("study %s: %s; will retry", study_key(record.study_uid), error)
