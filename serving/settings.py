"""The settings of the HTTP service and of the DICOM listener: typed dataclasses read
from RADFUSION_* environment variables when the process starts (``ServiceSettings.
from_env()`` in the service's ``__init__``, ``ListenerSettings.from_env()`` in
``radfusion listen``, whose flags override its variables), never when a module is
imported, so that importing the service (tests, `bentoml build`, the import checker)
does not depend on the environment. What reading one study may cost and the patient
tables are one set of variables for both (``StudySettings``).

Every bad value fails at start with an error that names the variable and the form it
expects, e.g. ``RADFUSION_MAX_UPLOAD_BYTES: expected an integer number of bytes, got '2G'``.

Four values are read when the service classes are declared (the model service's
batching and the services' request timeout, which BentoML fixes then), so
``declared_from_env()`` reads just these four, once, at that point."""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, cast

from radfusion.explain import REFINE_MIN_WINDOWS, ExplainSettings
from radfusion.limits import StudyBudget
from radfusion.serving.dicomweb import ALLOWED_URLS_ENV, DEFAULT_TIMEOUT_S, DicomwebPolicy
from radfusion.serving.study_files import DEFAULT_MAX_MEMBERS, DEFAULT_MAX_STUDY_BYTES

if TYPE_CHECKING:
    from _typeshed import DataclassInstance


_T = TypeVar("_T")
_S = TypeVar("_S", bound="DataclassInstance")


class SettingsError(ValueError):
    """A RADFUSION_* variable holds a value the service cannot use: it does not start."""


def _parse_int(name: str, raw: str, form: str, minimum: int) -> int:
    # Plain ASCII digits only: int() would also take "1_000" and other scripts' digits.
    if not re.fullmatch(r"[0-9]+", raw.strip()):
        raise SettingsError(f"{name}: expected {form}, got {raw!r}")
    value = int(raw)
    if value < minimum:
        raise SettingsError(f"{name}: expected {form}, got {raw!r}")
    return value


def byte_count(name: str, raw: str) -> int:
    return _parse_int(name, raw, "an integer number of bytes", 1)


def positive_int(name: str, raw: str) -> int:
    return _parse_int(name, raw, "a positive integer", 1)


def count_or_zero(name: str, raw: str) -> int:
    return _parse_int(name, raw, "an integer >= 0 (0: the runtime's choice)", 0)


def refine_windows(name: str, raw: str) -> int:
    form = f"0 (no second pass) or an integer >= {REFINE_MIN_WINDOWS}"
    value = _parse_int(name, raw, form, 0)
    if 0 < value < REFINE_MIN_WINDOWS:
        raise SettingsError(f"{name}: expected {form}, got {raw!r}")
    return value


def seconds(name: str, raw: str) -> int:
    return _parse_int(name, raw, "a positive integer number of seconds", 1)


def on_off(name: str, raw: str) -> bool:
    value = raw.lower()
    if value not in ("on", "off"):
        raise SettingsError(f"{name}: expected 'on' or 'off', got {raw!r}")
    return value == "on"


