"""Load shedding as ASGI middleware: past ``max_in_flight`` requests in progress in this
worker, a new request is answered 503 with Retry-After at once, instead of queueing
until every caller times out. Health, readiness and metrics are never shed.

(BentoML's own ``max_concurrency`` answers 429 with no Retry-After: a client cannot
tell "you are sending too much" from "the server is busy".) The count lives in the
worker's event loop, so no lock is needed."""

from __future__ import annotations

import logging
from collections.abc import Callable

from radfusion.serving.http.asgi_json import json_error_messages
from radfusion.serving.http.auth import OPEN_PATHS

log = logging.getLogger("bentoml.radfusion")


def _json_503(retry_after_s: int, max_in_flight: int) -> tuple[dict, dict]:
    detail = f"{max_in_flight} requests already in progress; retry after {retry_after_s} s"
    return json_error_messages(503, "overloaded", detail, [(b"retry-after", str(retry_after_s).encode())])


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
            self.on_refused("overloaded", scope["path"])
            if self.shed == 1 or self.shed % 100 == 0:
                log.warning("overloaded: %d requests shed so far (limit %d in flight)", self.shed, self.max_in_flight)
            for message in _json_503(self.retry_after_s, self.max_in_flight):
                await send(message)
            return
        self.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1
