"""The model service's socket (radfusion.serving.http.model_socket): packed cases in,
the same continuous batches as its HTTP API, each caller's own rows back; refused
frames, failing runs and dropped connections end their call only; the API service
falls back to HTTP when the socket cannot be reached."""

from __future__ import annotations

import asyncio
import os
import socket
import stat
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from bentoml.exceptions import BadInput, InternalServerError, ServiceUnavailable

from radfusion.serving.http import model_socket
from radfusion.serving.http.model_batches import ModelBatches
from radfusion.serving.http.model_socket import (
    ModelCalls,
    ModelSocketClient,
    ModelSocketDropped,
    ModelSocketServer,
    ModelSocketUnavailable,
)

WIDTH = 3


class Model:
    """Doubles its rows, one run at a time; each run waits for ``gate`` while ``hold``
    is set; a negative case fails its run."""

    def __init__(self) -> None:
        self.runs: list[int] = []
        self.hold = threading.Event()
        self.gate = threading.Event()

    def __call__(self, rows: np.ndarray) -> np.ndarray:
        if self.hold.is_set():
            assert self.gate.wait(10)
        if np.any(rows < 0):
            raise ValueError("a negative case")
        self.runs.append(len(rows))
        return rows.astype(np.float32) * 2


@pytest.fixture
def served() -> Iterator[tuple[Model, ModelSocketServer]]:
    model = Model()
    batches = ModelBatches(model, max_rows=64, max_wait_s=30.0, overloaded=lambda: ServiceUnavailable("overloaded"))
    server = ModelSocketServer(batches, width=WIDTH, overloaded=ServiceUnavailable, max_rows=16)
    yield model, server
    server.close()
    batches.close()


def rows(*values: float) -> np.ndarray:
    return np.array([[v, v + 0.25, v + 0.5] for v in values], np.float32)


def test_calls_share_runs_and_get_their_own_rows(served) -> None:
    model, server = served
    client = ModelSocketClient(server.path)
    kept: list[int] = []

    async def main() -> list[np.ndarray]:
        model.hold.set()
        first = asyncio.ensure_future(client(rows(100)))
        await asyncio.sleep(0.2)  # its run started, and waits for the gate
        rest = [asyncio.ensure_future(client(rows(i))) for i in range(12)]
        await asyncio.sleep(0.3)  # all queued behind the held run
        model.gate.set()
        answers = await asyncio.gather(first, *rest)
        again = await asyncio.gather(*(client(rows(i, i + 1)) for i in range(4)))
        kept.append(len(client._idle))
        await client.close()
        return [*answers, *again]

    answers = asyncio.run(main())
    for i, answer in enumerate(answers[1:13]):
        assert answer.dtype == np.float64
        np.testing.assert_array_equal(answer, rows(i).astype(np.float64) * 2)
    np.testing.assert_array_equal(answers[0], rows(100) * 2)
    np.testing.assert_array_equal(answers[-1], rows(3, 4) * 2)
    # 13 calls of the first wave in at most 3 runs: the 12 queued behind the held one shared.
    assert sum(model.runs[:3]) >= 13 and len(model.runs) <= 3 + 4
    # Connections are kept for the next calls: never more than the calls once in flight.
    assert 1 <= kept[0] <= 13


def test_socket_only_for_its_user(served) -> None:
    _, server = served
    path = Path(server.path)
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    server.close()
    assert not path.parent.exists()


def test_refusals_and_failures_end_their_call_only(served) -> None:
    _, server = served
    client = ModelSocketClient(server.path)

    async def main() -> None:
        with pytest.raises(InternalServerError, match="ValueError: a negative case"):
            await client(rows(-1))
        np.testing.assert_array_equal(await client(rows(1)), rows(1) * 2)  # the same connection
        with pytest.raises(BadInput, match=r"shape \(1, 2\)"):
            await client(np.zeros((1, 2), np.float32))
        # Longer than the largest frame: refused, and the connection ended, so its
        # answer may be lost with it.
        with pytest.raises((BadInput, ModelSocketDropped)):
            await client(np.zeros((17, WIDTH), np.float32))
        with pytest.raises(BadInput):
            await client(np.zeros(WIDTH, np.float32))
        np.testing.assert_array_equal(await client(rows(2)), rows(2) * 2)
        await client.close()

    asyncio.run(main())


def test_overload_is_the_model_services_503(served) -> None:
    model, _ = served
    batches = ModelBatches(model, max_rows=4, max_wait_s=0.05, overloaded=lambda: ServiceUnavailable("overloaded"))
    server = ModelSocketServer(batches, width=WIDTH, overloaded=ServiceUnavailable)
    try:
        client = ModelSocketClient(server.path)

        async def main() -> list:
            model.hold.set()
            first = asyncio.ensure_future(client(rows(1)))
            await asyncio.sleep(0.2)
            late = asyncio.gather(*(client(rows(i)) for i in range(3)), return_exceptions=True)
            await asyncio.sleep(0.3)  # they wait longer than max_wait_s behind the held run
            model.gate.set()
            answers = [await first, *await late]
            await client.close()
            return answers

        answers = asyncio.run(main())
        np.testing.assert_array_equal(answers[0], rows(1) * 2)
        assert any(isinstance(a, ServiceUnavailable) for a in answers[1:]), answers
    finally:
        server.close()
        batches.close()


def raw_exchange(path: str, data: bytes) -> bytes:
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(10)
        sock.connect(path)
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
        return received


