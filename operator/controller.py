"""One reconcile of one NeuronWorkload, in the fixed order sample-controller taught us.

Read the object, compute the desired pods (pure planner and builders), make sure the Service
exists, list the pods and keep only those this object controls, apply the pure diff (creates
answered 409 and deletes answered 404 are fine), and write status last, only when it changed, so
the watch does not echo our own writes back forever.  A bad spec never raises: it becomes the
``InvalidSpec`` condition and the pods that exist are left as they are (nothing is lost).

Every refusal of a child object (classified once, in ``refusals.py``) reaches status as the
``Refused`` condition with ``Ready`` False, and a Warning Event quoting the API server; the
refused writes then back off (exponentially, capped) while the rest of the loop goes on: reads,
deletes, status.  A retry is scheduled for when the backoff ends; a new generation (the user
edited the spec) ends it at once.  Transient trouble (409/429/5xx, no connection) is retried the
same way and logged in one line, never as a traceback, and is not put on status.

Requests coalesce (``WorkQueue``, the workqueue of client-go): watch events of the object and of
its pods, the periodic resync and the retry timers only mark a NeuronWorkload as needing a
reconcile, and a few worker threads reconcile each marked one from what exists then.  A key is
pending at most once and never reconciled by two workers at once; one marked while it is being
reconciled is reconciled once more afterwards, so no event is lost and a burst of 1,600 pod
events costs two reconciles, not 1,600 queued behind a lock (each holding its event and a
thread).  A per-object lock still serialises direct callers (tests, and the synchronous mode
without workers).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence, Set
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from neuron_operator import conditions as c
from neuron_operator import metrics
from neuron_operator.api import ALLOCATION_DRA, InvalidSpecError, workload_from_object
from neuron_operator.claims import allocated_summary, recorded_cores, resolve_allocation
from neuron_operator.drasync import sync as sync_dra
from neuron_operator.freecores import NodeFree, free_cores
from neuron_operator.kube import (
    API_ERRORS,
    SERVICE_CREATED,
    ChildRefusedError,
    Kube,
    controller_uid,
    now_rfc3339,
)
from neuron_operator.planner import plan
from neuron_operator.pods import build_pod, build_service, selector_string, template_hash
from neuron_operator.reconcile import (
    DRA_NO_DEVICE,
    ObservedPod,
    compute_status,
    diff,
    invalid_status,
    observe_pod,
    refused_status,
)
from neuron_operator.refusals import Refusal, classify_exception, pod_size_refusal

log = logging.getLogger(__name__)

WARNING = "Warning"
NORMAL = "Normal"
BACKOFF_BASE_SECONDS = 1.0
BACKOFF_MAX_SECONDS = 300.0
POD, SERVICE = "Pod", "Service"
FREE_CORES_SECONDS = 10.0  # how long one read of the nodes' free cores serves
PROBE_CREATES = 1  # pods created before the deletes of a reconcile (see ``Reconciler._apply``)
# Pod creates in flight at once for one reconcile.  Creates go out in batches that double from 1
# (as the ReplicaSet controller's slow start does): a refused spec costs one call, an accepted one
# is sent 8 at a time instead of one after another.  Below the Kubernetes client's connection pool
# (5 per CPU).
MAX_PARALLEL_CREATES = 8

Key = tuple[str, str]
# Calls ``retry`` after ``delay`` seconds, replacing any retry still pending for ``key``.
Schedule = Callable[[Key, float, Callable[[], None]], None]


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff, capped: the delay after ``failures`` failures in a row."""

    base: float = BACKOFF_BASE_SECONDS
    cap: float = BACKOFF_MAX_SECONDS

    def delay(self, failures: int) -> float:
        return float(min(self.cap, self.base * 2 ** min(max(failures - 1, 0), 62)))


@dataclass(frozen=True)
class Held:
    """The writes of one NeuronWorkload held back after a refusal, until ``until``."""

    uid: str
    generation: int
    failures: int
    until: float
    refusals: tuple[Refusal, ...]

    def kinds(self, now: float) -> frozenset[str]:
        return frozenset(r.kind for r in self.refusals) if now < self.until else frozenset()


