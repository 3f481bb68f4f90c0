"""Handing requests to a NeuronCore Group: a bounded number at once, waiting ones merged.

Each request the runtime runs crosses to a worker process and back: a pipe write, a wake-up of the
group's thread, a pickle each way, and a wake-up of the event loop for the answer.  For small
requests that fixed cost is most of the server's CPU per request, so paying it once for several
requests is what makes the server fast under load.

A group takes at most ``limit`` runs at once (``--threads-per-group``).  A request that finds the
group full waits in its copy's queue.  When a run finishes, the next copy in line hands its
*whole* queue to the runtime as one run, when its model has a batch dimension: the inputs are
joined along the first dimension (up to the model's ``max_batch_size`` rows), and the outputs
split back by rows.  Nothing waits on purpose: a request that finds a free slot runs at once, so
at low load every request runs alone and nothing is added to its latency; merging happens only
while requests would be queueing anyway.  Rows of a batch are independent in a model with a batch
dimension, so a merged answer is the same as separate ones.

Everything here runs on the event loop's thread except ``concurrent.futures`` callbacks, which only
schedule ``_finish`` on the loop.  The runtime's futures are never cancelled: a request whose client
went away is skipped when its turn comes, or its rows are dropped from the answer.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from neuron_runtime.serving.statistics import RequestTiming

Arrays = dict[str, npt.NDArray[Any]]
# What ``Predictor.submit``'s future holds (a future's type is invariant: spelled as the runtime's).
Answer = dict[str, np.ndarray[Any, Any]]


class Submitter(Protocol):
    def submit(self, feeds: Mapping[str, Any], /) -> concurrent.futures.Future[Answer]: ...


class Pending:
    """One request waiting for, or inside, a run."""

    __slots__ = ("inputs", "kind", "rows", "timing", "waiter")

    def __init__(
        self,
        inputs: Arrays,
        rows: int,
        timing: RequestTiming | None,
        waiter: asyncio.Future[Answer],
    ) -> None:
        self.inputs = inputs
        self.rows = rows
        self.timing = timing
        self.waiter = waiter
        # Requests join only when every input agrees past the first dimension (a model may take
        # a variable inner dimension) and in dtype.
        self.kind = tuple((name, a.shape[1:], a.dtype.str) for name, a in inputs.items())


def merge_inputs(batch: Sequence[Pending]) -> Arrays:
    """The inputs of ``batch`` joined along the first dimension (the one request's own if alone)."""
    if len(batch) == 1:
        return batch[0].inputs
    return {
        name: np.concatenate([p.inputs[name] for p in batch], axis=0) for name in batch[0].inputs
    }


def split_outputs(outputs: Mapping[str, npt.NDArray[Any]], rows: Sequence[int]) -> list[Answer]:
    """``outputs`` of a merged run cut back into each request's rows, in order."""
    total = sum(rows)
    for name, array in outputs.items():
        if array.ndim == 0 or array.shape[0] != total:
            raise RuntimeError(
                f"output '{name}' has shape {list(array.shape)} for a batch of {total} rows; "
                "a model with a batch dimension must answer one row per input row"
            )
    parts: list[Answer] = []
    start = 0
    for count in rows:
        parts.append({name: array[start : start + count] for name, array in outputs.items()})
        start += count
    return parts


class GroupGate:
    """At most ``limit`` runs of one group in the runtime; copies with waiting requests in line."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.busy = 0
        self.line: deque[CopyQueue] = deque()

    def pump(self) -> None:
        while self.busy < self.limit and self.line:
            copy = self.line.popleft()
            batch = copy.take()
            if copy.items:
                self.line.append(copy)
            else:
                copy.in_line = False
            if batch:
                self.busy += 1
                copy.launch(batch)


class CopyQueue:
    """The requests waiting for one copy of a model (one predictor)."""

    def __init__(
        self,
        predictor: Submitter,
        group: int,
        gate: GroupGate,
        max_rows: int,
        on_run: Callable[[], None] = lambda: None,
    ) -> None:
        self.predictor = predictor
        self.on_run = on_run
        self.group = group
        self.gate = gate
        # 0: the model has no batch dimension, so every request runs alone.
        self.max_rows = max_rows
        self.items: deque[Pending] = deque()
        self.in_line = False

    def put(self, item: Pending) -> None:
        self.items.append(item)
        if not self.in_line:
            self.in_line = True
            self.gate.line.append(self)
        self.gate.pump()

    def take(self) -> list[Pending]:
        batch: list[Pending] = []
        rows = 0
        while self.items:
            item = self.items[0]
            if item.waiter.done():  # cancelled while waiting: nobody wants the answer
                self.items.popleft()
                continue
            if batch and (
                self.max_rows == 0 or rows + item.rows > self.max_rows or item.kind != batch[0].kind
            ):
                break
            batch.append(self.items.popleft())
            rows += item.rows
        return batch

    def launch(self, batch: list[Pending]) -> None:
        now = time.perf_counter_ns()
        for item in batch:
            if item.timing is not None:
                item.timing.submitted = now
        loop = asyncio.get_running_loop()
        self.on_run()
        try:
            future = self.predictor.submit(merge_inputs(batch))
        # Refused at once (a closed group, bad feeds): whatever it is, each request hears it.
        except Exception as exc:  # noqa: BLE001
            loop.call_soon(self._finish, batch, None, exc)
            return

        here = threading.get_ident()

        def on_done(done: concurrent.futures.Future[Answer]) -> None:
            if threading.get_ident() == here:
                # Resolved by the loop itself (a group lends its workers to the loop that
                # submits): no wake-up needed, and no re-entry into the group from its callback.
                loop.call_soon(self._settle, batch, done)
                return
            # A loop closed meanwhile (the server stopped) has nobody left to tell.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._settle, batch, done)

        future.add_done_callback(on_done)

    def _settle(self, batch: list[Pending], done: concurrent.futures.Future[Answer]) -> None:
        error = done.exception()
        self._finish(batch, None if error is not None else done.result(), error)

    def _finish(
        self, batch: list[Pending], outputs: Answer | None, error: BaseException | None
    ) -> None:
        self.gate.busy -= 1
        now = time.perf_counter_ns()
        parts: list[Answer] | None = None
        if error is None and outputs is not None:
            try:
                parts = (
                    [outputs]
                    if len(batch) == 1
                    else split_outputs(outputs, [p.rows for p in batch])
                )
            except RuntimeError as exc:
                error = exc
        for index, item in enumerate(batch):
            if item.timing is not None:
                item.timing.answered = now
            if item.waiter.done():
                continue
            if parts is not None:
                item.waiter.set_result(parts[index])
            else:
                item.waiter.set_exception(error or RuntimeError("the runtime gave no answer"))
        self.gate.pump()


async def run(copy: CopyQueue, inputs: Arrays, rows: int, timing: RequestTiming | None) -> Answer:
    """Queue one request with ``copy`` and wait for its own outputs."""
    waiter: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
    copy.put(Pending(inputs, rows, timing, waiter))
    return await waiter