def test_hostile_frames_leave_the_server_serving(served) -> None:
    _, server = served
    # Not the protocol: the connection is closed unanswered.
    assert raw_exchange(server.path, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n") == b""
    # A length that cannot be trusted: refused without reading a body, and closed.
    answer = raw_exchange(server.path, model_socket.REQUEST.pack(model_socket.MAGIC, 2**31, WIDTH))
    magic, status, _, size = model_socket.ANSWER.unpack(answer[: model_socket.ANSWER.size])
    assert (magic, status) == (model_socket.MAGIC, model_socket.BAD_INPUT)
    assert b"expected (1 to 16, 3)" in answer[model_socket.ANSWER.size :]
    assert len(answer) == model_socket.ANSWER.size + size
    # A body cut short, then a header cut short: nothing answered, nothing broken.
    assert raw_exchange(server.path, model_socket.REQUEST.pack(model_socket.MAGIC, 1, WIDTH) + b"\0" * 5) == b""
    assert raw_exchange(server.path, b"RFM") == b""
    assert server.alive()

    async def one_call() -> np.ndarray:
        client = ModelSocketClient(server.path)
        answer = await client(rows(5))
        await client.close()
        return answer

    np.testing.assert_array_equal(asyncio.run(one_call()), rows(5) * 2)


def test_a_connection_dropped_mid_call_is_told_apart() -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "s")

        async def main() -> None:
            async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
                await reader.readexactly(model_socket.REQUEST.size)
                writer.close()

            server = await asyncio.start_unix_server(hang_up, path)
            async with server:
                with pytest.raises(ModelSocketDropped):
                    await ModelSocketClient(path)(rows(1))
            with pytest.raises(ModelSocketUnavailable):
                await ModelSocketClient(os.path.join(folder, "gone"))(rows(1))

        asyncio.run(main())


class Http:
    def __init__(self) -> None:
        self.calls = 0

    async def __call__(self, packed: np.ndarray) -> np.ndarray:
        self.calls += 1
        return np.asarray(packed, np.float64) * 2


def test_the_api_service_falls_back_to_http(served) -> None:
    _, server = served

    async def named(path: str) -> str:
        return path

    async def fails() -> str:
        raise ConnectionError("no such API")

    def calls_over(path_of, enabled: bool = True, packed: np.ndarray | None = None) -> tuple[list[str], Http]:
        transports: list[str] = []
        http = Http()
        calls = ModelCalls(path_of, http, enabled=enabled, on_call=transports.append)

        async def main() -> None:
            for _ in range(2):
                answer = await calls(rows(1) if packed is None else packed)
                assert answer.shape[1] == WIDTH
            await calls.close()

        asyncio.run(main())
        return transports, http

    assert calls_over(lambda: named(server.path))[0] == ["socket", "socket"]
    assert calls_over(lambda: named(""))[0] == ["http", "http"]
    assert calls_over(fails)[0] == ["http", "http"]
    assert calls_over(lambda: named(server.path + ".gone"))[0] == ["http", "http"]
    assert calls_over(lambda: named(server.path), enabled=False)[0] == ["http", "http"]
    too_many = np.zeros((model_socket.MAX_ROWS + 1, WIDTH), np.float32)
    assert calls_over(lambda: named(server.path), packed=too_many)[0] == ["http", "http"]


def test_a_restarted_model_service_is_found_at_its_new_socket() -> None:
    """The model service restarted: its kept connections dropped, its old socket
    refuses. The call that finds the dropped connection fails (the API service retries
    it); the next asks the model service for its socket again and uses the new one,
    without falling back to HTTP."""

    def started() -> tuple[ModelBatches, ModelSocketServer]:
        batches = ModelBatches(Model(), max_rows=8, max_wait_s=30.0, overloaded=lambda: ServiceUnavailable("x"))
        return batches, ModelSocketServer(batches, width=WIDTH, overloaded=ServiceUnavailable)

    first = started()
    current = {"path": first[1].path}
    transports: list[str] = []
    http = Http()

    async def named() -> str:
        return current["path"]

    calls = ModelCalls(named, http, on_call=transports.append)

    async def main() -> list:
        await asyncio.gather(*(calls(rows(i)) for i in range(4)))  # four connections kept
        first[1].close()
        first[0].close()
        second = started()
        current["path"] = second[1].path
        try:
            outcomes = []
            for i in range(3):
                try:
                    outcomes.append((await calls(rows(i)))[0, 0])
                except ModelSocketDropped:
                    outcomes.append("dropped")
            await calls.close()
            return outcomes
        finally:
            second[1].close()
            second[0].close()

    outcomes = asyncio.run(main())
    # At most the one call that found a dead connection failed, not one per kept connection.
    assert outcomes[1:] == [2.0, 4.0] and outcomes[0] in ("dropped", 0.0)
    assert http.calls == 0 and transports.count("socket") == 4 + outcomes.count(0.0) + 2


def test_stale_socket_folders_are_removed(served, tmp_path: Path) -> None:
    _, server = served
    temp = tmp_path / "temp"
    temp.mkdir()
    live = temp / "radfusion-model-live"
    live.mkdir()
    os.symlink(server.path, live / "model.sock")  # a model service listening there
    dead = temp / "radfusion-model-dead"
    dead.mkdir()
    with socket.socket(socket.AF_UNIX) as bound:
        bound.bind(str(dead / "model.sock"))  # bound, then closed: no one listens
    starting = temp / "radfusion-model-starting"
    starting.mkdir()
    abandoned = temp / "radfusion-model-abandoned"
    abandoned.mkdir()
    os.utime(abandoned, (0, 0))
    other = temp / "unrelated"
    other.mkdir()
    assert sorted(p.name for p in model_socket.remove_stale_sockets(temp)) == [
        "radfusion-model-abandoned",
        "radfusion-model-dead",
    ]
    assert sorted(p.name for p in temp.iterdir()) == ["radfusion-model-live", "radfusion-model-starting", "unrelated"]