def positive_seconds(name: str, raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not value > 0 or value == float("inf"):
        raise SettingsError(f"{name}: expected a positive number of seconds, got {raw!r}")
    return value


def hours_or_forever(name: str, raw: str) -> float | None:
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if value != value or value == float("inf"):
        raise SettingsError(f"{name}: expected a number of hours (negative: kept for ever), got {raw!r}")
    return None if value < 0 else value


def tcp_port(name: str, raw: str) -> int:
    value = _parse_int(name, raw, "a TCP port (1-65535)", 1)
    if value > 65535:
        raise SettingsError(f"{name}: expected a TCP port (1-65535), got {raw!r}")
    return value


def host(name: str, raw: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9.:_-]+", raw.strip()):
        raise SettingsError(f"{name}: expected a host name or IP address, got {raw!r}")
    return raw.strip()


def ae_title(name: str, raw: str) -> str:
    # PS3.5 AE VR: 1-16 characters of the default repertoire, no backslash or control
    # characters, not only spaces.
    title = raw.strip()
    if not re.fullmatch(r"[\x20-\x5b\x5d-\x7e]{1,16}", title):
        raise SettingsError(
            f"{name}: expected an AE title (1-16 printable ASCII characters, no backslash), got {raw!r}"
        )
    return title


def ae_titles(name: str, raw: str) -> tuple[str, ...]:
    return tuple(ae_title(name, part) for part in raw.split(",") if part.strip())


# AET@HOST:PORT, as the listener's destinations are written (serving.pacs.send.DicomPeer).
PEER_PATTERN = r"([^@]{1,16})@([^:@]+):([0-9]{1,5})"


def dicom_peers(name: str, raw: str) -> tuple[str, ...]:
    """Comma-separated AET@HOST:PORT destinations, each checked as the sender parses it."""
    peers = []
    for part in (p.strip() for p in raw.split(",")):
        match = re.fullmatch(PEER_PATTERN, part)
        if not match or not 0 < int(match[3]) <= 65535:
            raise SettingsError(f"{name}: expected AET@HOST:PORT (comma-separated), got {part!r}")
        ae_title(name, match[1])
        peers.append(part)
    return tuple(peers)


def one_of(*choices: str) -> Callable[[str, str], str]:
    def parse(name: str, raw: str) -> str:
        value = raw.strip().lower()
        if value not in choices:
            raise SettingsError(f"{name}: expected one of {', '.join(choices)}, got {raw!r}")
        return value

    return parse


def optional_path(name: str, raw: str) -> str | None:
    return raw or None


def url_list(name: str, raw: str) -> tuple[str, ...]:
    urls = tuple(u.strip() for u in raw.split(",") if u.strip())
    try:
        DicomwebPolicy(allowed=urls)
    except ValueError as exc:
        # The value itself is not echoed: a URL with user:password@ would put the
        # credentials in the start-up log.
        raise SettingsError(
            f"{name}: expected comma-separated DICOMweb root URLs (http(s)://host[:port]/path): {exc}"
        ) from None
    return urls


def dicomweb_root(name: str, raw: str) -> str:
    """One DICOMweb root URL, checked as the trusted client will use it."""
    try:
        return DicomwebPolicy.trusted().check_url(raw)
    except ValueError as exc:
        # Not echoed: a URL with user:password@ would put the credentials in the start-up log.
        raise SettingsError(f"{name}: expected a DICOMweb root URL (http(s)://host[:port]/path): {exc}") from None


def secret(name: str, raw: str) -> str | None:
    return raw or None


def readable_file(name: str, raw: str) -> str | None:
    path = Path(raw)
    if not path.is_file() or not os.access(path, os.R_OK):
        raise SettingsError(f"{name}: no readable file at {raw!r}")
    return raw


def _setting(env: str, parse: Callable[[str, str], _T], default: _T, meaning: str, flag: str = "") -> _T:
    """A dataclass field read from ``env`` with ``parse`` (unset or blank: ``default``);
    ``meaning`` is its line in docs/settings.md; ``flag``: the command-line option that
    overrides it (the listener's)."""
    return field(default=default, metadata={"env": env, "parse": parse, "meaning": meaning, "flag": flag})


@dataclass(frozen=True)
class DeclaredSettings:
    """What BentoML needs when the service classes are declared."""

    batching: bool = _setting(
        "RADFUSION_BATCHING",
        on_off,
        True,
        "on: concurrent model calls share ONNX Runtime runs; off: one call a run (benchmark baseline)",
    )
    max_batch_size: int = _setting(
        "RADFUSION_MAX_BATCH_SIZE", positive_int, 32, "most cases in one ONNX Runtime call of the model service"
    )
    max_latency_ms: int = _setting(
        "RADFUSION_MAX_LATENCY_MS",
        positive_int,
        2000,
        "longest a case waits in the model service's queue for its run before it is shed (503); "
        "the hop there is not counted",
    )
    request_timeout_s: int = _setting(
        "RADFUSION_REQUEST_TIMEOUT_S", seconds, 300, "BentoML's limit for one HTTP request"
    )


@dataclass(frozen=True)
class LaunchSettings:
    """What `radfusion serve` (and a bento) reads before its services start: the model,
    where it runs, who may call it (radfusion.serving.http.auth, serving.modelref)."""

    model: str | None = _setting(
        "RADFUSION_MODEL",
        optional_path,
        None,
        "ONNX file or BentoML model tag the service loads (radfusion serve --model sets it; none: the latest export)",
    )
    device: str = _setting(
        "RADFUSION_DEVICE",
        one_of("auto", "cpu", "cuda"),
        "auto",
        "where ONNX Runtime runs the model (auto: the GPU when its provider works)",
    )
    api_tokens: str | None = _setting(
        "RADFUSION_API_TOKENS", secret, None, "API tokens the service accepts, comma-separated (rotate: old and new)"
    )
    api_tokens_file: str | None = _setting(
        "RADFUSION_API_TOKENS_FILE", readable_file, None, "a file of API tokens, one per line (# comments)"
    )
    auth: str = _setting(
        "RADFUSION_AUTH",
        one_of("on", "off"),
        "on",
        "off: no tokens, loopback clients only (development); on without a token: radfusion serve makes one",
    )


@dataclass(frozen=True)
class StudySettings:
    """What reading one study may cost, and where its patient's genomics and clinical
    rows come from: the same variables for the HTTP service and the DICOM listener."""

    max_study_bytes: int = _setting(
        "RADFUSION_MAX_STUDY_BYTES",
        byte_count,
        DEFAULT_MAX_STUDY_BYTES,
        "uncompressed bytes one study may unpack or fetch to (413 beyond it)",
    )
    max_study_files: int = _setting(
        "RADFUSION_MAX_STUDY_FILES",
        positive_int,
        DEFAULT_MAX_MEMBERS,
        "files one study may hold (for the service also: file fields one request may carry)",
    )
    study_max_voxels: int = _setting(
        "RADFUSION_STUDY_MAX_VOXELS",
        positive_int,
        StudyBudget.max_voxels,
        "voxels of one study's series resampled to the model's grid, refused from its headers (413 beyond it)",
    )
    study_max_decoded_bytes: int = _setting(
        "RADFUSION_STUDY_MAX_DECODED_BYTES",
        byte_count,
        StudyBudget.max_decoded_bytes,
        "bytes one study's chosen series decodes to, refused from its headers (413 beyond it)",
    )
    # Below the service's request timeout: the caller has its 504 by then, but the
    # reading thread only stops at this budget.
    study_max_seconds: int = _setting(
        "RADFUSION_STUDY_MAX_SECONDS",
        seconds,
        240,
        "longest one study may take to read and preprocess (413 beyond it)",
    )
    genomics_table: str | None = _setting(
        "RADFUSION_GENOMICS_TABLE",
        readable_file,
        None,
        "genomics table (Parquet/CSV) for studies that arrive alone (STOW-RS, C-STORE), looked up by PatientID",
        "--genomics",
    )
    clinical_table: str | None = _setting(
        "RADFUSION_CLINICAL_TABLE",
        readable_file,
        None,
        "clinical table (patient_id + the model's covariates) for studies that arrive alone, looked up by PatientID",
        "--clinical",
    )

    def study_budget(self) -> StudyBudget:
        """What reading one uploaded, fetched or received study may cost (radfusion.limits)."""
        return StudyBudget(
            max_files=self.max_study_files,
            max_bytes=self.max_study_bytes,
            max_decoded_bytes=self.study_max_decoded_bytes,
            max_voxels=self.study_max_voxels,
            max_seconds=float(self.study_max_seconds),
        )


@dataclass(frozen=True)
class ServiceSettings(StudySettings):
    """Everything else the service reads from the environment, read at start."""

    max_upload_bytes: int = _setting(
        "RADFUSION_MAX_UPLOAD_BYTES", byte_count, 1024**3, "largest request body accepted (413 beyond it)"
    )
    max_json_bytes: int = _setting(
        "RADFUSION_MAX_JSON_BYTES",
        byte_count,
        16 * 1024**2,
        "largest JSON request body or JSON form field (genomics, clinical, cases; 413 beyond it)",
    )
    header_timeout_s: int = _setting(
        "RADFUSION_HEADER_TIMEOUT_S",
        seconds,
        20,
        "longest a client may take to send a request's headers, or stay silent within its body (408)",
    )
    max_in_flight: int = _setting(
        "RADFUSION_MAX_IN_FLIGHT",
        positive_int,
        64,
        "requests in progress per worker; beyond it 503 + Retry-After at once",
    )
    retry_after_s: int = _setting("RADFUSION_RETRY_AFTER_S", seconds, 2, "the Retry-After of a 503")
    max_batch_cases: int = _setting(
        "RADFUSION_MAX_BATCH_CASES", positive_int, 64, "cases in one /predict/batch request"
    )
    ort_threads: int = _setting(
        "RADFUSION_ORT_THREADS",
        count_or_zero,
        0,
        "ONNX Runtime intra-op threads (0: as the model records, else its default)",
    )
    ort_spinning: str = _setting(
        "RADFUSION_ORT_SPINNING",
        one_of("off", "on", "recorded"),
        "off",
        "whether ONNX Runtime's idle intra-op threads spin (recorded: as the model records; "
        "off: they sleep, leaving the cores to the service's other threads)",
    )
    prepare_concurrency: int = _setting(
        "RADFUSION_PREPARE_CONCURRENCY",
        positive_int,
        4,
        "cases of one batch request read at once (threads; DICOMweb fetches wait on the network)",
    )
    model_socket: str = _setting(
        "RADFUSION_MODEL_SOCKET",
        one_of("on", "off"),
        "on",
        "whether the API service calls the model over the model service's Unix socket "
        "(radfusion.serving.http.model_socket; off: over its HTTP API)",
    )
    model_call_timeout_s: int = _setting(
        "RADFUSION_MODEL_CALL_TIMEOUT_S", seconds, 60, "longest wait for the model service's answer"
    )
    # /predict?explain: at most 1 + max_features + max_windows model rows per explanation.
    explain_top_genes: int = _setting(
        "RADFUSION_EXPLAIN_TOP_GENES", positive_int, ExplainSettings.top_genes, "genes listed in an explanation"
    )
    explain_max_features: int = _setting(
        "RADFUSION_EXPLAIN_MAX_FEATURES",
        positive_int,
        ExplainSettings.max_features,
        "genomic features occluded per explanation (model rows)",
    )
    explain_max_windows: int = _setting(
        "RADFUSION_EXPLAIN_MAX_WINDOWS",
        positive_int,
        ExplainSettings.max_windows,
        "image windows occluded per explanation (model rows)",
    )
    explain_refine_windows: int = _setting(
        "RADFUSION_EXPLAIN_REFINE_WINDOWS",
        refine_windows,
        ExplainSettings.refine_windows,
        "half-size image windows of the second pass around the strongest window (model rows; 0: none)",
    )
    explain_batch: int = _setting(
        "RADFUSION_EXPLAIN_BATCH",
        positive_int,
        ExplainSettings.batch_size,
        "rows per ONNX Runtime call while explaining",
    )
    explain_concurrency: int = _setting(
        "RADFUSION_EXPLAIN_CONCURRENCY", positive_int, 1, "explanations computed at once, beside the batcher"
    )
    dicomweb_allowed_urls: tuple[str, ...] = _setting(
        ALLOWED_URLS_ENV, url_list, (), "DICOMweb roots that /predict may fetch referenced studies from (none: refused)"
    )
    dicomweb_timeout_s: int = _setting(
        "RADFUSION_DICOMWEB_TIMEOUT_S", seconds, DEFAULT_TIMEOUT_S, "longest a DICOMweb fetch or store may take"
    )
    public_url: str | None = _setting(
        "RADFUSION_PUBLIC_URL",
        dicomweb_root,
        None,
        "the service's root URL as clients reach it, for the RetrieveURL of STOW-RS answers (none: from the "
        "request's Host header, with the listening port when that header names none)",
    )
    result_dir: str | None = _setting(
        "RADFUSION_RESULT_DIR",
        optional_path,
        None,
        "folder of the STOW-RS results (prediction SRs) that WADO-RS retrieves, kept across restarts "
        "(none: radfusion-results in the system's temporary folder)",
    )
    result_keep_hours: int = _setting(
        "RADFUSION_RESULT_KEEP_HOURS", positive_int, 168, "hours a STOW-RS result is kept for WADO-RS"
    )
    result_max_bytes: int = _setting(
        "RADFUSION_RESULT_MAX_BYTES", byte_count, 1024**3, "size of the kept STOW-RS results; beyond it the oldest go"
    )
    result_stow_url: str | None = _setting(
        "RADFUSION_RESULT_STOW_URL",
        dicomweb_root,
        None,
        "DICOMweb root (a PACS) that each STOW-RS study's SR is stored back to (none: kept here only)",
    )
    result_saliency: bool = _setting(
        "RADFUSION_RESULT_SALIENCY",
        on_off,
        False,
        "also write each STOW-RS study's saliency as a DICOM Parametric Map on the scored series, kept and sent "
        "with its SR (costs up to 1 + RADFUSION_EXPLAIN_MAX_WINDOWS model rows per study)",
    )
    result_stow_token: str | None = _setting(
        "RADFUSION_RESULT_STOW_TOKEN", secret, None, "bearer token sent with the SR to RADFUSION_RESULT_STOW_URL"
    )

    @property
    def explain(self) -> ExplainSettings:
        return ExplainSettings(
            top_genes=self.explain_top_genes,
            max_features=self.explain_max_features,
            max_windows=self.explain_max_windows,
            batch_size=self.explain_batch,
            refine_windows=self.explain_refine_windows,
        )

    def dicomweb_policy(self) -> DicomwebPolicy:
        """The allow-listed policy of DICOMweb references sent by callers."""
        return DicomwebPolicy(
            self.dicomweb_allowed_urls, float(self.dicomweb_timeout_s), self.max_study_bytes, self.max_study_files
        )

    def result_folder(self) -> Path:
        return Path(self.result_dir) if self.result_dir else Path(tempfile.gettempdir()) / "radfusion-results"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ServiceSettings:
        return _from_env(cls, environ)


@dataclass(frozen=True)
class ListenerSettings(StudySettings):
    """``radfusion listen``: each setting from its RADFUSION_* variable, overridden by its
    flag. The study budget and patient tables are the service's variables."""

    ae_title: str = _setting(
        "RADFUSION_LISTEN_AE_TITLE", ae_title, "RADFUSION", "this listener's AE title", "--ae-title"
    )
    host: str = _setting("RADFUSION_LISTEN_HOST", host, "127.0.0.1", "address to listen on (0.0.0.0 for all)", "--host")
    port: int = _setting("RADFUSION_LISTEN_PORT", tcp_port, 11112, "DICOM port", "--port")
    allow_aet: tuple[str, ...] = _setting(
        "RADFUSION_LISTEN_ALLOW_AET",
        ae_titles,
        (),
        "calling AE titles allowed to associate, comma-separated (flag: repeat; none: any)",
        "--allow-aet",
    )
    quiet_seconds: float = _setting(
        "RADFUSION_LISTEN_QUIET_SECONDS",
        positive_seconds,
        30.0,
        "a study is complete after this long without a new instance (counted from the start for what arrived before)",
        "--quiet-seconds",
    )
    max_wait_seconds: float = _setting(
        "RADFUSION_LISTEN_MAX_WAIT_SECONDS",
        positive_seconds,
        600.0,
        "a quiet study whose headers show missing instances waits this long for them, then is scored with what "
        "arrived and its SR says so",
        "--max-wait-seconds",
    )
    report_failures: bool = _setting(
        "RADFUSION_LISTEN_REPORT_FAILURES",
        on_off,
        True,
        "on: send the PACS an SR saying why a study has no result",
        "--report-failures",
    )
    keep_hours: float | None = _setting(
        "RADFUSION_LISTEN_KEEP_HOURS",
        hours_or_forever,
        cast("float | None", 24.0),
        "received instances and SR files are deleted this many hours after the study's result was sent or ran out "
        "of attempts (0: at once; negative: kept for ever; applied to what earlier runs kept)",
        "--keep-hours",
    )
    send_to: tuple[str, ...] = _setting(
        "RADFUSION_LISTEN_SEND_TO",
        dicom_peers,
        (),
        "DICOM peers (AET@HOST:PORT, comma-separated; flag: repeat) each SR is C-STOREd to",
        "--send-to",
    )
    stow_url: str | None = _setting(
        "RADFUSION_LISTEN_STOW_URL", dicomweb_root, None, "DICOMweb root each SR is STOW-RS'd to", "--stow-url"
    )
    stow_token: str | None = _setting(
        "RADFUSION_STOW_TOKEN", secret, None, "bearer token sent with the SR to the STOW-RS destination"
    )
    send_saliency: bool = _setting(
        "RADFUSION_LISTEN_SEND_SALIENCY",
        on_off,
        False,
        "on: send a saliency map (DICOM Parametric Map on the scored series) with each SR (up to 1 + "
        "RADFUSION_LISTEN_SALIENCY_WINDOWS model rows per study)",
        "--send-saliency",
    )
    saliency_windows: int = _setting(
        "RADFUSION_LISTEN_SALIENCY_WINDOWS",
        positive_int,
        ExplainSettings.max_windows,
        "occlusion windows of the saliency map",
        "--saliency-windows",
    )
    on_resend: str = _setting(
        "RADFUSION_LISTEN_ON_RESEND",
        one_of("ignore", "rescore"),
        "ignore",
        "instances of a scored study received again: ignore them or score it again as a new SR version "
        "(instances it did not have always re-score it)",
        "--on-resend",
    )
    max_attempts: int = _setting(
        "RADFUSION_LISTEN_MAX_ATTEMPTS",
        positive_int,
        5,
        "attempts to score and send before a study fails",
        "--max-attempts",
    )
    retry_seconds: float = _setting(
        "RADFUSION_LISTEN_RETRY_SECONDS",
        positive_seconds,
        10.0,
        "first retry delay; doubles each attempt up to RADFUSION_LISTEN_RETRY_CAP_SECONDS",
        "--retry-seconds",
    )
    retry_cap_seconds: float = _setting(
        "RADFUSION_LISTEN_RETRY_CAP_SECONDS", positive_seconds, 600.0, "longest retry delay", "--retry-cap-seconds"
    )
    poll_seconds: float = _setting(
        "RADFUSION_LISTEN_POLL_SECONDS", positive_seconds, 1.0, "how often pending work is checked", "--poll-seconds"
    )
    device: str = _setting(
        "RADFUSION_LISTEN_DEVICE",
        one_of("auto", "cpu", "cuda"),
        "auto",
        "where ONNX Runtime runs the model (auto: the GPU when its provider works)",
        "--device",
    )

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, flags: Mapping[str, str | bool | list[str]] | None = None
    ) -> ListenerSettings:
        """The variables of ``environ``, then the ``flags`` given (field name -> the raw
        flag value; a repeated flag's values, a switch's bool), each parsed as its
        variable is; a bad flag's error names the flag."""
        settings = _from_env(cls, environ)
        values: dict[str, Any] = {}
        by_name = {f.name: f for f in fields(cls)}
        for name, raw in (flags or {}).items():
            f = by_name[name]
            if isinstance(raw, bool):
                values[name] = raw
            else:
                text = ",".join(raw) if isinstance(raw, list) else raw
                values[name] = f.metadata["parse"](f.metadata["flag"], text.strip()) if text.strip() else f.default
        return replace(settings, **values)


