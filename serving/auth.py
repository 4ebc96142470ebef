"""API-key / bearer-token authentication as ASGI middleware: BentoML's self-hosted
server has none.

A request must carry one of the configured tokens, as ``Authorization: Bearer <token>``
or ``X-API-Key: <token>``; otherwise it is answered 401 before its body is read.
Health, readiness and metrics stay open (load balancers and Prometheus scrape them).

Tokens come from RADFUSION_API_TOKENS (comma-separated, so a token can be rotated by
running with old and new for a while) and/or RADFUSION_API_TOKENS_FILE (one per line).
Without any, authentication is off and the service says so at startup; set
RADFUSION_AUTH=required to refuse every inference request until tokens are set."""

from __future__ import annotations

import hmac
import logging
import os
from collections.abc import Sequence
from pathlib import Path

from serving.asgi_json import json_error_messages

log = logging.getLogger("bentoml.radfusion")

TOKENS_ENV = "RADFUSION_API_TOKENS"
TOKENS_FILE_ENV = "RADFUSION_API_TOKENS_FILE"
AUTH_ENV = "RADFUSION_AUTH"  # "required": refuse all when no token is configured
OPEN_PATHS = frozenset({"/readyz", "/livez", "/healthz", "/metrics"})


def tokens_from_env() -> list[str]:
    tokens = [t.strip() for t in os.environ.get(TOKENS_ENV, "").split(",")]
    file = os.environ.get(TOKENS_FILE_ENV, "").strip()
    if file:
        tokens += [line.strip() for line in Path(file).read_text().splitlines()]
    return [t for t in tokens if t and not t.startswith("#")]


def auth_required_from_env() -> bool:
    return os.environ.get(AUTH_ENV, "").strip().lower() == "required"


def _presented_token(headers: dict[bytes, bytes]) -> bytes | None:
    authorization = headers.get(b"authorization", b"")
    scheme, _, value = authorization.partition(b" ")
    if scheme.lower() == b"bearer" and value.strip():
        return value.strip()
    api_key = headers.get(b"x-api-key", b"").strip()
    return api_key or None


def _json_401(detail: str) -> tuple[dict, dict]:
    return json_error_messages(401, "unauthorized", detail, [(b"www-authenticate", b'Bearer realm="radfusion"')])


class TokenAuth:
    def __init__(self, app, tokens: Sequence[str], required: bool = False, open_paths: frozenset[str] = OPEN_PATHS):
        self.app = app
        self.tokens = [t.encode() for t in tokens]
        self.enforced = bool(self.tokens) or required
        self.open_paths = open_paths
        if not self.enforced:
            log.warning("authentication is OFF: set %s (or %s) to require a token", TOKENS_ENV, TOKENS_FILE_ENV)

    def _valid(self, presented: bytes | None) -> bool:
        # Compare with every token, always: the time taken says nothing about which matched.
        matches = [hmac.compare_digest(presented or b"", token) for token in self.tokens]
        return presented is not None and any(matches)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or not self.enforced or scope["path"] in self.open_paths:
            await self.app(scope, receive, send)
            return
        presented = _presented_token(dict(scope.get("headers") or []))
        if self._valid(presented):
            await self.app(scope, receive, send)
            return
        if presented is None:
            detail = "missing API token (Authorization: Bearer <token> or X-API-Key)"
        else:
            detail = "invalid API token"
        log.info("request refused: %s", "no token" if presented is None else "invalid token")
        for message in _json_401(detail):
            await send(message)
