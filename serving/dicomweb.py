"""The ONE DICOMweb client (dicomweb-client: QIDO-RS search, WADO-RS retrieve) of the
HTTP service and the archive scorer, under one of two policies:

- allow-listed (``DicomwebPolicy(allowed=...)``): a study reference sent by an HTTP
  caller (``{"url": <DICOMweb root>, "study_uid": <StudyInstanceUID>}``), fetched on
  the caller's behalf;
- trusted (``DicomwebPolicy.trusted(url)``): the archive the scorer's operator points
  it at; any http(s) URL, with the environment's proxy and CA settings, redirects
  followed and retries with backoff. Sizes are capped the same way.

The service fetches URLs on a caller's behalf only under rules a hospital can audit:

- only below a base URL listed in RADFUSION_DICOMWEB_ALLOWED_URLS (comma-separated;
  none listed: DICOMweb input is off and every reference is refused 403), compared by
  scheme, host, port and path segments, never by string prefix;
- no redirects (a redirect could lead anywhere), no proxy or credentials from the
  environment, no user:password in the URL;
- a deadline for the whole retrieval (RADFUSION_DICOMWEB_TIMEOUT_S), besides the
  per-read timeout; and the study's size and instance count capped as for uploads
  (counted as the bytes arrive, never trusted from headers).

Instances are written to disk as they arrive, so memory holds one instance at a time.
Every failure is one of the error classes below, whoever called."""

from __future__ import annotations

import re
import time
import typing as t
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from pydantic import BaseModel, Field

from radfusion.errors import RadfusionInputError
from radfusion.serving.study_files import DEFAULT_MAX_MEMBERS, DEFAULT_MAX_STUDY_BYTES, UploadTooLargeError

ALLOWED_URLS_ENV = "RADFUSION_DICOMWEB_ALLOWED_URLS"
TIMEOUT_ENV = "RADFUSION_DICOMWEB_TIMEOUT_S"
DEFAULT_TIMEOUT_S = 60
TRUSTED_TIMEOUT_S = 600  # a whole study from an operator's own archive
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")


class DicomwebRef(BaseModel):
    """Where a study lies: a DICOMweb server's root URL and the study's UID."""

    url: str = Field(description="DICOMweb root, e.g. https://pacs.example/dicom-web")
    study_uid: str = Field(description="StudyInstanceUID", max_length=64)


class DicomwebNotAllowedError(RadfusionInputError):
    """The DICOMweb URL is not below a base URL this server may fetch from (or DICOMweb input is off)."""

    kind = "dicomweb_not_allowed"
    http_status = 403


class BadDicomwebRefError(RadfusionInputError):
    """The DICOMweb reference is malformed (not an http(s) root URL, credentials in it, no UID)."""

    kind = "bad_dicomweb_reference"
    http_status = 400


class DicomwebStudyNotFoundError(RadfusionInputError):
    """The DICOMweb server has no such study, or returned no instance of it."""

    kind = "dicomweb_study_not_found"
    http_status = 404


class DicomwebUnavailableError(RadfusionInputError):
    """The DICOMweb server failed or could not be reached: the request was fine, the
    upstream was not (502, as a gateway answers)."""

    kind = "dicomweb_unavailable"
    http_status = 502
    retryable = True


class DicomwebTimeoutError(RadfusionInputError):
    """The DICOMweb server did not deliver the study within the time limit."""

    kind = "dicomweb_timeout"
    http_status = 504
    retryable = True


@dataclass(frozen=True)
class _Base:
    scheme: str
    host: str
    port: int
    segments: tuple[str, ...]


def _parse(url: str) -> _Base:
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise BadDicomwebRefError("DICOMweb url must be an http(s) URL with a host")
    if parts.username or parts.password:
        raise BadDicomwebRefError("DICOMweb url must not carry credentials")
    if parts.query or parts.fragment:
        raise BadDicomwebRefError("DICOMweb url must be the server's root, without query or fragment")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as exc:
        raise BadDicomwebRefError("DICOMweb url has an invalid port") from exc
    segments = tuple(s for s in parts.path.split("/") if s)
    if any(s in (".", "..") for s in segments):
        raise BadDicomwebRefError("DICOMweb url path must not hold '.' or '..'")
    return _Base(parts.scheme, parts.hostname.lower(), port, segments)


