"""What happens to a study after its instances arrived: one ``tick`` moves every study
that is due one step along received -> pending -> scored -> sent.

Completion. A study is scored once no instance has arrived for the quiet period and
its headers show no missing instance (serving/pacs/completeness.py). Both clocks run
from the last instance received, or from this process's start when that is later: while
the listener was down the PACS could not send, so an outage is not quiet. A study that
still misses instances waits up to ``max_wait_seconds``; then it is scored with what
arrived, and the SR says what was missing (a hospital gets a flagged result in bounded
time rather than none; the missing instances, if they come, re-issue it). Instances
that arrive after scoring reopen the study: the new SR supersedes the one sent.

Failures. Bad input (a study the model cannot take: no CT series, broken geometry, a
corrupt file, over its budget...) fails at once with its kind: retrying cannot fix it.
Anything else (a PACS that is down, an unexpected error) is retried with exponential
backoff and fails after ``RetryPolicy.max_attempts``. A study that fails to score is
reported to the PACS too (``report_failures``): an SR in the study saying why no
result was produced; ``radfusion pacs-status`` shows both.

Saliency (``saliency`` settings given, ``radfusion listen --send-saliency``): a scored
study also gets a Parametric Map of where the model looked
(radfusion.serving.reports.saliency_map), written beside its SR and sent after it to the
same destinations. It is an extra: a map that cannot be built or sent is logged and
never holds back or retries the SR.

Retention. Received instances and SR files are deleted ``keep_seconds`` after the study
had nothing left to deliver (its SR sent; or failed, its failure report sent or out of
attempts), 0 meaning at once; the state keeps the record. A study reopened
later (late instances) waits for the deleted ones to be sent again, then fails as
``study_incomplete`` rather than be scored from a part of it."""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from radfusion.errors import RadfusionInputError
from radfusion.explain import ExplainSettings
from radfusion.serving.pacs.completeness import Completeness, IncompleteStudyError, ReceivedInstance, assess
from radfusion.serving.pacs.predict import StudyPrediction, StudyPredictor
from radfusion.serving.pacs.send import CStoreSender, SendError, StowSender
from radfusion.serving.pacs.state import InstanceRecord, Notice, Status, StudyRecord, StudyState
from radfusion.serving.pacs.storage import WorkDir, saliency_path, study_key, write_durably
from radfusion.serving.reports.saliency_map import build_saliency_map
from radfusion.serving.reports.sr import (
    EarlierReport,
    build_failure_sr,
    build_prediction_sr,
    new_uid,
    read_evidence,
    reference_dataset,
)

log = logging.getLogger("radfusion.pacs")

SCORING_FAILED = "scoring_failed"  # the kind a failure report gives a study that ran out of attempts
_HEADER_TRIES = 20  # files tried for the patient/study attributes of a failure report


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 5
    base_seconds: float = 10.0
    cap_seconds: float = 600.0


