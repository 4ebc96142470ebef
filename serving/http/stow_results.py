"""The result of a STOW-RS study as DICOM: the prediction SR of a scored study, or the
failure report of one that could not be scored (radfusion.serving.reports.sr, the
listener's documents), kept in the result store for WADO-RS and, when
RADFUSION_RESULT_STOW_URL is set, stored back to that PACS with STOW-RS.

A re-sent study gets the next version in the same SR series; a new prediction names
the last one as its predecessor, and a failure report says that an earlier prediction
no longer reflects the study. A PACS that does not take the SR is a warning of the
answer (and a log line without identifiers), never a failure of the request."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pydicom.dataset import Dataset

from radfusion.contract import ModelContract
from radfusion.errors import RadfusionInputError
from radfusion.prediction import Prediction
from radfusion.predictor import PreparedCase
from radfusion.serving.dicomweb import DicomwebPolicy, store_instances
from radfusion.serving.http.results import EarlierResult, ResultStore
from radfusion.serving.http.stow import Instance
from radfusion.serving.reports.sr import (
    EarlierReport,
    build_failure_sr,
    build_prediction_sr,
    new_uid,
    read_evidence,
    reference_dataset,
)

log = logging.getLogger("bentoml.radfusion")

Headers = dict[str, Dataset | None]


@dataclass(frozen=True)
class ResultDestination:
    """The PACS results are stored back to (a DICOMweb root), or none."""

    url: str | None = None
    token: str | None = None
    timeout_s: float = 60.0


class ResultWriter:
    def __init__(self, contract: ModelContract, store: ResultStore, destination: ResultDestination):
        self.contract = contract
        self.store = store
        self.destination = destination
        self.policy = DicomwebPolicy.trusted(timeout_s=destination.timeout_s)

    def prediction(
        self,
        study_uid: str,
        prediction: Prediction,
        facts: dict[str, Any],
        case: PreparedCase,
        headers: Headers,
    ) -> str | None:
        """Write, keep and send the prediction SR; the send warning, if any. ``facts``:
        what build_prediction_sr takes as ``result``; ``headers``: read_headers of the
        study's instances (before scoring moved their files)."""
        scored = set(case.study.sop_uids) if case.study is not None else set(headers)
        evidence = [header for sop_uid, header in headers.items() if sop_uid in scored and header is not None]
        earlier = self.store.latest(study_uid)
        predecessor = _as_report(study_uid, earlier) if earlier is not None else None
        sr = build_prediction_sr(
            self.contract,
            prediction,
            facts,
            evidence,
            earlier.series_uid if earlier is not None else new_uid(),
            new_uid(),
            earlier.version + 1 if earlier is not None else 1,
            predecessor,
        )
        self.store.put(sr, is_prediction=True)
        return self._send(sr)

    def failure(
        self, study_uid: str, error: RadfusionInputError, instances: Sequence[Instance], headers: Headers
    ) -> str | None:
        """Write, keep and send the report that the study has no result; the send warning."""
        earlier = self.store.latest(study_uid)
        outdated = _as_report(study_uid, earlier) if earlier is not None and earlier.is_prediction else None
        sr = build_failure_sr(
            self.contract,
            error.kind,
            error.message,
            [reference_dataset(i.study_uid, i.series_uid, i.sop_uid, i.sop_class_uid) for i in instances],
            earlier.series_uid if earlier is not None else new_uid(),
            new_uid(),
            earlier.version + 1 if earlier is not None else 1,
            outdated,
            header=next((header for header in headers.values() if header is not None), None),
        )
        self.store.put(sr, is_prediction=False)
        return self._send(sr)

    def _send(self, sr: Dataset) -> str | None:
        if self.destination.url is None:
            return None
        try:
            response = store_instances(self.destination.url, [sr], self.policy, self.destination.token)
        except RadfusionInputError as exc:
            log.warning("stow: result not sent to the PACS: %s", exc.kind)
            return f"the result could not be stored to the PACS ({exc.kind}: {exc.message})"
        failed = response.get("FailedSOPSequence") if response is not None else None
        if failed:
            reason = failed[0].get("FailureReason", 0)
            log.warning("stow: the PACS refused the result (failure reason 0x%04X)", reason)
            return f"the PACS refused the result (failure reason 0x{reason:04X})"
        return None


def _as_report(study_uid: str, earlier: EarlierResult) -> EarlierReport:
    return EarlierReport(study_uid, earlier.series_uid, earlier.sop_uid, earlier.version, None)


def read_headers(instances: Sequence[Instance]) -> Headers:
    """The instances' headers by SOP Instance UID (None: unreadable); the evidence of a
    prediction SR and the patient and study attributes of either report."""
    headers: Headers = {}
    for instance in instances:
        try:
            headers[instance.sop_uid] = read_evidence([instance.path])[0]
        except Exception:  # noqa: BLE001 - any part may be the corrupt one
            headers[instance.sop_uid] = None
    return headers
