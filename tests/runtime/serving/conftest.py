"""Fixtures for the serving tests: a fake runtime and a server running on its own loop thread.

The fake predictors follow ``neuron_runtime.Predictor``'s public shape (name, group,
feed_tensors, fetch_tensors, a non-blocking ``submit`` returning a future, which a thread of the
fake's own completes, as a NeuronCore Group's thread does) so the protocol layers are tested without
worker processes; tests against the real runtime live in test_with_runtime.py and
test_shutdown.py.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import hpack
import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from neuron_runtime.api import GroupStats, RuntimeStats
from neuron_runtime.serving import InferenceServer, ModelEntry, ServeConfig, create_server, http2
from neuron_runtime.serving.service import RuntimeHooks


@dataclass(frozen=True)
class Spec:
    name: str
    shape: tuple[int, ...]
    dtype: str


class FakeExhaustedError(Exception):
    pass


# Stands in for the runtime's group threads; its threads only run fake predictions.
_RUNTIME_THREADS = concurrent.futures.ThreadPoolExecutor(max_workers=32)


@dataclass
class FakePredictor:
    """``output = input @ ones(4, 2) * scale``; ``gate`` (when set) holds calls until released."""

    name: str
    group: int
    scale: float = 1.0
    gate: threading.Event | None = None
    entered: threading.Semaphore = field(default_factory=lambda: threading.Semaphore(0))
    calls: int = 0
    fail_with: BaseException | None = None

    @property
    def feed_tensors(self) -> Mapping[str, Spec]:
        return {"input": Spec("input", (-1, 4), "float32")}

    @property
    def fetch_tensors(self) -> Mapping[str, Spec]:
        return {
            "output": Spec("output", (-1, 2), "float32"),
            "label": Spec("label", (-1,), "int64"),
        }

    def submit(
        self, feeds: Mapping[str, Any], /
    ) -> concurrent.futures.Future[dict[str, np.ndarray[Any, Any]]]:
        return _RUNTIME_THREADS.submit(self, feeds)

    def __call__(self, feeds: Mapping[str, Any], /) -> dict[str, np.ndarray[Any, Any]]:
        self.calls += 1
        self.entered.release()
        if self.gate is not None:
            self.gate.wait(timeout=30)
        if self.fail_with is not None:
            raise self.fail_with
        x = feeds["input"]
        out = (x @ np.ones((4, 2), dtype=np.float32) * self.scale).astype(np.float32)
        return {"output": out, "label": np.argmax(x, axis=1).astype(np.int64)}


@dataclass
class FakeRuntime:
    """Places models by the seed's rule: fill the groups in order, then wrap around."""

    group_count: int = 2
    predictors: list[FakePredictor] = field(default_factory=list)
    gate: threading.Event | None = None
    load_gate: threading.Event | None = None
    fail_load: str | None = None
    closed: bool = False

    def load(self, path: str, name: str) -> FakePredictor:
        if self.load_gate is not None:
            self.load_gate.wait(timeout=30)
        if self.fail_load is not None and name == self.fail_load:
            raise ValueError(f"cannot load {path}")
        group = len(self.predictors) % self.group_count
        predictor = FakePredictor(name=name, group=group, gate=self.gate)
        self.predictors.append(predictor)
        return predictor

    def stats(self) -> RuntimeStats:
        groups = [
            GroupStats(
                index=g,
                cores=(g,),
                resident_model=next((p.name for p in self.predictors if p.group == g), None),
                switches=3 * g,
                switch_seconds=0.5 * g,
                queue_depth=g,
                requests=sum(p.calls for p in self.predictors if p.group == g),
            )
            for g in range(self.group_count)
        ]
        return RuntimeStats(groups, {g: 0.25 * g for g in range(self.group_count)})

    def close(self) -> None:
        self.closed = True

    def hooks(self) -> RuntimeHooks:
        return RuntimeHooks(
            stats=self.stats, close=self.close, resource_exhausted=(FakeExhaustedError,)
        )


class ServerThread:
    """An InferenceServer on its own event loop in a daemon thread, for synchronous clients."""

    def __init__(self, server: InferenceServer) -> None:
        self.server = server
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self.call(server.start())

    def call(self, coro: Any, timeout: float = 60) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.http_port}"

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.server.grpc_port}"

    def stop(self) -> None:
        self.call(self.server.shutdown())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=30)
        self.loop.close()


def make_config(models: list[tuple[str, str]], **overrides: Any) -> ServeConfig:
    settings: dict[str, Any] = {
        "host": "127.0.0.1",
        "http_port": 0,
        "grpc_port": 0,
        "shutdown_grace_s": 10.0,
    }
    settings.update(overrides)
    return ServeConfig(models=tuple(ModelEntry(n, p) for n, p in models), **settings)


@pytest.fixture
def run_server() -> Iterator[Callable[[InferenceServer], ServerThread]]:
    """Run servers on loop threads; every one started is stopped after the test."""
    started: list[ServerThread] = []

    def run(server: InferenceServer) -> ServerThread:
        thread = ServerThread(server)
        started.append(thread)
        return thread

    yield run
    for thread in started:
        thread.stop()


@pytest.fixture
def serve_config() -> Callable[..., ServeConfig]:
    """``make_config``: a config on 127.0.0.1 with free ports."""
    return make_config


