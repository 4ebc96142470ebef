"""The result of a STOW-RS study as DICOM: the prediction SR of a scored study (with, when
RADFUSION_RESULT_SALIENCY is on, a Parametric Map of where the model looked), or the
failure report of one that could not be scored (radfusion.serving.reports.sr, the
listener's documents), kept in the result store for WADO-RS and, when
RADFUSION_RESULT_STOW_URL is set, stored back to that PACS with STOW-RS.

A re-sent study gets the next version in the same SR series; a new prediction names
the last one as its predecessor, and a failure report says that an earlier prediction
no longer reflects the study. The PACS gets each result from the
outbox (radfusion.serving.http.delivery) in the background, again until it takes it:
the STOW-RS client never waits for the PACS (a client that times out would send the
study again), and a PACS that is down is never a failure of the request."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset

from radfusion.contract import ModelContract
from radfusion.errors import RadfusionInputError
from radfusion.prediction import Prediction
from radfusion.predictor import PreparedCase
from radfusion.serving.dicomweb import DicomwebPolicy, store_refusal
from radfusion.serving.http.delivery import Outbox
from radfusion.serving.http.results import EarlierResult, ResultStore
from radfusion.serving.http.stow import Instance
from radfusion.serving.reports.saliency_map import build_saliency_map
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
SEND_TIMEOUT_S = 10.0


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
        # One attempt per delivery round, each read bounded: the outbox decides when to retry.
        self.policy = DicomwebPolicy.trusted(timeout_s=min(destination.timeout_s, SEND_TIMEOUT_S), retries=False)
        self.outbox = Outbox(store.root, self.send_once)

    def prediction(
        self,
        study_uid: str,
        prediction: Prediction,
        facts: dict[str, Any],
        case: PreparedCase,
        headers: Headers,
        saliency: np.ndarray | None = None,
    ) -> str | None:
        """Write, keep and send the prediction SR (and the Parametric Map of ``saliency``,
        the model-grid map of radfusion.explain, when given); a warning when the map
        could not be written.
        ``facts``: what build_prediction_sr takes as ``result``; ``headers``:
        read_headers of the study's instances (before scoring moved their files)."""
        scored = set(case.study.sop_uids) if case.study is not None else set(headers)
        evidence = [header for sop_uid, header in headers.items() if sop_uid in scored and header is not None]
        with self.store.versioning():
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
            path = self.store.put(sr, "prediction")
        self._send(sr, path)
        if saliency is not None and case.study is not None:
            return self._saliency_map(saliency, case, evidence, sr)
        return None

    def failure(
        self, study_uid: str, error: RadfusionInputError, instances: Sequence[Instance], headers: Headers
    ) -> None:
        """Write, keep and send the report that the study has no result."""
        with self.store.versioning():
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
            path = self.store.put(sr, "failure")
        self._send(sr, path)

    def _saliency_map(
        self, saliency: np.ndarray, case: PreparedCase, evidence: list[Dataset], sr: Dataset
    ) -> str | None:
        """The map goes after its SR and never costs it: a map that cannot be built is a
        warning."""
        affine = case.study.grid_affine if case.study is not None else None
        if affine is None:
            return None
        try:
            pm = build_saliency_map(
                saliency,
                affine,
                evidence,
                new_uid(),
                new_uid(),
                self.contract,
                instance_number=int(sr.InstanceNumber),
            )
        except Exception as exc:  # noqa: BLE001 - the SR is already kept and sent
            log.warning("stow: saliency map not written (%s)", type(exc).__name__)
            return "the saliency map could not be written"
        self._send(pm, self.store.put(pm, "map"))
        return None

    def _send(self, result: Dataset, path: Path) -> None:
        """Hand the kept result to the outbox: the background delivery sends it at once
        and again until the PACS takes it; the STOW-RS client never waits for the PACS."""
        if self.destination.url is not None:
            self.outbox.hold(path, attempts=0)
            self.outbox.wake()

    def send_once(self, result: Dataset) -> str | None:
        assert self.destination.url is not None
        return store_refusal(self.destination.url, [result], self.policy, self.destination.token)


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
