"""The BentoML HTTP service.

Two services: ``RadfusionModel`` holds the ONNX session and exposes one batchable API
(adaptive batching across concurrent requests); ``Radfusion`` is the public API that
turns an uploaded study + genomics into model inputs with the one shared preprocessing
(radfusion.predictor.prepare_case) and asks the model service for probabilities.

    RADFUSION_MODEL=model.onnx bentoml serve serving.service:Radfusion

Endpoints: POST /predict, GET|POST /contract, POST /dicom-web/studies (STOW-RS input),
plus BentoML's /readyz, /livez, /metrics. Bad input is answered 4xx with
{"error": <kind>, "detail": <reason>}; never a 500. No patient names, IDs or UIDs are
logged.

Safety (ASGI middleware, outermost first): token auth (serving.auth, 401), load
shedding (serving.overload, 503 + Retry-After), body size limit (serving.limits, 413);
BentoML's traffic timeout answers 504. SIGTERM drains in-flight requests
(serving.drain). Tuning, all from the environment at start: RADFUSION_MAX_BATCH_SIZE,
RADFUSION_MAX_LATENCY_MS, RADFUSION_BATCHING=off, RADFUSION_REQUEST_TIMEOUT_S,
RADFUSION_MAX_IN_FLIGHT, RADFUSION_RETRY_AFTER_S; RADFUSION_GENOMICS_TABLE for the
genomics of STOW-RS studies (looked up by PatientID)."""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import tempfile
import time
import traceback
import typing as t
from pathlib import Path

import anyio
import bentoml
import numpy as np
from bentoml.exceptions import ServiceUnavailable
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from radfusion.contract import ModelContract, read_contract_from_onnx
from radfusion.errors import RadfusionInputError
from radfusion.predictor import PreparedCase, format_prediction, pack, prepare_case, unpack
from radfusion.runtime import OnnxModel
from serving.auth import TokenAuth, auth_required_from_env, tokens_from_env
from serving.drain import defer_shutdown_until_callers_exit, keep_sockets_until_workers_stop
from serving.hardening import forbid_url_fetch_for_file_fields
from serving.limits import BodySizeLimit
from serving.modelref import MODEL_ENV, device_from_env, looks_like_tag, model_ref_from_env, resolve_model_path
from serving.overload import InFlightLimit
from serving.pacs.predict import GenomicsLookup, genomics_source, patient_id_of
from serving.stow import boundary_of, split_parts
from serving.uploads import DEFAULT_MAX_MEMBERS, DEFAULT_MAX_STUDY_BYTES, limit_from_env, remove_tree, study_files

# Under "bentoml" so that `bentoml serve` shows these lines with its own.
log = logging.getLogger("bentoml.radfusion")

MAX_REQUEST_BYTES = limit_from_env("RADFUSION_MAX_UPLOAD_BYTES", 1024**3)
MAX_STUDY_BYTES = limit_from_env("RADFUSION_MAX_STUDY_BYTES", DEFAULT_MAX_STUDY_BYTES)
MAX_STUDY_FILES = limit_from_env("RADFUSION_MAX_STUDY_FILES", DEFAULT_MAX_MEMBERS)
MAX_BATCH_SIZE = limit_from_env("RADFUSION_MAX_BATCH_SIZE", 32)
MAX_LATENCY_MS = limit_from_env("RADFUSION_MAX_LATENCY_MS", 2000)
# "off": every request runs the model on its own (the benchmark's baseline).
BATCHING = os.environ.get("RADFUSION_BATCHING", "on").strip().lower() != "off"
REQUEST_TIMEOUT_S = limit_from_env("RADFUSION_REQUEST_TIMEOUT_S", 300)
MAX_IN_FLIGHT = limit_from_env("RADFUSION_MAX_IN_FLIGHT", 64)
RETRY_AFTER_S = limit_from_env("RADFUSION_RETRY_AFTER_S", 2)
GENOMICS_TABLE_ENV = "RADFUSION_GENOMICS_TABLE"
MODEL_CALL_ATTEMPTS = 4
MODEL_CALL_TIMEOUT_S = limit_from_env("RADFUSION_MODEL_CALL_TIMEOUT_S", 60)


def _connection_errors() -> tuple[type[BaseException], ...]:
    import aiohttp
    import httpx

    return (aiohttp.ClientConnectionError, httpx.RemoteProtocolError, httpx.ConnectError)


_CONNECTION_DROPPED = _connection_errors()


class UnprocessableStudyError(RadfusionInputError):
    """The study's files broke the reader in a way it does not name (a malformed file
    it did not anticipate). Still the input's fault as far as the caller can act on it."""

    kind = "unprocessable_study"
    http_status = 422


@functools.lru_cache(maxsize=1)
def served_contract() -> ModelContract:
    """The contract of the model named by RADFUSION_MODEL (read once per process)."""
    return read_contract_from_onnx(resolve_model_path(model_ref_from_env()))


