"""The API service's calls of the model: packed cases over a Unix socket of the model
service, as raw float32 frames, into the same continuous batches as its HTTP API
(radfusion.serving.http.model_batches).

Why not the model service's HTTP API for these: each call through BentoML's stack
(uvicorn's h11, Starlette, OpenTelemetry, the traffic middleware, the pickle serde) costs
the model service's event loop more CPU than a case's share of an ONNX Runtime run on
the demo grid, on the same cores (bench/serving.py, ``service_efficiency``). A frame here
costs a read and a write. The HTTP API stays: explanations, saliency, health and
metrics, and the calls of an API service that cannot reach the socket (it falls back).

A call: ``REQUEST`` (magic, rows, width), then rows × width little-endian float32.
An answer: ``ANSWER`` (magic, status, rows, cols), then for OK rows × cols
little-endian float64 (the probabilities exactly as the HTTP API's JSON gives them), or
else a UTF-8 reason of ``cols`` bytes. A frame of the wrong shape is answered BAD_INPUT;
one longer than the largest frame also ends its connection. The socket lives in a
directory only the service's user can enter."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import socket
import struct
import tempfile
import threading
import time
import typing as t
from pathlib import Path

import numpy as np
from bentoml.exceptions import BadInput, InternalServerError, ServiceUnavailable

from radfusion.serving.http.model_batches import ModelBatches

log = logging.getLogger("bentoml.radfusion")

MAGIC = b"RFM1"
REQUEST = struct.Struct("<4sII")
ANSWER = struct.Struct("<4sBII")
OK, OVERLOADED, BAD_INPUT, FAILED = range(4)
# asyncio's stream buffer: a whole packed case is read at once.
READ_LIMIT = 1 << 22
# Most cases in one frame: the API service sends at most its max batch size, or one
# case's treatment candidates.
MAX_ROWS = 256
# How long the API service keeps to HTTP after the socket could not be reached.
RETRY_SOCKET_AFTER_S = 30.0
SOCKET_DIR_PREFIX = "radfusion-model-"
# A socket folder this old without a socket is a model service that died starting.
STALE_AFTER_S = 300.0


class ModelSocketUnavailable(ConnectionError):
    """No model service listens at the socket: the caller uses its HTTP API."""


class ModelSocketDropped(ConnectionError):
    """The connection ended before the answer did (the model service stopped, or the
    frame was refused): the call may be retried."""


def request_header(rows: np.ndarray) -> bytes:
    """The header of a call of ``rows`` (cases × width little-endian float32), which
    follow it as they are."""
    return REQUEST.pack(MAGIC, *rows.shape)


async def read_answer(reader: asyncio.StreamReader) -> tuple[int, int, int, bytes]:
    """One answer: (status, rows, cols, its payload)."""
    magic, status, rows, cols = ANSWER.unpack(await reader.readexactly(ANSWER.size))
    if magic != MAGIC:
        raise ModelSocketDropped("the model socket answered in another protocol")
    return status, rows, cols, await reader.readexactly(rows * cols * 8 if status == OK else cols)


def _answer(status: int, rows: int = 0, cols: int = 0, payload: bytes = b"") -> bytes:
    return ANSWER.pack(MAGIC, status, rows, cols) + payload


def _reason(status: int, text: str) -> bytes:
    data = text.encode("utf-8", "replace")[:4096]
    return _answer(status, 0, len(data), data)


def listening(sock: Path) -> bool:
    """Whether a process accepts connections on the Unix socket ``sock`` (False: none
    does, or there is no socket; any other error is raised: it cannot tell)."""
    with socket.socket(socket.AF_UNIX) as probe:
        probe.settimeout(1)
        try:
            probe.connect(str(sock))
        except (ConnectionRefusedError, FileNotFoundError):
            return False
        return True


def remove_stale_sockets(temp: Path) -> list[Path]:
    """Removes this user's socket folders that no model service listens on any more
    (one killed, or stopped by a signal before it could remove its own); returns them."""
    removed = []
    for folder in temp.glob(f"{SOCKET_DIR_PREFIX}*"):
        try:
            if folder.is_symlink() or not folder.is_dir() or folder.stat().st_uid != os.getuid():
                continue
            sock = folder / "model.sock"
            if sock.exists():
                if listening(sock):
                    continue  # a live model service
            elif time.time() - folder.stat().st_mtime < STALE_AFTER_S:
                continue  # a model service starting now
            shutil.rmtree(folder)
            removed.append(folder)
        except OSError:
            continue  # another process's, or gone meanwhile
    return removed


class ModelSocketServer:
    """Listens on a fresh Unix socket (``path``) on a thread and event loop of its own,
    and answers each frame of ``width`` float32 columns and at most ``max_rows`` rows
    with ``batches``; ``overloaded`` is the exception type ``batches`` sheds load with."""

    def __init__(self, batches: ModelBatches, *, width: int, overloaded: type[BaseException], max_rows: int = MAX_ROWS):
        self.batches = batches
        self.width = width
        self.max_rows = max_rows
        self.overloaded = overloaded
        remove_stale_sockets(Path(tempfile.gettempdir()))
        self._dir = Path(tempfile.mkdtemp(prefix=SOCKET_DIR_PREFIX))  # mode 0700
        self.path = str(self._dir / "model.sock")
        self._loop = asyncio.new_event_loop()
        self._started = threading.Event()
        self._failed: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="radfusion-model-socket", daemon=True)
        self._thread.start()
        self._started.wait()
        if self._failed is not None:
            raise self._failed

    def alive(self) -> bool:
        return self._thread.is_alive()

    def close(self) -> None:
        """Stops listening, ends the connections and removes the socket."""
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
        shutil.rmtree(self._dir, ignore_errors=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            server = self._loop.run_until_complete(asyncio.start_unix_server(self._serve, self.path, limit=READ_LIMIT))
            os.chmod(self.path, 0o600)
        except BaseException as exc:  # noqa: BLE001 (raised by the constructor)
            self._failed = exc
            self._started.set()
            return
        self._started.set()
        try:
            self._loop.run_forever()
        finally:
            server.close()
            calls = asyncio.all_tasks(self._loop)
            for call in calls:
                call.cancel()
            self._loop.run_until_complete(asyncio.gather(*calls, return_exceptions=True))
            self._loop.run_until_complete(server.wait_closed())
            self._loop.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    head = await reader.readexactly(REQUEST.size)
                except asyncio.IncompleteReadError:
                    return  # the caller closed its connection between calls
                magic, rows, width = REQUEST.unpack(head)
                if magic != MAGIC:
                    return  # not a caller of ours
                size = rows * width * 4
                if width != self.width or not 0 < rows <= self.max_rows:
                    # A body no larger than the largest frame is read past, so the
                    # connection stays in step; a larger one cannot be trusted.
                    trusted = size <= self.max_rows * self.width * 4
                    if trusted:
                        await reader.readexactly(size)
                    writer.write(
                        _reason(
                            BAD_INPUT,
                            f"packed cases have shape ({rows}, {width}), expected (1 to {self.max_rows}, {self.width})",
                        )
                    )
                    await writer.drain()
                    if trusted:
                        continue
                    return
                body = await reader.readexactly(size)
                writer.write(await self._answer(np.frombuffer(body, "<f4").reshape(rows, width)))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the caller went away mid-call
        finally:
            writer.close()

    async def _answer(self, rows: np.ndarray) -> bytes:
        try:
            out = np.asarray(await self.batches(rows), dtype="<f8")
        except self.overloaded as exc:
            return _reason(OVERLOADED, str(exc))
        except Exception as exc:  # noqa: BLE001 (this call's answer, as the HTTP API's 500)
            return _reason(FAILED, f"{type(exc).__name__}: {exc}")
        if out.ndim != 2 or len(out) != len(rows):
            return _reason(FAILED, f"the model answered shape {out.shape} to {len(rows)} cases")
        return _answer(OK, out.shape[0], out.shape[1], out.tobytes())


class ModelSocketClient:
    """``await client(packed)``: the probabilities of packed cases (cases × width
    float32) from the model service listening at ``path``; connections kept open between
    calls, one per call in flight."""

    def __init__(self, path: str):
        self.path = path
        self._idle: list[tuple[asyncio.AbstractEventLoop, asyncio.StreamReader, asyncio.StreamWriter]] = []

    async def _connection(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        loop = asyncio.get_running_loop()
        while self._idle:
            owner, reader, writer = self._idle.pop()
            if owner is loop and not writer.is_closing():
                return reader, writer
            with contextlib.suppress(RuntimeError):  # a connection of a closed loop
                writer.close()
        try:
            return await asyncio.open_unix_connection(self.path, limit=READ_LIMIT)
        except (FileNotFoundError, ConnectionRefusedError, NotADirectoryError) as exc:
            raise ModelSocketUnavailable(f"no model service at its socket ({type(exc).__name__})") from None

    async def close(self) -> None:
        """Closes the kept connections of the running event loop."""
        loop = asyncio.get_running_loop()
        kept = [writer for owner, _, writer in self._idle if owner is loop]
        self._idle = [entry for entry in self._idle if entry[0] is not loop]
        for writer in kept:
            writer.close()
        await asyncio.gather(*(writer.wait_closed() for writer in kept), return_exceptions=True)

    async def __call__(self, packed: np.ndarray) -> np.ndarray:
        rows = np.ascontiguousarray(packed, dtype="<f4")
        if rows.ndim != 2:
            raise BadInput(f"packed cases have shape {rows.shape}, expected (cases, width)")
        reader, writer = await self._connection()
        reusable = False
        try:
            writer.write(request_header(rows))
            writer.write(rows.data.cast("B"))
            await writer.drain()
            status, count, cols, payload = await read_answer(reader)
            reusable = status != BAD_INPUT  # the server may have ended the connection
            if status == OK:
                return np.frombuffer(payload, "<f8").reshape(count, cols)
            raise _error(status, payload.decode("utf-8", "replace"))
        except (asyncio.IncompleteReadError, ConnectionResetError, ConnectionAbortedError, BrokenPipeError) as exc:
            raise ModelSocketDropped(f"the model service's connection ended mid-call ({type(exc).__name__})") from None
        finally:
            if reusable:
                self._idle.append((asyncio.get_running_loop(), reader, writer))
            else:
                writer.close()


def _error(status: int, reason: str) -> Exception:
    kinds: dict[int, t.Callable[[str], Exception]] = {
        OVERLOADED: ServiceUnavailable,
        BAD_INPUT: BadInput,
        FAILED: InternalServerError,
    }
    return kinds.get(status, InternalServerError)(reason)


class ModelCalls:
    """The API service's calls of the model: over the socket the model service names
    (``socket_path()``), else, and for frames over MAX_ROWS, by ``http(packed)``.
    ``enabled=False``: HTTP only (RADFUSION_MODEL_SOCKET=off). ``on_call(transport)``
    is told of each call ("socket" or "http"; metrics)."""

    def __init__(
        self,
        socket_path: t.Callable[[], t.Awaitable[str]],
        http: t.Callable[[np.ndarray], t.Awaitable[t.Any]],
        *,
        enabled: bool = True,
        on_call: t.Callable[[str], None] | None = None,
    ):
        self._socket_path = socket_path
        self._on_call = on_call or (lambda _: None)
        self._http = http
        self._enabled = enabled
        self._client: ModelSocketClient | None = None
        self._retry_at = 0.0
        self._failed_path = ""  # the socket that just refused: asked again, not retried
        self._lock = asyncio.Lock()

    async def __call__(self, packed: np.ndarray) -> t.Any:
        for _ in range(2):  # again with the socket the model service names now
            client = await self._socket() if len(packed) <= MAX_ROWS else None
            if client is None:
                break
            try:
                answer = await client(packed)
            except ModelSocketUnavailable:
                # No one listens there: the model service restarted (a new socket), or
                # it cannot be reached this way.
                self._client, self._failed_path = None, client.path
                continue
            except ModelSocketDropped:
                await client.close()  # its other connections went with the same service
                raise
            self._on_call("socket")
            return answer
        answer = await self._http(packed)
        self._on_call("http")
        return answer

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()

    async def _socket(self) -> ModelSocketClient | None:
        if self._client is not None or not self._enabled or time.monotonic() < self._retry_at:
            return self._client
        async with self._lock:
            if self._client is None and time.monotonic() >= self._retry_at:
                try:
                    path = await self._socket_path()
                except Exception as exc:  # noqa: BLE001 (an unreachable model service: HTTP)
                    log.info("model service names no socket (%s); calling it over HTTP", type(exc).__name__)
                    path = ""
                if path and path != self._failed_path:
                    self._client = ModelSocketClient(path)
                else:
                    self._retry_at = time.monotonic() + RETRY_SOCKET_AFTER_S
                self._failed_path = ""
        return self._client
