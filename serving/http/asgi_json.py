"""The ASGI messages of a JSON error answer, for middleware that must answer before
(or instead of) the BentoML app: same body shape as the API's errors."""

from __future__ import annotations

import json
from typing import Any


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
