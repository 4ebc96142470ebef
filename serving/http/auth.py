"""API-key / bearer-token authentication as ASGI middleware: BentoML's self-hosted
server has none.

A request must carry one of the configured tokens, as ``Authorization: Bearer <token>``
or ``X-API-Key: <token>``; otherwise it is answered 401 before its body is read.
Health, readiness and metrics stay open (load balancers and Prometheus scrape them).

Tokens come from RADFUSION_API_TOKENS (comma-separated, so a token can be rotated by
running with old and new for a while) and/or RADFUSION_API_TOKENS_FILE (one per line).

Secure by default: without any token the service refuses to start
(``check_auth_config``, called by the service and by the launcher). The only way to run
without tokens is RADFUSION_AUTH=off, a loopback-only development run: the middleware
then serves loopback clients only and answers everyone else 403."""

from __future__ import annotations

import hmac
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from radfusion.errors import RadfusionInputError
from radfusion.serving.http.asgi_json import error_messages

log = logging.getLogger("bentoml.radfusion")

TOKENS_ENV = "RADFUSION_API_TOKENS"
TOKENS_FILE_ENV = "RADFUSION_API_TOKENS_FILE"
AUTH_ENV = "RADFUSION_AUTH"  # "off": no tokens, loopback clients only (development)
OPEN_PATHS = frozenset({"/readyz", "/livez", "/healthz", "/metrics"})
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "::1", "localhost"})


class UnauthorizedError(RadfusionInputError):
    """The request carries no API token, or one the server does not know."""

    kind = "unauthorized"
    http_status = 401


class ForbiddenError(RadfusionInputError):
    """Authentication is off and the client is not on the loopback interface."""

    kind = "forbidden"
    http_status = 403


class AuthNotConfiguredError(RuntimeError):
    """The service was asked to start with no API token and without RADFUSION_AUTH=off."""


def tokens_from_env(environ: Mapping[str, str] | None = None) -> list[str]:
    environ = environ if environ is not None else os.environ
    tokens = [t.strip() for t in environ.get(TOKENS_ENV, "").split(",")]
    file = environ.get(TOKENS_FILE_ENV, "").strip()
    if file:
        tokens += [line.strip() for line in Path(file).read_text().splitlines()]
    return [t for t in tokens if t and not t.startswith("#")]


def auth_off_from_env(environ: Mapping[str, str] | None = None) -> bool:
    """RADFUSION_AUTH=off: the explicit, loopback-only development mode."""
    return (environ if environ is not None else os.environ).get(AUTH_ENV, "").strip().lower() == "off"


def is_loopback(host: str) -> bool:
    host = host.strip("[]")
    return host in LOOPBACK_HOSTS or host.startswith("127.")


def check_auth_config(environ: Mapping[str, str] | None = None) -> None:
    """Raise AuthNotConfiguredError unless tokens are configured or auth is explicitly off."""
    environ = environ if environ is not None else os.environ
    if auth_off_from_env(environ) or tokens_from_env(environ):
        return
    raise AuthNotConfiguredError(
        f"no API token configured: set {TOKENS_ENV} (or {TOKENS_FILE_ENV}); for a loopback-only "
        f"development run without tokens set {AUTH_ENV}=off"
    )


def _presented_token(headers: dict[bytes, bytes]) -> bytes | None:
    authorization = headers.get(b"authorization", b"")
    scheme, _, value = authorization.partition(b" ")
    if scheme.lower() == b"bearer" and value.strip():
        return value.strip()
    api_key = headers.get(b"x-api-key", b"").strip()
    return api_key or None


def _json_401(detail: str) -> tuple[dict, dict]:
    return error_messages(UnauthorizedError(detail), [(b"www-authenticate", b'Bearer realm="radfusion"')])


def _json_403(detail: str) -> tuple[dict, dict]:
    return error_messages(ForbiddenError(detail))


class TokenAuth:
    """``auth_off``: no token checked, but only loopback clients served. With no tokens
    and auth not off every inference request is refused (the service should not have
    started; this is the second line of defence). ``on_refused(kind, path)`` counts refusals
    (radfusion.serving.http.metrics)."""

    def __init__(
        self,
        app,
        tokens: Sequence[str],
        auth_off: bool = False,
        open_paths: frozenset[str] = OPEN_PATHS,
        on_refused: Callable[[str, str], None] | None = None,
    ):
        self.app = app
        self.tokens = [t.encode() for t in tokens]
        self.auth_off = auth_off and not self.tokens
        self.open_paths = open_paths
        self.on_refused = on_refused or (lambda kind, path: None)
        if self.auth_off:
            log.warning("authentication is OFF (%s=off): serving loopback clients only", AUTH_ENV)

    def _valid(self, presented: bytes | None) -> bool:
        # Compare with every token, always: the time taken says nothing about which matched.
        matches = [hmac.compare_digest(presented or b"", token) for token in self.tokens]
        return presented is not None and any(matches)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["path"] in self.open_paths:
            await self.app(scope, receive, send)
            return
        if self.auth_off:
            client = scope.get("client") or ("", 0)
            if is_loopback(str(client[0])):
                await self.app(scope, receive, send)
                return
            self.on_refused(ForbiddenError.kind, scope["path"])
            log.info("request refused: authentication is off and the client is not on loopback")
            for message in _json_403(f"authentication is off ({AUTH_ENV}=off): only loopback clients are served"):
                await send(message)
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
        self.on_refused(UnauthorizedError.kind, scope["path"])
        for message in _json_401(detail):
            await send(message)
