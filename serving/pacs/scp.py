"""The DICOM Storage SCP: answers C-ECHO and C-STORE for any storage SOP class in any
transfer syntax pydicom can hold, from the calling AE titles it is configured to allow.

Each instance is written to disk and recorded in the state before the C-STORE is
answered with success: whatever the sender was told is stored, is. A failure to store
is answered with a DICOM failure status (the sender keeps the instance and retries),
never by dropping the association."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import cast

from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]  # made at import, via globals()
from pynetdicom.transport import ThreadedAssociationServer

from radfusion.serving.pacs.state import Arrival, OnResend, StudyState
from radfusion.serving.pacs.storage import WorkDir, study_key, write_durably

log = logging.getLogger("radfusion.pacs")

STATUS_SUCCESS = 0x0000
STATUS_OUT_OF_RESOURCES = 0xA700  # Refused: out of resources (disk)
STATUS_CANNOT_UNDERSTAND = 0xC000  # Error: cannot understand (no study/series UID)
STATUS_PROCESSING_FAILURE = 0x0110


class StoreHandler:
    """The C-STORE handler: bytes as sent -> file -> state row -> success status."""

    def __init__(self, work: WorkDir, state: StudyState, on_resend: OnResend):
        self.work = work
        self.state = state
        self.on_resend = on_resend

    def __call__(self, event: evt.Event) -> int:
        try:
            request = cast(C_STORE, event.request)  # the handler of EVT_C_STORE only
            sop_uid = str(request.AffectedSOPInstanceUID)
            sop_class_uid = str(request.AffectedSOPClassUID)
            dataset = event.dataset
            study_uid = str(dataset.StudyInstanceUID)
            series_uid = str(dataset.SeriesInstanceUID)
        except Exception as exc:  # noqa: BLE001 - a dataset pydicom cannot parse, or without UIDs: refused
            log.warning("C-STORE refused: dataset cannot be read (%s)", type(exc).__name__)
            return STATUS_CANNOT_UNDERSTAND
        path = self.work.instance_path(study_uid, sop_uid)
        try:
            if not path.exists():  # a re-sent instance keeps its first copy
                write_durably(path, event.encoded_dataset(include_meta=True))
            arrival = self.state.record_instance(
                study_uid, series_uid, sop_uid, sop_class_uid, str(path), self.on_resend
            )
        except OSError as exc:
            log.error("C-STORE refused: cannot store instance (%s)", type(exc).__name__)
            return STATUS_OUT_OF_RESOURCES
        except Exception as exc:
            log.exception("C-STORE failed (%s)", type(exc).__name__)
            return STATUS_PROCESSING_FAILURE
        if arrival is Arrival.OWN_RESULT:
            path.unlink(missing_ok=True)
        log.debug("C-STORE %s instance of study %s", arrival.value, study_key(study_uid))
        return STATUS_SUCCESS


def build_ae(ae_title: str, allowed_calling: Sequence[str]) -> AE:
    ae = AE(ae_title=ae_title)
    for context in AllStoragePresentationContexts:
        assert context.abstract_syntax is not None  # pynetdicom's storage contexts all name one
        ae.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)
    ae.add_supported_context(Verification)
    ae.require_called_aet = True  # a PACS configured for another AE title is told so
    ae.require_calling_aet = list(allowed_calling)  # empty: any calling AE title
    return ae


def start_scp(
    host: str,
    port: int,
    ae_title: str,
    allowed_calling: Sequence[str],
    handler: StoreHandler,
) -> ThreadedAssociationServer:
    """Start listening in background threads; ``.shutdown()`` stops it."""
    ae = build_ae(ae_title, allowed_calling)
    server = ae.start_server((host, port), block=False, evt_handlers=[(evt.EVT_C_STORE, handler)])
    assert server is not None  # non-blocking: start_server returns the running server
    return server
