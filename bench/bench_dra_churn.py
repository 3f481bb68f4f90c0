"""Churn on the real kube-scheduler: the device-plugin path against the DRA paths, in one run.

One seeded sequence of pod creates and deletes (pods asking 1, 2, 4, 6 or 8 NeuronCores) is
replayed three times, each time on a fresh local cluster (kube-apiserver, kube-scheduler,
kube-controller-manager, kwok; v1.36.1) with the same kwok 16-core nodes (inf1.6xlarge):

* ``device-plugin``: the nodes advertise ``aws.amazon.com/neuroncore: 16`` and a pod asks for
  ``aws.amazon.com/neuroncore: k``.  The scheduler counts cores; the cores a pod gets are chosen
  on the node afterwards.  kwok runs no kubelet, so the bench plays the kubelet and the device
  plugin for each bound pod: the node's free cores go to the plugin's own preferred-allocation
  policy (``neuron_device_plugin.policy.best_fit``, what GetPreferredAllocation answers), and the
  pod's cores are freed when it is deleted;
* ``dra``: the nodes offer their cores only as the DRA driver's ResourceSlices
  (``neuron-localcluster up --allocation dra``) and a pod claims one block of exactly k cores from a
  ResourceClaimTemplate; the scheduler allocates the block;
* ``dra-extended``: the same DRA nodes, but an unmodified pod asks for
  ``aws.amazon.com/neuroncore: k``: the DeviceClass with that ``extendedResourceName`` lets the
  scheduler serve it with k 1-core devices in a claim it makes for the pod (no contiguity asked).

After each step the bench waits for the scheduler to have acted on the pod (bound, or marked
Unschedulable) or for a deleted pod's cores to be free, then records per path:

* **contiguous**: the share of scheduled pods whose cores are one run of adjacent cores;
* **pending with a run**: pods that were left Pending (Unschedulable) at a step's end while some
  node had a free run of adjacent cores of their size (DRA's goal: 0);
* **fragmented**: pods Unschedulable at a step's end with no free run of their size on any node
  but enough free cores on one (DRA's price for contiguity; a snapshot without grace, so on the
  device-plugin path, which would place such a pod on scattered cores, these are pods the
  scheduler had not retried yet);
* **waited**: pods that were Unschedulable at least once;
* **schedule ms**: the time from the pod's creation to its binding, for pods bound at their first
  attempt (median and p90).

Run: ``PYTHONSAFEPATH=1 .venv/bin/python bench/bench_dra_churn.py [--steps N --seed S]``; it
prints one row per path and, last, one JSON line.
"""

from __future__ import annotations

import argparse
import functools
import json
import random
import shutil
import statistics
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubernetes import client as k8s
from kubernetes import watch

from neuron_cores import CORE_RESOURCE, NEURON_TAINT_EFFECT, NEURON_TAINT_KEY
from neuron_device_plugin.policy import best_fit
from neuron_dra_driver.classes import block_claim
from neuron_dra_driver.layout import NodeShape
from neuron_dra_driver.prepare import parse_block
from neuron_localcluster import LocalCluster, ensure_binaries
from neuron_localcluster.kube import ApiException, body, raw_json

SIZES = (1, 2, 4, 6, 8)
PATHS = ("device-plugin", "dra", "dra-extended")
CORES = 16
TOLERATE_NEURON = [{"key": NEURON_TAINT_KEY, "operator": "Exists", "effect": NEURON_TAINT_EFFECT}]
SETTLE_S = 30.0
POLL_S = 0.02
GRACE_S = 10.0


@dataclass(frozen=True)
class Step:
    create: int | None  # cores of a pod to create
    delete: int | None  # index (into the live pods) of one to delete


def churn(seed: int, steps: int, nodes: int) -> list[Step]:
    """The seeded sequence: creates while under ~90% of the cores, else a coin toss."""
    rng = random.Random(seed)
    out: list[Step] = []
    live = 0
    asked: list[int] = []
    for _ in range(steps):
        load = sum(asked)
        if asked and (load > 0.9 * nodes * CORES or rng.random() < 0.4):
            index = rng.randrange(len(asked))
            asked.pop(index)
            out.append(Step(None, index))
            live -= 1
        else:
            size = rng.choice(SIZES)
            asked.append(size)
            out.append(Step(size, None))
            live += 1
    return out


