"""Request body size limit as ASGI middleware: BentoML's self-hosted server has none.

A declared Content-Length over the limit is answered 413 before the body is read; a
chunked body is counted as it streams and the request is cut off once it passes the
limit, the app's own answer replaced by the 413."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from radfusion.serving.http.asgi_json import error_messages
from radfusion.serving.study_files import UploadTooLargeError


def _json_413(max_bytes: int) -> tuple[dict[str, Any], dict[str, Any]]:
    return error_messages(UploadTooLargeError(f"request body exceeds the limit of {max_bytes} bytes"))


class BodySizeLimit:
    def __init__(self, app, max_bytes: int, on_refused: Callable[[str, str], None] | None = None):
        self.app = app
        self.max_bytes = max_bytes
        self.on_refused = on_refused or (lambda kind, path: None)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            self.on_refused(UploadTooLargeError.kind, scope["path"])
            for message in _json_413(self.max_bytes):
                await send(message)
            return

        received = 0
        exceeded = False
        started = False

        async def counting_receive():
            nonlocal received, exceeded
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    exceeded = True
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message) -> None:
            nonlocal started
            if exceeded:
                return
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except Exception:
            if not exceeded:
                raise
        if exceeded and not started:
            self.on_refused(UploadTooLargeError.kind, scope["path"])
            for message in _json_413(self.max_bytes):
                await send(message)
