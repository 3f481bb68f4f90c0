"""One simulated NeuronCore: a separate process running its pipeline stage of resident models.

Why a process per core: numpy releases the GIL only inside large operations, so threads stop
scaling past a few workers (facts §9); processes scale to ~0.95 of linear.  Why started with
``subprocess`` rather than ``multiprocessing``: a child must inherit nothing but the descriptors
handed to it (never the parent's core locks), and must not re-run the user's ``__main__`` script
(multiprocessing's spawn/forkserver do, and the seed's scripts have no ``__main__`` guard).

Wiring, all descriptors passed at start:
  ctrl   a socket to the parent: control (load, evict, stop), stage-0 runs, and replies
         (loaded, evicted, done, failed) from whichever stage is a model's last;
  prev   the pipe from the previous core's worker (absent on the group's first core);
  next   the pipe to the next core's worker (absent on the group's last core);
  arena  a memfd shared by the group: tensors travel through it, messages carry only offsets.
BLAS is held to one thread by the environment the parent sets before numpy is imported here.
Messages are ``channel.Channel`` frames: one write per message, one read for all that arrived.
"""

from __future__ import annotations

import argparse
import logging
import math
import mmap
import os
import select
import sys
import time
from typing import Any

import numpy as np

from neuron_runtime.artifact import Artifact, load_artifact, read_stage_weights
from neuron_runtime.channel import Channel
from neuron_runtime.layers import Array, LayerSpec, run_layer

log = logging.getLogger("neuron_runtime.worker")

# Message tags (tuples keep pickling cheap; the first element is the tag).
LOAD, EVICT, RUN, STOP = "load", "evict", "run", "stop"
LOADED, EVICTED, DONE, FAILED, ERROR = "loaded", "evicted", "done", "failed", "error"

SINGLE_THREAD_ENV = dict.fromkeys(
    (
        "OMP_NUM_THREADS",
        "OPENBLAS_NUM_THREADS",
        "MKL_NUM_THREADS",
        "BLIS_NUM_THREADS",
        "VECLIB_MAXIMUM_THREADS",
        "NUMEXPR_NUM_THREADS",
    ),
    "1",
)


class Core:
    """A worker's state: its resident stages and its view of the arena."""

    def __init__(self, position: int, ctrl: Channel, nxt: Channel | None, arena_fd: int):
        self.position = position
        self.ctrl = ctrl
        self.next = nxt
        self.arena_fd = arena_fd
        self.arena: mmap.mmap | None = None
        self.arena_size = 0
        self.models: dict[str, tuple[tuple[LayerSpec, ...], dict[str, dict[str, Array]]]] = {}
        self.artifacts: dict[str, Artifact] = {}  # manifests read once, weights on every swap

    def view(self, size: int, offset: int, shape: tuple[int, ...]) -> Array:
        if self.arena is None or self.arena_size < size:
            # The parent grew the memfd; map it again.  The old map is left to the collector
            # (closing it while a view exists would raise).
            self.arena = mmap.mmap(self.arena_fd, size)
            self.arena_size = size
        count = math.prod(shape)
        return np.frombuffer(self.arena, np.float32, count, offset).reshape(shape)

    def load(self, key: str, path: str, stage: int) -> tuple[Any, ...]:
        started = time.perf_counter()
        artifact = self.artifacts.get(path) or load_artifact(path, verify=False)
        self.artifacts[path] = artifact
        weights = read_stage_weights(artifact, stage)
        self.models[key] = (artifact.stage_layers(stage), weights)
        nbytes = sum(a.nbytes for params in weights.values() for a in params.values())
        return (LOADED, key, nbytes, time.perf_counter() - started)

    def run(self, msg: tuple[Any, ...]) -> None:
        _, rid, key, stage, last, arena_size, boundaries, timings = msg
        started = time.perf_counter()
        try:
            layers, weights = self.models[key]
            offset, shape = boundaries[stage]
            x = self.view(arena_size, offset, shape)
            for layer in layers:
                x = run_layer(layer, weights[layer.name], x)
            out_offset, out_shape = boundaries[stage + 1]
            np.copyto(self.view(arena_size, out_offset, out_shape), x)
        except Exception as exc:  # reported to the caller of this request, worker lives on
            log.exception("stage %s of %s failed", stage, key)
            self.ctrl.send((FAILED, rid, f"core {self.position}: {type(exc).__name__}: {exc}"))
            return
        timings = [*timings, (self.position, time.perf_counter() - started)]
        if stage == last or self.next is None:
            self.ctrl.send((DONE, rid, timings))
        else:
            self.next.send((RUN, rid, key, stage + 1, last, arena_size, boundaries, timings))

    def handle(self, msg: tuple[Any, ...]) -> bool:
        tag = msg[0]
        if tag == RUN:
            self.run(msg)
        elif tag == LOAD:
            try:
                self.ctrl.send(self.load(msg[1], msg[2], msg[3]))
            except Exception as exc:  # noqa: BLE001 - any failure becomes the load's error
                self.ctrl.send((ERROR, f"core {self.position}: {exc}"))
        elif tag == EVICT:
            self.models.pop(msg[1], None)
            self.ctrl.send((EVICTED, msg[1]))
        elif tag == STOP:
            return False
        return True


def serve(core: Core, prev: Channel | None) -> None:
    """Handle messages until told to stop or the parent is gone.

    A worker with one source (the first core of a group) blocks in its read; one with two keeps
    a poll object registered once, rather than building a selector per message.
    """
    sources = {core.ctrl.fd: core.ctrl}
    poller = select.poll()
    poller.register(core.ctrl.fd, select.POLLIN)
    if prev is not None:
        sources[prev.fd] = prev
        poller.register(prev.fd, select.POLLIN)
    while sources:
        ready = list(sources) if len(sources) == 1 else [fd for fd, _ in poller.poll()]
        for fd in ready:
            channel = sources[fd]
            try:
                messages = channel.read_available()
            except (EOFError, OSError):  # a socket whose peer died with data unread: ECONNRESET
                if channel is core.ctrl:
                    return  # the parent is gone (exited or killed): so are we
                del sources[fd]
                poller.unregister(fd)
                continue
            for msg in messages:
                if not core.handle(msg):
                    return


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="one simulated NeuronCore (run by the runtime)")
    parser.add_argument("--position", type=int, required=True)
    parser.add_argument("--ctrl", type=int, required=True)
    parser.add_argument("--prev", type=int, default=-1)
    parser.add_argument("--next", type=int, default=-1)
    parser.add_argument("--arena", type=int, required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=os.environ.get("NEURON_RT_LOG_LEVEL", "WARNING").upper())
    ctrl = Channel(args.ctrl)
    prev = Channel(args.prev) if args.prev >= 0 else None
    nxt = Channel(args.next) if args.next >= 0 else None
    serve(Core(args.position, ctrl, nxt, args.arena), prev)
    return 0


if __name__ == "__main__":
    sys.exit(main())