@pytest.fixture
def start_server(
    run_server: Callable[[InferenceServer], ServerThread],
) -> Callable[..., ServerThread]:
    """Start a server over a fake runtime (loaded, unless wait_loaded=False)."""

    def start(
        runtime: FakeRuntime,
        models: list[tuple[str, str]] | None = None,
        wait_loaded: bool = True,
        **overrides: Any,
    ) -> ServerThread:
        config = make_config(models or [("mlp", "/m/mlp")], **overrides)
        server = create_server(
            config, loader=runtime.load, hooks=runtime.hooks(), registry=CollectorRegistry()
        )
        thread = run_server(server)
        if wait_loaded:
            thread.call(server.wait_loaded())
        return thread

    return start


@pytest.fixture
def fake_runtime() -> FakeRuntime:
    return FakeRuntime()


@pytest.fixture
def make_runtime() -> Callable[..., FakeRuntime]:
    """FakeRuntime's constructor (test modules cannot import conftest under importlib mode)."""
    return FakeRuntime


@pytest.fixture
def exhausted_error() -> type[Exception]:
    return FakeExhaustedError


Frame = tuple[int, int, int, bytes]  # type, flags, stream, payload


class RawHttp2:
    """A bare HTTP/2 client for tests: sends frames exactly as told, reads the server's back.

    Header blocks it sends are HPACK-encoded with the ``hpack`` package; header blocks it reads
    are decoded in order, so the server's encoding is checked by an independent decoder.
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.encoder = hpack.Encoder()
        self.decoder = hpack.Decoder()

    @classmethod
    async def connect(
        cls, port: int, settings: tuple[tuple[int, int], ...] = (), preface: bytes = http2.PREFACE
    ) -> RawHttp2:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        client = cls(reader, writer)
        payload = b"".join(
            key.to_bytes(2, "big") + value.to_bytes(4, "big") for key, value in settings
        )
        writer.write(preface + http2.frame(http2.SETTINGS, 0, 0, payload))
        return client

    def send(self, kind: int, flags: int, stream_id: int, payload: bytes = b"") -> None:
        self.writer.write(http2.frame(kind, flags, stream_id, payload))

    def block(self, headers: list[tuple[str, str]]) -> bytes:
        encoded: bytes = self.encoder.encode(headers)
        return encoded

    def request(
        self,
        stream_id: int,
        body: bytes,
        path: str = "/test/Echo",
        *,
        method: str = "POST",
        content_type: str = "application/grpc",
        extra: tuple[tuple[str, str], ...] = (),
    ) -> None:
        headers = [
            (":method", method),
            (":scheme", "http"),
            (":path", path),
            (":authority", "test"),
            ("content-type", content_type),
            ("te", "trailers"),
            *extra,
        ]
        self.send(http2.HEADERS, http2.END_HEADERS, stream_id, self.block(headers))
        self.send(http2.DATA, http2.END_STREAM, stream_id, body)

    async def frame(self, timeout: float = 10.0) -> Frame:
        head = await asyncio.wait_for(self.reader.readexactly(9), timeout)
        length = int.from_bytes(head[:3], "big")
        payload = await asyncio.wait_for(self.reader.readexactly(length), timeout)
        return head[3], head[4], int.from_bytes(head[5:9], "big") & 0x7FFFFFFF, payload

    async def until(self, kind: int, stream_id: int | None = None) -> Frame:
        """The next frame of ``kind`` (on ``stream_id``), skipping others; header blocks decode."""
        while True:
            got = await self.frame()
            if got[0] == http2.HEADERS:
                self.decoder.decode(got[3])
            if got[0] == kind and (stream_id is None or got[2] == stream_id):
                return got

    async def response(
        self, stream_id: int, *, window_updates: bool = True, headers_read: bool = False
    ) -> tuple[dict[str, str], bytes, dict[str, str]]:
        """Headers, body and trailers of one stream, acknowledging its DATA as it arrives.

        ``headers_read``: the caller has read the stream's headers already, so the next header
        block is the trailers.
        """
        headers: dict[str, str] = {":read": "before"} if headers_read else {}
        trailers: dict[str, str] = {}
        body = bytearray()
        while True:
            kind, flags, sid, payload = await self.frame()
            if kind == http2.HEADERS:
                fields = {str(k): str(v) for k, v in self.decoder.decode(payload)}
                if sid == stream_id:
                    (trailers if headers else headers).update(fields)
            elif kind == http2.DATA and sid == stream_id:
                body += payload
                if window_updates and payload:
                    increment = len(payload).to_bytes(4, "big")
                    self.send(http2.WINDOW_UPDATE, 0, 0, increment)
                    self.send(http2.WINDOW_UPDATE, 0, stream_id, increment)
            elif kind == http2.RST_STREAM and sid == stream_id:
                raise AssertionError(f"stream {stream_id} reset: {payload.hex()}")
            if (
                sid == stream_id
                and flags & http2.END_STREAM
                and kind in (http2.HEADERS, http2.DATA)
            ):
                return headers, bytes(body), trailers

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError):
            await self.writer.wait_closed()


@pytest.fixture
def raw_http2() -> type[RawHttp2]:
    """The bare HTTP/2 client class (``await raw_http2.connect(port)``)."""
    return RawHttp2
