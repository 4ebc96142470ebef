"""The ASGI messages of a JSON error answer, for middleware that must answer before
(or instead of) the BentoML app: same body shape as the API's errors."""

from __future__ import annotations

import json
from typing import Any

from radfusion.errors import RadfusionInputError


def json_error_messages(
    status: int, error: str, detail: str, headers: list[tuple[bytes, bytes]] | None = None
) -> tuple[dict[str, Any], dict[str, Any]]:
    body = json.dumps({"error": error, "detail": detail}).encode()
    start = {
        "type": "http.response.start",
        "status": status,
        "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            *(headers or []),
        ],
    }
    return start, {"type": "http.response.body", "body": body}


def error_messages(
    error: RadfusionInputError, headers: list[tuple[bytes, bytes]] | None = None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The answer to ``error``: its kind, message and HTTP status, as the API answers."""
    return json_error_messages(error.http_status, error.kind, error.message, headers)
