"""The protocol-independent server: loaded models, readiness, routing, and running a request.

REST and gRPC differ only in how tensors are spelled on the wire; loading the models in the order
the operator wrote them, refusing requests until every one is loaded, picking the least-loaded
copy, running the runtime's blocking predictor off the event loop and counting all of it happen
here, once.

Threads: a ``Predictor`` call blocks until the runtime's worker process answers (the numpy work
happens there, not under our GIL), so each NeuronCore Group gets a small thread pool whose threads
only wait.  Pools are per group so that a burst for one group cannot occupy the threads another
group's requests need.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

import numpy.typing as npt

from neuron_runtime.serving.config import ModelEntry
from neuron_runtime.serving.errors import ErrorKind, InferenceError, not_found
from neuron_runtime.serving.metrics import UNKNOWN_MODEL, ServingMetrics
from neuron_runtime.serving.router import GroupLoad, ModelRouter
from neuron_runtime.serving.tensors import TensorSpecLike, signature_of

log = logging.getLogger(__name__)

MODEL_VERSION = "1"
PLATFORM = "neuron_runtime"

Arrays = dict[str, npt.NDArray[Any]]


class PredictorLike(Protocol):
    """What the server needs of ``neuron_runtime.Predictor``."""

    @property
    def name(self) -> str: ...

    @property
    def group(self) -> int: ...

    @property
    def feed_tensors(self) -> Mapping[str, TensorSpecLike]: ...

    @property
    def fetch_tensors(self) -> Mapping[str, TensorSpecLike]: ...

    def __call__(self, feeds: Arrays, /) -> Mapping[str, npt.NDArray[Any]]: ...


class ModelLoader(Protocol):
    def __call__(self, path: str, name: str) -> PredictorLike: ...


class ServedModel:
    def __init__(self, name: str, copies: Sequence[PredictorLike], load: GroupLoad) -> None:
        first = copies[0]
        self.name = name
        self.signature = signature_of(name, first.feed_tensors, first.fetch_tensors)
        for other in copies[1:]:
            if signature_of(name, other.feed_tensors, other.fetch_tensors) != self.signature:
                raise ValueError(
                    f"copies of model '{name}' have different inputs or outputs; give different "
                    "models different names"
                )
        self.router: ModelRouter[PredictorLike] = ModelRouter(copies, load)

    @property
    def groups(self) -> tuple[int, ...]:
        return tuple(c.group for c in self.router.copies)


class InferenceService:
    def __init__(
        self,
        *,
        entries: Sequence[ModelEntry],
        loader: ModelLoader,
        metrics: ServingMetrics,
        threads_per_group: int = 4,
        resource_exhausted: tuple[type[BaseException], ...] = (),
        invalid_input: tuple[type[BaseException], ...] = (),
        unavailable: tuple[type[BaseException], ...] = (),
        failure: Callable[[], str | None] | None = None,
    ) -> None:
        self.entries = tuple(entries)
        self.metrics = metrics
        self.load = GroupLoad()
        self._loader = loader
        self._threads = threads_per_group
        self._exhausted = resource_exhausted
        self._invalid = invalid_input
        self._unavailable = unavailable
        self._failure = failure
        self._models: dict[str, ServedModel] = {}
        self._executors: dict[int, ThreadPoolExecutor] = {}
        self._loaded = False
        self._draining = False
        self.load_error: str | None = None
        self.expected_names = tuple(dict.fromkeys(e.name for e in self.entries))
        metrics.ready.set_function(lambda: 1.0 if self.ready else 0.0)

    # -- lifecycle -------------------------------------------------------------------------

    def load_models(self) -> None:
        """Load every entry in order (blocking: run it in a thread).  Copies share a name."""
        copies: dict[str, list[PredictorLike]] = {}
        for entry in self.entries:
            started = time.monotonic()
            predictor = self._loader(entry.path, entry.name)
            copies.setdefault(entry.name, []).append(predictor)
            log.info(
                "loaded model %s from %s into group %s in %.3fs",
                entry.name,
                entry.path,
                predictor.group,
                time.monotonic() - started,
            )
        models = {name: ServedModel(name, found, self.load) for name, found in copies.items()}
        for model in models.values():
            for index in model.groups:
                if index not in self._executors:
                    self._executors[index] = ThreadPoolExecutor(
                        max_workers=self._threads, thread_name_prefix=f"group{index}"
                    )
        self._models = models
        self._loaded = True

    @property
    def failure(self) -> str | None:
        """Why this server cannot recover by itself (restarting the process would), or None."""
        if self.load_error is not None:
            return f"loading the models failed: {self.load_error}"
        return self._failure() if self._failure is not None else None

    @property
    def live(self) -> bool:
        return self.failure is None

    @property
    def ready(self) -> bool:
        return self._loaded and not self._draining and self.live

    def start_draining(self) -> None:
        self._draining = True

    def close(self) -> None:
        for executor in self._executors.values():
            executor.shutdown(wait=True)

    # -- queries ---------------------------------------------------------------------------

    def model(self, name: str, version: str | None = None) -> ServedModel:
        served = self._models.get(name)
        if served is None:
            if name in self.expected_names and self.load_error is not None:
                raise InferenceError(
                    ErrorKind.UNAVAILABLE, f"loading the models failed: {self.load_error}"
                )
            if name in self.expected_names:
                raise InferenceError(
                    ErrorKind.UNAVAILABLE, f"model '{name}' is still loading; retry shortly"
                )
            known = ", ".join(self.expected_names)
            raise not_found(f"unknown model '{name}'; this server serves: {known}")
        if version not in (None, "", MODEL_VERSION):
            raise not_found(
                f"model '{name}' has no version '{version}'; its only version is {MODEL_VERSION}"
            )
        return served

    def is_model_ready(self, name: str, version: str | None = None) -> bool:
        try:
            self.model(name, version)
        except InferenceError:
            return False
        return not self._draining

    def metric_label(self, name: str) -> str:
        return name if name in self.expected_names else UNKNOWN_MODEL

    # -- inference -------------------------------------------------------------------------

    async def infer(self, model: ServedModel, inputs: Arrays) -> Mapping[str, npt.NDArray[Any]]:
        loop = asyncio.get_running_loop()
        with model.router.route() as predictor:
            group = predictor.group
            gauge = self.metrics.in_flight.labels(str(group))
            gauge.inc()
            started = time.perf_counter()
            try:
                outputs = await loop.run_in_executor(
                    self._executors[group], _call, predictor, inputs
                )
            except self._exhausted as exc:
                raise InferenceError(ErrorKind.EXHAUSTED, str(exc)) from exc
            except self._invalid as exc:
                raise InferenceError(ErrorKind.BAD_REQUEST, str(exc)) from exc
            except self._unavailable as exc:
                raise InferenceError(ErrorKind.UNAVAILABLE, str(exc)) from exc
            finally:
                gauge.dec()
            self.metrics.latency.labels(model.name, str(group)).observe(
                time.perf_counter() - started
            )
            return outputs

    def count_request(self, model: str, protocol: str) -> None:
        self.metrics.requests.labels(self.metric_label(model), protocol).inc()

    def count_failure(self, model: str, protocol: str, reason: str) -> None:
        self.metrics.failures.labels(self.metric_label(model), protocol, reason).inc()


def _call(
    predictor: Callable[[Arrays], Mapping[str, npt.NDArray[Any]]], inputs: Arrays
) -> Mapping[str, npt.NDArray[Any]]:
    return predictor(inputs)