# RADFUSION_* variables read outside the service and the listener: named, so that
# `radfusion settings --check` can tell a typo from a setting.
OTHER_VARIABLES = {
    "RADFUSION_CACHE_DIR": "where caches go (default $XDG_CACHE_HOME/radfusion, else ~/.cache/radfusion)",
    "RADFUSION_DEID_KEY": "radfusion deid's secret key (pseudonyms, date shifts)",
    "RADFUSION_UNLOCKED": "scripts/bootstrap.sh: 1 resolves today's versions instead of requirements/lock.txt",
    "RADFUSION_SCORER_COMMIT_DELAY_S": "tests only: a pause before each committed part of the scorer",
    "RADFUSION_LAUNCHER_PID": "set by radfusion itself: the process a server stops with",
    "RADFUSION_EVIDENCE_SEED": "tests only: the evidence tests' cohort seed",
}


def check_environment(environ: Mapping[str, str] | None = None) -> list[str]:
    """Every problem with this environment's RADFUSION_* variables, one line each: a
    value a setting cannot use, or a name radfusion does not read (with the nearest
    one, a typo's likely meaning)."""
    import difflib

    environ = os.environ if environ is None else environ
    problems = []
    known = set(OTHER_VARIABLES)
    for cls in (LaunchSettings, DeclaredSettings, ServiceSettings, ListenerSettings):
        for f in fields(cls):
            name = f.metadata["env"]
            known.add(name)
            raw = environ.get(name, "").strip()
            if raw:
                try:
                    f.metadata["parse"](name, raw)
                except SettingsError as exc:
                    problems.append(str(exc))
    for name in sorted(k for k in environ if k.startswith("RADFUSION_") and k not in known):
        near = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.8)
        problems.append(f"{name}: not a radfusion setting" + (f" (did you mean {near[0]}?)" if near else ""))
    return list(dict.fromkeys(problems))  # a shared study variable is reported once


