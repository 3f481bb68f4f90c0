"""Reconcile requests coalesce: a burst of watch events costs a bounded number of reconciles.

``WorkQueue`` keeps each NeuronWorkload waiting at most once, never reconciles one in two threads
at once, and reconciles one marked during its reconcile once more afterwards (no event lost).
The kopf handlers only request a reconcile and return, so a burst of pod events holds nothing.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from typing import Any

import kopf
import pytest

from neuron_operator import conditions as c
from neuron_operator.controller import MAX_PARALLEL_CREATES, Key, Reconciler, WorkQueue
from neuron_operator.handlers import register
from neuron_operator.kube import ChildRefusedError
from neuron_operator.refusals import Refusal

from .test_controller_refusals import NAME, NS, UID, FakeKube, workload_body

WAIT = 10.0
A, B, C = ("ns", "a"), ("ns", "b"), ("ns", "c")


class Gate:
    """A ``process`` that records each call and holds the first call of ``held`` until opened."""

    def __init__(self, held: Key | None = None) -> None:
        self.calls: list[Key] = []
        self.held = held
        self.entered = threading.Event()
        self.opened = threading.Event()
        self._guard = threading.Lock()

    def __call__(self, key: Key) -> None:
        with self._guard:
            self.calls.append(key)
            first = self.calls.count(key) == 1
        if key == self.held and first:
            self.entered.set()
            assert self.opened.wait(WAIT), "the test never opened the gate"


@pytest.mark.parametrize("workers", [1, 4], ids=["one-worker", "four-workers"])
def test_a_burst_for_one_workload_while_it_reconciles_costs_one_more_reconcile(
    workers: int,
) -> None:
    gate = Gate(held=A)
    queue = WorkQueue(gate, workers=workers)
    queue.start()
    try:
        assert queue.add(A)
        assert gate.entered.wait(WAIT)
        added = [queue.add(A) for _ in range(500)]
        assert added.count(True) == 1  # the first marks it; the other 499 coalesce into it
        assert queue.pending() == 1
        gate.opened.set()
        assert queue.wait_idle(WAIT)
    finally:
        queue.close()
    assert gate.calls == [A, A]


def test_workloads_do_not_wait_behind_each_other() -> None:
    gate = Gate(held=A)
    queue = WorkQueue(gate, workers=2)
    queue.start()
    try:
        queue.add(A)
        assert gate.entered.wait(WAIT)
        queue.add(B)
        deadline = time.monotonic() + WAIT
        while B not in gate.calls and time.monotonic() < deadline:
            time.sleep(0.01)
        assert B in gate.calls  # reconciled while A's reconcile still runs
        assert A in gate.calls and gate.calls.count(A) == 1
        gate.opened.set()
        assert queue.wait_idle(WAIT)
    finally:
        queue.close()


def test_no_workload_is_reconciled_twice_at_once_and_the_last_request_is_seen() -> None:
    """Several threads request reconciles of three workloads, each request after a change; every
    reconcile must start after the change that triggered it, and never overlap with itself."""
    versions: Counter[Key] = Counter()
    seen: dict[Key, int] = {}
    running: Counter[Key] = Counter()
    overlaps: list[Key] = []
    guard = threading.Lock()

    def process(key: Key) -> None:
        with guard:
            running[key] += 1
            if running[key] > 1:
                overlaps.append(key)
            seen[key] = versions[key]
        time.sleep(0.001)
        with guard:
            running[key] -= 1

    queue = WorkQueue(process, workers=4)
    queue.start()

    def requester(keys: tuple[Key, ...]) -> None:
        for _ in range(300):
            for key in keys:
                with guard:
                    versions[key] += 1
                queue.add(key)

    threads = [threading.Thread(target=requester, args=((A, B, C),)) for _ in range(3)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(WAIT)
        assert queue.wait_idle(WAIT)
    finally:
        queue.close()
    assert overlaps == []
    assert seen == dict(versions)  # the reconcile after the last request saw the last change


def test_close_drops_what_waits_and_refuses_new_requests() -> None:
    gate = Gate(held=A)
    queue = WorkQueue(gate, workers=1)
    queue.start()
    queue.add(A)
    assert gate.entered.wait(WAIT)
    queue.add(B)
    queue.add(C)
    threading.Timer(0.2, gate.opened.set).start()
    assert queue.close(timeout=WAIT) == 2  # B and C dropped; A's reconcile was let finish
    assert queue.add(A) is False
    assert gate.calls == [A]


def test_a_failing_reconcile_does_not_stop_the_worker(caplog: pytest.LogCaptureFixture) -> None:
    calls: list[Key] = []

    def process(key: Key) -> None:
        calls.append(key)
        if key == A:
            raise RuntimeError("a bug")

    queue = WorkQueue(process, workers=1)
    queue.start()
    try:
        queue.add(A)
        assert queue.wait_idle(WAIT)
        queue.add(B)
        assert queue.wait_idle(WAIT)
    finally:
        queue.close()
    assert calls == [A, B]
    assert "reconcile of ns/a failed" in caplog.text


@pytest.mark.parametrize("workers", [0, -1], ids=["zero", "negative"])
def test_a_queue_needs_a_worker(workers: int) -> None:
    with pytest.raises(ValueError, match=f"workers must be at least 1, not {workers}"):
        WorkQueue(lambda key: None, workers=workers)


class CountingKube(FakeKube):
    """The scripted API, counting reconciles (one read of the workload each) and holding the
    first one until the test opens it."""

    def __init__(self, body: dict[str, Any]) -> None:
        super().__init__(body)
        self.reads = 0
        self.entered = threading.Event()
        self.opened = threading.Event()

    def get_workload(self, namespace: str, name: str) -> dict[str, Any] | None:
        self.reads += 1
        if self.reads == 1:
            self.entered.set()
            assert self.opened.wait(WAIT)
        return super().get_workload(namespace, name)


def handler(registry: kopf.OperatorRegistry, name: str) -> Any:
    found = [h for h in registry._watching.get_all_handlers() if h.id.endswith(name)]
    assert len(found) == 1, [h.id for h in registry._watching.get_all_handlers()]
    return found[0].fn


def pod_body(index: int) -> dict[str, Any]:
    ref = {"apiVersion": "neurongroups.dev/v1alpha1", "kind": "NeuronWorkload", "name": NAME}
    return {
        "metadata": {
            "name": f"{NAME}-pod-{index}",
            "namespace": NS,
            "ownerReferences": [{**ref, "uid": UID, "controller": True}],
        }
    }


def test_a_burst_of_pod_events_returns_at_once_and_costs_two_reconciles() -> None:
    kube = CountingKube(workload_body(copies=16))
    reconciler = Reconciler(kube, workers=2)  # type: ignore[arg-type]
    registry = kopf.OperatorRegistry()
    register(registry, reconciler, lambda: None)
    pod_event = handler(registry, "pod_event")
    workload_event = handler(registry, "workload_event")
    reconciler.start()

    async def burst() -> None:
        await workload_event(type="ADDED", name=NAME, namespace=NS, body=kube.body)
        assert await asyncio.to_thread(kube.entered.wait, WAIT)
        # 1,600 pod events while the first reconcile is under way: each handler returns at once.
        await asyncio.wait_for(
            asyncio.gather(
                *(pod_event(type="MODIFIED", body=pod_body(i), namespace=NS) for i in range(1600))
            ),
            timeout=WAIT,
        )

    try:
        asyncio.run(burst())
        assert kube.reads == 1
        kube.opened.set()
        assert reconciler.queue is not None and reconciler.queue.wait_idle(WAIT)
    finally:
        kube.opened.set()
        reconciler.close()
    assert kube.reads == 2
    assert len(kube.pods) == 16  # the reconciles did their work


def test_the_handlers_need_a_reconciler_with_workers() -> None:
    kube = FakeKube(workload_body())
    with pytest.raises(ValueError, match="needs worker threads"):
        register(kopf.OperatorRegistry(), Reconciler(kube), lambda: None)  # type: ignore[arg-type]


def test_without_workers_a_request_reconciles_at_once() -> None:
    kube = FakeKube(workload_body(copies=2))
    Reconciler(kube).request(NS, NAME)  # type: ignore[arg-type]
    assert len(kube.creates) == 2


class ClosingKube(FakeKube):
    """Closes the reconciler (as SIGTERM does) while its second pod is created."""

    reconciler: Reconciler

    def create_pod(self, body: dict[str, Any], owner_uid: str) -> bool:
        created = super().create_pod(body, owner_uid)
        if len(self.creates) == 2:
            self.reconciler.close(timeout=0)
        return created


def test_a_reconcile_under_way_at_close_sends_no_more_writes_but_writes_status() -> None:
    kube = ClosingKube(workload_body(copies=16))
    kube.reconciler = Reconciler(kube)  # type: ignore[arg-type]
    kube.reconciler.request(NS, NAME)
    assert len(kube.creates) == 2
    progressing = c.find(kube.body["status"]["conditions"], c.PROGRESSING) or {}
    assert progressing.get("status") == c.TRUE  # status written: the pods are still coming


class OrderedKube(FakeKube):
    """Records creates and deletes in the order they are sent."""

    def __init__(self, body: dict[str, Any]) -> None:
        super().__init__(body)
        self.order: list[str] = []

    def create_pod(self, body: dict[str, Any], owner_uid: str) -> bool:
        self.order.append("create")
        return super().create_pod(body, owner_uid)

    def delete_pod(self, namespace: str, name: str) -> bool:
        self.order.append("delete")
        return super().delete_pod(namespace, name)


def test_a_roll_frees_the_old_pods_cores_before_sending_the_bulk_of_new_pods() -> None:
    kube = OrderedKube(workload_body(copies=16))
    reconciler = Reconciler(kube)  # type: ignore[arg-type]
    reconciler.request(NS, NAME)
    kube.order.clear()
    kube.body["spec"]["image"] = "neuron-groups/runtime:0.2.0"
    kube.body["metadata"]["generation"] = 2
    reconciler.request(NS, NAME)
    # One new pod probes that new pods are accepted; then the 4 old pods a roll of 16 may take
    # down (25%) go; then the other 15 new pods.
    assert kube.order == ["create"] + ["delete"] * 4 + ["create"] * 15


class ConcurrentKube(FakeKube):
    """Records the creates in flight at once; the first create of a batch of two waits until
    the second has started, which can happen only when a batch is sent at once."""

    def __init__(self, body: dict[str, Any], *, refuse: int | None = None) -> None:
        super().__init__(body)
        self.sent: list[str] = []
        self.in_flight = 0
        self.most_in_flight = 0
        self.second_started = threading.Event()
        self.refuse = refuse
        self._guard = threading.Lock()

    def create_pod(self, body: dict[str, Any], owner_uid: str) -> bool:
        with self._guard:
            self.sent.append(body["metadata"]["name"])
            number = len(self.sent)
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            # sends 1 (the probe), 2 (the first batch after the deletes), then 3 and 4 together
            if number == 3:
                self.second_started.wait(WAIT)
            elif number == 4:
                self.second_started.set()
            if number == self.refuse:
                raise ChildRefusedError(
                    Refusal(
                        c.REASON_QUOTA_EXCEEDED, "Pod", body["metadata"]["name"], "exceeded quota"
                    )
                )
            return super().create_pod(body, owner_uid)
        finally:
            with self._guard:
                self.in_flight -= 1


def test_pods_are_created_in_doubling_batches_sent_at_once() -> None:
    kube = ConcurrentKube(workload_body(copies=16))
    Reconciler(kube).request(NS, NAME)  # type: ignore[arg-type]
    assert kube.second_started.is_set()
    assert len(kube.sent) == len(set(kube.sent)) == 16
    assert 2 <= kube.most_in_flight <= MAX_PARALLEL_CREATES
    assert len(kube.pods) == 16


def test_a_refused_create_stops_the_batches_after_its_own() -> None:
    # sends: 1 | 2 | 3, 4 | 5, 6, 7, 8 | ...: the 6th is refused, so 7 and 8 (same batch) are
    # sent and nothing after them
    kube = ConcurrentKube(workload_body(copies=16), refuse=6)
    Reconciler(kube).request(NS, NAME)  # type: ignore[arg-type]
    assert len(kube.sent) == 8
    assert len(kube.pods) == 7
    refused = c.find(kube.body["status"]["conditions"], c.REFUSED) or {}
    assert refused.get("status") == c.TRUE
    assert refused.get("reason") == c.REASON_QUOTA_EXCEEDED