@dataclass
class TickReport:
    completed: int = 0  # received -> pending
    scored: int = 0
    sent: int = 0  # SRs delivered, failure reports included
    retried: int = 0
    failed: int = 0
    notices: int = 0  # failure reports written
    purged: int = 0  # studies whose files were deleted
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
        *,
        max_wait_seconds: float = 600.0,
        report_failures: bool = True,
        keep_seconds: float | None = 24 * 3600.0,
        saliency: ExplainSettings | None = None,
    ):
        self.state = state
        self.work = work
        self.predictor = predictor
        self.senders = list(senders)
        self.quiet_seconds = quiet_seconds
        self.max_wait_seconds = max_wait_seconds
        self.retry = retry
        self.clock = clock
        self.report_failures = report_failures
        self.keep_seconds = keep_seconds  # None: keep received files for ever
        self.saliency = saliency  # None: no saliency map
        self.started = clock()  # nothing could be sent to this process before
        self._waiting: dict[str, float] = {}  # study -> last_received already logged as waiting

    def tick(self) -> TickReport:
        report = TickReport()
        report.completed = self._complete(self.clock())
        for record in self.state.due(Status.PENDING, now=self.clock()):
            self._score(record, report)
        if self.senders:  # without a destination the SR stays on disk, status "scored"
            for record in self.state.due(Status.SCORED, now=self.clock()):
                self._send(record, report)
            for notice in self.state.notices_due(self.retry.max_attempts, now=self.clock()):
                self._send_notice(notice, report)
        report.purged = self._purge(self.clock())
        return report

    # ------------------------------------------------------------------- complete

    def completeness(self, study_uid: str) -> tuple[Completeness, list[InstanceRecord]]:
        instances = self.state.instances(study_uid)
        found = assess(ReceivedInstance(i.series_uid, i.hints, Path(i.path).is_file()) for i in instances)
        return found, instances

    def _complete(self, now: float) -> int:
        quiet_since = now - self.quiet_seconds
        if quiet_since < self.started:
            return 0
        promoted = 0
        for record in self.state.quiet(quiet_since):
            found, _ = self.completeness(record.study_uid)
            waited = now - max(record.last_received, self.started)
            if found.complete or waited >= self.max_wait_seconds:
                promoted += self.state.promote(record.study_uid, record.last_received, now=now)
                self._waiting.pop(record.study_uid, None)
            elif self._waiting.get(record.study_uid) != record.last_received:
                self._waiting[record.study_uid] = record.last_received
                log.info(
                    "study %s waits up to %.0f s for missing instances: %s",
                    study_key(record.study_uid),
                    self.max_wait_seconds - waited,
                    found.note(),
                )
        return promoted

    # ------------------------------------------------------------------------ score

    def _score(self, record: StudyRecord, report: TickReport) -> None:
        found, instances = self.completeness(record.study_uid)
        if found.missing_files:
            error = IncompleteStudyError(
                f"{found.missing_files} of {found.received} received instances are no longer on disk (deleted after "
                "the retention period) and were not sent again: send the whole study again to score it"
            )
            self._fail(record, error, report)
            return
        try:
            prediction = self.predictor.predict([Path(i.path) for i in instances])
        except RadfusionInputError as exc:
            self._fail(record, exc, report)
            return
        except Exception as exc:  # noqa: BLE001 - one study's failure is retried; the listener goes on
            self._retry(record, Status.PENDING, f"scoring error ({type(exc).__name__})", report)
            return
        result = dict(prediction.result, instances_received=len(instances))
        if not found.complete:
            result["completeness"] = (
                f"scored after waiting {self.max_wait_seconds:.0f} s for missing instances: {found.note()}"
            )
        self._write_prediction(record, prediction, result, instances, report)

    def _write_prediction(
        self,
        record: StudyRecord,
        prediction: StudyPrediction,
        result: dict,
        instances: list[InstanceRecord],
        report: TickReport,
    ) -> None:
        key = study_key(record.study_uid)
        study = prediction.case.study
        scored = set(study.sop_uids) if study else {i.sop_uid for i in instances}
        sources = [Path(i.path) for i in instances if i.sop_uid in scored]
        version = record.version + 1
        sr_series_uid = record.sr_series_uid or new_uid()
        sr_sop_uid = new_uid()
        predecessor = self._earlier(record.study_uid)
        try:
            sr = build_prediction_sr(
                self.predictor.contract,
                prediction.prediction,
                result,
                read_evidence(sources),
                sr_series_uid,
                sr_sop_uid,
                version,
                predecessor,
            )
            path = self.work.result_path(record.study_uid, version)
            _write(path, sr)
        except Exception as exc:  # noqa: BLE001 - one study's failure is retried; the listener goes on
            self._retry(record, Status.PENDING, f"SR not written ({type(exc).__name__})", report)
            return
        self._write_saliency(key, prediction, sources, path, sr_series_uid, version)
        if self.state.mark_scored(
            record.study_uid,
            version,
            sr_series_uid,
            sr_sop_uid,
            str(path),
            result,
            now=self.clock(),
            n_instances=len(instances),
        ):
            report.scored += 1
            log.info(
                "study %s scored v%d: %s (modalities %s)%s",
                key,
                version,
                prediction.prediction.summary(),
                "+".join(result["modalities_used"]),
                f"; supersedes v{predecessor.version}" if predecessor else "",
            )
            if "completeness" in result:
                log.warning("study %s scored with instances missing: %s", key, result["completeness"])
        else:  # more instances arrived while scoring: scored again after the quiet period
            path.unlink(missing_ok=True)
            saliency_path(path).unlink(missing_ok=True)
            log.info("study %s changed while scoring; result dropped", key)

    def _write_saliency(
        self,
        key: str,
        prediction: StudyPrediction,
        sources: list[Path],
        sr_path: Path,
        sr_series_uid: str,
        version: int,
    ) -> None:
        """The saliency map beside the SR at ``sr_path``, when configured; a failure is
        logged (no identifiers) and the SR goes on without it."""
        if self.saliency is None:
            return
        study = prediction.case.study
        try:
            saliency_path(sr_path).unlink(missing_ok=True)  # never send a map of an earlier scoring
            found = self.predictor.saliency(prediction.case, self.saliency)
            if found is None or study is None or study.grid_affine is None:
                log.info("study %s: no saliency map (scored without an image)", key)
                return
            pm = build_saliency_map(
                found.voxel_map,
                study.grid_affine,
                [pydicom.dcmread(p, stop_before_pixels=True) for p in sources],
                _map_series_uid(sr_series_uid),
                new_uid(),
                self.predictor.contract,
                instance_number=version,
            )
            _write(saliency_path(sr_path), pm)
        except Exception as exc:  # noqa: BLE001 - the map is an extra; the SR is sent without it
            log.warning("study %s: saliency map not written (%s)", key, type(exc).__name__)

    def _send_saliency(self, record: StudyRecord) -> None:
        """Send the study's saliency map, if one was written, after its SR."""
        path = saliency_path(Path(record.sr_path or ""))
        if not record.sr_path or not path.is_file():
            return
        key = study_key(record.study_uid)
        try:
            dataset = pydicom.dcmread(path)
            for sender in self.senders:
                sender.send(dataset)
        except Exception as exc:  # noqa: BLE001 - the SR is delivered; the map is not retried
            log.warning(
                "study %s: saliency map not sent (%s)", key, exc if isinstance(exc, SendError) else type(exc).__name__
            )
            return
        log.info("study %s: saliency map v%d sent", key, record.version)

    def _earlier(self, study_uid: str) -> EarlierReport | None:
        sent = self.state.last_sent_prediction(study_uid)
        if sent is None:
            return None
        return EarlierReport(study_uid, sent.series_uid, sent.sop_uid, sent.version, sent.n_instances)

    # ------------------------------------------------------------------- failures

    def _fail(self, record: StudyRecord, exc: RadfusionInputError, report: TickReport) -> None:
        error = f"{exc.kind}: {exc.message}"
        if not self.state.mark_failed(record.study_uid, Status.PENDING, error, now=self.clock()):
            return  # reopened meanwhile: it will be judged again
        report.failed += 1
        log.warning("study %s not scored: %s", study_key(record.study_uid), error)
        self._report_failure(record.study_uid, exc.kind, exc.message, report)

    def _report_failure(self, study_uid: str, kind: str, reason: str, report: TickReport) -> None:
        """Write the SR that tells the PACS why the study has no result."""
        record = self.state.get(study_uid)
        if not self.report_failures or record is None:
            return
        key = study_key(study_uid)
        instances = self.state.instances(study_uid)
        version, series_uid, sop_uid = record.version + 1, record.sr_series_uid or new_uid(), new_uid()
        try:
            sr = build_failure_sr(
                self.predictor.contract,
                kind,
                reason,
                [reference_dataset(study_uid, i.series_uid, i.sop_uid, i.sop_class_uid) for i in instances],
                series_uid,
                sop_uid,
                version,
                self._earlier(study_uid),
                header=_first_readable_header(instances),
            )
            path = self.work.result_path(study_uid, version)
            _write(path, sr)
        except Exception as exc:  # noqa: BLE001 - the failure stays in the state and the log
            log.error("study %s: failure report not written (%s)", key, type(exc).__name__)
            return
        if self.state.add_notice(study_uid, version, series_uid, sop_uid, str(path), len(instances), now=self.clock()):
            report.notices += 1
            log.info("study %s: failure report v%d written (%s)", key, version, kind)
        else:
            path.unlink(missing_ok=True)

    def _send_notice(self, notice: Notice, report: TickReport) -> None:
        key = study_key(notice.study_uid)
        try:
            dataset = pydicom.dcmread(notice.path)
            for sender in self.senders:
                sender.send(dataset)
        except Exception as exc:  # noqa: BLE001 - retried with backoff; the listener goes on
            error = str(exc) if isinstance(exc, SendError) else f"sending failed ({type(exc).__name__})"
            attempts = self.state.mark_notice_retry(
                notice.sop_uid, self.retry.base_seconds, self.retry.cap_seconds, now=self.clock()
            )
            report.errors.append(error)
            if attempts >= self.retry.max_attempts:
                log.error("study %s: failure report not delivered after %d attempts: %s", key, attempts, error)
            else:
                log.warning("study %s: failure report: %s; will retry", key, error)
            return
        self.state.mark_notice_sent(notice.sop_uid, now=self.clock())
        report.sent += 1
        log.info("study %s: failure report v%d sent to %s", key, notice.version, ", ".join(map(str, self.senders)))

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
        self._send_saliency(record)
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
            if status is Status.PENDING:  # a study that could not be sent has no PACS to tell
                reason = f"scoring failed {self.retry.max_attempts} times: {error}"
                self._report_failure(record.study_uid, SCORING_FAILED, reason, report)
        elif outcome is not None:
            report.retried += 1
            log.warning("study %s: %s; will retry", study_key(record.study_uid), error)

    # -------------------------------------------------------------------- retention

    def _purge(self, now: float) -> int:
        if self.keep_seconds is None:
            return 0
        cutoff = now - self.keep_seconds
        # A failure report still being delivered keeps its study (without a destination none is).
        notice_attempts = self.retry.max_attempts if self.senders else 0
        purged = 0
        for study_uid in self.state.expired(cutoff, notice_attempts):
            paths = self.state.claim_purge(study_uid, cutoff, now=now, notice_attempts=notice_attempts)
            if paths is None:
                continue
            self.work.delete_files(study_uid, paths)
            purged += 1
            log.info("study %s: received files deleted after the retention period", study_key(study_uid))
        return purged


def _map_series_uid(sr_series_uid: str) -> str:
    """The saliency maps' series of a study: one per SR series, stable across versions
    like the SR's, derived from it so that the state needs no second UID."""
    return generate_uid(entropy_srcs=["radfusion saliency map", sr_series_uid])


def _write(path: Path, sr: Dataset) -> None:
    buffer = io.BytesIO()
    sr.save_as(buffer, enforce_file_format=True)
    write_durably(path, buffer.getvalue())


def _first_readable_header(instances: Sequence[InstanceRecord]) -> Dataset | None:
    """Patient and study attributes for a failure report, from the first file that can
    be read at all (a corrupt study may have none)."""
    for instance in instances[:_HEADER_TRIES]:
        try:
            return pydicom.dcmread(instance.path, stop_before_pixels=True)
        except Exception:  # noqa: BLE001 - any file may be the corrupt one
            continue
    return None
