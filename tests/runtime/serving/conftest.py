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
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from neuron_runtime.api import GroupStats, RuntimeStats
from neuron_runtime.serving import InferenceServer, ModelEntry, ServeConfig, create_server
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
