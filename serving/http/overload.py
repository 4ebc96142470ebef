"""Load shedding as ASGI middleware: past ``max_in_flight`` requests in progress in this
worker, a new request is answered 503 with Retry-After at once, instead of queueing
until every caller times out. Health, readiness and metrics are never shed.

(BentoML's own ``max_concurrency`` answers 429 with no Retry-After: a client cannot
tell "you are sending too much" from "the server is busy".) The count lives in the
worker's event loop, so no lock is needed."""

from __future__ import annotations

import logging
from collections.abc import Callable

from radfusion.errors import RadfusionInputError
from radfusion.serving.http.asgi_json import error_messages
from radfusion.serving.http.auth import OPEN_PATHS

log = logging.getLogger("bentoml.radfusion")


class OverloadedError(RadfusionInputError):
    """The server or its model service is at capacity: retry after the Retry-After seconds."""

    kind = "overloaded"
    http_status = 503
    retryable = True

    def __init__(self, reason: str, retry_after_s: int):
        super().__init__(f"{reason}; retry after {retry_after_s} s")
        self.retry_after_s = retry_after_s

    @property
    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after_s)}


def overloaded(reason: str, retry_after_s: int) -> OverloadedError:
    """THE 503 answer (the shedding middleware's, the model service's, a batch case's):
    body ``{"error": "overloaded", "detail": ...}`` plus a Retry-After header."""
    return OverloadedError(reason, retry_after_s)


def overloaded_messages(error: OverloadedError) -> tuple[dict, dict]:
    """The ASGI messages of ``error``, for middleware that answers before the app."""
    headers = [(name.lower().encode(), value.encode()) for name, value in error.headers.items()]
    return error_messages(error, headers)


class InFlightLimit:
    def __init__(
        self,
        app,
        max_in_flight: int,
        retry_after_s: int = 2,
        open_paths: frozenset[str] = OPEN_PATHS,
        on_refused: Callable[[str, str], None] | None = None,
    ):
        if max_in_flight < 1:
            raise ValueError("max_in_flight must be at least 1")
        self.app = app
        self.max_in_flight = max_in_flight
        self.retry_after_s = retry_after_s
        self.open_paths = open_paths
        self.in_flight = 0
        self.shed = 0
        self.on_refused = on_refused or (lambda kind, path: None)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["path"] in self.open_paths:
            await self.app(scope, receive, send)
            return
        if self.in_flight >= self.max_in_flight:
            self.shed += 1
            self.on_refused(OverloadedError.kind, scope["path"])
            if self.shed == 1 or self.shed % 100 == 0:
                log.warning("overloaded: %d requests shed so far (limit %d in flight)", self.shed, self.max_in_flight)
            error = overloaded(f"{self.max_in_flight} requests already in progress", self.retry_after_s)
            for message in overloaded_messages(error):
                await send(message)
            return
        self.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1