def declared_from_env(environ: Mapping[str, str] | None = None) -> DeclaredSettings:
    return _from_env(DeclaredSettings, environ)


def launch_from_env(environ: Mapping[str, str] | None = None) -> LaunchSettings:
    return _from_env(LaunchSettings, environ)


def _from_env(cls: type[_S], environ: Mapping[str, str] | None) -> _S:
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for f in fields(cls):
        raw = environ.get(f.metadata["env"], "").strip()
        if raw:
            values[f.name] = f.metadata["parse"](f.metadata["env"], raw)
    return cls(**values)


def shown_default(value: object) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    return "none" if value in (None, ()) else str(value)


def listener_only_fields() -> list:
    """The listener's own settings (those beyond the study settings it shares)."""
    shared = {f.name for f in fields(StudySettings)}
    return [f for f in fields(ListenerSettings) if f.name not in shared]


def settings_markdown() -> str:
    """docs/settings.md: every setting of the HTTP service and the listener, from the
    dataclasses above."""
    lines = [
        "# Settings of the HTTP service and the DICOM listener",
        "",
        "Generated from `radfusion.serving.settings` by `radfusion settings --markdown`; do not edit.",
        "Read from the environment when the process starts (the service's first four when its classes",
        "are declared); a value that cannot be used stops it with the variable's name.",
        "`radfusion settings --check` reads this environment's variables the same way.",
        "",
        "## HTTP service (`radfusion serve`, the bento)",
        "",
        "The study rows (`RADFUSION_MAX_STUDY_*`, `RADFUSION_STUDY_*`, the two tables) are read by the",
        "listener too.",
        "",
        "| variable | default | meaning |",
        "|---|---|---|",
    ]
    for cls in (LaunchSettings, DeclaredSettings, ServiceSettings):
        for f in fields(cls):
            lines.append(f"| `{f.metadata['env']}` | {shown_default(f.default)} | {f.metadata['meaning']} |")
    lines += [
        "",
        "## DICOM listener (`radfusion listen`)",
        "",
        "A flag given on the command line overrides its variable.",
        "",
        "| variable | flag | default | meaning |",
        "|---|---|---|---|",
    ]
    for f in listener_only_fields():
        flag = f"`{f.metadata['flag']}`" if f.metadata["flag"] else ""
        lines.append(f"| `{f.metadata['env']}` | {flag} | {shown_default(f.default)} | {f.metadata['meaning']} |")
    return "\n".join(lines) + "\n"
