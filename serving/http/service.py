"""The BentoML HTTP service.

Two services: ``RadfusionModel`` holds the ONNX session and batches concurrent requests
(radfusion.serving.http.model_batches); ``Radfusion`` is the public API that
turns an uploaded study + genomics into model inputs with the one shared preprocessing
(radfusion.predictor.prepare_case) and asks the model service for probabilities, over
the model service's Unix socket (radfusion.serving.http.model_socket) or, where that
cannot be reached, its HTTP API.

    RADFUSION_MODEL=model.onnx bentoml serve radfusion.serving.http.service:Radfusion

Endpoints: POST /predict (one case: uploaded study or DICOMweb reference, genomics,
clinical; options explain and rank_treatments add the evidence), POST /predict/batch
(many cases in one call, one result or one error each, run through the model
together), GET|POST /contract (the contract: inputs, the missing-data policy, the
features that matter most), POST /dicom-web/studies (STOW-RS: a Store Instances
Response, the prediction SR kept and sent to the PACS) and GET /dicom-web/studies/...
(WADO-RS of those SRs), plus
BentoML's /readyz, /livez, /metrics (ours: radfusion.serving.http.metrics). Bad input is
answered 4xx with {"error": <kind>, "detail": <reason>}; never a 500. No patient names,
IDs or UIDs are logged.

Safety (ASGI middleware, outermost first): token auth (radfusion.serving.http.auth, 401; the service
refuses to start without a token unless RADFUSION_AUTH=off, loopback only), load
shedding (radfusion.serving.http.overload, 503 + Retry-After), body size limit (radfusion.serving.http.limits, 413);
BentoML's traffic timeout answers 504. Requests are parsed with bounds, every
malformed one a 4xx with its kind (radfusion.serving.http.parsing); a request whose
headers are slower than RADFUSION_HEADER_TIMEOUT_S is cut off with 408
(radfusion.serving.http.connections). Every study is read under the settings' budget
(radfusion.limits.StudyBudget) through one boundary, ``_reading_study``. SIGTERM drains
in-flight requests (radfusion.serving.http.drain); a worker whose server died exits
(radfusion.serving.orphans). Tuning: RADFUSION_* environment variables, read and
checked when the service starts (radfusion.serving.settings: limits, batching, timeouts,
the genomics and clinical tables of STOW-RS studies, the DICOMweb allow-list); importing
this module reads none of them except the four BentoML fixes at declaration
(settings.DeclaredSettings)."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import os
import tempfile
import threading
import time
import traceback
import typing as t
from collections.abc import Callable
from pathlib import Path

import anyio
import bentoml
import numpy as np
from bentoml.exceptions import BadInput, ServiceUnavailable
from bentoml.validators import ContentType
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from radfusion import log_privacy
from radfusion.contract import ModelContract, read_contract_from_onnx
from radfusion.errors import RadfusionInputError, UnprocessableStudyError, input_error
from radfusion.explain import ExplainSettings, case_image_saliency, explain_case
from radfusion.prediction import NonFiniteOutputError, Prediction
from radfusion.predictor import (
    PreparedCase,
    format_prediction,
    pack,
    packed_width,
    prepare_case,
    unpack,
    unpack_case,
)
from radfusion.runtime import OnnxModel
from radfusion.serving.dicomweb import DicomwebRef, fetch_study
from radfusion.serving.http import connections
from radfusion.serving.http.auth import TokenAuth, auth_off_from_env, check_auth_config, tokens_from_env
from radfusion.serving.http.cases import (
    CaseRequest,
    ConflictingStudyError,
    batch_cases,
    error_entry,
    upload_problems,
)
from radfusion.serving.http.drain import defer_shutdown_until_callers_exit, keep_sockets_until_workers_stop
from radfusion.serving.http.hardening import forbid_url_fetch_for_file_fields
from radfusion.serving.http.limits import BodySizeLimit
from radfusion.serving.http.metrics import count_refusal, service_metrics
from radfusion.serving.http.model_batches import ModelBatches
from radfusion.serving.http.model_socket import ModelCalls, ModelSocketDropped, ModelSocketServer
from radfusion.serving.http.overload import InFlightLimit, OverloadedError, overloaded
from radfusion.serving.http.parsing import ParseLimits, answer_input_errors, strict_parsing
from radfusion.serving.http.results import ResultStore
from radfusion.serving.http.store_response import (
    CANNOT_UNDERSTAND,
    PROCESSING_FAILURE,
    STUDY_MISMATCH,
    StoreOutcome,
    failure_reason,
)
from radfusion.serving.http.stow import (
    DICOM_JSON,
    Instance,
    boundary_of,
    check_accepts_json,
    group_by_study,
    split_parts,
)
from radfusion.serving.http.stow_results import Headers, ResultDestination, ResultWriter, read_headers
from radfusion.serving.http.wado import check_accepts_dicom, multipart_dicom
from radfusion.serving.modelref import (
    MODEL_ENV,
    device_from_env,
    looks_like_tag,
    model_ref_from_env,
    resolve_model_path,
)
from radfusion.serving.orphans import exit_with_parent, stop_with_launcher
from radfusion.serving.patients import (
    PatientData,
    PatientDataMissingError,
    PatientTableError,
    PatientTables,
    patient_id_of,
)
from radfusion.serving.reports.facts import prediction_facts
from radfusion.serving.settings import ServiceSettings, declared_from_env
from radfusion.serving.study_files import remove_tree, study_files
from radfusion.treatment import TreatmentRanking, ranks_treatments

# Under "bentoml" so that `bentoml serve` shows these lines with its own.
log = logging.getLogger("bentoml.radfusion")

# Read once, where the services are declared: the model service's batching and the
# request timeout BentoML fixes then.
DECLARED = declared_from_env()
MODEL_CALL_ATTEMPTS = 4


def _start_worker() -> None:
    """First thing in each worker (both services), before any request: library log
    lines and warnings lose their UIDs and paths (radfusion.log_privacy; not at import,
    so importing this module changes no importer's logging), and the worker exits
    should the server that started it die (radfusion.serving.orphans)."""
    log_privacy.install()
    exit_with_parent()


@functools.lru_cache(maxsize=1)
def service_settings() -> ServiceSettings:
    """The settings of this process, read from the environment when the service starts
    (its __init__, then the middleware built for its first request)."""
    return ServiceSettings.from_env()


def _connection_errors() -> tuple[type[BaseException], ...]:
    import aiohttp
    import httpx

    return (aiohttp.ClientConnectionError, httpx.RemoteProtocolError, httpx.ConnectError)


_CONNECTION_DROPPED = _connection_errors()
_RETRIED_MODEL_CALL_ERRORS: tuple[type[BaseException], ...] = (TimeoutError, ModelSocketDropped, *_CONNECTION_DROPPED)


@functools.lru_cache(maxsize=1)
def served_contract() -> ModelContract:
    """The contract of the model named by RADFUSION_MODEL (read once per process)."""
    return read_contract_from_onnx(resolve_model_path(model_ref_from_env()))


def stow_patient_tables(contract: ModelContract, settings: ServiceSettings) -> tuple[PatientTables | None, str]:
    """The tables STOW-RS studies are completed from, or None and why not. A table the
    model requires but that was not configured only disables STOW-RS input (its
    requests answer 422 with the reason); /predict, which carries its own values, serves."""
    try:
        return PatientTables.from_paths(contract, settings.genomics_table, settings.clinical_table), ""
    except PatientTableError as exc:
        log.warning("STOW-RS input disabled: %s", exc)
        return None, f"STOW-RS input is not available: {exc}"


def _bento_model_ref() -> t.Any:
    """Declare the store model when RADFUSION_MODEL is a tag, so a built bento names it."""
    ref = os.environ.get(MODEL_ENV, "").strip()
    return bentoml.models.BentoModel(ref) if ref and looks_like_tag(ref) else None


# BentoML's client of a dependency replaces its HTTP session every 100 calls (and 300 s),
# closing the old one with calls still in flight: under load each refresh dropped up to
# one call per concurrent client, computed and thrown away, then retried by _infer (10%
# of the model service's work under 16 clients, bench/serving.py), and now and then left
# one hanging until the caller's timeout. Its one server is on loopback: keep the session.
MODEL_CONNECTION = {"max_requests": 2**31 - 1, "max_age": 7 * 24 * 3600.0}


@bentoml.service(
    name="radfusion_model",
    workers=1,
    traffic={"timeout": DECLARED.request_timeout_s},
    runner_connection=MODEL_CONNECTION,
    logging={"access": {"enabled": False}},
)
class RadfusionModel:
    """The ONNX model behind continuous batching (radfusion.serving.http.model_batches).
    Its prediction API takes packed cases (radfusion.predictor.pack)."""

    bento_model = _bento_model_ref()

    def __init__(self) -> None:
        _start_worker()
        self.settings = service_settings()
        path = resolve_model_path(model_ref_from_env())
        spinning = {"on": True, "off": False}.get(self.settings.ort_spinning)  # "recorded": None
        self.model = OnnxModel(
            path, device=device_from_env(), threads=self.settings.ort_threads or None, spinning=spinning
        )
        self.model_contract = self.model.contract
        self.batches = ModelBatches(
            self._run_packed,
            max_rows=DECLARED.max_batch_size,
            max_wait_s=DECLARED.max_latency_ms / 1000,
            overloaded=lambda: ServiceUnavailable("the model service is overloaded"),
            batching=DECLARED.batching,
            on_run=service_metrics().model_run,
        )
        self.socket = None
        if self.settings.model_socket == "on":
            width = packed_width(self.model_contract)
            self.socket = ModelSocketServer(self.batches, width=width, overloaded=ServiceUnavailable)
        # The API service may still need this one after SIGTERM: see radfusion.serving.http.drain.
        defer_shutdown_until_callers_exit("radfusion_model", max_wait_s=DECLARED.request_timeout_s + 30)
        config = self.model.configuration
        log.info(
            "model %s %s loaded on %s (%s intra-op threads, spinning %s; batching %s)",
            self.model_contract.name,
            self.model_contract.version,
            self.model.provider,
            config["threads"] or "default",
            "on" if config["spinning"] else "off",
            f"up to {DECLARED.max_batch_size} cases a run" if DECLARED.batching else "off",
        )

    @bentoml.on_shutdown
    def _remove_socket(self) -> None:
        """Not at exit: uvicorn ends the worker by its signal once it drained, and exit
        handlers do not run then. A killed worker's socket is removed by the next one
        (model_socket.remove_stale_sockets)."""
        if self.socket is not None:
            self.socket.close()

    def __is_alive__(self) -> bool:
        """BentoML's /livez: the model thread still runs, and the socket's."""
        return self.batches.alive() and (self.socket is None or self.socket.alive())

    @bentoml.api
    async def model_socket(self) -> str:
        """Where the API service calls ``probabilities`` without HTTP
        (radfusion.serving.http.model_socket); empty when RADFUSION_MODEL_SOCKET=off."""
        return "" if self.socket is None else self.socket.path

    # The answer's media type is declared: left to BentoML, it is worked out again from
    # the type's JSON schema on every answer.
    @bentoml.api
    async def probabilities(self, packed: np.ndarray) -> t.Annotated[np.ndarray, ContentType("application/json")]:
        rows = np.asarray(packed, dtype=np.float32)
        width = packed_width(self.model_contract)
        if rows.ndim != 2 or rows.shape[1] != width or len(rows) == 0:
            # Refused before it joins a batch, where it would fail the merged run.
            raise BadInput(f"packed cases have shape {rows.shape}, expected (cases, {width})")
        return await self.batches(rows)

    def _run_packed(self, packed: np.ndarray) -> np.ndarray:
        return self.model.run(*unpack(packed, self.model_contract))

    @bentoml.api
    async def explain(
        self, packed: np.ndarray, settings: dict[str, int], grid_affine: list[list[float]] | None = None
    ) -> dict[str, t.Any]:
        """Gene attributions and image saliency for one packed case (radfusion.explain).
        Its hundreds of rows run here, next to the model, on their own thread and
        limiter: the model batches' thread stays free, so normal requests keep their
        batches while an explanation runs."""
        inputs = unpack_case(np.asarray(packed, dtype=np.float32), self.model_contract)
        affine = None if grid_affine is None else np.asarray(grid_affine, dtype=float)
        run = functools.partial(
            explain_case, self.model.logits, self.model_contract, inputs, ExplainSettings(**settings), affine
        )
        limiter = _explain_limiter(self.settings.explain_concurrency)
        return await anyio.to_thread.run_sync(run, limiter=limiter)

    @bentoml.api
    async def saliency(self, packed: np.ndarray, settings: dict[str, int]) -> np.ndarray:
        """The image saliency of one packed case on the model grid (radfusion.explain),
        for the Parametric Map of a STOW-RS result; empty when the case has no image.
        On the explanations' limiter, like ``explain``."""
        inputs = unpack_case(np.asarray(packed, dtype=np.float32), self.model_contract)
        # The map is the first pass's voxel map: the second pass only places the peak.
        map_settings = ExplainSettings(**{**settings, "refine_windows": 0})
        run = functools.partial(case_image_saliency, self.model.logits, self.model_contract, inputs, map_settings)
        found = await anyio.to_thread.run_sync(run, limiter=_explain_limiter(self.settings.explain_concurrency))
        return np.zeros(0, np.float32) if found is None else np.asarray(found.voxel_map, np.float32)


@functools.lru_cache(maxsize=1)
def _explain_limiter(concurrency: int) -> anyio.CapacityLimiter:
    return anyio.CapacityLimiter(concurrency)


def _error_response(exc: RadfusionInputError) -> JSONResponse:
    """The JSON error answer; an overloaded answer (503) also says when to retry."""
    headers = exc.headers if isinstance(exc, OverloadedError) else None
    return JSONResponse(exc.to_dict(), status_code=exc.http_status, headers=headers)


async def _get_contract(_: Request) -> JSONResponse:
    return JSONResponse(served_contract().to_dict())


async def _stow(request: Request) -> Response:
    service = t.cast("Radfusion", bentoml.get_current_service())
    return await service.predict_stow(request)


async def _wado(request: Request) -> Response:
    service = t.cast("Radfusion", bentoml.get_current_service())
    return await service.retrieve_results(request)


# GET /contract (BentoML APIs are POST-only), STOW-RS (a multipart/related body
# BentoML's typed APIs cannot take) and WADO-RS of its results are routes of a small
# mounted app.
contract_app = Starlette(
    routes=[
        Route("/contract", _get_contract, methods=["GET"]),
        Route("/dicom-web/studies", _stow, methods=["POST"]),
        Route("/dicom-web/studies/{study}", _stow, methods=["POST"]),
        Route("/dicom-web/studies/{study}", _wado, methods=["GET"]),
        Route("/dicom-web/studies/{study}/series/{series}", _wado, methods=["GET"]),
        Route("/dicom-web/studies/{study}/series/{series}/instances/{sop}", _wado, methods=["GET"]),
    ]
)


@bentoml.service(name="radfusion", workers=1, traffic={"timeout": DECLARED.request_timeout_s})
class Radfusion:
    """Public API: study (zip or DICOM files) + genomics -> prediction."""

    model_service = bentoml.depends(RadfusionModel)

    def __init__(self) -> None:
        _start_worker()
        check_auth_config()  # no token and not an explicit development run: do not start
        self.settings = service_settings()  # a bad RADFUSION_* value stops the start here
        self.study_budget = self.settings.study_budget()
        connections.set_header_timeout(self.settings.header_timeout_s)
        self.model_contract = served_contract()
        self.patients, self.patients_error = stow_patient_tables(self.model_contract, self.settings)
        self.dicomweb = self.settings.dicomweb_policy()
        self.results = self._result_writer()
        self.metrics = service_metrics()
        self.model_calls = ModelCalls(
            lambda: self.model_service.to_async.model_socket(),
            lambda packed: self.model_service.to_async.probabilities(packed),
            enabled=self.settings.model_socket == "on",
            on_call=self.metrics.model_call,
        )
        log.info("serving contract of %s %s", self.model_contract.name, self.model_contract.version)

    @bentoml.api(route="/predict")
    async def predict(
        self,
        # BentoML 1.4 cannot make file fields optional (its file validator inside a
        # Union fails), so "no study" is the empty list; never mutated.
        study: list[Path] = [],  # noqa: B006
        genomics: dict[str, t.Any] | None = None,
        clinical: dict[str, t.Any] | None = None,
        dicomweb: DicomwebRef | None = None,
        explain: bool = False,
        rank_treatments: bool = False,
    ) -> dict[str, t.Any]:
        """``study``: one zip of the study's DICOM files, or the DICOM files themselves
        (repeat the multipart field); or instead ``dicomweb``: {"url", "study_uid"} of
        a study on an allowed DICOMweb server. ``genomics``: JSON object feature ->
        value. ``clinical``: JSON object covariate -> value. Any may be omitted when the
        model allows that modality to be missing, and a table may be partial: the
        contract's missing-data policy imputes what it lacks up to each block's cap
        (beyond it the block counts as absent), and the answer's ``imputation`` says
        what was imputed. ``explain``: add the top genes and
        the image saliency peak; ``rank_treatments``: add the predicted response under
        each treatment (see _with_evidence)."""
        started = time.perf_counter()
        try:
            if study and dicomweb is not None:
                raise ConflictingStudyError("send the study as an upload or as a DICOMweb reference, not both")
            prepare = functools.partial(self._prepare, study or None, genomics, clinical, dicomweb)
            case = await anyio.to_thread.run_sync(prepare)
        except RadfusionInputError as exc:
            return self._rejected(exc, "predict")  # type: ignore[return-value]
        result = await self._predict_case(case, started, "predict")
        if isinstance(result, dict) and (explain or rank_treatments):
            return await self._with_evidence(result, case, explain, rank_treatments)  # type: ignore[return-value]
        return result  # type: ignore[return-value]

    @bentoml.api(route="/predict/batch")
    async def predict_batch(
        self,
        cases: list[CaseRequest] = [],  # noqa: B006
        studies: list[Path] = [],  # noqa: B006
    ) -> dict[str, t.Any]:
        """Many cases in one call. ``cases``: a list of {study, genomics, clinical},
        where study is {"upload": i} (the i-th ``studies`` file: a zip or one DICOM
        file) or {"dicomweb": {"url", "study_uid"}}; with no ``cases``, each uploaded
        file is one image-only case. The answer's ``results`` hold, in case order, the
        prediction or the case's own error: one bad case never fails the others. The
        ready cases go to the model service together, so they share its batches."""
        started = time.perf_counter()
        try:
            cases = batch_cases(cases, len(studies), self.settings.max_batch_cases)
        except RadfusionInputError as exc:
            return self._rejected(exc, "predict_batch")  # type: ignore[return-value]
        self.metrics.batch_cases.observe(len(cases))
        outcomes: list[PreparedCase | RadfusionInputError | None] = [None] * len(cases)
        for index, problem in upload_problems(cases, len(studies)).items():
            outcomes[index] = problem
        limiter = anyio.CapacityLimiter(self.settings.prepare_concurrency)

        async def prepare_one(index: int, case: CaseRequest) -> None:
            parts = [studies[case.study.upload]] if case.study is not None and case.study.upload is not None else None
            dicomweb = case.study.dicomweb if case.study is not None else None
            prepare = functools.partial(self._prepare, parts, case.genomics, case.clinical, dicomweb)
            try:
                outcomes[index] = await anyio.to_thread.run_sync(prepare, limiter=limiter)
            except RadfusionInputError as exc:
                outcomes[index] = exc

        async with anyio.create_task_group() as group:
            for index, case in enumerate(cases):
                if outcomes[index] is None:
                    group.start_soon(prepare_one, index, case)
        results = await self._predict_prepared(t.cast(list, outcomes))
        failed = sum("error" in r for r in results)
        log.info(
            "predict_batch: %d cases, %d ok, %d failed in %.0f ms",
            len(cases),
            len(cases) - failed,
            failed,
            1000 * (time.perf_counter() - started),
        )
        return {"results": results, "cases": len(cases), "ok": len(cases) - failed, "failed": failed}

    async def _predict_prepared(self, outcomes: list[PreparedCase | RadfusionInputError]) -> list[dict[str, t.Any]]:
        """Run every prepared case through the model service at once (in chunks of at
        most max_batch_size, all sent together so the batcher can merge them with other
        requests); errors stay per case."""
        ready = [i for i, o in enumerate(outcomes) if isinstance(o, PreparedCase)]
        size = DECLARED.max_batch_size
        chunks = [ready[i : i + size] for i in range(0, len(ready), size)]
        began = time.perf_counter()
        answers = await asyncio.gather(
            *(self._infer(pack([t.cast(PreparedCase, outcomes[i]).inputs for i in chunk])) for chunk in chunks),
            return_exceptions=True,
        )
        if chunks:
            self.metrics.model_seconds.labels(route="predict_batch").observe(time.perf_counter() - began)
        probabilities: dict[int, np.ndarray | BaseException] = {}
        for chunk, answer in zip(chunks, answers, strict=True):
            if isinstance(answer, BaseException) and not isinstance(answer, ServiceUnavailable):
                raise answer
            for row, index in enumerate(chunk):
                probabilities[index] = answer if isinstance(answer, BaseException) else np.asarray(answer)[row]
        results = []
        for index, outcome in enumerate(outcomes):
            found = probabilities.get(index)
            if isinstance(found, ServiceUnavailable):
                outcome = self._model_overloaded()
            if isinstance(outcome, PreparedCase):
                try:  # a NaN/inf model output is this case's error (NonFiniteOutputError)
                    prediction = Prediction.from_outputs(self.model_contract, t.cast(np.ndarray, found))
                except RadfusionInputError as exc:
                    outcome = exc
            if isinstance(outcome, RadfusionInputError):
                self.metrics.error(outcome.kind, "predict_batch")
                results.append(error_entry(index, outcome))
                continue
            self.metrics.prediction(outcome.inputs.modalities_used)
            results.append({"case": index, **format_prediction(self.model_contract, outcome, prediction)})
        return results

    async def predict_stow(self, request: Request) -> Response:
        """STOW-RS (PS3.18 10.5): ``POST /dicom-web/studies[/{study}]``, the instances of
        one or more studies as multipart/related parts. Each study is scored with the
        genomics and clinical covariates found for its PatientID in the configured
        tables (radfusion.serving.patients, as the scorer and listener do); its
        prediction SR (or, for a study that cannot be scored, the report why) is kept
        for WADO-RS and stored to RADFUSION_RESULT_STOW_URL (radfusion.serving.http.stow_results).
        The answer is a Store Instances Response (radfusion.serving.http.store_response):
        a study that fails fails its own instances only. A malformed request keeps its
        own 4xx kind; JSON predictions stay on /predict."""
        started = time.perf_counter()
        target = request.path_params.get("study")
        workdir = Path(tempfile.mkdtemp(prefix="radfusion-stow-"))
        try:
            check_accepts_json(request.headers.get("accept"))
            boundary = boundary_of(request.headers.get("content-type", ""))
            body = workdir / "body"
            with open(body, "wb") as out:
                async for chunk in request.stream():
                    out.write(chunk)
            parts = await anyio.to_thread.run_sync(
                _reading_study, split_parts, body, boundary, workdir / "parts", self.settings.max_study_files
            )
            body.unlink()
            studies, unreadable = await anyio.to_thread.run_sync(group_by_study, parts)
            outcome = StoreOutcome()
            for part in unreadable:
                self.metrics.error(part.error.kind, "stow")
                outcome.other_failures.append(CANNOT_UNDERSTAND)
                outcome.warnings.append(f"{part.error.kind}: {part.error.message}")
            root = f"{self._public_root(request)}/dicom-web/studies"
            for number, (study_uid, instances) in enumerate(studies.items(), 1):
                label = f"study {number} of {len(studies)}"
                if target is not None and study_uid != target:
                    outcome.fail(instances, STUDY_MISMATCH, f"{label}: not the study of the request URL")
                elif await self._stow_study(study_uid, instances, label, outcome):
                    outcome.store([i for i in instances if not i.damaged], f"{root}/{study_uid}")
        except RadfusionInputError as exc:
            return self._rejected(exc, "stow")
        finally:
            remove_tree(workdir)
        log.info(
            "stow: %d studies, %d instances taken, %d failed, HTTP %d in %.0f ms",
            len(studies),
            len(outcome.stored),
            len(outcome.failed) + len(outcome.other_failures),
            outcome.status,
            1000 * (time.perf_counter() - started),
        )
        warning = outcome.warning_header()
        return JSONResponse(
            outcome.dataset().to_json_dict(),
            status_code=outcome.status,
            media_type=DICOM_JSON,
            headers={"Warning": warning} if warning else None,
        )

    def _public_root(self, request: Request) -> str:
        """The service's URL for the client: RADFUSION_PUBLIC_URL, else the request's
        Host. dicomweb-client sends a Host without the port, so a Host that names none
        gets the port the request came in on."""
        if self.settings.public_url:
            return self.settings.public_url
        url = request.base_url
        server = request.scope.get("server")
        if url.port is None and server and server[1] not in (80, 443):
            url = url.replace(port=server[1])
        return str(url).rstrip("/")

    async def _stow_study(self, study_uid: str, instances: list[Instance], label: str, outcome: StoreOutcome) -> bool:
        """Score one study of a STOW-RS request and write its result; False (its
        instances failed, with the reason in ``outcome``) when it cannot be scored."""
        paths = [i.path for i in instances]
        headers = await anyio.to_thread.run_sync(read_headers, instances)  # scoring moves the files
        # A damaged instance is never stored; it stays in the study's input so that the
        # reader refuses the study when the scored series is the one it belongs to.
        damaged = [i for i in instances if i.damaged]
        intact = [i for i in instances if not i.damaged]
        if damaged:
            outcome.fail(damaged, CANNOT_UNDERSTAND, f"{label}: {len(damaged)} instance(s) cut short, not stored")
        try:
            patient = await anyio.to_thread.run_sync(_reading_study, self._patient_of, paths)
            prepare = functools.partial(self._prepare, paths, patient.genomics, patient.clinical)
            case = await anyio.to_thread.run_sync(prepare)
            prediction = await self._stow_prediction(case)
            facts = prediction_facts(self.model_contract, case, prediction, patient.sources())
            if ranks_treatments(self.model_contract):
                facts["treatment_ranking"] = await self._stow_ranking(case)
            facts["instances_received"] = len(instances)
            saliency = await self._stow_saliency(case, label) if self.settings.result_saliency else None
            write = functools.partial(self.results.prediction, study_uid, prediction, facts, case, headers, saliency)
            warning = await anyio.to_thread.run_sync(write)
        except RadfusionInputError as exc:
            self.metrics.error(exc.kind, "stow")
            log.info("stow: %s not scored: %s (HTTP %d)", label, exc.kind, exc.http_status)
            outcome.fail(intact, failure_reason(exc), f"{label} not scored: {exc.kind}: {exc.message}")
            warning = await self._stow_failure_report(study_uid, exc, instances, headers)
            if warning:
                outcome.warnings.append(f"{label}: {warning}")
            return False
        except Exception as exc:  # noqa: BLE001 - a result that cannot be written fails its study, never a 500
            log.error("stow: %s: result not written (%s)", label, type(exc).__name__)
            outcome.fail(intact, PROCESSING_FAILURE, f"{label}: the result could not be written")
            return False
        self.metrics.prediction(case.inputs.modalities_used)
        if warning:
            outcome.warnings.append(f"{label}: {warning}")
        return True

    async def _stow_prediction(self, case: PreparedCase) -> Prediction:
        """The model's prediction for one STOW-RS study; an overloaded model service or a
        NaN/inf output is the study's error."""
        began = time.perf_counter()
        try:
            probabilities = await self._infer(pack([case.inputs]))
        except ServiceUnavailable:
            raise self._model_overloaded() from None
        self.metrics.model_seconds.labels(route="stow").observe(time.perf_counter() - began)
        return Prediction.from_outputs(self.model_contract, np.asarray(probabilities)[0])

    async def _stow_ranking(self, case: PreparedCase) -> dict[str, t.Any]:
        """The treatment ranking a STOW-RS study's SR states; a NaN/inf candidate leaves the
        prediction standing and says why there is no ranking."""
        try:
            return await self._treatment_ranking(case)
        except NonFiniteOutputError as exc:
            return {"available": False, "reason": f"ranking failed: {exc.message}"}
        except ServiceUnavailable:
            raise self._model_overloaded() from None

    async def _stow_saliency(self, case: PreparedCase, label: str) -> np.ndarray | None:
        """Where the model looked in the study's image (None: no image, or not computed;
        the prediction goes on without it)."""
        if case.study is None or "image" not in case.inputs.modalities_used:
            return None
        began = time.perf_counter()
        try:
            found = await self.model_service.to_async.saliency(
                packed=pack([case.inputs]), settings=dataclasses.asdict(self.settings.explain)
            )
        except Exception as exc:  # noqa: BLE001 - a missing map never costs the prediction
            log.warning("stow: %s: saliency not computed (%s)", label, type(exc).__name__)
            return None
        self.metrics.model_seconds.labels(route="saliency").observe(time.perf_counter() - began)
        found = np.asarray(found, dtype=np.float32)
        return found if found.size else None

    async def _stow_failure_report(
        self, study_uid: str, error: RadfusionInputError, instances: list[Instance], headers: Headers
    ) -> str | None:
        try:
            await anyio.to_thread.run_sync(self.results.failure, study_uid, error, instances, headers)
            return None
        except Exception as exc:  # noqa: BLE001 - the answer already says why the study failed
            log.error("stow: failure report not written (%s)", type(exc).__name__)
            return "the report of the failure could not be written"

    async def retrieve_results(self, request: Request) -> Response:
        """WADO-RS (PS3.18 10.4) of the results kept for STOW-RS studies
        (radfusion.serving.http.wado): the study's, a series' or one instance's SRs."""
        params = request.path_params
        try:
            find = functools.partial(self.results.store.find, params["study"], params.get("series"), params.get("sop"))
            paths = await anyio.to_thread.run_sync(find)
            body, content_type, syntax = await anyio.to_thread.run_sync(multipart_dicom, paths)
            check_accepts_dicom(request.headers.get("accept"), syntax)
        except RadfusionInputError as exc:
            return self._rejected(exc, "wado")
        return Response(body, media_type=content_type)

    def _result_writer(self) -> ResultWriter:
        """Where STOW-RS results are kept (and sent), from the settings."""
        settings = self.settings
        store = ResultStore(settings.result_folder(), settings.result_keep_hours * 3600.0, settings.result_max_bytes)
        destination = ResultDestination(
            settings.result_stow_url, settings.result_stow_token, float(settings.dicomweb_timeout_s)
        )
        writer = ResultWriter(self.model_contract, store, destination)
        if destination.url is not None:  # results the PACS did not take yet (also from before a restart)
            delivery = threading.Thread(
                target=writer.outbox.run, args=(threading.Event(),), name="result-delivery", daemon=True
            )
            delivery.start()
        return writer

    def _patient_of(self, parts: list[Path]) -> PatientData:
        """The tables' data for the uploaded study's patient; a model input the tables
        cannot give is this study's PatientDataMissingError (422)."""
        if self.patients is None:
            raise PatientDataMissingError(self.patients_error)
        patient = self.patients.lookup(patient_id_of(parts))
        patient.check()
        return patient

    async def _predict_case(self, case: PreparedCase, started: float, route: str) -> dict[str, t.Any] | JSONResponse:
        began = time.perf_counter()
        try:
            probabilities = await self._infer(pack([case.inputs]))
        except ServiceUnavailable:
            self.metrics.error(OverloadedError.kind, route)
            # The model service sheds a call that waited longer than max_latency_ms for
            # its batch: the caller gets the same 503 as from radfusion.serving.http.overload.
            log.info("%s shed by the model service (overloaded)", route)
            return _error_response(self._model_overloaded())
        self.metrics.model_seconds.labels(route=route).observe(time.perf_counter() - began)
        try:  # a NaN/inf model output is rejected (NonFiniteOutputError), never answered
            prediction = Prediction.from_outputs(self.model_contract, np.asarray(probabilities)[0])
        except RadfusionInputError as exc:
            return self._rejected(exc, route)
        result = format_prediction(self.model_contract, case, prediction)
        self.metrics.prediction(case.inputs.modalities_used)
        log.info(
            "%s ok: modalities=%s in %.0f ms",
            route,
            "+".join(case.inputs.modalities_used),
            1000 * (time.perf_counter() - started),
        )
        return result

    async def _treatment_ranking(self, case: PreparedCase) -> dict[str, t.Any]:
        """radfusion.treatment's ranking, one row per treatment through the batched model
        API like any prediction, or why the case has none. Raises NonFiniteOutputError."""
        ranking = TreatmentRanking(self.model_contract, case.inputs)
        unavailable = ranking.unavailable()
        if unavailable is not None:
            return unavailable
        probabilities = await self._infer(pack(ranking.candidates))
        return ranking.result(np.asarray(probabilities))

    async def _with_evidence(
        self, result: dict[str, t.Any], case: PreparedCase, explain: bool, rank: bool
    ) -> dict[str, t.Any] | JSONResponse:
        """``treatment_ranking`` (radfusion.treatment): one row per treatment through the
        batched model API, like any prediction. ``explanation`` (radfusion.explain): its
        rows run in the model service's explain API, outside the batcher. A part the
        case cannot have (no image: no saliency; no clinical: no ranking) says why."""
        try:
            if rank:
                result["treatment_ranking"] = await self._treatment_ranking(case)
            if explain:
                began = time.perf_counter()
                affine = case.study.grid_affine if case.study is not None else None
                result["explanation"] = await self.model_service.to_async.explain(
                    packed=pack([case.inputs]),
                    settings=dataclasses.asdict(self.settings.explain),
                    grid_affine=None if affine is None else affine.tolist(),
                )
                self.metrics.model_seconds.labels(route="explain").observe(time.perf_counter() - began)
                log.info(
                    "explain: %d model rows in %.0f ms",
                    result["explanation"]["model_rows"],
                    1000 * (time.perf_counter() - began),
                )
        except ServiceUnavailable:
            self.metrics.error(OverloadedError.kind, "predict")
            return _error_response(self._model_overloaded())
        return result

    def _model_overloaded(self) -> OverloadedError:
        """The model service shed the call (it waited longer than max_latency_ms for
        its batch): the same 503 as radfusion.serving.http.overload's."""
        return overloaded("the model is at capacity", self.settings.retry_after_s)

    def _rejected(self, exc: RadfusionInputError, route: str) -> JSONResponse:
        self.metrics.error(exc.kind, route)
        log.info("%s rejected: %s (HTTP %d)", route, exc.kind, exc.http_status)
        return _error_response(exc)

    @bentoml.api(route="/contract")
    def contract(self) -> dict[str, t.Any]:
        """What the model expects: labels, image geometry, gene panel, modalities."""
        return self.model_contract.to_dict()

    def _prepare(
        self,
        parts: list[Path] | None,
        genomics: dict[str, t.Any] | None,
        clinical: dict[str, t.Any] | None = None,
        dicomweb: DicomwebRef | None = None,
    ) -> PreparedCase:
        """One case's study (uploaded ``parts`` or fetched by ``dicomweb``) read and
        preprocessed with its genomics and clinical values."""
        workdir = Path(tempfile.mkdtemp(prefix="radfusion-upload-"))
        try:
            return _reading_study(self._read_case, workdir, parts, genomics, clinical, dicomweb)
        finally:
            remove_tree(workdir)

    def _read_case(
        self,
        workdir: Path,
        parts: list[Path] | None,
        genomics: dict[str, t.Any] | None,
        clinical: dict[str, t.Any] | None,
        dicomweb: DicomwebRef | None,
    ) -> PreparedCase:
        files: list[Path] | None
        if dicomweb is not None:
            files = fetch_study(dicomweb, self.dicomweb, workdir / "dicomweb")
        elif parts:
            files = study_files(parts, workdir, self.settings.max_study_bytes, self.settings.max_study_files)
        else:
            files = None
        return prepare_case(self.model_contract, files, genomics, clinical, budget=self.study_budget)

    async def _infer(self, packed: np.ndarray) -> np.ndarray:
        """Probabilities from the model service.

        BentoML 1.4's dependency client replaces its HTTP session every 100 calls and
        closes the old one with calls still in flight on it, and its pooled connections
        can outlive the server's keep-alive (BentoML issue #4971); both surface as a
        dropped connection. Under sustained load (bench/serving.py) a call was also
        seen to hang until the 300 s request timeout, so each attempt is bounded by
        RADFUSION_MODEL_CALL_TIMEOUT_S. Inference is idempotent, so such calls are
        retried; the last failure is the model service's 503."""
        for attempt in range(1, MODEL_CALL_ATTEMPTS + 1):
            try:
                return await asyncio.wait_for(self.model_calls(packed), timeout=service_settings().model_call_timeout_s)
            except _RETRIED_MODEL_CALL_ERRORS as exc:
                if attempt == MODEL_CALL_ATTEMPTS:
                    # A model service restarting, or stalled: the caller may retry (503).
                    raise ServiceUnavailable("the model service could not be reached") from exc
                log.info("model service connection dropped (%s); retrying", type(exc).__name__)
        raise AssertionError("unreachable")


_T = t.TypeVar("_T")


def _reading_study(read: Callable[..., _T], *args: t.Any) -> _T:
    """THE boundary of every study read by this service (uploads, STOW-RS, DICOMweb):
    whatever a library raises becomes a specific kind (radfusion.errors.input_error),
    never a 500. Its message is not logged (it may quote header values); where it came
    from is, and the whole traceback when the kind is "unprocessable"."""
    try:
        return read(*args)
    except RadfusionInputError:
        raise
    except Exception as exc:
        error = input_error(exc, "study")
        frames = traceback.extract_tb(exc.__traceback__)
        if isinstance(error, UnprocessableStudyError):
            log.warning("unanticipated %s while reading a study:\n%s", type(exc).__name__, "".join(frames.format()))
        elif frames:
            origin = frames[-1]
            log.info(
                "study refused as %s: %s in %s:%d (%s)",
                error.kind,
                type(exc).__name__,
                Path(origin.filename).name,
                origin.lineno or 0,
                origin.name,
            )
        raise error from exc


def _token_auth(app):
    return TokenAuth(app, tokens=tokens_from_env(), auth_off=auth_off_from_env(), on_refused=count_refusal)


def _in_flight_limit(app):
    settings = service_settings()
    return InFlightLimit(
        app, max_in_flight=settings.max_in_flight, retry_after_s=settings.retry_after_s, on_refused=count_refusal
    )


def _body_size_limit(app):
    return BodySizeLimit(app, max_bytes=service_settings().max_upload_bytes, on_refused=count_refusal)


def _parse_limits() -> ParseLimits:
    settings = service_settings()
    return ParseLimits(
        settings.max_json_bytes, max(settings.max_study_files, settings.max_batch_cases), settings.header_timeout_s
    )


def _refused_while_parsing(exc: RadfusionInputError, api: str) -> None:
    service_metrics().error(exc.kind, api)
    log.info("%s rejected: %s (HTTP %d)", api, exc.kind, exc.http_status)


forbid_url_fetch_for_file_fields()
keep_sockets_until_workers_stop()
stop_with_launcher()
connections.install()
answer_input_errors(_refused_while_parsing)
# Outermost first: a request without a token is refused before it counts as load or
# its body is read. Each is built with the worker's app (after the service started),
# so its settings come from the environment then, not at import.
# @bentoml.service made the class a bentoml.Service; mypy keeps the class type.
_radfusion_service = t.cast("bentoml.Service[Radfusion]", Radfusion)
strict_parsing(_radfusion_service, _parse_limits)
_radfusion_service.add_asgi_middleware(_token_auth)
_radfusion_service.add_asgi_middleware(_in_flight_limit)
_radfusion_service.add_asgi_middleware(_body_size_limit)
_radfusion_service.mount_asgi_app(contract_app, path="/")
