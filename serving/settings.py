"""The HTTP service's settings: one dataclass, read from RADFUSION_* environment
variables when the service starts (``ServiceSettings.from_env()`` in its ``__init__``),
never when a module is imported, so that importing the service (tests, `bentoml build`,
the import checker) does not depend on the environment.

Every bad value fails at start with an error that names the variable and the form it
expects, e.g. ``RADFUSION_MAX_UPLOAD_BYTES: expected an integer number of bytes, got '2G'``.

Four values shape the BentoML declarations themselves (the model API's adaptive
batching and the services' request timeout): BentoML fixes those when the service class
is declared, so ``declared_from_env()`` reads just these four, once, at that point."""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

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


def _setting(env: str, parse: Callable[[str, str], _T], default: _T, meaning: str) -> _T:
    """A dataclass field read from ``env`` with ``parse`` (unset or blank: ``default``);
    ``meaning`` is its line in docs/settings.md."""
    return field(default=default, metadata={"env": env, "parse": parse, "meaning": meaning})


@dataclass(frozen=True)
class DeclaredSettings:
    """What BentoML needs when the service classes are declared."""

    batching: bool = _setting(
        "RADFUSION_BATCHING",
        on_off,
        True,
        "on: adaptive batching of model calls; off: each request alone (benchmark baseline)",
    )
    max_batch_size: int = _setting(
        "RADFUSION_MAX_BATCH_SIZE", positive_int, 32, "most cases in one ONNX Runtime call of the model service"
    )
    max_latency_ms: int = _setting(
        "RADFUSION_MAX_LATENCY_MS",
        positive_int,
        2000,
        "longest a case waits for its batch before the model service sheds it (503)",
    )
    request_timeout_s: int = _setting(
        "RADFUSION_REQUEST_TIMEOUT_S", seconds, 300, "BentoML's limit for one HTTP request"
    )


@dataclass(frozen=True)
class ServiceSettings:
    """Everything else the service reads from the environment, read at start."""

    max_upload_bytes: int = _setting(
        "RADFUSION_MAX_UPLOAD_BYTES", byte_count, 1024**3, "largest request body accepted (413 beyond it)"
    )
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
        "files one study may hold (and file fields one request may carry)",
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
    # Below the request timeout: the caller has its 504 by then, but the reading thread
    # only stops at this budget.
    study_max_seconds: int = _setting(
        "RADFUSION_STUDY_MAX_SECONDS",
        seconds,
        240,
        "longest one study may take to read and preprocess (413 beyond it)",
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
        "RADFUSION_ORT_THREADS", count_or_zero, 0, "ONNX Runtime intra-op threads (0: its default)"
    )
    prepare_concurrency: int = _setting(
        "RADFUSION_PREPARE_CONCURRENCY",
        positive_int,
        4,
        "cases of one batch request read at once (threads; DICOMweb fetches wait on the network)",
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
    genomics_table: str | None = _setting(
        "RADFUSION_GENOMICS_TABLE", optional_path, None, "genomics table for STOW-RS studies, looked up by PatientID"
    )
    clinical_table: str | None = _setting(
        "RADFUSION_CLINICAL_TABLE", optional_path, None, "clinical table for STOW-RS studies, looked up by PatientID"
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

    def study_budget(self) -> StudyBudget:
        """What reading one uploaded or fetched study may cost (radfusion.limits)."""
        return StudyBudget(
            max_files=self.max_study_files,
            max_bytes=self.max_study_bytes,
            max_decoded_bytes=self.study_max_decoded_bytes,
            max_voxels=self.study_max_voxels,
            max_seconds=float(self.study_max_seconds),
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


def declared_from_env(environ: Mapping[str, str] | None = None) -> DeclaredSettings:
    return _from_env(DeclaredSettings, environ)


def _from_env(cls: type[_S], environ: Mapping[str, str] | None) -> _S:
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for f in fields(cls):
        raw = environ.get(f.metadata["env"], "").strip()
        if raw:
            values[f.name] = f.metadata["parse"](f.metadata["env"], raw)
    return cls(**values)


def settings_markdown() -> str:
    """docs/settings.md: every setting of the HTTP service, from the dataclasses above."""
    lines = [
        "# HTTP service settings",
        "",
        "Generated from `radfusion.serving.settings` by `radfusion settings --markdown`; do not edit.",
        "Read from the environment when the service starts (the first four when its classes are",
        "declared); a value the service cannot use stops it with the variable's name.",
        "",
        "| variable | default | meaning |",
        "|---|---|---|",
    ]
    for cls in (DeclaredSettings, ServiceSettings):
        for f in fields(cls):
            default = f.default
            shown = "on" if default is True else "none" if default in (None, ()) else str(default)
            lines.append(f"| `{f.metadata['env']}` | {shown} | {f.metadata['meaning']} |")
    return "\n".join(lines) + "\n"