def _bento_model_ref() -> t.Any:
    """Declare the store model when RADFUSION_MODEL is a tag, so a built bento names it."""
    ref = os.environ.get(MODEL_ENV, "").strip()
    return bentoml.models.BentoModel(ref) if ref and looks_like_tag(ref) else None


@functools.lru_cache(maxsize=1)
def _metrics() -> tuple[t.Any, t.Any]:
    """Counters made on first use: BentoML sets the worker's Prometheus multiprocess
    folder after this module is imported, and a counter made before it is never shown."""
    from prometheus_client import Counter

    predictions = Counter("radfusion_predictions", "Predictions served, by the modalities used", ["modalities"])
    rejected = Counter("radfusion_rejected_requests", "Requests refused as bad input, by kind", ["kind"])
    return predictions, rejected


@bentoml.service(name="radfusion_model", workers=1, traffic={"timeout": REQUEST_TIMEOUT_S})
class RadfusionModel:
    """The ONNX model behind adaptive batching. Its one API takes a packed batch
    (radfusion.predictor.pack): BentoML batches exactly one argument."""

    bento_model = _bento_model_ref()

    def __init__(self) -> None:
        path = resolve_model_path(model_ref_from_env())
        self.model = OnnxModel(path, device=device_from_env())
        self.model_contract = self.model.contract
        # The API service may still need this one after SIGTERM: see serving.drain.
        defer_shutdown_until_callers_exit("radfusion_model", max_wait_s=REQUEST_TIMEOUT_S + 30)
        log.info(
            "model %s %s loaded on %s (batching %s)",
            self.model_contract.name, self.model_contract.version, self.model.provider,
            f"up to {MAX_BATCH_SIZE} within {MAX_LATENCY_MS} ms" if BATCHING else "off",
        )

    @bentoml.api(batchable=BATCHING, max_batch_size=MAX_BATCH_SIZE, max_latency_ms=MAX_LATENCY_MS)
    def probabilities(self, packed: np.ndarray) -> np.ndarray:
        image, genomics, presence = unpack(np.asarray(packed, dtype=np.float32), self.model_contract)
        return self.model.run(image, genomics, presence)


def _error_response(exc: RadfusionInputError) -> JSONResponse:
    return JSONResponse(exc.to_dict(), status_code=exc.http_status)


async def _get_contract(_: Request) -> JSONResponse:
    return JSONResponse(served_contract().to_dict())


async def _stow(request: Request) -> JSONResponse:
    service = t.cast("Radfusion", bentoml.get_current_service())
    return await service.predict_stow(request)


# GET /contract (BentoML APIs are POST-only) and STOW-RS (a multipart/related body
# BentoML's typed APIs cannot take) are routes of a small mounted app.
contract_app = Starlette(
    routes=[
        Route("/contract", _get_contract, methods=["GET"]),
        Route("/dicom-web/studies", _stow, methods=["POST"]),
    ]
)