def runs(free: set[int]) -> int:
    """The longest run of adjacent free cores."""
    best = current = 0
    for core in range(CORES):
        current = current + 1 if core in free else 0
        best = max(best, current)
    return best


@dataclass
class Watcher:
    """Pods of one namespace as the API server sees them, from a watch: binding times."""

    core: k8s.CoreV1Api
    namespace: str
    bound_at: dict[str, float] = field(default_factory=dict)
    node_of: dict[str, str] = field(default_factory=dict)
    unschedulable: set[str] = field(default_factory=set)
    ever_unschedulable: set[str] = field(default_factory=set)
    messages: dict[str, str] = field(default_factory=dict)
    stop: threading.Event = field(default_factory=threading.Event)

    def acted_on(self, name: str) -> bool:
        return name in self.bound_at or name in self.unschedulable

    def run(self) -> None:
        while not self.stop.is_set():
            watcher: Any = watch.Watch()  # type: ignore[no-untyped-call]
            stream: Any = watcher.stream(
                self.core.list_namespaced_pod, self.namespace, timeout_seconds=5
            )
            for event in stream:
                pod = event["object"]
                name = pod.metadata.name
                if pod.spec.node_name and name not in self.bound_at:
                    self.bound_at[name] = time.monotonic()
                    self.node_of[name] = pod.spec.node_name
                    self.unschedulable.discard(name)
                for cond in (pod.status.conditions if pod.status else None) or []:
                    waiting = cond.type == "PodScheduled" and cond.reason == "Unschedulable"
                    if waiting and not pod.spec.node_name:
                        self.unschedulable.add(name)
                        self.ever_unschedulable.add(name)
                        self.messages[name] = str(cond.message)
                if self.stop.is_set():
                    break


def wait(predicate: Callable[[], bool], timeout: float = SETTLE_S) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(POLL_S)
    return True


@dataclass
class Result:
    path: str
    scheduled: int = 0
    contiguous: int = 0
    pending_with_run: set[str] = field(default_factory=set)
    fragmented: set[str] = field(default_factory=set)
    waited: int = 0
    schedule_ms: list[float] = field(default_factory=list)
    left_pending: int = 0
    reasons: list[str] = field(default_factory=list)
    counted: set[str] = field(default_factory=set)

    def row(self) -> dict[str, Any]:
        ms = sorted(self.schedule_ms)
        return {
            "path": self.path,
            "pods_scheduled": self.scheduled,
            "contiguous_pct": round(100.0 * self.contiguous / max(1, self.scheduled), 1),
            "pending_with_free_run": len(self.pending_with_run),
            "pending_fragmented": len(self.fragmented),
            "waited": self.waited,
            "pending_at_end": self.left_pending,
            "schedule_ms_median": round(statistics.median(ms), 1) if ms else None,
            "schedule_ms_p90": round(ms[int(0.9 * (len(ms) - 1))], 1) if ms else None,
        }


