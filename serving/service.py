"""The BentoML HTTP service.

Two services: ``RadfusionModel`` holds the ONNX session and exposes one batchable API
(adaptive batching across concurrent requests); ``Radfusion`` is the public API that
turns an uploaded study + genomics into model inputs with the one shared preprocessing
(radfusion.predictor.prepare_case) and asks the model service for probabilities.

    RADFUSION_MODEL=model.onnx bentoml serve serving.service:Radfusion

Endpoints: POST /predict, GET|POST /contract, plus BentoML's /readyz, /livez, /metrics.
Bad input is answered 4xx with {"error": <kind>, "detail": <reason>}; never a 500.
No patient names, IDs or UIDs are logged."""

from __future__ import annotations

import functools
import logging
import tempfile
import time
import traceback
import typing as t
from pathlib import Path

import anyio
import bentoml
import numpy as np
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from radfusion.contract import ModelContract, read_contract_from_onnx
from radfusion.errors import RadfusionInputError
from radfusion.predictor import PreparedCase, format_prediction, pack, prepare_case, unpack
from radfusion.runtime import OnnxModel
from serving.hardening import forbid_url_fetch_for_file_fields
from serving.limits import BodySizeLimit
from serving.modelref import device_from_env, looks_like_tag, model_ref_from_env, resolve_model_path
from serving.uploads import DEFAULT_MAX_MEMBERS, DEFAULT_MAX_STUDY_BYTES, limit_from_env, remove_tree, study_files

# Under "bentoml" so that `bentoml serve` shows these lines with its own.
log = logging.getLogger("bentoml.radfusion")

MAX_REQUEST_BYTES = limit_from_env("RADFUSION_MAX_UPLOAD_BYTES", 1024**3)
MAX_STUDY_BYTES = limit_from_env("RADFUSION_MAX_STUDY_BYTES", DEFAULT_MAX_STUDY_BYTES)
MAX_STUDY_FILES = limit_from_env("RADFUSION_MAX_STUDY_FILES", DEFAULT_MAX_MEMBERS)
MAX_BATCH_SIZE = 32
MAX_LATENCY_MS = 2000
MODEL_CALL_ATTEMPTS = 4


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
    import os

    ref = os.environ.get("RADFUSION_MODEL", "").strip()
    return bentoml.models.BentoModel(ref) if ref and looks_like_tag(ref) else None


@bentoml.service(name="radfusion_model", workers=1, traffic={"timeout": 120})
class RadfusionModel:
    """The ONNX model behind adaptive batching. Its one API takes a packed batch
    (radfusion.predictor.pack): BentoML batches exactly one argument."""

    bento_model = _bento_model_ref()

    def __init__(self) -> None:
        path = resolve_model_path(model_ref_from_env())
        self.model = OnnxModel(path, device=device_from_env())
        self.model_contract = self.model.contract
        log.info(
            "model %s %s loaded on %s", self.model_contract.name, self.model_contract.version, self.model.provider
        )

    @bentoml.api(batchable=True, max_batch_size=MAX_BATCH_SIZE, max_latency_ms=MAX_LATENCY_MS)
    def probabilities(self, packed: np.ndarray) -> np.ndarray:
        image, genomics, presence = unpack(np.asarray(packed, dtype=np.float32), self.model_contract)
        return self.model.run(image, genomics, presence)


def _error_response(exc: RadfusionInputError) -> JSONResponse:
    return JSONResponse(exc.to_dict(), status_code=exc.http_status)


async def _get_contract(_: Request) -> JSONResponse:
    return JSONResponse(served_contract().to_dict())


# GET /contract: BentoML APIs are POST-only, so a small app is mounted for the GET.
contract_app = Starlette(routes=[Route("/contract", _get_contract, methods=["GET"])])


@bentoml.service(name="radfusion", workers=1, traffic={"timeout": 300})
class Radfusion:
    """Public API: study (zip or DICOM files) + genomics -> prediction."""

    model_service = bentoml.depends(RadfusionModel)

    def __init__(self) -> None:
        self.model_contract = served_contract()
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
            log.info("predict rejected: %s (HTTP %d)", exc.kind, exc.http_status)
            return _error_response(exc)  # type: ignore[return-value]
        probabilities = await self._infer(pack([case.inputs]))
        result = format_prediction(self.model_contract, case, np.asarray(probabilities)[0])
        log.info(
            "predict ok: modalities=%s in %.0f ms",
            ",".join(case.inputs.modalities_used),
            1000 * (time.perf_counter() - started),
        )
        return result

    @bentoml.api(route="/contract")
    def contract(self) -> dict[str, t.Any]:
        """What the model expects: labels, image geometry, gene panel, modalities."""
        return self.model_contract.to_dict()

    def _prepare(self, parts: list[Path] | None, genomics: dict[str, t.Any] | None) -> PreparedCase:
        workdir = Path(tempfile.mkdtemp(prefix="radfusion-upload-"))
        try:
            files = study_files(parts, workdir, MAX_STUDY_BYTES, MAX_STUDY_FILES) if parts else None
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
        dropped connection. Inference is idempotent, so such a call is retried."""
        for attempt in range(1, MODEL_CALL_ATTEMPTS + 1):
            try:
                return await self.model_service.to_async.probabilities(packed)
            except _CONNECTION_DROPPED as exc:
                if attempt == MODEL_CALL_ATTEMPTS:
                    raise
                log.info("model service connection dropped (%s); retrying", type(exc).__name__)
        raise AssertionError("unreachable")


forbid_url_fetch_for_file_fields()
Radfusion.add_asgi_middleware(BodySizeLimit, max_bytes=MAX_REQUEST_BYTES)
Radfusion.mount_asgi_app(contract_app, path="/")
