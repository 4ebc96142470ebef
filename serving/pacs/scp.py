"""The DICOM Storage SCP: answers C-ECHO and C-STORE for any storage SOP class in any
transfer syntax pydicom can hold, from the calling AE titles it is configured to allow.

Each instance is written to disk and recorded in the state before the C-STORE is
answered with success: whatever the sender was told is stored, is. A failure to store
is answered with a DICOM failure status (the sender keeps the instance and retries),
never by dropping the association. A dataset that cannot be decoded fails alone (status
0xC000); the association and the listener go on.

A refused association is logged with why it was refused, the AE titles it named, made
printable (a calling AE title of control characters or spaces is what a port scanner or
a broken peer sends), and the peer's address: what an operator needs to find the
misconfigured device. Nothing the peer sent beyond the association request is read, so
no patient data can reach that line. An association accepted with none of its
presentation contexts supported (a peer asking for a service this SCP does not offer)
is a refusal too, logged with the SOP classes it proposed."""

from __future__ import annotations

import logging
import weakref
from collections.abc import Sequence
from typing import cast

from pydicom.uid import UID
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]  # made at import, via globals()
from pynetdicom.transport import ThreadedAssociationServer

from radfusion.serving.pacs.completeness import hints_of
from radfusion.serving.pacs.state import Arrival, OnResend, StudyState
from radfusion.serving.pacs.storage import WorkDir, study_key, write_durably

log = logging.getLogger("radfusion.pacs")

STATUS_SUCCESS = 0x0000
STATUS_OUT_OF_RESOURCES = 0xA700  # Refused: out of resources (disk)
STATUS_CANNOT_UNDERSTAND = 0xC000  # Error: cannot understand (no study/series UID)
STATUS_PROCESSING_FAILURE = 0x0110
# UIDs are at most 64 characters; some archives hold longer ones, none a kilobyte.
MAX_UID_LENGTH = 128


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
        if not all(0 < len(uid) <= MAX_UID_LENGTH for uid in (sop_uid, study_uid, series_uid)):
            log.warning("C-STORE refused: an empty or over-long study, series or instance UID")
            return STATUS_CANNOT_UNDERSTAND
        path = self.work.instance_path(study_uid, sop_uid)
        try:
            written = not path.exists()  # a re-sent instance keeps its first copy
            if written:
                write_durably(path, event.encoded_dataset(include_meta=True))
            arrival = self.state.record_instance(
                study_uid,
                series_uid,
                sop_uid,
                sop_class_uid,
                str(path),
                self.on_resend,
                hints=hints_of(dataset),
                file_restored=written,
            )
        except OSError as exc:
            log.error("C-STORE refused: cannot store instance (%s)", type(exc).__name__)
            return STATUS_OUT_OF_RESOURCES
        except Exception as exc:
            log.exception("C-STORE failed (%s)", type(exc).__name__)
            return STATUS_PROCESSING_FAILURE
        if arrival in (Arrival.OWN_RESULT, Arrival.DISCARDED):
            path.unlink(missing_ok=True)
            self.work.remove_study_dir(study_uid)
        log.debug("C-STORE %s instance of study %s", arrival.value, study_key(study_uid))
        return STATUS_SUCCESS


def printable_ae_title(value: object) -> str:
    """An AE title fit for a log line: printable ASCII only, at most 16 characters."""
    text = value.decode("ascii", "replace") if isinstance(value, bytes) else str(value)
    cleaned = "".join(ch if " " <= ch <= "~" else "?" for ch in text[:16]).strip()
    return repr(cleaned) if cleaned else "(blank)"


def peer_address(assoc) -> str:
    """``host:port`` of the peer (pynetdicom knows it from the accepted socket)."""
    try:
        return f"{assoc.requestor.address}:{assoc.requestor.port}"
    except (AttributeError, ValueError):
        return "(unknown address)"