class TimerSchedule:
    """The ``Schedule`` of a running operator: one daemon timer per NeuronWorkload."""

    def __init__(self) -> None:
        self._timers: dict[Key, threading.Timer] = {}
        self._guard = threading.Lock()

    def __call__(self, key: Key, delay: float, retry: Callable[[], None]) -> None:
        timer = threading.Timer(delay, retry)
        timer.daemon = True
        with self._guard:
            old = self._timers.pop(key, None)
            if old is not None:
                old.cancel()
            self._timers[key] = timer
        timer.start()

    def close(self) -> None:
        with self._guard:
            for timer in self._timers.values():
                timer.cancel()
            self._timers.clear()


class WorkQueue:
    """Keys waiting for ``process``, each at most once, handled by ``workers`` threads.

    ``add`` never blocks on the work: it marks the key and returns whether it was newly queued
    (False: it was already waiting, the request coalesced into that one).  A key is processed by
    one worker at a time; a key added while it is processed waits, and runs again after.
    ``close`` drops what is still waiting and waits (up to ``timeout``) for the work under way.
    """

    def __init__(self, process: Callable[[Key], None], *, workers: int, name: str = "reconcile"):
        if workers < 1:
            raise ValueError(f"workers must be at least 1, not {workers}")
        self._process = process
        self._order: deque[Key] = deque()
        self._waiting: set[Key] = set()
        self._active: set[Key] = set()
        self._closed = False
        self._changed = threading.Condition()
        self._threads = [
            threading.Thread(target=self._work, name=f"{name}-{n}", daemon=True)
            for n in range(workers)
        ]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def add(self, key: Key) -> bool:
        with self._changed:
            if self._closed:
                return False
            if key in self._waiting:
                metrics.RECONCILE_REQUESTS.labels("coalesced").inc()
                return False
            self._waiting.add(key)
            if key not in self._active:  # else the worker re-queues it when done
                self._order.append(key)
                self._changed.notify()
            metrics.RECONCILE_QUEUE.set(len(self._waiting))
        metrics.RECONCILE_REQUESTS.labels("queued").inc()
        return True

    def pending(self) -> int:
        """Keys waiting (not those being processed)."""
        with self._changed:
            return len(self._waiting)

    def _next(self) -> Key | None:
        with self._changed:
            while not self._order and not self._closed:
                self._changed.wait()
            if self._closed:
                return None
            key = self._order.popleft()
            self._waiting.discard(key)
            self._active.add(key)
            metrics.RECONCILE_QUEUE.set(len(self._waiting))
            return key

    def _done(self, key: Key) -> None:
        with self._changed:
            self._active.discard(key)
            if key in self._waiting:
                self._order.append(key)
            self._changed.notify_all()  # a worker for the re-queued key, or ``wait_idle``

    def wait_idle(self, timeout: float) -> bool:
        """Wait until nothing waits or runs; False if that took longer than ``timeout``."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while self._waiting or self._active:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._changed.wait(left)
            return True

    def _work(self) -> None:
        while (key := self._next()) is not None:
            try:
                self._process(key)
            except Exception:  # a bug with one object must not stop the worker
                log.exception("reconcile of %s/%s failed", key[0], key[1])
            finally:
                self._done(key)

    def close(self, timeout: float = 10.0) -> int:
        """Stop the workers; returns how many waiting keys were dropped."""
        with self._changed:
            self._closed = True
            dropped = len(self._waiting)
            self._order.clear()
            self._waiting.clear()
            self._changed.notify_all()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            if thread.is_alive():
                thread.join(max(0.0, deadline - time.monotonic()))
        metrics.RECONCILE_QUEUE.set(0)
        return dropped


def _strip_times(status: Mapping[str, Any]) -> dict[str, Any]:
    result = dict(status)
    result["conditions"] = [
        {k: v for k, v in x.items() if k != "lastTransitionTime"}
        for x in status.get("conditions") or []
    ]
    return result


def status_changed(previous: Mapping[str, Any], new: Mapping[str, Any]) -> bool:
    old = _strip_times(previous)
    return any(old.get(k) != v for k, v in _strip_times(new).items())


def _condition_true(status: Mapping[str, Any], type_: str) -> bool:
    found = c.find(status.get("conditions"), type_)
    return found is not None and found.get("status") == c.TRUE


class Reconciler:
    """Reconciles NeuronWorkloads through a ``Kube``; acts only while ``is_leader()``.

    With ``workers`` (a running operator), ``request`` queues a reconcile for those worker
    threads (``start`` them, ``close`` them at the end); without, it reconciles at once in the
    caller's thread.
    """

    def __init__(
        self,
        kube: Kube,
        is_leader: Callable[[], bool] = lambda: True,
        *,
        backoff: Backoff | None = None,
        schedule: Schedule | None = None,
        clock: Callable[[], float] = time.monotonic,
        workers: int = 0,
    ) -> None:
        self.kube = kube
        self.is_leader = is_leader
        self.backoff = backoff or Backoff()
        self.schedule: Schedule = schedule or TimerSchedule()
        self.clock = clock
        self._locks: dict[Key, threading.Lock] = {}
        self._held: dict[Key, Held] = {}
        self._free_seen: tuple[float, list[NodeFree]] | None = None
        self._guard = threading.Lock()
        self._stopping = threading.Event()
        self._creates = ThreadPoolExecutor(MAX_PARALLEL_CREATES, thread_name_prefix="create")
        self.queue = (
            WorkQueue(lambda key: self.reconcile_by_name(*key), workers=workers)
            if workers
            else None
        )

    def start(self) -> None:
        if self.queue is not None:
            self.queue.start()

    def close(self, timeout: float = 10.0) -> None:
        """Stop the workers: what still waits is dropped (the next leader's resync covers it),
        and a reconcile under way sends no more writes (it writes status, and returns)."""
        self._stopping.set()
        if self.queue is not None:
            dropped = self.queue.close(timeout)
            if dropped:
                log.info("stopping: %d queued reconciles dropped", dropped)
        self._creates.shutdown(wait=False, cancel_futures=True)

    def request(self, namespace: str, name: str) -> None:
        """A reconcile of one NeuronWorkload: queued (coalescing) with workers, else done now."""
        if self.queue is not None:
            self.queue.add((namespace, name))
        else:
            self.reconcile_by_name(namespace, name)

    def _lock(self, namespace: str, name: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault((namespace, name), threading.Lock())

    def reconcile_by_name(self, namespace: str, name: str) -> None:
        if not self.is_leader():
            return
        with self._lock(namespace, name):
            try:
                body = self.kube.get_workload(namespace, name)
                if body is None:
                    self._release((namespace, name))  # deleted: nothing to retry
                else:
                    self._reconcile_timed(body)
            except API_ERRORS as error:  # reads and the status write: retried, in one line
                refusal = classify_exception(error, "NeuronWorkload", name)
                delay = self._hold((namespace, name), None, 0, ())
                metrics.RECONCILES.labels("retry").inc()
                log.warning("%s/%s: %s; retrying in %.0fs", namespace, name, refusal.message, delay)

    def reconcile(self, body: Mapping[str, Any]) -> None:
        """Reconcile from a watch event: the object is read again under the lock."""
        meta = body.get("metadata") or {}
        self.reconcile_by_name(str(meta.get("namespace")), str(meta.get("name")))

    def resync(self, namespaces: Sequence[str]) -> int:
        """Request a reconcile of every NeuronWorkload (the level-based safety net); returns how
        many."""
        if not self.is_leader():
            return 0
        count = 0
        for body in self.kube.list_workloads(namespaces):
            meta = body["metadata"]
            try:
                self.request(meta["namespace"], meta["name"])
                count += 1
            except Exception:  # a bug with one object must not stop the others
                log.exception("reconcile of %s/%s failed", meta["namespace"], meta["name"])
        return count

    def _reconcile_timed(self, body: Mapping[str, Any]) -> None:
        started = time.perf_counter()
        try:
            result = self._reconcile(body)
        except Exception:
            metrics.RECONCILES.labels("error").inc()
            raise
        finally:
            metrics.RECONCILE_SECONDS.observe(time.perf_counter() - started)
        metrics.RECONCILES.labels(result).inc()

    def _held_now(self, key: Key, uid: str, generation: int) -> Held | None:
        """The hold on this object's writes, dropped once the object is another one or edited."""
        with self._guard:
            held = self._held.get(key)
            if held is not None and held.uid and (held.uid, held.generation) != (uid, generation):
                del self._held[key]
                return None
            return held

    def _hold(
        self, key: Key, uid: str | None, generation: int, refusals: Sequence[Refusal]
    ) -> float:
        """Back off after a failure: hold the refused writes and schedule a retry."""
        with self._guard:
            before = self._held.get(key)
            failures = (before.failures if before else 0) + 1
            delay = self.backoff.delay(failures)
            if uid is None and before is not None:  # a read failed: keep what is held, longer
                uid, generation, refusals = before.uid, before.generation, before.refusals
            held = Held(uid or "", generation, failures, self.clock() + delay, tuple(refusals))
            self._held[key] = held
        self.schedule(key, delay, lambda: self.request(*key))
        return delay

    def _release(self, key: Key) -> None:
        with self._guard:
            self._held.pop(key, None)

    def _reconcile(self, body: Mapping[str, Any]) -> str:
        meta = body.get("metadata") or {}
        if meta.get("deletionTimestamp"):
            return "ok"  # the garbage collector removes the pods through their owner references
        previous: Mapping[str, Any] = body.get("status") or {}
        generation = int(meta.get("generation") or 0)
        name, namespace, uid = str(meta.get("name")), str(meta.get("namespace")), str(meta["uid"])
        key = (namespace, name)
        try:
            workload = workload_from_object(body)
            result = plan(workload.spec)
        except InvalidSpecError as error:
            self._release(key)
            return self._report_invalid(body, previous, error.problems)
        allocation = resolve_allocation(workload.spec.allocation, self.kube.block_class_exists())
        hash_ = template_hash(workload.spec, allocation)
        desired = {(p.replica, p.index): build_pod(p, workload, allocation) for p in result.pods}
        by_name = {pod["metadata"]["name"]: pod for pod in desired.values()}
        held = self._held_now(key, uid, generation)
        holding = held.kinds(self.clock()) if held else frozenset()
        kept = [r for r in (held.refusals if held else ()) if r.kind in holding]
        fresh: list[Refusal] = []
        if SERVICE not in holding:
            try:
                done = self.kube.ensure_service(build_service(workload), uid)
                if done:
                    reason = c.EVENT_SERVICE if done == SERVICE_CREATED else c.EVENT_SERVICE_UPDATED
                    self.kube.post_event(body, NORMAL, reason, f"{done} Service {name}")
            except ChildRefusedError as error:
                fresh.append(error.refusal)
        # Only what the loop needs is kept of each pod: the full bodies go with this statement.
        observed = [
            observe_pod(p) for p in self.kube.list_pods(namespace, name) if controller_uid(p) == uid
        ]
        dra = sync_dra(
            self.kube,
            workload,
            allocation=allocation,
            was_dra=bool(previous.get("claimTemplates")),
            pod_cores=[p.cores for p in result.layout],
            rolling=any(p.template_hash != hash_ for p in observed),
            holding=holding,
            pods=sorted(p.name for p in observed if not p.terminating),
        )
        fresh.extend(dra.refusals)
        actions = diff(list(by_name), hash_, observed)
        # pods name their claim template: none is created while a template is refused
        create = () if POD in holding or dra.refusals else actions.create
        ready_old = {p.name for p in observed if p.ready and p.template_hash != hash_}
        fresh.extend(
            self._apply(
                body,
                create,
                actions.delete,
                by_name,
                ready_old=ready_old,
                creates_held=POD in holding or bool(dra.refusals),
            )
        )
        refusals = kept + fresh
        if fresh or not holding:
            self._after_attempt(key, uid, generation, refusals, fresh)
        blocked = allocation == ALLOCATION_DRA and any(
            DRA_NO_DEVICE in (p.unschedulable or "") for p in observed if not p.terminating
        )
        status = compute_status(
            generation=generation,
            result=result,
            current_hash=hash_,
            desired={k: v["metadata"]["name"] for k, v in desired.items()},
            observed=observed,
            selector=selector_string(name),
            free_cores=self._free_cores(key, workload.spec.pod.node_selector) if blocked else None,
            instance_type=workload.spec.instance_type,
        )
        status["allocation"] = allocation
        if dra.templates is not None:
            status["claimTemplates"] = dra.templates
        allocated = dra.allocated
        if allocation != ALLOCATION_DRA:
            allocated = self._recorded_cores(key, observed)
        if allocated is not None:
            status["allocatedCores"] = allocated
            status["allocatedSummary"] = allocated_summary(allocated)
        elif previous.get("allocatedCores") is not None:  # not read this time: kept as it was
            status["allocatedCores"] = previous.get("allocatedCores")
            status["allocatedSummary"] = previous.get("allocatedSummary", "")
        stuck = sum(1 for p in observed if p.unschedulable and not p.terminating)
        metrics.UNSCHEDULABLE_PODS.labels(namespace, name).set(stuck)
        if _condition_true(status, c.UNSCHEDULABLE) and not _condition_true(
            previous, c.UNSCHEDULABLE
        ):
            message = str((c.find(status["conditions"], c.UNSCHEDULABLE) or {}).get("message"))
            self.kube.post_event(body, WARNING, c.EVENT_UNSCHEDULABLE, message)
        reported = [r for r in refusals if not r.transient]
        status = refused_status(status, reported, generation)
        self._report_refusals(body, previous, status, reported)
        self._write_status(body, previous, status)
        return "refused" if reported else "ok"

    def _recorded_cores(
        self, key: Key, observed: Sequence[ObservedPod]
    ) -> list[dict[str, Any]] | None:
        """Device-plugin mode: each placed pod's cores from its node's allocation record (the
        annotation the device plugin publishes); None when the nodes cannot be read."""
        placed = sorted((p.name, p.node) for p in observed if p.node and not p.terminating)
        if not placed:
            return []
        try:
            records = self.kube.node_records()
        except API_ERRORS as error:
            log.warning(
                "%s/%s: cannot read the nodes' core-allocation records (list nodes): %s %s",
                key[0],
                key[1],
                getattr(error, "status", None) or type(error).__name__,
                getattr(error, "reason", None) or error,
            )
            return None
        return recorded_cores(key[0], placed, records)

    def _free_cores(self, key: Key, selector: Mapping[str, str]) -> list[NodeFree] | None:
        """Each DRA node's free cores, read only while a pod's block claim cannot be allocated,
        of the nodes the pods' ``nodeSelector`` allows (the instance type is filtered on the
        slices' own attribute); None when they cannot be read (the condition then says so).
        One read serves every workload for ``FREE_CORES_SECONDS``: the slices of a 64-core node
        are 1.7 MiB of JSON, not to be listed at every pod event of every waiting workload."""
        try:
            with self._guard:
                seen = self._free_seen
            if seen is not None and self.clock() - seen[0] < FREE_CORES_SECONDS:
                found = seen[1]
            else:
                found = free_cores(self.kube.list_block_slices(), self.kube.list_all_claims())
                with self._guard:
                    self._free_seen = (self.clock(), found)
            if selector:
                allowed = self.kube.list_node_names(selector)
                found = [n for n in found if n.node in allowed]
            return found
        except API_ERRORS as error:
            status = getattr(error, "status", None)
            log.warning(
                "%s/%s: cannot read the nodes' free NeuronCores (list resourceslices and "
                "resourceclaims in all namespaces): %s %s",
                key[0],
                key[1],
                status or type(error).__name__,
                getattr(error, "reason", None) or error,
            )
            return None

    def _after_attempt(
        self,
        key: Key,
        uid: str,
        generation: int,
        refusals: Sequence[Refusal],
        fresh: Sequence[Refusal],
    ) -> None:
        """After writes were tried: back off if any was refused, else forget past failures."""
        if not refusals:
            self._release(key)
            return
        delay = self._hold(key, uid, generation, refusals)
        for refusal in fresh:
            metrics.REFUSALS.labels(refusal.reason).inc()
            log.warning(
                "%s/%s: %s: %s; retrying in %.0fs",
                key[0],
                key[1],
                refusal.reason,
                refusal.message,
                delay,
            )

    def _report_refusals(
        self,
        body: Mapping[str, Any],
        previous: Mapping[str, Any],
        status: Mapping[str, Any],
        refusals: Sequence[Refusal],
    ) -> None:
        """A Warning Event per refusal, when the ``Refused`` condition says something new."""
        new = c.find(status.get("conditions"), c.REFUSED) or {}
        old = c.find(previous.get("conditions"), c.REFUSED) or {}
        if not refusals or all(new.get(k) == old.get(k) for k in ("status", "reason", "message")):
            return
        for refusal in refusals:
            self.kube.post_event(body, WARNING, refusal.reason, refusal.describe())

    def _report_invalid(
        self, body: Mapping[str, Any], previous: Mapping[str, Any], problems: Sequence[str]
    ) -> str:
        """``InvalidSpec`` on status and a Warning Event; the pods that exist are left alone."""
        meta = body.get("metadata") or {}
        name, namespace = str(meta.get("name")), str(meta.get("namespace"))
        status = invalid_status(
            generation=int(meta.get("generation") or 0),
            problems=problems,
            previous=previous,
            selector=selector_string(name),
        )
        if not _condition_true(previous, c.INVALID_SPEC) or status_changed(previous, status):
            message = "; ".join(problems)
            self.kube.post_event(body, WARNING, c.EVENT_INVALID, message)
            log.warning("%s/%s has an invalid spec: %s", namespace, name, message)
        self._write_status(body, previous, status)
        return "invalid"

    def _create(
        self, create: Sequence[str], pods: Mapping[str, Mapping[str, Any]], owner_uid: str
    ) -> tuple[list[str], list[Refusal]]:
        """Create pods in batches of 1, 2, 4 ... ``MAX_PARALLEL_CREATES``, each batch at once; no
        batch after a refusal of the API server (the next would be refused alike), but past a
        name taken by someone else.  ``created`` keeps the order of ``create``."""
        created: list[str] = []
        refusals: list[Refusal] = []
        start, size = 0, 1
        while start < len(create) and not self._stopping.is_set():
            batch = create[start : start + size]
            outcomes = list(
                self._creates.map(lambda n: self._create_one(pods[n], owner_uid), batch)
            )
            for name, outcome in zip(batch, outcomes, strict=True):
                if outcome is True:
                    created.append(name)
                elif isinstance(outcome, Refusal):
                    refusals.append(outcome)
            if any(r.reason != c.REASON_NOT_OWNED for r in refusals):
                break
            start, size = start + size, min(size * 2, MAX_PARALLEL_CREATES)
        return created, refusals

    def _create_one(self, pod: Mapping[str, Any], owner_uid: str) -> bool | Refusal:
        """True: created; False: this workload's pod already exists; else the refusal."""
        if self._stopping.is_set():
            return False
        try:
            return self.kube.create_pod(pod, owner_uid)
        except ChildRefusedError as error:
            return error.refusal

    def _apply(
        self,
        body: Mapping[str, Any],
        create: Sequence[str],
        delete: Sequence[str],
        pods: Mapping[str, Mapping[str, Any]],
        *,
        ready_old: Set[str],
        creates_held: bool,
    ) -> list[Refusal]:
        """Create and delete pods; returns the refusals met.

        None is created when one would be too large.  While new pods are refused, the ready
        pods of an older template stay: a roll only removes them to make room for new pods that
        can come, so a refused spec loses nothing.  Other deletes go on (a scale-down may be
        what frees the quota).  The first ``PROBE_CREATES`` pods are created before the deletes,
        as the probe that new pods are accepted, and the rest after them: in a roll of many pods
        the old pods' cores are freed at once, not after every new pod was sent."""
        meta = body["metadata"]
        namespace, uid = str(meta["namespace"]), str(meta["uid"])
        too_large = next((r for n in create if (r := pod_size_refusal(pods[n]))), None)
        created: list[str] = []
        refusals: list[Refusal] = [too_large] if too_large is not None else []
        if too_large is None:
            created, refusals = self._create(create[:PROBE_CREATES], pods, uid)
        go_on = too_large is None and all(r.reason == c.REASON_NOT_OWNED for r in refusals)
        if creates_held or any(r.kind == POD for r in refusals):
            delete = [name for name in delete if name not in ready_old]
        deleted: list[str] = []
        for name in delete:
            if self._stopping.is_set():
                break
            try:
                if self.kube.delete_pod(namespace, name):
                    deleted.append(name)
            except ChildRefusedError as error:
                refusals.append(error.refusal)
                break
        if go_on:
            more, more_refusals = self._create(create[PROBE_CREATES:], pods, uid)
            created += more
            refusals += more_refusals
        metrics.PODS_CREATED.inc(len(created))
        metrics.PODS_DELETED.inc(len(deleted))
        if created:
            log.info("%s/%s: created pods %s", namespace, meta["name"], created)
            self.kube.post_event(
                body, NORMAL, c.EVENT_CREATED, f"created {len(created)} pods: {', '.join(created)}"
            )
        if deleted:
            log.info("%s/%s: deleted pods %s", namespace, meta["name"], deleted)
            self.kube.post_event(
                body, NORMAL, c.EVENT_DELETED, f"deleted {len(deleted)} pods: {', '.join(deleted)}"
            )
        return refusals

    def _write_status(
        self, body: Mapping[str, Any], previous: Mapping[str, Any], status: dict[str, Any]
    ) -> None:
        status["conditions"] = c.merge_conditions(
            previous.get("conditions"), status["conditions"], now_rfc3339()
        )
        if status_changed(previous, status):
            meta = body["metadata"]
            self.kube.patch_status(meta["namespace"], meta["name"], status)