class Replay:
    """One allocation path on its own cluster."""

    def __init__(
        self, cluster: LocalCluster, path: str, namespace: str, node_of: dict[str, str]
    ) -> None:
        self.cluster = cluster
        self.node_of = node_of
        self.path = path
        self.namespace = namespace
        api = cluster.api_client()
        self.core = k8s.CoreV1Api(api)
        self.resource = k8s.ResourceV1Api(api)
        self.shape = NodeShape("inf1.6xlarge", 4, 4)
        # device plugin path: cores the bench (as kubelet + plugin) handed to each pod
        self.cores_of: dict[str, tuple[int, ...]] = {}
        self.size_of: dict[str, int] = {}
        self.created_at: dict[str, float] = {}

    def setup(self) -> None:
        self.core.create_namespace(body({"metadata": {"name": self.namespace}}))
        wait(
            lambda: _exists(
                lambda: self.core.read_namespaced_service_account("default", self.namespace)
            ),
            60,
        )
        if self.path == "dra":
            for size in SIZES:
                claim = block_claim(f"block-{size}", size)
                template = {
                    "apiVersion": "resource.k8s.io/v1",
                    "kind": "ResourceClaimTemplate",
                    "metadata": {"name": f"block-{size}"},
                    "spec": {"spec": claim["spec"]},
                }
                self.resource.create_namespaced_resource_claim_template(
                    self.namespace, body(template)
                )

    def gone(self, name: str) -> bool:
        """The pod is deleted and (DRA) its claim's block is free again."""
        if _exists(lambda: self.core.read_namespaced_pod(name, self.namespace)):
            return False
        return self.path == "device-plugin" or name not in self.allocations()

    def manifest(self, name: str, size: int) -> dict[str, Any]:
        container: dict[str, Any] = {"name": "c", "image": "busybox"}
        spec: dict[str, Any] = {
            "nodeSelector": {"neuron-groups.io/simulation": "kwok"},
            "tolerations": TOLERATE_NEURON,
            "containers": [container],
        }
        if self.path == "dra":
            spec["resourceClaims"] = [
                {"name": "cores", "resourceClaimTemplateName": f"block-{size}"}
            ]
            container["resources"] = {"claims": [{"name": "cores"}]}
        else:
            container["resources"] = {"limits": {CORE_RESOURCE: str(size)}}
        return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec}

    def allocations(self) -> dict[str, tuple[str, tuple[int, ...]]]:
        """pod -> (node, cores) of every scheduled pod."""
        if self.path == "device-plugin":
            return {p: (self.node_of[p], c) for p, c in self.cores_of.items()}
        listed = raw_json(
            self.resource.list_namespaced_resource_claim(self.namespace, _preload_content=False)
        )
        out: dict[str, tuple[str, tuple[int, ...]]] = {}
        for claim in listed.get("items") or []:
            alloc = (claim.get("status") or {}).get("allocation")
            owners = claim["metadata"].get("ownerReferences") or []
            if not alloc or not owners:
                continue
            cores: list[int] = []
            node = ""
            for result in alloc["devices"]["results"]:
                block = parse_block(result["device"], self.shape)
                assert block is not None, result
                cores.extend(block.cores)
                node = result["pool"]
            out[owners[0]["name"]] = (node, tuple(cores))
        return out


def _exists(call: Callable[[], object]) -> bool:
    try:
        call()
        return True
    except ApiException:
        return False


def account(
    run: Replay,
    watcher: Watcher,
    live: list[str],
    result: Result,
) -> dict[str, tuple[int, int]]:
    """Count newly scheduled pods; each node's free cores and longest free run."""
    # the device plugin path: the node's plugin picks cores for each newly bound pod
    for pod in live:
        if run.path == "device-plugin" and pod in watcher.bound_at and pod not in run.cores_of:
            node = watcher.node_of[pod]
            taken = {c for n, cs in run.allocations().values() if n == node for c in cs}
            free = [c for c in range(CORES) if c not in taken]
            run.cores_of[pod] = best_fit(free, [], run.size_of[pod])
    allocs = run.allocations()
    for pod, (_, cores) in allocs.items():
        if pod in result.counted:
            continue
        result.counted.add(pod)
        result.scheduled += 1
        ordered = sorted(cores)
        if ordered == list(range(ordered[0], ordered[0] + len(ordered))):
            result.contiguous += 1
        if pod not in watcher.ever_unschedulable:  # bound at its first attempt
            result.schedule_ms.append(1000 * (watcher.bound_at[pod] - run.created_at[pod]))
    out = {}
    for node in run.cluster.kwok_nodes:
        idle = set(range(CORES)) - {c for n, cs in allocs.values() if n == node for c in cs}
        out[node] = (len(idle), runs(idle))
    return out


