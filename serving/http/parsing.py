"""Request parsing of the public API (BentoML 1.4.40): every malformed request is a 4xx
with its own kind, never a 500, and no part of a request is held in memory whole.

BentoML parses a request (Starlette's form parser, ``json.loads``, pydantic) inside the
handler that turns any exception into a 500: a multipart body without or with a wrong
boundary, more files than Starlette's default, a JSON field nested 100,000 deep
(RecursionError) or a 20 MB form field all answered 500. Two hooks fix that:

- ``strict_parsing(service, limits)``: the service's APIs parse their requests here.
  JSON bodies and JSON form fields are bounded (RADFUSION_MAX_JSON_BYTES) before they
  are parsed; a multipart body must end with its closing boundary (Starlette keeps the
  parts of a truncated body) and hold UTF-8 text fields; file fields are streamed to
  disk under generated names (BentoML reads each into memory and names the copy after
  the client's file name, which may hold a patient's name) and a text value in a file
  field is taken as the file's content, never fetched as a URL.
- ``answer_input_errors(on_refused)``: a RadfusionInputError raised while a request is
  parsed (or by an API) is answered with its kind and status, and an unsupported media
  type of the public service with 415, before BentoML's own handling."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import shutil
import tempfile
import typing as t
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from pathlib import Path

import anyio
from pydantic import ValidationError
from starlette.datastructures import FormData, UploadFile
from starlette.formparsers import FormParser, MultiPartException, MultiPartParser
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse

from radfusion.errors import RadfusionInputError
from radfusion.serving.http.stow import BadMultipartError, UnsupportedMediaTypeError
from radfusion.serving.study_files import UploadTooLargeError

log = logging.getLogger("bentoml.radfusion")

JSON = "application/json"
FORM = "multipart/form-data"
URLENCODED = "application/x-www-form-urlencoded"
# What the public APIs take; no content type at all is JSON (as BentoML reads it).
MEDIA_TYPES = frozenset({JSON, FORM, URLENCODED, ""})
# Text fields of one request: the APIs take at most six; far more is no client of ours.
MAX_TEXT_FIELDS = 32
_COPY_CHUNK = 1024 * 1024


class BadJsonError(RadfusionInputError):
    """A JSON request body or JSON form field that cannot be parsed: a syntax error, not
    UTF-8, or nested too deeply."""

    kind = "bad_json"
    http_status = 400


class JsonTooLargeError(RadfusionInputError):
    """A JSON request body or a text form field (genomics, clinical, cases) is larger
    than RADFUSION_MAX_JSON_BYTES."""

    kind = "json_too_large"
    http_status = 413


class InvalidRequestError(RadfusionInputError):
    """The request's fields do not match the API (a missing or unknown field, a value of
    the wrong type): the message names each field and what it should be."""

    kind = "invalid_request"
    http_status = 400


@dataclass(frozen=True)
class ParseLimits:
    max_json_bytes: int
    max_files: int
    # Longest silence while the body arrives: a client that sends headers and then
    # stalls would otherwise hold an in-flight slot until the request timeout.
    body_idle_s: float = 20.0


class RequestBodyTimeoutError(RadfusionInputError):
    """The request body stopped arriving: no byte for longer than the server waits."""

    kind = "request_body_timeout"
    http_status = 408


class ClientDisconnectedError(RadfusionInputError):
    """The client closed the connection before its request body was complete."""

    kind = "client_disconnected"
    http_status = 400


async def _paced(request: Request, limits: ParseLimits) -> AsyncGenerator[bytes, None]:
    """``request.stream()`` with a bound on each wait for the next chunk; a client that
    goes away is its own error (Starlette's ClientDisconnect would be answered 500)."""
    stream = request.stream()
    try:
        while True:
            try:
                chunk = await asyncio.wait_for(anext(stream), limits.body_idle_s)
            except StopAsyncIteration:
                return
            except TimeoutError:
                raise RequestBodyTimeoutError(f"no byte of the request body for {limits.body_idle_s:g} s") from None
            except ClientDisconnect:
                raise ClientDisconnectedError("the client closed the connection during its request body") from None
            yield chunk
    finally:
        await stream.aclose()


def media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


def check_media_type(request: Request) -> None:
    found = media_type(request)
    if found not in MEDIA_TYPES:
        raise UnsupportedMediaTypeError(
            f"this API takes {JSON}, {FORM} or {URLENCODED}, not {found[:64]}"
            + (" (STOW-RS instances go to /dicom-web/studies)" if found == "multipart/related" else "")
        )


# ------------------------------------------------------------------------------ JSON


async def _bounded_body(request: Request, limits: ParseLimits) -> bytes:
    max_bytes = limits.max_json_bytes
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise JsonTooLargeError(f"JSON body of {int(declared):,} bytes; at most {max_bytes:,}")
    chunks: list[bytes] = []
    size = 0
    async for chunk in _paced(request, limits):
        size += len(chunk)
        if size > max_bytes:
            raise JsonTooLargeError(f"JSON body larger than {max_bytes:,} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _field_errors(exc: ValidationError) -> str:
    """Each failing field and what it should be; never the value sent (it may be a
    patient's data)."""
    problems = []
    for error in exc.errors(include_url=False, include_context=False, include_input=False):
        where = ".".join(str(part) for part in error["loc"]) or "body"
        problems.append(f"{where}: {error['msg']}")
    return "; ".join(problems[:10]) + (f"; and {len(problems) - 10} more" if len(problems) > 10 else "")


def _validation_error(exc: ValidationError) -> RadfusionInputError:
    for error in exc.errors(include_url=False, include_input=False):
        if error["type"] == "json_invalid":  # pydantic's own words, e.g. "recursion limit exceeded at ..."
            return BadJsonError(f"the request body is not valid JSON: {error['msg'].removeprefix('Invalid JSON: ')}")
    return InvalidRequestError(_field_errors(exc))


async def _parse_json(request: Request, cls: type[t.Any], limits: ParseLimits) -> t.Any:
    body = await _bounded_body(request, limits)
    try:
        return cls.model_validate_json(body or b"{}")
    except ValidationError as exc:
        raise _validation_error(exc) from None


# ------------------------------------------------------------------------- multipart


class _StrictMultiPartParser(MultiPartParser):
    """Starlette's parser with this service's limits raised as its own errors, the
    closing boundary required and text fields that must be UTF-8."""

    def __init__(self, request: Request, stream: AsyncGenerator[bytes, None], limits: ParseLimits) -> None:
        # Starlette's own limits are lifted: the checks below raise kinds, not 400 text.
        super().__init__(request.headers, stream, max_files=float("inf"), max_fields=float("inf"))
        self.max_part_size = 2**62
        self.limits = limits
        self.files = 0
        self.text_fields = 0
        self.complete = False

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self._current_part.file is None and len(self._current_part.data) + end - start > self.limits.max_json_bytes:
            raise JsonTooLargeError(f"a text form field is larger than {self.limits.max_json_bytes:,} bytes")
        super().on_part_data(data, start, end)

    def on_headers_finished(self) -> None:
        super().on_headers_finished()
        if self._current_part.file is not None:
            self.files += 1
            if self.files > self.limits.max_files:
                raise UploadTooLargeError(f"more than {self.limits.max_files} files in one request")
        else:
            self.text_fields += 1
            if self.text_fields > MAX_TEXT_FIELDS:
                raise BadMultipartError(f"more than {MAX_TEXT_FIELDS} text fields in one request")

    def on_part_end(self) -> None:
        if self._current_part.file is None and self._charset == "utf-8":
            try:
                bytes(self._current_part.data).decode("utf-8")
            except UnicodeDecodeError:
                raise BadMultipartError("a text form field is not UTF-8 text") from None
        super().on_part_end()

    def on_end(self) -> None:
        self.complete = True


class _BoundedFormParser(FormParser):
    """Starlette's urlencoded form parser, its field size limit raised as this service's kind."""

    def __init__(self, request: Request, stream: AsyncGenerator[bytes, None], limits: ParseLimits) -> None:
        super().__init__(request.headers, stream, max_fields=MAX_TEXT_FIELDS, max_part_size=2**62)
        self.limits = limits

    def on_field_data(self, data: bytes, start: int, end: int) -> None:
        if self._current_field_size + end - start > self.limits.max_json_bytes:
            raise JsonTooLargeError(f"a form field is larger than {self.limits.max_json_bytes:,} bytes")
        super().on_field_data(data, start, end)


def _save_file_field(value: UploadFile | str, folder: str) -> Path:
    """A file field's content in ``folder`` under a generated name, copied in chunks. A
    text value is the file's content (BentoML would fetch it as a URL)."""
    with tempfile.NamedTemporaryFile(dir=folder, prefix="upload-", delete=False) as out:
        if isinstance(value, UploadFile):
            value.file.seek(0)
            shutil.copyfileobj(value.file, out, _COPY_CHUNK)
        else:
            out.write(value.encode("utf-8"))
    return Path(out.name)


async def _text_of(value: str | UploadFile, limits: ParseLimits) -> str | bytes:
    """A text field's value; one sent as a file (``-F genomics=@genes.json``) is read,
    within the same bound."""
    if isinstance(value, str):
        return value
    if value.size is not None and value.size > limits.max_json_bytes:
        raise JsonTooLargeError(f"a JSON form field is larger than {limits.max_json_bytes:,} bytes")
    return await value.read()


def _json_field(value: str | bytes) -> t.Any:
    """A text field as BentoML reads it: JSON when it parses, else the text itself."""
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        return value
    except UnicodeDecodeError:
        raise BadJsonError("a JSON form field is not UTF-8 text") from None
    except RecursionError:
        raise BadJsonError("a JSON form field is nested too deeply") from None
    except ValueError:  # Python's bound on integer digits (4300): no such number is a value
        raise BadJsonError("a JSON form field holds an integer too long to read") from None


async def _read_form(request: Request, limits: ParseLimits) -> FormData:
    async with contextlib.aclosing(_paced(request, limits)) as stream:
        parser: _BoundedFormParser | _StrictMultiPartParser
        if media_type(request) == URLENCODED:
            parser = _BoundedFormParser(request, stream, limits)
        else:
            parser = _StrictMultiPartParser(request, stream, limits)
        try:
            form = await parser.parse()
        except MultiPartException as exc:  # Starlette's fixed messages: no client value in them
            raise BadMultipartError(f"malformed form body: {exc.message}") from None
    if isinstance(parser, _StrictMultiPartParser) and not parser.complete:
        await form.close()
        raise BadMultipartError("the multipart body ends before its closing boundary (truncated, or another boundary)")
    return form


async def _parse_form(request: Request, cls: type[t.Any], limits: ParseLimits) -> t.Any:
    from bentoml._internal.context import request_temp_dir

    form = await _read_form(request, limits)
    try:
        data: dict[str, t.Any] = {}
        folder = request_temp_dir()
        for key in form:
            if key in cls.multipart_fields:
                paths = []
                for value in form.getlist(key):
                    paths.append(await anyio.to_thread.run_sync(_save_file_field, value, folder))
                data[key] = paths if _is_list_field(cls, key) else paths[0]
            else:
                data[key] = _json_field(await _text_of(form[key], limits))
    finally:
        await form.close()
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        raise _validation_error(exc) from None


def _is_list_field(cls: type[t.Any], key: str) -> bool:
    from _bentoml_sdk.typing_utils import is_list_type, is_union_type

    annotation = cls.model_fields[key].annotation
    if is_union_type(annotation):
        annotation = t.get_args(annotation)[0]
    return bool(is_list_type(annotation))


# --------------------------------------------------------------------------- install


def strict_parsing(service: t.Any, limits: Callable[[], ParseLimits]) -> None:
    """The APIs of ``service`` (a bentoml.Service) parse their requests here; ``limits``
    is called per request (the settings are read when the service starts)."""

    async def from_http_request(cls: type[t.Any], request: Request, serde: t.Any) -> t.Any:
        if media_type(request) in (FORM, URLENCODED):
            return await _parse_form(request, cls, limits())
        return await _parse_json(request, cls, limits())

    for api in service.apis.values():
        api.input_spec.from_http_request = classmethod(from_http_request)


def answer_input_errors(on_refused: Callable[[RadfusionInputError, str], None]) -> None:
    """Patch BentoML's API endpoint (process-wide, idempotent): an unsupported media type
    of the public service is 415, and a RadfusionInputError raised before or inside the
    API is answered with its kind and status; ``on_refused(error, api_name)`` counts it."""
    from _bentoml_impl.server.app import ServiceAppFactory

    if getattr(ServiceAppFactory, "_radfusion_input_errors", False):
        return
    original = ServiceAppFactory.api_endpoint

    async def api_endpoint(self, name: str, request: Request):
        try:
            if self.is_main:
                check_media_type(request)
            return await original(self, name, request)
        except RadfusionInputError as exc:
            on_refused(exc, name)
            return JSONResponse(exc.to_dict(), status_code=exc.http_status)

    ServiceAppFactory.api_endpoint = api_endpoint  # the patch itself
    ServiceAppFactory._radfusion_input_errors = True