def _refusal_reason(assoc) -> str:
    """Why pynetdicom refused the association, judged as its ACSE does."""
    calling = assoc.requestor.ae_title
    called = getattr(assoc.requestor.primitive, "called_ae_title", "")
    allowed = [a.strip() for a in assoc.ae.require_calling_aet]
    if allowed and calling not in allowed:
        return f"calling AE title {printable_ae_title(calling)} is not allowed"
    if str(called).strip() != assoc.acceptor.ae_title.strip():
        return f"called AE title {printable_ae_title(called)} is not this listener's"
    return "too many associations"


def log_rejected(event: evt.Event) -> None:
    """EVT_REJECTED: why, which AE titles, from which address."""
    try:
        assoc = event.assoc
        log.warning(
            "association refused: %s (calling AE title %s, called AE title %s, from %s)",
            _refusal_reason(assoc),
            printable_ae_title(assoc.requestor.ae_title),
            printable_ae_title(getattr(assoc.requestor.primitive, "called_ae_title", "")),
            peer_address(assoc),
        )
    except Exception as exc:  # noqa: BLE001 - a log line must not break the refusal
        log.warning("association refused (%s)", type(exc).__name__)


# Associations whose peer sent something: a connection that closes unestablished after
# sending bytes had a request pynetdicom could not read (an AE title with a control
# character, a damaged PDU); one that sent nothing is a port probe, not worth a line.
_SPOKE: weakref.WeakSet = weakref.WeakSet()


def note_data(event: evt.Event) -> None:
    """EVT_DATA_RECV: the peer sent a PDU."""
    _SPOKE.add(event.assoc)


def log_unread_request(event: evt.Event) -> None:
    """EVT_CONN_CLOSE: a peer whose association request could not be read is refused by
    pynetdicom before EVT_REJECTED; say so, with its address (its AE titles are unread)."""
    try:
        assoc = event.assoc
        if assoc in _SPOKE and not (assoc.is_established or assoc.is_rejected or assoc.is_released or assoc.is_aborted):
            log.warning("association refused: its request could not be read (from %s)", peer_address(assoc))
    except Exception as exc:  # noqa: BLE001 - a log line must not break the server
        log.warning("connection closed (%s)", type(exc).__name__)


def _sop_class_name(uid: object) -> str:
    name = UID(str(uid)).name
    return name if name != str(uid) else "a SOP class this listener does not know"


def log_refused_contexts(event: evt.Event) -> None:
    """EVT_ACCEPTED: presentation contexts this SCP does not support. None supported
    means the peer gets nothing from the association (it aborts it): a refusal."""
    try:
        assoc = event.assoc
        refused = assoc.rejected_contexts
        if not refused:
            return
        proposed = sorted({_sop_class_name(cx.abstract_syntax) for cx in refused})
        reasons = sorted({cx.status for cx in refused})
        who = f"calling AE title {printable_ae_title(assoc.requestor.ae_title)}, from {peer_address(assoc)}"
        if not assoc.accepted_contexts:
            log.warning(
                "association refused: none of its presentation contexts is supported (%s: %s; %s)",
                "; ".join(reasons),
                ", ".join(proposed),
                who,
            )
        else:
            log.info(
                "association accepted without %d of its presentation contexts (%s: %s; %s)",
                len(refused),
                "; ".join(reasons),
                ", ".join(proposed),
                who,
            )
    except Exception as exc:  # noqa: BLE001 - a log line must not break the association
        log.warning("presentation contexts refused (%s)", type(exc).__name__)


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
    server = ae.start_server(
        (host, port),
        block=False,
        evt_handlers=[
            (evt.EVT_C_STORE, handler),
            (evt.EVT_REJECTED, log_rejected),
            (evt.EVT_ACCEPTED, log_refused_contexts),
            (evt.EVT_DATA_RECV, note_data),
            (evt.EVT_CONN_CLOSE, log_unread_request),
        ],
    )
    assert server is not None  # non-blocking: start_server returns the running server
    return server