@bentoml.service(name="radfusion", workers=1, traffic={"timeout": REQUEST_TIMEOUT_S})
class Radfusion:
    """Public API: study (zip or DICOM files) + genomics -> prediction."""

    model_service = bentoml.depends(RadfusionModel)

    def __init__(self) -> None:
        self.model_contract = served_contract()
        self.genomics = GenomicsLookup.from_path(os.environ.get(GENOMICS_TABLE_ENV, "").strip() or None)
        self.predictions, self.rejected = _metrics()
        log.info("serving contract of %s %s", self.model_contract.name, self.model_contract.version)

    @bentoml.api(route="/predict")
    async def predict(
        self,
        # BentoML 1.4 cannot make file fields optional (its file validator inside a
        # Union fails), so "no study" is the empty list; never mutated.
        study: list[Path] = [],  # noqa: B006
        genomics: dict[str, t.Any] | None = None,
    ) -> dict[str, t.Any]:
        """``study``: one zip of the study's DICOM files, or the DICOM files themselves
        (repeat the multipart field). ``genomics``: JSON object gene -> value. Either
        may be omitted when the model allows that modality to be missing."""
        started = time.perf_counter()
        try:
            case = await anyio.to_thread.run_sync(self._prepare, study or None, genomics)
        except RadfusionInputError as exc:
            return self._rejected(exc, "predict")  # type: ignore[return-value]
        return await self._predict_case(case, started, "predict")

    async def predict_stow(self, request: Request) -> JSONResponse:
        """POST /dicom-web/studies: the instances of one study as STOW-RS parts, scored
        with the genomics found for its PatientID in RADFUSION_GENOMICS_TABLE (else
        image-only; ``genomics_source`` in the answer says which)."""
        started = time.perf_counter()
        workdir = Path(tempfile.mkdtemp(prefix="radfusion-stow-"))
        try:
            boundary = boundary_of(request.headers.get("content-type", ""))
            body = workdir / "body"
            with open(body, "wb") as out:
                async for chunk in request.stream():
                    out.write(chunk)
            parts = await anyio.to_thread.run_sync(split_parts, body, boundary, workdir / "parts", MAX_STUDY_FILES)
            body.unlink()
            case = await anyio.to_thread.run_sync(functools.partial(self._prepare, parts, None, by_patient=True))
        except RadfusionInputError as exc:
            return self._rejected(exc, "stow")
        finally:
            remove_tree(workdir)
        result = await self._predict_case(case, started, "stow")
        if isinstance(result, JSONResponse):
            return result
        result["genomics_source"] = genomics_source(self.model_contract, "genomics" in case.inputs.modalities_used)
        return JSONResponse(result)

    async def _predict_case(self, case: PreparedCase, started: float, route: str) -> dict[str, t.Any] | JSONResponse:
        try:
            probabilities = await self._infer(pack([case.inputs]))
        except ServiceUnavailable:
            # The model service's batcher sheds load it cannot serve within
            # max_latency_ms: the caller gets the same 503 as from serving.overload.
            log.info("%s shed by the model service (overloaded)", route)
            return JSONResponse(
                {"error": "overloaded", "detail": f"the model is at capacity; retry after {RETRY_AFTER_S} s"},
                status_code=503,
                headers={"Retry-After": str(RETRY_AFTER_S)},
            )
        result = format_prediction(self.model_contract, case, np.asarray(probabilities)[0])
        modalities = "+".join(case.inputs.modalities_used)
        self.predictions.labels(modalities=modalities).inc()
        log.info("%s ok: modalities=%s in %.0f ms", route, modalities, 1000 * (time.perf_counter() - started))
        return result

    def _rejected(self, exc: RadfusionInputError, route: str) -> JSONResponse:
        self.rejected.labels(kind=exc.kind).inc()
        log.info("%s rejected: %s (HTTP %d)", route, exc.kind, exc.http_status)
        return _error_response(exc)

    @bentoml.api(route="/contract")
    def contract(self) -> dict[str, t.Any]:
        """What the model expects: labels, image geometry, gene panel, modalities."""
        return self.model_contract.to_dict()

    def _prepare(
        self, parts: list[Path] | None, genomics: dict[str, t.Any] | None, by_patient: bool = False
    ) -> PreparedCase:
        """``by_patient``: take the genomics from the configured table by the study's
        PatientID (STOW-RS, where a PACS cannot send any)."""
        workdir = Path(tempfile.mkdtemp(prefix="radfusion-upload-"))
        try:
            files = study_files(parts, workdir, MAX_STUDY_BYTES, MAX_STUDY_FILES) if parts else None
            if by_patient and files and self.model_contract.uses_genomics:
                genomics = self.genomics.find(patient_id_of(files))
            return prepare_case(self.model_contract, files, genomics)
        except RadfusionInputError:
            raise
        except Exception as exc:
            # The message may quote header values (names, IDs): log only type and frames.
            log.warning(
                "unanticipated %s while reading a study:\n%s",
                type(exc).__name__,
                "".join(traceback.format_tb(exc.__traceback__)),
            )
            raise UnprocessableStudyError(f"study could not be read ({type(exc).__name__})") from exc
        finally:
            remove_tree(workdir)

    async def _infer(self, packed: np.ndarray) -> np.ndarray:
        """Probabilities from the model service.

        BentoML 1.4's dependency client replaces its HTTP session every 100 calls and
        closes the old one with calls still in flight on it, and its pooled connections
        can outlive the server's keep-alive (BentoML issue #4971); both surface as a
        dropped connection. Under sustained load (bench/serving.py) a call was also
        seen to hang until the 300 s request timeout, so each attempt is bounded by
        RADFUSION_MODEL_CALL_TIMEOUT_S. Inference is idempotent, so such calls are
        retried."""
        for attempt in range(1, MODEL_CALL_ATTEMPTS + 1):
            try:
                return await asyncio.wait_for(
                    self.model_service.to_async.probabilities(packed), timeout=MODEL_CALL_TIMEOUT_S
                )
            except (*_CONNECTION_DROPPED, asyncio.TimeoutError) as exc:
                if attempt == MODEL_CALL_ATTEMPTS:
                    raise
                log.info("model service connection dropped (%s); retrying", type(exc).__name__)
        raise AssertionError("unreachable")


forbid_url_fetch_for_file_fields()
keep_sockets_until_workers_stop()
# Outermost first: a request without a token is refused before it counts as load or
# its body is read.
Radfusion.add_asgi_middleware(TokenAuth, tokens=tokens_from_env(), required=auth_required_from_env())
Radfusion.add_asgi_middleware(InFlightLimit, max_in_flight=MAX_IN_FLIGHT, retry_after_s=RETRY_AFTER_S)
Radfusion.add_asgi_middleware(BodySizeLimit, max_bytes=MAX_REQUEST_BYTES)
Radfusion.mount_asgi_app(contract_app, path="/")
