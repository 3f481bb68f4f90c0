"""The one place the server touches ``neuron_runtime.NeuronRuntime``.

It builds the runtime from the environment (``NEURONCORE_GROUP_SIZES`` and friends), loads each
model under a name the runtime accepts, and translates the runtime's statistics and exceptions into
the server's terms.  The runtime refuses two predictors with one name, so the second and later
copies of a model are registered as ``name#2``, ``name#3``... (``neuron_cores.copy_name``, the
names the runtime also gives copies loaded without a name): the server still routes them all as
``name``, and the runtime's per-group metrics show which copy is resident where.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections import Counter
from collections.abc import Mapping
from typing import Any

from neuron_cores.models import copy_name
from neuron_runtime import (
    InvalidInputError,
    NeuronRuntime,
    Predictor,
    ResourceExhaustedError,
    RuntimeClosedError,
    WorkerLostError,
)
from neuron_runtime.serving.batching import Answer
from neuron_runtime.serving.config import ServeConfig
from neuron_runtime.serving.server import InferenceServer, create_server
from neuron_runtime.serving.service import ModelLoader, PredictorLike, RuntimeHooks
from neuron_runtime.serving.tensors import TensorSpecLike


class LoopPredictor:
    """A predictor whose requests are sent and answered by the submitting event loop.

    The server submits only from its event loop and never blocks on the future, so it passes the
    running loop to ``Predictor.submit``: the group then lends that loop its workers, and a request
    goes from the loop to the worker process and back without the group's thread (docs/runtime.md,
    "Lending the workers to an event loop").
    """

    def __init__(self, predictor: Predictor) -> None:
        self._predictor = predictor

    @property
    def name(self) -> str:
        return self._predictor.name

    @property
    def group(self) -> int:
        return self._predictor.group

    @property
    def feed_tensors(self) -> Mapping[str, TensorSpecLike]:
        return self._predictor.feed_tensors

    @property
    def fetch_tensors(self) -> Mapping[str, TensorSpecLike]:
        return self._predictor.fetch_tensors

    def submit(self, feeds: Mapping[str, Any], /) -> concurrent.futures.Future[Answer]:
        return self._predictor.submit(feeds, loop=asyncio.get_running_loop())


def runtime_failure(broken: Mapping[int, str]) -> str | None:
    """The liveness verdict: None while every group serves, else which groups gave up and why."""
    if not broken:
        return None
    return "; ".join(f"NeuronCore Group {index}: {reason}" for index, reason in broken.items())


def bind_runtime(env: Mapping[str, str] | None) -> tuple[ModelLoader, RuntimeHooks]:
    runtime = NeuronRuntime.from_env(env)
    copies: Counter[str] = Counter()

    def load(path: str, name: str) -> PredictorLike:
        copies[name] += 1
        return LoopPredictor(runtime.load_model(path, copy_name(name, copies[name])))

    hooks = RuntimeHooks(
        stats=runtime.stats,
        close=runtime.close,
        resource_exhausted=(ResourceExhaustedError,),
        invalid_input=(InvalidInputError,),
        unavailable=(WorkerLostError, RuntimeClosedError),
        failure=lambda: runtime_failure(runtime.broken_groups()),
    )
    return load, hooks


def server_for_runtime(config: ServeConfig, env: Mapping[str, str] | None) -> InferenceServer:
    """A server whose models load into a ``NeuronRuntime`` built from ``env``."""
    loader, hooks = bind_runtime(env)
    return create_server(config, loader=loader, hooks=hooks)
