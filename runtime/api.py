"""``NeuronRuntime`` and ``Predictor``: the public face of the runtime.

One runtime per process owns the process's core claim (through the node-local arbiter), carves
the claimed cores into NeuronCore Groups per ``NEURONCORE_GROUP_SIZES``, and loads models by the
seed's rule (``neuron_cores.load_group``, which the operator's planner also follows): the k-th
model loaded goes to group k while groups remain, later ones wrap around into the same groups
again, in order, and are context-switched there.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections.abc import Mapping
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from neuron_cores import (
    GROUP_SIZES_ENV,
    VISIBLE_CORES_ENV,
    copy_name,
    load_group,
    split_into_groups,
)
from neuron_runtime.arbiter import CoreArbiter, CoreClaim
from neuron_runtime.artifact import Artifact, TensorSpec, load_artifact
from neuron_runtime.config import RuntimeConfig, config_from_env
from neuron_runtime.errors import (
    InvalidInputError,
    ModelDoesNotFitError,
    ResourceExhaustedError,
    RuntimeClosedError,
)
from neuron_runtime.group import Group
from neuron_runtime.scheduling import make_policy

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GroupInfo:
    index: int
    cores: tuple[int, ...]


@dataclass(frozen=True)
class GroupStats:
    index: int
    cores: tuple[int, ...]
    resident_model: str | None
    switches: int
    switch_seconds: float
    queue_depth: int
    requests: int
    # Times the group replaced its workers after one died (docs/runtime.md, "Worker deaths").
    restarts: int = 0


@dataclass(frozen=True)
class RuntimeStats:
    groups: list[GroupStats]
    core_busy_seconds: dict[int, float]


class Predictor:
    """One loaded model instance in one group; thread-safe, blocking ``__call__``."""

    def __init__(self, runtime: NeuronRuntime, name: str, artifact: Artifact, group: int) -> None:
        self._runtime = runtime
        self._artifact = artifact
        self.name = name
        self.path = str(artifact.path)
        self.group = group
        self.cores = artifact.cores
        self.feed_tensors: dict[str, TensorSpec] = {t.name: t for t in artifact.inputs}
        self.fetch_tensors: dict[str, TensorSpec] = {t.name: t for t in artifact.outputs}

    def __repr__(self) -> str:
        return f"Predictor(name={self.name!r}, path={self.path!r}, group={self.group})"

    def _batch(self, feeds: Mapping[str, Any]) -> np.ndarray[Any, Any]:
        expected = set(self.feed_tensors)
        if set(feeds) != expected:
            raise InvalidInputError(
                f"model {self.name!r} takes feeds {sorted(expected)}, got {sorted(feeds)}"
            )
        (spec,) = self.feed_tensors.values()
        array = np.asarray(feeds[spec.name])
        if array.dtype != np.dtype(spec.dtype):
            raise InvalidInputError(
                f"feed {spec.name!r} of model {self.name!r} must be {spec.dtype}, got "
                f"{array.dtype}; convert it with .astype('{spec.dtype}')"
            )
        fixed = spec.shape[1:]
        if array.ndim != len(spec.shape) or array.shape[1:] != fixed or array.shape[0] < 1:
            raise InvalidInputError(
                f"feed {spec.name!r} of model {self.name!r} must have shape "
                f"{list(spec.shape)} (-1: any batch size >= 1), got {list(array.shape)}"
            )
        return np.ascontiguousarray(array)

    def submit(
        self, feeds: Mapping[str, Any], *, loop: asyncio.AbstractEventLoop | None = None
    ) -> Future[dict[str, np.ndarray[Any, Any]]]:
        """Queue one request without blocking; the future holds the outputs or the error.

        ``loop``: the running event loop of the caller, which then sends the request to the
        workers and reads the answer itself, without the group's thread (docs/runtime.md).  The
        future is resolved on that loop, so never block the loop waiting for it.
        """
        batch = self._batch(feeds)
        return self._runtime._group(self.group).submit(self.name, batch, loop)

    def __call__(self, feeds: Mapping[str, Any]) -> dict[str, np.ndarray[Any, Any]]:
        return self.submit(feeds).result()


class NeuronRuntime:
    """One per process: owns core claims, groups and workers.  Also a context manager."""

    def __init__(self, config: RuntimeConfig) -> None:
        self.config = config
        self.arbiter = CoreArbiter(config.state_dir, config.node_cores)
        self._claim, layout = self._claim_cores(config)
        self.groups = [GroupInfo(i, cores) for i, cores in enumerate(layout)]
        self._groups = [
            Group(
                i,
                cores,
                make_policy(config.scheduler, config.max_streak),
                config.core_memory_bytes * len(cores),
            )
            for i, cores in enumerate(layout)
        ]
        self._predictors: list[Predictor] = []
        self._lock = threading.Lock()
        self._closed = False
        log.info(
            "runtime pid %s: %s=%s, groups %s",
            os.getpid(), GROUP_SIZES_ENV, config.group_sizes_text, [g.cores for g in self.groups],
        )  # fmt: skip

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> NeuronRuntime:
        return cls(config_from_env(os.environ if env is None else env))

    def _claim_cores(self, config: RuntimeConfig) -> tuple[CoreClaim, list[tuple[int, ...]]]:
        if config.visible_cores is None:
            return self.arbiter.claim_groups(
                config.group_sizes, group_sizes=config.group_sizes_text
            )
        try:
            layout = split_into_groups(config.visible_cores, config.group_sizes)
        except ValueError:
            states = self.arbiter.snapshot()
            raise ResourceExhaustedError(
                reason=(
                    f"the layout needs {config.cores_needed} cores but {VISIBLE_CORES_ENV} "
                    f"makes only {len(config.visible_cores)} visible"
                ),
                asked=config.cores_needed,
                free=[s.core for s in states if s.holder is None],
                holders=[s.holder for s in states if s.holder is not None],
                group_sizes=config.group_sizes_text,
            ) from None
        claim = self.arbiter.claim(config.visible_cores, group_sizes=config.group_sizes_text)
        return claim, layout

    def describe_layout(self) -> str:
        parts = [
            f"group {g.index}: core{'s' if len(g.cores) > 1 else ''} {','.join(map(str, g.cores))}"
            for g in self.groups
        ]
        return f"{GROUP_SIZES_ENV}={self.config.group_sizes_text}; " + "; ".join(parts)

    def _group(self, index: int) -> Group:
        if self._closed:
            raise RuntimeClosedError("this NeuronRuntime is closed")
        return self._groups[index]

    def load_model(self, path: str | Path, name: str | None = None) -> Predictor:
        """Load the next model: group k mod n for the k-th load (the seed's rule).

        Without ``name`` the model's own name, or for a further copy ``name#2``, ``name#3``...
        """
        artifact = load_artifact(path)
        with self._lock:
            if self._closed:
                raise RuntimeClosedError("this NeuronRuntime is closed")
            index = load_group(len(self._predictors), len(self.groups))
            group = self.groups[index]
            if artifact.cores > len(group.cores):
                raise ModelDoesNotFitError(
                    model=str(path),
                    model_cores=artifact.cores,
                    group=index,
                    group_cores=len(group.cores),
                )
            taken = {p.name for p in self._predictors}
            if name is None:
                base = artifact.name
                name = base
                copy = 2
                while name in taken:
                    name, copy = copy_name(base, copy), copy + 1
            elif name in taken:
                raise ValueError(f"a model named {name!r} is already loaded; pick another name")
            predictor = Predictor(self, name, artifact, index)
            self._predictors.append(predictor)
            try:
                future = self._groups[index].add_model(name, artifact)
            except BaseException:
                self._predictors.remove(predictor)  # no ghost predictor shifting later loads
                raise
        try:
            future.result()
        except BaseException:
            with self._lock:
                self._predictors.remove(predictor)
            raise
        log.info("loaded %s as %r into group %s", path, name, index)
        return predictor

    @property
    def predictors(self) -> list[Predictor]:
        return list(self._predictors)

    def stats(self) -> RuntimeStats:
        groups = []
        busy: dict[int, float] = {}
        for group in self._groups:
            c = group.counters
            groups.append(
                GroupStats(
                    index=group.index,
                    cores=group.cores,
                    resident_model=group.active if group.active in group.resident else None,
                    switches=c.switches,
                    switch_seconds=c.switch_seconds,
                    queue_depth=group.queue_depth(),
                    requests=c.requests,
                    restarts=c.restarts,
                )
            )
            busy.update(c.busy_seconds)
        return RuntimeStats(groups, busy)

    def worker_pids(self) -> list[int]:
        return [pid for g in self._groups for pid in g.worker_pids()]

    def group_worker_pids(self, index: int) -> list[int]:
        """The worker processes of one group, in core order (none before its first load)."""
        return self._groups[index].worker_pids()

    def broken_groups(self) -> dict[int, str]:
        """Groups that gave up restarting their workers, with the reason; empty when healthy.

        A worker that dies is replaced and its models reloaded; only a group whose workers keep
        dying (more than ``RESTART_LIMIT`` times in ``RESTART_WINDOW_S``) is listed here.
        """
        return {g.index: g.broken for g in self._groups if g.broken is not None}

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        for group in self._groups:
            group.close()
        self._claim.release()

    def __enter__(self) -> NeuronRuntime:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
