"""One NeuronCore Group on the parent side: its worker processes, its queues, its dispatcher.

Each group has one dispatcher thread, the only code that talks to the group's workers, so no
locking is needed around the pipes.  Client threads enqueue requests (under a lock) and poke the
dispatcher through a wake-up pipe only when it is idle (a dispatcher with requests in flight
looks at the queues again on every completion, so a poke would only cost it a wake-up).  The
dispatcher asks the scheduling policy which model to serve, swaps weights in when that model is
not resident (a context switch: the pipeline is drained first, because a group runs one model at
a time), writes the input into a free slot of the shared-memory arena, and sends the first stage
a message naming offsets (``channel.Channel``: one write per message).  Up to
``2 x cores`` requests are in flight, so every stage of the pipeline can be busy at once.

A worker that dies (killed, out of memory, a crash in numpy) is noticed by the dispatcher, which
is always waiting on every worker's socket.  It fails the requests that were in the pipeline
(``WorkerLostError``: retry), stops the group's other workers, starts new ones on the same cores
(the cores stay claimed: the claim is the parent's, not the workers'), and makes the models that
were resident resident again; queued requests are then served as usual.  A group whose workers
die more than ``RESTART_LIMIT`` times within ``RESTART_WINDOW_S`` gives up instead of looping:
it is *broken*, its calls fail with ``RuntimeClosedError``, and ``NeuronRuntime.broken_groups``
reports it so the server fails its liveness probe and the kubelet restarts the pod.

A caller on an asyncio loop that submits with ``loop=`` (the server) is lent the workers' sockets:
the loop then sends requests and reads answers itself, and the thread keeps only what blocks
(loads, switches, restarts, closing).  See "lending the workers to an event loop" below.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import mmap
import os
import select
import socket
import subprocess
import sys
import threading
import time
from collections import OrderedDict, deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from neuron_runtime import worker as proto
from neuron_runtime.artifact import OUTPUT_NAME, Artifact
from neuron_runtime.channel import Channel
from neuron_runtime.errors import ModelLoadError, RuntimeClosedError, WorkerLostError
from neuron_runtime.scheduling import SchedulingPolicy, Waiting

log = logging.getLogger(__name__)

PAGE = mmap.PAGESIZE
STOP_TIMEOUT_S = 5.0
# A group restarts its workers after a death at most this many times within the window; one more
# death means something kills them every time (a model that crashes its worker, memory limits):
# the group is marked broken and the process's owner (the server's liveness) takes over.
RESTART_LIMIT = 5
RESTART_WINDOW_S = 60.0
MAX_LAYOUTS = 1024  # slot layouts kept per group, one per (model, batch size) seen
# How often a dispatcher that lent its workers to an event loop checks that the loop still runs.
PARK_CHECK_MS = 500
_request_ids = itertools.count(1)


@dataclass
class _Request:
    rid: int
    model: str
    batch: np.ndarray[Any, Any]
    future: Future[dict[str, np.ndarray[Any, Any]]]


@dataclass
class _Control:
    model: str
    future: Future[None]


@dataclass
class _InFlight:
    request: _Request
    slot: int
    out_offset: int
    out_shape: tuple[int, ...]


# Bytes a request takes in a slot, and each boundary's (offset in the slot, shape).
_Layout = tuple[int, list[tuple[int, tuple[int, ...]]]]
# A request that came back: its future, and the outputs or the error to resolve it with.
_Finished = tuple[Future[dict[str, Any]], dict[str, Any] | Exception]


@dataclass
class GroupCounters:
    switches: int = 0
    switch_seconds: float = 0.0
    requests: int = 0
    loads: int = 0
    restarts: int = 0
    busy_seconds: dict[int, float] = field(default_factory=dict)


@dataclass
class _Worker:
    position: int
    core: int
    process: subprocess.Popen[bytes]
    ctrl: Channel


def _round_up(n: int) -> int:
    return max(PAGE, (n + PAGE - 1) // PAGE * PAGE)


class Group:
    """A group of cores: worker processes (started on first use), queues and a dispatcher."""

    def __init__(
        self, index: int, cores: tuple[int, ...], policy: SchedulingPolicy, memory_bytes: int
    ) -> None:
        self.index = index
        self.cores = cores
        self.policy = policy
        self.memory_bytes = memory_bytes
        self.counters = GroupCounters(busy_seconds=dict.fromkeys(cores, 0.0))
        self.models: dict[str, Artifact] = {}
        self.resident: OrderedDict[str, int] = OrderedDict()  # model -> bytes, LRU order
        self.active: str | None = None
        self._queues: dict[str, deque[_Request]] = {}
        self._controls: deque[_Control] = deque()
        self._inflight: dict[int, _InFlight] = {}
        self._free_slots: list[int] = list(range(2 * len(cores)))
        self._lock = threading.Lock()
        self._workers: list[_Worker] = []
        # The dispatcher's poll object: the wake-up pipe and every worker's socket, registered
        # once per set of workers (not once per wait).
        self._poller = select.poll()
        self._by_fd: dict[int, _Worker] = {}
        # True when the dispatcher last found nothing to dispatch and nobody has woken it since:
        # only then does a new request need to wake it (set and read under the lock).
        self._idle = False
        self._thread: threading.Thread | None = None
        self._closing = False
        self._broken: str | None = None
        self._deaths: list[float] = []  # monotonic times of worker deaths in the window
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        # Who reads the workers' sockets: None, the dispatcher thread; else an asyncio loop that
        # submits requests (``submit(..., loop=)``), which then dispatches and reads the answers
        # itself (see "Lending the workers to an event loop").  ``_home_loop`` is the loop that
        # asked; ``_lease`` numbers each loan, so that a stale callback of an old loan does nothing.
        self._loop: asyncio.AbstractEventLoop | None = None
        self._home_loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = 0
        self._lease = 0
        self._loop_fds: list[int] = []
        self._loop_filling = False
        self._park_poller = select.poll()  # the dispatcher on loan waits on its wake-up pipe only
        self._park_poller.register(self._wake_r, select.POLLIN)
        self._arena_fd = -1
        self._arena: mmap.mmap | None = None
        self._slot_bytes = 0
        self._arena_size = 0
        self._layouts: dict[tuple[int, int], tuple[Artifact, _Layout]] = {}

    # ---- client side (any thread) ----------------------------------------------------------

    def add_model(self, key: str, artifact: Artifact) -> Future[None]:
        """Register a model; it is made resident at once when memory allows (not a switch)."""
        with self._lock:
            self._check_open()
            self._start_locked()
            self.models[key] = artifact
            self._queues[key] = deque()
            future: Future[None] = Future()
            if self._fits_without_eviction(artifact):
                self._controls.append(_Control(key, future))
            else:
                future.set_result(None)
            self._wake_locked()
            loop, lease = self._loop, self._lease
        if loop is not None:  # loading is the dispatcher thread's work: ask the loop to give back
            self._reclaim(loop, lease)
        return future

    def submit(
        self,
        key: str,
        batch: np.ndarray[Any, Any],
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> Future[dict[str, Any]]:
        """Queue one request.  With ``loop`` (the running loop of the calling thread), the group
        lends that loop its workers: the loop then sends this and later requests to the workers
        and resolves the futures itself, so the caller must never block the loop on them."""
        future: Future[dict[str, Any]] = Future()
        request = _Request(next(_request_ids), key, batch, future)
        with self._lock:
            self._check_open()
            self._queues[key].append(request)
            owner = self._loop
            here = owner is not None and threading.get_ident() == self._loop_thread
            if owner is None:
                if loop is not None and (self._home_loop is None or self._home_loop.is_closed()):
                    self._home_loop = loop  # lent at the end of the dispatcher's next step
                    self._idle = False
                    self._wake_locked()
                elif self._idle:
                    self._idle = False
                    self._wake_locked()
                return future
            if here and loop is None:
                # A caller on the loop's own thread that may block on this future (a blocking
                # ``Predictor.__call__``): the loop would never read the answer.  Give back.
                self._home_loop = None
                self._release_locked()
                return future
            if not here:
                if not self._idle:
                    return future
                self._idle = False
        if here:
            self._loop_fill()
        else:
            try:
                owner.call_soon_threadsafe(self._loop_kick, self._lease)
            except RuntimeError:  # that loop was closed meanwhile: the thread takes back
                self._take_back(owner)
        return future

    def queue_depth(self) -> int:
        with self._lock:
            return sum(len(q) for q in self._queues.values()) + len(self._inflight)

    def close(self) -> None:
        with self._lock:
            self._closing = True  # from now on the thread lends the workers to no loop
            thread = self._thread
            self._wake_locked()
            loop, lease = self._loop, self._lease
        if loop is not None:  # the thread drains what is in flight: it needs the workers back
            self._reclaim(loop, lease)
        if thread is not None:
            thread.join()
        with self._lock:  # writers wake under the lock, so no write can hit a reused fd
            for fd in (self._wake_r, self._wake_w):
                with contextlib.suppress(OSError):
                    os.close(fd)
            self._wake_r = self._wake_w = -1

    def worker_pids(self) -> list[int]:
        return [w.process.pid for w in self._workers]

    @property
    def broken(self) -> str | None:
        """Why the group gave up restarting its workers; None while it serves."""
        return self._broken

    def _check_open(self) -> None:
        if self._broken is not None:
            raise RuntimeClosedError(self._broken)
        if self._closing:
            raise RuntimeClosedError(f"NeuronCore Group {self.index} is closed")

    def _wake_locked(self) -> None:
        if self._wake_w >= 0:
            with contextlib.suppress(BlockingIOError):  # full: the dispatcher is awake anyway
                os.write(self._wake_w, b"!")

    def _fits_without_eviction(self, artifact: Artifact) -> bool:
        used = sum(self.resident.values()) + sum(
            self.models[c.model].weights_bytes for c in self._controls
        )
        return (not self.resident and not self._controls) or (
            used + artifact.weights_bytes <= self.memory_bytes
        )

    # ---- lending the workers to an event loop ----------------------------------------------
    #
    # A caller on an asyncio loop (the server) would otherwise pay, per request, a write to the
    # wake-up pipe, a wake-up of this group's thread to send the request, another when the answer
    # comes, and ``call_soon_threadsafe`` to wake the loop again: four thread hand-offs and the GIL
    # passed back and forth.  When such a caller submits with ``loop=``, the dispatcher thread
    # lends that loop the workers' sockets at the end of its step and waits on its wake-up pipe
    # only.  The loop then sends requests itself (``_loop_fill``) and reads the answers with
    # ``add_reader``.  Everything that blocks stays with the thread: a load, a context switch, a
    # bigger arena, a dead worker and closing make the loop give the sockets back first
    # (``_release_locked``), and the thread lends them again once that is done.  Ownership changes
    # under the lock, and every callback on the loop checks its lease first.

    def _lend(self) -> bool:
        """At the end of a step: lend the workers to the loop that asked, when nothing waits for
        the thread.  Called by the dispatcher thread."""
        if self._home_loop is None:  # no loop asked (read without the lock: set under it)
            return False
        with self._lock:
            loop = self._home_loop
            if (
                loop is None
                or self._closing
                or self._broken is not None
                or self._controls
                or loop.is_closed()
                or not loop.is_running()
            ):
                return False
            self._loop = loop
            self._lease += 1
            lease = self._lease
        try:
            loop.call_soon_threadsafe(self._adopt, lease)
        except RuntimeError:  # closed since: keep the workers
            with self._lock:
                self._loop = None
                self._home_loop = None
            return False
        return True

    def _park(self) -> None:
        """Wait, polling only the wake-up pipe, until the loop gives the workers back.  A loop
        that was closed or stopped running cannot: the thread then takes them back itself."""
        while True:
            self._park_poller.poll(PARK_CHECK_MS)
            with contextlib.suppress(BlockingIOError):
                os.read(self._wake_r, 4096)
            with self._lock:
                loop = self._loop
                if loop is None:
                    return
                if loop.is_closed() or not loop.is_running():
                    # Its callbacks check the lease under this lock when they run, and one that
                    # runs means the loop runs: none can be past that check now.
                    self._loop = None
                    self._home_loop = None
                    self._loop_fds = []
                    self._lease += 1
                    return

    def _reclaim(self, loop: asyncio.AbstractEventLoop, lease: int) -> None:
        """Ask ``loop`` to give back the workers of loan ``lease`` (from any thread).  No loan
        starts while a load waits or the group closes, so a later loan needs no asking."""
        if threading.get_ident() == self._loop_thread:
            with self._lock:
                if self._loop is loop and lease == self._lease:
                    self._release_locked()
            return
        try:
            loop.call_soon_threadsafe(self._give_back, lease)
        except RuntimeError:
            self._take_back(loop)

    def _take_back(self, loop: asyncio.AbstractEventLoop) -> None:
        """The loop was closed: it runs no callback any more, so the thread takes the workers."""
        with self._lock:
            if self._loop is loop:
                self._loop = None
                self._home_loop = None
                self._loop_fds = []
                self._lease += 1
                self._wake_locked()

    def _give_back(self, lease: int) -> None:
        with self._lock:
            if self._loop is not None and lease == self._lease:
                self._release_locked()

    def _release_locked(self) -> None:
        """On the loop's thread, under the lock: stop reading the workers; wake the thread."""
        loop = self._loop
        assert loop is not None
        for fd in self._loop_fds:
            loop.remove_reader(fd)
        self._loop_fds = []
        self._loop = None
        self._lease += 1
        self._wake_locked()

    def _adopt(self, lease: int) -> None:
        """On the loop: start reading the workers' answers, then serve what waits."""
        with self._lock:
            loop = self._loop
            if loop is None or lease != self._lease:
                return
            self._loop_thread = threading.get_ident()
            workers = list(self._workers)
            self._loop_fds = [w.ctrl.fd for w in workers]
            for worker in workers:
                fd = worker.ctrl.fd
                loop.add_reader(fd, self._on_loop_readable, worker, lease, loop, fd)
        for worker in workers:
            if worker.ctrl.has_ready():  # read by the thread along with a load's replies
                self._on_loop_readable(worker, lease, loop, worker.ctrl.fd)
        self._loop_fill()

    def _on_loop_readable(
        self, worker: _Worker, lease: int, loop: asyncio.AbstractEventLoop, fd: int
    ) -> None:
        """On the loop: a worker's socket has answers (or its worker died)."""
        with self._lock:
            if self._loop is None or lease != self._lease:
                # A loan the thread took back while this loop was not running: a later loan on
                # this descriptor would have replaced this callback, so it is this loan's own
                # (its descriptor may be closed by now).
                with contextlib.suppress(ValueError, OSError):
                    loop.remove_reader(fd)
                return
        finished: list[_Finished] = []
        try:
            try:
                messages = worker.ctrl.read_available()
            except (EOFError, OSError):
                # A dead worker: the thread fails what was in flight and restarts the group.
                with self._lock:
                    if self._loop is not None and lease == self._lease:
                        self._release_locked()
                return
            for msg in messages:
                done = self._on_message(msg)
                if done is not None:
                    finished.append(done)
            self._loop_fill()
        finally:
            _resolve(finished)

    def _loop_kick(self, lease: int) -> None:
        """On the loop: a request came from another thread while the loop was idle."""
        if lease == self._lease:
            self._loop_fill()

    def _loop_fill(self) -> None:
        """On the loop: send what can be sent; give the workers back when the thread must act."""
        if self._loop_filling:  # re-entered from a future's callback: the outer call goes on
            return
        self._loop_filling = True
        try:
            while True:
                with self._lock:
                    if self._loop is None or threading.get_ident() != self._loop_thread:
                        return
                    if self._closing:
                        self._release_locked()
                        return
                    action = self._next_action(on_loop=True)
                    if action is None:
                        return
                    if action is _HANDBACK:
                        self._release_locked()
                        return
                try:
                    self._workers[0].ctrl.send(self._run_message(*action[1]))
                except OSError:
                    with self._lock:  # the thread sees the death and restarts the group
                        if self._loop is not None:
                            self._release_locked()
                    return
        finally:
            self._loop_filling = False

    # ---- workers ---------------------------------------------------------------------------

    def _start_locked(self) -> None:
        if self._thread is not None:
            return
        self._spawn_workers()
        self._thread = threading.Thread(
            target=self._run, name=f"neuron-group-{self.index}", daemon=True
        )
        self._thread.start()

    def _spawn_workers(self) -> None:
        """Start one worker per core, chained by pipes, sharing a fresh arena."""
        self._arena_fd = os.memfd_create(f"neuron-group-{self.index}")
        self._arena, self._slot_bytes, self._arena_size = None, 0, 0
        self._poller = select.poll()
        self._poller.register(self._wake_r, select.POLLIN)
        self._by_fd = {}
        env = {**os.environ, **proto.SINGLE_THREAD_ENV}
        pipes = [os.pipe() for _ in range(len(self.cores) - 1)]
        workers: list[_Worker] = []
        self._workers = workers  # seen by _stop_workers even if a later start fails
        try:
            for position, core in enumerate(self.cores):
                parent_sock, child_sock = socket.socketpair()
                prev = pipes[position - 1][0] if position > 0 else -1
                nxt = pipes[position][1] if position < len(pipes) else -1
                fds = [child_sock.fileno(), self._arena_fd] + [f for f in (prev, nxt) if f >= 0]
                command = [
                    sys.executable, "-P", "-c",
                    "import sys; from neuron_runtime.worker import main; sys.exit(main())",
                    "--position", str(position), "--ctrl", str(child_sock.fileno()),
                    "--prev", str(prev), "--next", str(nxt), "--arena", str(self._arena_fd),
                ]  # fmt: skip
                # stdout and stdin are the user's, not the workers'; stderr carries their logs.
                process = subprocess.Popen(
                    command,
                    pass_fds=fds,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                )
                child_sock.close()
                ctrl = Channel(parent_sock.detach())
                workers.append(_Worker(position, core, process, ctrl))
                self._by_fd[ctrl.fd] = workers[-1]
                self._poller.register(ctrl.fd, select.POLLIN)
        finally:
            for r, w in pipes:
                os.close(r)
                os.close(w)
        log.info(
            "group %s started workers %s on cores %s", self.index, self.worker_pids(), self.cores
        )

    # ---- dispatcher thread -----------------------------------------------------------------

    def _run(self) -> None:
        try:
            while True:
                try:
                    self._fill()  # at start, and after a restart: what waits is served first
                    while self._step():
                        pass
                    return
                except _WorkerGoneError as exc:
                    if not self._recover(str(exc)):
                        return
        except Exception:
            log.exception("group %s dispatcher failed", self.index)
            self._fail_everything(f"NeuronCore Group {self.index} dispatcher failed")
        finally:
            self._stop_workers()

    def _step(self) -> bool:
        """Wait once, take in what came, dispatch what can be; False once closed and drained."""
        with self._lock:
            if self._closing and not self._inflight:
                self._fail_queued(RuntimeClosedError(f"NeuronCore Group {self.index} closed"))
                return False
        finished: list[_Finished] = []
        lent = False
        try:
            self._collect(finished)
            # The freed slots' next requests go to the workers before any client is woken, and
            # the clients are woken just before this thread waits again, so that they do not
            # queue for the GIL behind it.
            self._fill()
            # Lent before the clients hear: a loop that submits again on hearing its answer
            # finds the loan made (its ``_adopt`` is queued ahead of the answer's wake-up).
            lent = self._lend()
        finally:
            _resolve(finished)
        if lent:
            self._park()
            self._fill()  # what made the loop give the workers back (a switch, a load) comes first
        return True

    def _collect(self, finished: list[_Finished]) -> None:
        """Wait for the wake-up pipe or a worker; take in every message that came."""
        ready = [w for w in self._workers if w.ctrl.has_ready()]  # read along with load replies
        if not ready:
            for fd, _ in self._poller.poll():
                if fd == self._wake_r:
                    with contextlib.suppress(BlockingIOError):
                        os.read(self._wake_r, 4096)
                else:
                    ready.append(self._by_fd[fd])
        for worker in ready:
            for msg in self._read(worker):  # every completion that came, in one read
                done = self._on_message(msg)
                if done is not None:
                    finished.append(done)

    def _read(self, worker: _Worker) -> list[tuple[Any, ...]]:
        try:
            return worker.ctrl.read_available()
        except (EOFError, OSError):
            raise self._gone(worker) from None

    def _send(self, worker: _Worker, msg: tuple[Any, ...]) -> None:
        try:
            worker.ctrl.send(msg)
        except OSError:
            raise self._gone(worker) from None

    def _gone(self, worker: _Worker) -> _WorkerGoneError:
        try:
            code: int | None = worker.process.wait(timeout=1.0)
        except subprocess.TimeoutExpired:
            code = None  # its socket broke but it has not exited (yet)
        return _WorkerGoneError(
            f"the worker for core {worker.core} of NeuronCore Group {self.index} "
            f"(pid {worker.process.pid}) exited unexpectedly (exit code {code})"
        )

    def _recover(self, reason: str) -> bool:
        """Restart until the new workers are up (a death while reloading counts as another)."""
        while True:
            try:
                return self._restart(reason)
            except _WorkerGoneError as exc:
                reason = str(exc)

    def _restart(self, reason: str) -> bool:
        """Replace every worker of the group after one died; False when the group gives up."""
        now = time.monotonic()
        self._deaths = [t for t in self._deaths if now - t < RESTART_WINDOW_S] + [now]
        with self._lock:
            flights = list(self._inflight.values())
            self._inflight.clear()
            self._free_slots = list(range(2 * len(self.cores)))
            reload = [m for m in self.resident if m in self.models]  # least recent first
            self.resident.clear()
            self.active = None
            closing = self._closing
        lost = WorkerLostError(f"{reason} while running this request; retry it")
        for flight in flights:
            flight.request.future.set_exception(lost)
        self._stop_workers()
        if closing:
            with self._lock:
                self._fail_queued(RuntimeClosedError(f"NeuronCore Group {self.index} closed"))
            return False
        if len(self._deaths) > RESTART_LIMIT:
            self._fail_everything(
                f"{reason}; its workers died {len(self._deaths)} times within "
                f"{RESTART_WINDOW_S:.0f} s, so NeuronCore Group {self.index} stopped restarting "
                "them. Find what kills them (the kernel log for the OOM killer, the workers' "
                "stderr), then restart the process"
            )
            return False
        log.warning(
            "%s; restarting the group's workers and reloading %s (%d death(s) in %.0f s)",
            reason, ", ".join(reload) or "no model", len(self._deaths), RESTART_WINDOW_S,
        )  # fmt: skip
        self._spawn_workers()
        self.counters.restarts += 1
        for model in reload:
            self._reload(model)
        return True

    def _reload(self, model: str) -> None:
        try:
            self._make_resident(model)
        except ModelLoadError as exc:
            with self._lock:
                failed = list(self._queues[model])
                self._queues[model].clear()
            for request in failed:
                request.future.set_exception(exc)
            return
        self.active = model

    def _recv(self, worker: _Worker) -> tuple[Any, ...]:
        try:
            return worker.ctrl.recv()
        except (EOFError, OSError):
            raise self._gone(worker) from None

    def _fill(self) -> None:
        """Dispatch while the policy has work and slots are free; swaps happen off the lock."""
        while True:
            with self._lock:
                action = self._next_action()
            if action is None:
                return
            kind, item = action
            if kind == "control":
                self._load_control(item)
            elif kind == "switch":
                self._switch_to(item)
            elif kind == "grow":
                self._grow_arena(item)
            else:
                self._dispatch(*item)

    def _next_action(self, on_loop: bool = False) -> tuple[str, Any] | None:
        """The dispatcher's next step, decided under the lock (no I/O here).  ``on_loop``: asked
        by a loop holding the workers, which only dispatches; for anything else (a load, a
        switch, a bigger arena) the answer is ``HANDBACK``, and the item stays where it is."""
        if self._controls:
            if self._inflight:
                return None
            return _HANDBACK if on_loop else ("control", self._controls.popleft())
        if not self._free_slots:
            return None
        if not any(self._queues.values()):  # asked after every answer: most often nothing waits
            self._idle = True
            return None
        waiting = [Waiting(k, q[0].rid, len(q)) for k, q in self._queues.items() if q]
        choice = self.policy.choose(waiting, self.active, self.resident.keys())
        if choice is None:
            self._idle = True  # nothing queued: the next request must wake the dispatcher
            return None
        if choice not in self.resident:
            # Swapping weights needs an empty pipeline: wait for the in-flight requests.
            if self._inflight:
                return None
            return _HANDBACK if on_loop else ("switch", choice)
        self.active = choice
        artifact = self.models[choice]
        request = self._queues[choice][0]
        need, layout = self._layout(artifact, request.batch.shape[0])
        if need > self._slot_bytes:
            if self._inflight:
                return None
            return _HANDBACK if on_loop else ("grow", need)
        self._queues[choice].popleft()
        self.policy.dispatched(choice)
        slot = self._free_slots.pop()
        base = slot * self._slot_bytes
        boundaries = [(base + offset, shape) for offset, shape in layout]
        out_offset, out_shape = boundaries[-1]
        self._inflight[request.rid] = _InFlight(request, slot, out_offset, out_shape)
        return "dispatch", (request, boundaries)

    def _load_control(self, control: _Control) -> None:
        try:
            self._make_resident(control.model)
        except _WorkerGoneError as exc:
            with self._lock:
                self.models.pop(control.model, None)
                self._queues.pop(control.model, None)
            control.future.set_exception(WorkerLostError(f"{exc} while loading; load it again"))
            raise
        except ModelLoadError as exc:
            with self._lock:
                self.models.pop(control.model, None)
                self._queues.pop(control.model, None)
            control.future.set_exception(exc)
            return
        self.counters.loads += 1
        if self.active is None:
            self.active = control.model
        control.future.set_result(None)

    def _switch_to(self, model: str) -> None:
        started = time.perf_counter()
        try:
            self._make_resident(model)
        except ModelLoadError as exc:
            # Fail what is queued for this model; later requests will try the swap again.
            with self._lock:
                failed = list(self._queues[model])
                self._queues[model].clear()
            for request in failed:
                request.future.set_exception(exc)
            return
        self.counters.switches += 1
        self.counters.switch_seconds += time.perf_counter() - started
        log.debug("group %s switched to %s", self.index, model)

    def _make_resident(self, model: str) -> None:
        artifact = self.models[model]
        while self.resident and (
            sum(self.resident.values()) + artifact.weights_bytes > self.memory_bytes
        ):
            victim, _ = self.resident.popitem(last=False)
            for w in self._workers:
                self._send(w, (proto.EVICT, victim))
            for w in self._workers:
                self._recv(w)
        stages = range(artifact.cores)
        for stage in stages:
            self._send(self._workers[stage], (proto.LOAD, model, str(artifact.path), stage))
        errors = []
        for stage in stages:
            reply = self._recv(self._workers[stage])
            if reply[0] != proto.LOADED:
                errors.append(str(reply[1]))
        if errors:
            raise ModelLoadError(f"loading {artifact.path} failed: {'; '.join(errors)}")
        self.resident[model] = artifact.weights_bytes
        self.resident.move_to_end(model)

    def _layout(self, artifact: Artifact, batch: int) -> _Layout:
        """Bytes a request needs in a slot, and each boundary's (offset in the slot, shape):
        the input, every stage boundary, the output.  Computed once per model and batch size."""
        key = (id(artifact), batch)
        cached = self._layouts.get(key)
        if cached is not None and cached[0] is artifact:
            return cached[1]
        layout: list[tuple[int, tuple[int, ...]]] = []
        offset = 0
        for b in range(artifact.cores + 1):
            shape = (batch, *artifact.boundary_shape(b))
            layout.append((offset, shape))
            offset += _round_up(4 * math.prod(shape))
        if len(self._layouts) >= MAX_LAYOUTS:  # many batch sizes: start over, stay bounded
            self._layouts.clear()
        self._layouts[key] = (artifact, (offset, layout))
        return offset, layout

    def _grow_arena(self, need: int) -> None:
        self._slot_bytes = max(_round_up(need), 2 * self._slot_bytes)
        self._arena_size = self._slot_bytes * (2 * len(self.cores))
        os.ftruncate(self._arena_fd, self._arena_size)
        self._arena = mmap.mmap(self._arena_fd, self._arena_size)

    def _view(self, offset: int, shape: tuple[int, ...]) -> np.ndarray[Any, Any]:
        assert self._arena is not None
        return np.frombuffer(self._arena, np.float32, math.prod(shape), offset).reshape(shape)

    def _dispatch(self, request: _Request, boundaries: list[tuple[int, tuple[int, ...]]]) -> None:
        self._send(self._workers[0], self._run_message(request, boundaries))

    def _run_message(
        self, request: _Request, boundaries: list[tuple[int, tuple[int, ...]]]
    ) -> tuple[Any, ...]:
        """Copy the request's input into its slot; the message that runs it on the first stage."""
        np.copyto(self._view(*boundaries[0]), request.batch)
        last = len(boundaries) - 2
        timings: list[tuple[int, float]] = []
        return (
            proto.RUN,
            request.rid,
            request.model,
            0,
            last,
            self._arena_size,
            boundaries,
            timings,
        )

    def _on_message(self, msg: tuple[Any, ...]) -> _Finished | None:
        """Free the slot of a finished request; its future is resolved by the caller."""
        tag = msg[0]
        with self._lock:
            flight = self._inflight.pop(msg[1], None) if tag in (proto.DONE, proto.FAILED) else None
            if flight is None:
                log.warning("group %s: unexpected message %s", self.index, tag)
                return None
            self._free_slots.append(flight.slot)
            if tag == proto.FAILED:
                return flight.request.future, RuntimeError(str(msg[2]))
            output = self._view(flight.out_offset, flight.out_shape).copy()
            self.counters.requests += 1
            for position, seconds in msg[2]:
                core = self.cores[position]
                self.counters.busy_seconds[core] += seconds
        return flight.request.future, {OUTPUT_NAME: output}

    def _fail_queued(self, exc: Exception) -> None:
        for queue in self._queues.values():
            while queue:
                queue.popleft().future.set_exception(exc)
        while self._controls:
            self._controls.popleft().future.set_exception(exc)

    def _fail_everything(self, reason: str) -> None:
        log.error("%s", reason)
        with self._lock:
            self._broken = reason
            exc = RuntimeClosedError(reason)
            self._fail_queued(exc)
            for flight in self._inflight.values():
                flight.request.future.set_exception(exc)
            self._inflight.clear()

    def _stop_workers(self) -> None:
        for w in self._workers:
            with contextlib.suppress(OSError):
                w.ctrl.send((proto.STOP,))
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for w in self._workers:
            try:
                w.process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("worker %s did not stop; killing it", w.process.pid)
                w.process.kill()
                w.process.wait()
            w.ctrl.close()
        self._workers = []
        if self._arena_fd >= 0:
            os.close(self._arena_fd)
            self._arena_fd = -1


class _WorkerGoneError(Exception):
    pass


# What ``_next_action(on_loop=True)`` answers when the dispatcher thread must act.
_HANDBACK = ("handback", None)


def _resolve(finished: list[_Finished]) -> None:
    for future, outcome in finished:
        if isinstance(outcome, Exception):
            future.set_exception(outcome)
        else:
            future.set_result(outcome)