@dataclass(frozen=True)
class DicomwebPolicy:
    """Which servers may be fetched from, and how much, how long. ``allowed`` empty and
    not ``is_trusted``: DICOMweb input is off."""

    allowed: tuple[str, ...] = ()
    timeout_s: float = DEFAULT_TIMEOUT_S
    max_bytes: int = DEFAULT_MAX_STUDY_BYTES
    max_instances: int = DEFAULT_MAX_MEMBERS
    is_trusted: bool = False
    retries: bool = True  # trusted only: transient failures retried with backoff
    _bases: tuple[_Base, ...] = field(default=(), init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_bases", tuple(_parse(url) for url in self.allowed))

    @classmethod
    def trusted(
        cls,
        timeout_s: float = TRUSTED_TIMEOUT_S,
        max_bytes: int = DEFAULT_MAX_STUDY_BYTES,
        max_instances: int = DEFAULT_MAX_MEMBERS,
        retries: bool = True,
    ) -> DicomwebPolicy:
        """The scorer's and the listener's policy: the operator chose the server.
        ``retries`` off: one attempt (a caller that answers someone while it waits)."""
        return cls((), timeout_s, max_bytes, max_instances, is_trusted=True, retries=retries)

    def check(self, ref: DicomwebRef) -> str:
        """The URL to fetch from (normalised), or DicomwebNotAllowedError."""
        if not _UID.match(ref.study_uid):
            raise BadDicomwebRefError("study_uid must be a DICOM UID (digits and dots)")
        if self.is_trusted:
            return self.check_url(ref.url)
        wanted = _parse(ref.url)
        if not self._bases:
            raise DicomwebNotAllowedError(f"DICOMweb input is off on this server ({ALLOWED_URLS_ENV} is not set)")
        for base in self._bases:
            if (base.scheme, base.host, base.port) == (wanted.scheme, wanted.host, wanted.port) and (
                wanted.segments[: len(base.segments)] == base.segments
            ):
                path = "/".join(wanted.segments)
                return f"{wanted.scheme}://{urlsplit(ref.url.strip()).netloc}" + (f"/{path}" if path else "")
        raise DicomwebNotAllowedError("DICOMweb url is not below any base URL this server is allowed to fetch from")

    def check_url(self, url: str) -> str:
        """A server root the trusted policy may search and fetch from."""
        parts = urlsplit(url.strip())
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise BadDicomwebRefError("DICOMweb url must be an http(s) URL with a host")
        if not self.is_trusted:
            raise DicomwebNotAllowedError("only a trusted policy searches a whole DICOMweb server")
        return url.strip().rstrip("/")


class _Budget:
    """Counts response bytes as they stream in and stops at the size or the deadline."""

    def __init__(self, max_bytes: int, deadline: float):
        self.left = max_bytes
        self.deadline = deadline

    def hook(self, response, *args, **kwargs):
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.left:
            response.close()
            raise UploadTooLargeError("DICOMweb study is larger than the server's size limit")
        iter_content = response.iter_content

        def counted(chunk_size: int = 1, decode_unicode: bool = False) -> t.Iterator[bytes]:
            for chunk in iter_content(chunk_size=chunk_size, decode_unicode=decode_unicode):
                self.left -= len(chunk)
                if self.left < 0:
                    response.close()
                    raise UploadTooLargeError("DICOMweb study is larger than the server's size limit")
                if time.monotonic() > self.deadline:
                    response.close()
                    raise DicomwebTimeoutError("DICOMweb retrieval did not finish within the time limit")
                yield chunk

        response.iter_content = counted
        return response


_trusted_sessions: dict[str, t.Any] = {}


def _session(policy: DicomwebPolicy, url: str):
    """An allow-listed fetch gets a fresh session that ignores the environment (proxy,
    netrc, CA) and follows no redirect; a trusted server keeps one session per process
    (the scorer's workers reuse its connections) with the environment's settings."""
    import requests

    if policy.is_trusted:
        if url not in _trusted_sessions:
            _trusted_sessions[url] = requests.Session()
        return _trusted_sessions[url]
    session = requests.Session()
    session.trust_env = False
    session.max_redirects = 0
    return session


def _client(url: str, policy: DicomwebPolicy, session, budget: _Budget | None, headers: dict | None = None):
    from dicomweb_client.api import DICOMwebClient

    read_timeout = max(1.0, min(policy.timeout_s, 30.0))
    client = DICOMwebClient(
        url=url,
        session=session,
        callback=budget.hook if budget else None,
        timeout=(5.0, read_timeout),
        headers=headers,
    )
    if not (policy.is_trusted and policy.retries):
        client.set_http_retry_params(retry=False)  # retries with backoff would outlive the deadline
    return client


@contextmanager
def _upstream_errors(policy: DicomwebPolicy, session) -> Iterator[None]:
    """Every failure of a DICOMweb exchange as one of this module's errors."""
    import requests

    try:
        yield
    except RadfusionInputError:
        raise
    except requests.HTTPError as exc:
        status = exc.response.status_code if exc.response is not None else None
        if status == 404:
            raise DicomwebStudyNotFoundError("the DICOMweb server has no such study") from exc
        raise DicomwebUnavailableError(f"the DICOMweb server answered HTTP {status}") from exc
    except requests.TooManyRedirects as exc:
        raise DicomwebUnavailableError("the DICOMweb server answered with a redirect, which is not followed") from exc
    except requests.Timeout as exc:
        raise DicomwebTimeoutError("the DICOMweb server did not answer in time") from exc
    except (requests.RequestException, OSError) as exc:
        raise DicomwebUnavailableError(f"the DICOMweb server could not be reached ({type(exc).__name__})") from exc
    except ValueError as exc:  # a non-multipart answer, or a part that is no DICOM
        raise DicomwebUnavailableError(
            f"the DICOMweb server's answer could not be read ({type(exc).__name__})"
        ) from exc
    finally:
        if not policy.is_trusted:
            session.close()


def fetch_study(ref: DicomwebRef, policy: DicomwebPolicy, dest: Path) -> list[Path]:
    """WADO-RS retrieve the study into ``dest`` (generated names); raises a specific
    RadfusionInputError for a refused, missing, oversized, slow or failing retrieval."""
    url = policy.check(ref)
    deadline = time.monotonic() + policy.timeout_s
    budget = _Budget(policy.max_bytes, deadline)
    dest.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    session = _session(policy, url)
    with _upstream_errors(policy, session):
        client = _client(url, policy, session, budget)
        # Instances in the transfer syntax they are stored in: no server-side transcoding.
        for dataset in client.iter_study(ref.study_uid, media_types=(("application/dicom", "*"),)):
            if len(written) >= policy.max_instances:
                raise UploadTooLargeError(f"DICOMweb study holds more than {policy.max_instances} instances")
            target = dest / f"{len(written):06d}.dcm"
            dataset.save_as(target, enforce_file_format=True)
            written.append(target)
            if time.monotonic() > deadline:
                raise DicomwebTimeoutError("DICOMweb retrieval did not finish within the time limit")
    if not written:
        raise DicomwebStudyNotFoundError("the DICOMweb server returned no instance for the study")
    return written


def search_studies(url: str, policy: DicomwebPolicy, offset: int, limit: int, fields: list[str]) -> list[dict]:
    """One QIDO-RS page of the server's studies (trusted policy only: searching a whole
    server is an operator's act, never a caller's)."""
    url = policy.check_url(url)
    session = _session(policy, url)
    with _upstream_errors(policy, session):
        return _client(url, policy, session, None).search_for_studies(offset=offset, limit=limit, fields=fields)


def store_instances(url: str, datasets: list, policy: DicomwebPolicy, token: str | None = None):
    """STOW-RS ``datasets`` to the DICOMweb root ``url`` (the listener sending its SR back
    to the PACS it was configured with: a trusted policy); a bearer ``token``, when
    given, is sent as Authorization. Returns the Store Instances Response dataset (or
    None when the server sent no body); raises this module's errors on failure."""
    url = policy.check_url(url)
    session = _session(policy, url)
    headers = {"Authorization": f"Bearer {token}"} if token else None
    with _upstream_errors(policy, session):
        return _client(url, policy, session, None, headers=headers).store_instances(datasets)


def store_refusal(url: str, datasets: list, policy: DicomwebPolicy, token: str | None = None) -> str | None:
    """STOW-RS ``datasets`` (store_instances) and say why they were not stored: None when
    the PACS's Store Instances Response names every one as stored, else the reason (the
    Failure Reason it answered, an answer that confirms nothing, or why it could not be
    reached), free of identifiers. The listener's and the service's one way to hand a
    result to a PACS."""
    try:
        response = store_instances(url, datasets, policy, token)
    except RadfusionInputError as exc:
        refused = _failure_reason(_store_response(exc.__cause__))
        if refused is not None:
            return f"the PACS refused the result (failure reason 0x{refused:04X})"
        return f"the PACS could not be reached ({exc.kind}: {exc.message})"
    refused = _failure_reason(response)
    if refused is not None:
        return f"the PACS refused the result (failure reason 0x{refused:04X})"
    stored = {str(item.get("ReferencedSOPInstanceUID", "")) for item in _items(response, "ReferencedSOPSequence")}
    if not {str(ds.SOPInstanceUID) for ds in datasets} <= stored:
        return "the PACS's answer does not name the result as stored (no Store Instances Response)"
    return None


def _items(response, keyword: str) -> list:
    return list(response.get(keyword, None) or []) if response is not None else []


def _failure_reason(response) -> int | None:
    failed = _items(response, "FailedSOPSequence")
    return int(failed[0].get("FailureReason", 0) or 0) if failed else None


def _store_response(error: BaseException | None):
    """The Store Instances Response in the body of an HTTP error (a 409 that says why),
    or None."""
    import requests
    from pydicom import Dataset

    if not isinstance(error, requests.HTTPError) or error.response is None:
        return None
    try:
        return Dataset.from_json(error.response.json())
    except Exception:  # noqa: BLE001 - a body that is not DICOM JSON says nothing
        return None
