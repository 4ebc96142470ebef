"""Connections before a request exists: a bound on how long its headers may take, and
a kind for HTTP that cannot be parsed.

uvicorn (as BentoML 1.4.40 runs it: h11, no ``limit_concurrency``) never times out a
request's headers: its keep-alive timer runs only between requests, so a client that
opens a connection and sends its headers one byte per second (or nothing at all) holds
it, and its memory, for as long as it likes. The ASGI app cannot see such a client (it
is called once the headers are complete), so the bound lives in the HTTP protocol: the
headers of each request must arrive within ``header_timeout_s`` of its first byte (of
the connection, for the first request), or the connection is answered 408 and closed.
Request bodies are bounded by BentoML's traffic timeout (504) once the app has them.

``install()`` makes this protocol uvicorn's "auto" HTTP protocol in this process (the
service module is imported before each worker's uvicorn loads its configuration);
``set_header_timeout`` arms it, which only the public service does: its internal model
service keeps uvicorn's behaviour."""

from __future__ import annotations

import asyncio
import json
import logging
from http import HTTPStatus

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from radfusion.errors import RadfusionInputError

log = logging.getLogger("bentoml.radfusion")

PROTOCOL = f"{__name__}:HeaderDeadlineProtocol"


class RequestHeaderTimeoutError(RadfusionInputError):
    """A request's headers did not arrive within RADFUSION_HEADER_TIMEOUT_S (a stalled or
    deliberately slow client): answered 408 and the connection closed."""

    kind = "request_header_timeout"
    http_status = 408


class BadHttpRequestError(RadfusionInputError):
    """The request line or headers are not valid HTTP/1.1 (or larger than the server
    takes): answered 400 and the connection closed."""

    kind = "bad_http_request"
    http_status = 400


_header_timeout_s: float | None = None
_timed_out = 0


def set_header_timeout(seconds: float) -> None:
    global _header_timeout_s
    _header_timeout_s = seconds


def _raw_answer(error: RadfusionInputError) -> bytes:
    body = json.dumps(error.to_dict()).encode()
    head = (
        f"HTTP/1.1 {error.http_status} {HTTPStatus(error.http_status).phrase}\r\n"
        "content-type: application/json\r\n"
        f"content-length: {len(body)}\r\n"
        "connection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


class HeaderDeadlineProtocol(H11Protocol):
    _header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        if self._header_timer is None and self.conn.their_state is h11.IDLE:
            self._arm()  # the first byte of the next request on a kept-alive connection
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE:
            self._disarm()  # its headers are complete (or the connection failed)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to unparsable HTTP, with a kind like every other 4xx."""
        self._disarm()
        if not self.transport.is_closing():
            self.transport.write(_raw_answer(BadHttpRequestError("the request line or headers are not valid HTTP")))
            self.transport.close()

    def _arm(self) -> None:
        if _header_timeout_s is not None:
            self._header_timer = self.loop.call_later(_header_timeout_s, self._on_header_timeout)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _on_header_timeout(self) -> None:
        global _timed_out
        self._header_timer = None
        if self.conn.their_state is not h11.IDLE or self.transport.is_closing():
            return
        _timed_out += 1
        if _timed_out == 1 or _timed_out % 100 == 0:  # a slow-header attack must not flood the log
            log.warning("closed %d connections whose request headers took over %g s", _timed_out, _header_timeout_s)
        error = RequestHeaderTimeoutError(f"the request headers did not arrive within {_header_timeout_s:g} s")
        self.transport.write(_raw_answer(error))
        self.transport.close()  # connection_lost tells h11


def install() -> None:
    """Make HeaderDeadlineProtocol uvicorn's "auto" HTTP protocol in this process."""
    from uvicorn.config import HTTP_PROTOCOLS

    HTTP_PROTOCOLS["auto"] = PROTOCOL