def replay(cluster: LocalCluster, path: str, steps: list[Step], seed: int) -> Result:
    namespace = f"churn-{path}-{uuid.uuid4().hex[:6]}"
    watcher = Watcher(k8s.CoreV1Api(cluster.api_client()), namespace)
    run = Replay(cluster, path, namespace, watcher.node_of)
    run.setup()
    thread = threading.Thread(target=watcher.run, daemon=True)
    thread.start()
    result = Result(path)
    live: list[str] = []
    for index, step in enumerate(steps):
        if step.create is not None:
            name = f"p{index:04d}-{step.create}"
            run.size_of[name] = step.create
            run.created_at[name] = time.monotonic()
            run.core.create_namespaced_pod(namespace, body(run.manifest(name, step.create)))
            live.append(name)
            wait(functools.partial(watcher.acted_on, name))
        else:
            assert step.delete is not None
            name = live.pop(step.delete)
            run.core.delete_namespaced_pod(name, namespace, grace_period_seconds=0)
            run.cores_of.pop(name, None)
            wait(functools.partial(run.gone, name))
        # A pod still Unschedulable while a node has a free run of its size gets GRACE_S to be
        # bound (the scheduler retries on the next relevant event, with a backoff of at most
        # 10 s); only then does it count as left Pending.
        deadline = time.monotonic() + GRACE_S
        while True:
            free_run = account(run, watcher, live, result)
            stuck = [
                pod
                for pod in live
                if pod not in watcher.bound_at
                and pod in watcher.unschedulable
                and any(r >= run.size_of[pod] for _, r in free_run.values())
            ]
            if not stuck:
                break
            if time.monotonic() > deadline:
                result.pending_with_run.update(stuck)
                for pod in stuck:
                    result.reasons.append(f"{pod}: {watcher.messages.get(pod)} {free_run}")
                break
            time.sleep(0.1)
        for pod in live:
            waiting = pod not in watcher.bound_at and pod in watcher.unschedulable
            size = run.size_of[pod]
            no_run = all(r < size for _, r in free_run.values())
            if waiting and no_run and any(n >= size for n, _ in free_run.values()):
                result.fragmented.add(pod)
    result.waited = len(watcher.ever_unschedulable)
    result.left_pending = sum(1 for pod in live if pod not in watcher.bound_at)
    watcher.stop.set()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--nodes", type=int, default=3, help="kwok inf1.6xlarge nodes")
    args = parser.parse_args()
    ensure_binaries()
    steps = churn(args.seed, args.steps, args.nodes)
    results = []
    for path in PATHS:
        state = Path(tempfile.mkdtemp(prefix=f"ngchurn-{path}-"))
        cluster = LocalCluster.up(
            state,
            kwok_nodes=f"{args.nodes}xinf1.6xlarge",
            emulated_nodes="",
            allocation="device-plugin" if path == "device-plugin" else "dra",
        )
        try:
            started = time.monotonic()
            result = replay(cluster, path, steps, args.seed)
            took = time.monotonic() - started
        finally:
            cluster.down()
            shutil.rmtree(state, ignore_errors=True)
        row = result.row()
        for reason in result.reasons:
            print(f"{path}: left Pending with a free run: {reason}", flush=True)
        row["replay_s"] = round(took, 1)
        results.append(row)
    creates = sum(1 for s in steps if s.create is not None)
    print(
        f"churn: seed {args.seed}, {args.steps} steps ({creates} creates), "
        f"{args.nodes} x 16-core kwok nodes, sizes {','.join(map(str, SIZES))}"
    )
    header = (
        f"{'path':<14} {'scheduled':>9} {'contiguous':>10} {'pending w/ run':>14} "
        f"{'fragmented':>10} {'waited':>6} {'pending end':>11} {'sched ms med':>12} {'p90':>7}"
    )
    print(header)
    for row in results:
        print(
            f"{row['path']:<14} {row['pods_scheduled']:>9} {row['contiguous_pct']:>9}% "
            f"{row['pending_with_free_run']:>14} {row['pending_fragmented']:>10} "
            f"{row['waited']:>6} {row['pending_at_end']:>11} "
            f"{row['schedule_ms_median']!s:>12} {row['schedule_ms_p90']!s:>7}"
        )
    print(
        json.dumps(
            {"seed": args.seed, "steps": args.steps, "nodes": args.nodes, "results": results}
        )
    )


if __name__ == "__main__":
    main()
