"""The protocol-independent server: loaded models, readiness, routing, and running a request.

REST and gRPC differ only in how tensors are spelled on the wire; loading the models in the order
the operator wrote them, refusing requests until every one is loaded, picking the least-loaded
copy, handing the request to the runtime and counting all of it happen here, once.

Hand-over: ``Predictor.submit`` queues a request with the NeuronCore Group and returns a
``concurrent.futures.Future`` at once (the numpy work happens in the runtime's worker processes).
The event loop submits directly and the group's thread wakes the loop once when the answer is in
(``batching``).  No thread of ours waits on the runtime: an earlier design that ran the blocking
``Predictor.__call__`` in per-group thread pools cost two extra thread hand-offs and a GIL
hand-over per request.  ``--threads-per-group`` bounds how many runs one group holds at once;
requests that find it full wait here and are merged into one run when their model has a batch
dimension (see ``batching``).
"""

from __future__ import annotations

import concurrent.futures
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from typing import Any, Protocol

import numpy.typing as npt

from neuron_cores.models import ModelEntry
from neuron_runtime.api import RuntimeStats
from neuron_runtime.serving import batching
from neuron_runtime.serving.batching import Answer, CopyQueue, GroupGate
from neuron_runtime.serving.errors import ErrorKind, InferenceError, not_found
from neuron_runtime.serving.metrics import UNKNOWN_MODEL, ServingMetrics
from neuron_runtime.serving.model_config import max_batch_size, model_config
from neuron_runtime.serving.router import GroupLoad, ModelRouter
from neuron_runtime.serving.statistics import ModelStatistics, RequestTiming
from neuron_runtime.serving.tensors import TensorSpecLike, signature_of

log = logging.getLogger(__name__)

MODEL_VERSION = "1"
PLATFORM = "neuron_runtime"
# What ServerMetadata says, over REST and gRPC alike.
SERVER_NAME = "neuron-runtime"
EXTENSIONS = ("binary_tensor_data", "model_configuration", "statistics")

Arrays = dict[str, npt.NDArray[Any]]
Outputs = Mapping[str, npt.NDArray[Any]]


def server_version() -> str:
    """The installed package's version, which ServerMetadata reports."""
    try:
        return version("neuron-groups")
    except PackageNotFoundError:
        return "0.0.0"


@dataclass(frozen=True)
class RuntimeHooks:
    """What the server needs from a runtime besides loading models."""

    stats: Callable[[], RuntimeStats | None] | None = None
    close: Callable[[], None] | None = None
    resource_exhausted: tuple[type[BaseException], ...] = ()
    # Raised by a predictor for inputs it refuses (the server validates first; this is the net).
    invalid_input: tuple[type[BaseException], ...] = ()
    # Raised when a group cannot run the request now (its worker died mid-request: retry).
    unavailable: tuple[type[BaseException], ...] = ()
    # Why the runtime can no longer serve (a group gave up restarting its workers), or None.
    # Liveness reports it, so the kubelet restarts the pod.
    failure: Callable[[], str | None] | None = None


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

    def submit(self, feeds: Mapping[str, Any], /) -> concurrent.futures.Future[Answer]:
        """Queue one request without blocking; the future holds the outputs or the error."""
        ...


class ModelLoader(Protocol):
    def __call__(self, path: str, name: str) -> PredictorLike: ...


class ServedModel:
    def __init__(
        self,
        name: str,
        copies: Sequence[PredictorLike],
        load: GroupLoad,
        gates: Mapping[int, GroupGate],
        *,
        max_message_bytes: int = 64 * 1024 * 1024,
    ) -> None:
        first = copies[0]
        self.name = name
        self.signature = signature_of(name, first.feed_tensors, first.fetch_tensors)
        for other in copies[1:]:
            if signature_of(name, other.feed_tensors, other.fetch_tensors) != self.signature:
                raise ValueError(
                    f"copies of model '{name}' have different inputs or outputs; give different "
                    "models different names"
                )
        self.max_batch_size = max_batch_size(self.signature, max_message_bytes)
        self.statistics = ModelStatistics(name, MODEL_VERSION)
        queues = [
            CopyQueue(
                c,
                c.group,
                gates[c.group],
                self.max_batch_size,
                on_run=self.statistics.record_execution,
            )
            for c in copies
        ]
        self.router: ModelRouter[CopyQueue] = ModelRouter(queues, load)
        self.config = model_config(
            self.signature,
            platform=PLATFORM,
            groups=self.groups,
            max_message_bytes=max_message_bytes,
        )
        self.output_names = tuple(m.name for m in self.signature.outputs)

    def rows(self, inputs: Arrays) -> int:
        """How many inferences a request is: its batch when the model batches, else 1."""
        if self.max_batch_size == 0 or not inputs:
            return 1
        return int(next(iter(inputs.values())).shape[0])

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
        max_message_bytes: int = 64 * 1024 * 1024,
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
        self._max_message_bytes = max_message_bytes
        self._exhausted = resource_exhausted
        self._invalid = invalid_input
        self._unavailable = unavailable
        self._failure = failure
        self._models: dict[str, ServedModel] = {}
        self._gates: dict[int, GroupGate] = {}
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
        for found in copies.values():
            for predictor in found:
                self._gates.setdefault(predictor.group, GroupGate(self._threads))
        self._models = {
            name: ServedModel(
                name, found, self.load, self._gates, max_message_bytes=self._max_message_bytes
            )
            for name, found in copies.items()
        }
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
        """Nothing of the service's own to release: requests in flight belong to the runtime."""

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

    def served(self) -> tuple[ServedModel, ...]:
        """The loaded models, in load order of their first copy."""
        return tuple(self._models.values())

    def metric_label(self, name: str) -> str:
        return name if name in self.expected_names else UNKNOWN_MODEL

    # -- inference -------------------------------------------------------------------------

    async def infer(
        self, model: ServedModel, inputs: Arrays, timing: RequestTiming | None = None
    ) -> Outputs:
        with model.router.route() as copy:
            group = copy.group
            gauge = self.metrics.in_flight_of(group)
            gauge.inc()
            started = time.perf_counter()
            try:
                outputs = await batching.run(copy, inputs, model.rows(inputs), timing)
            except self._exhausted as exc:
                raise InferenceError(ErrorKind.EXHAUSTED, str(exc)) from exc
            except self._invalid as exc:
                raise InferenceError(ErrorKind.BAD_REQUEST, str(exc)) from exc
            except self._unavailable as exc:
                raise InferenceError(ErrorKind.UNAVAILABLE, str(exc)) from exc
            finally:
                gauge.dec()
            self.metrics.latency_of(model.name, group).observe(time.perf_counter() - started)
            return outputs

    def statistics(self, name: str, version: str | None = None) -> list[dict[str, Any]]:
        """Triton's ``model_stats`` entries: of one model, or of every model for an empty name."""
        if not name:
            if version:
                raise InferenceError(
                    ErrorKind.BAD_REQUEST,
                    f"version '{version}' was given without a model name; name the model too",
                )
            return [m.statistics.as_json() for m in self._models.values()]
        return [self.model(name, version).statistics.as_json()]

    def count_request(self, model: str, protocol: str) -> None:
        self.metrics.requests_of(self.metric_label(model), protocol).inc()

    def count_failure(self, model: str, protocol: str, reason: str) -> None:
        self.metrics.failures.labels(self.metric_label(model), protocol, reason).inc()
