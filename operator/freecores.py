"""Each DRA node's free NeuronCores and longest free run, and what they say about a block claim
the scheduler could not allocate.  Pure: the objects come from ``claimkube.ClaimApi``.

Why the operator looks for itself: kube-scheduler says only "cannot allocate all claims" when no
node has a device left for a pod's block claim.  That covers two situations a person and an
autoscaler must tell apart: no node has N free cores at all (``InsufficientNeuronCores``: add a
node), or some node has N free cores but scattered, with no run of N (``NoContiguousRun``: a new
node helps too, but so does freeing or defragmenting a run on that node).  The facts are the DRA
driver's ResourceSlices (which cores each node offers, and which are unhealthy: every block
covering an unhealthy core is tainted) and the allocated ResourceClaims of every namespace
(which cores are taken).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from neuron_cores import contiguous_runs
from neuron_dra_driver.layout import DRIVER_NAME
from neuron_operator import conditions as c
from neuron_operator.claims import allocation_results, device_cores, runs_text

BLOCKING_TAINT_EFFECTS = ("NoSchedule", "NoExecute")


def longest_run(cores: Iterable[int]) -> tuple[int, int] | None:
    """The longest run of consecutive cores as inclusive (first, last), the lowest of equals;
    None when there are no cores."""
    runs = contiguous_runs(cores)
    if not runs:
        return None
    return max(runs, key=lambda r: (r[1] - r[0], -r[0]))


@dataclass(frozen=True)
class NodeFree:
    """One node's cores as the DRA driver offers them, and those no claim holds."""

    node: str
    instance_type: str | None
    cores: int
    free: tuple[int, ...]

    @property
    def longest(self) -> int:
        run = longest_run(self.free)
        return 0 if run is None else run[1] - run[0] + 1

    def describe(self) -> str:
        free = runs_text(self.free) or "none"
        return (
            f"node {self.node} has {len(self.free)} free NeuronCores ({free}), "
            f"longest free run {self.longest}"
        )


def _newest_slices(slices: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The driver's slices of each pool's newest generation (older ones are being replaced)."""
    ours = [s for s in slices if (s.get("spec") or {}).get("driver") == DRIVER_NAME]
    newest: dict[str, int] = {}
    for item in ours:
        pool = item["spec"].get("pool") or {}
        name, generation = str(pool.get("name", "")), int(pool.get("generation") or 0)
        newest[name] = max(newest.get(name, generation), generation)
    return [
        s
        for s in ours
        if int((s["spec"].get("pool") or {}).get("generation") or 0)
        == newest[str((s["spec"].get("pool") or {}).get("name", ""))]
    ]


def _tainted(device: Mapping[str, Any]) -> bool:
    return any(t.get("effect") in BLOCKING_TAINT_EFFECTS for t in device.get("taints") or [])


def _instance_type(device: Mapping[str, Any]) -> str | None:
    value = ((device.get("attributes") or {}).get("instanceType") or {}).get("string")
    return str(value) if value else None


def taken_cores(claims: Iterable[Mapping[str, Any]]) -> dict[str, set[int]]:
    """node (the driver's pool) -> the cores allocated claims hold there."""
    taken: dict[str, set[int]] = {}
    for claim in claims:
        for pool, cores in allocation_results(claim):
            taken.setdefault(pool, set()).update(cores)
    return taken


def free_cores(
    slices: Iterable[Mapping[str, Any]], claims: Iterable[Mapping[str, Any]]
) -> list[NodeFree]:
    """Each node's free cores, by node name: a core is free when an untainted device covers it
    (every block over an unhealthy core is tainted, so such a core is covered by tainted ones
    only) and no allocated claim holds it."""
    offered: dict[str, set[int]] = {}
    healthy: dict[str, set[int]] = {}
    kinds: dict[str, str | None] = {}
    for item in _newest_slices(slices):
        pool = str((item["spec"].get("pool") or {}).get("name", ""))
        for device in item["spec"].get("devices") or []:
            cores = device_cores(str(device.get("name", "")))
            if cores is None:
                continue
            offered.setdefault(pool, set()).update(cores)
            if not _tainted(device):
                healthy.setdefault(pool, set()).update(cores)
            kinds[pool] = kinds.get(pool) or _instance_type(device)
    taken = taken_cores(claims)
    return [
        NodeFree(
            node=node,
            instance_type=kinds.get(node),
            cores=len(cores),
            free=tuple(sorted(healthy.get(node, set()) - taken.get(node, set()))),
        )
        for node, cores in sorted(offered.items())
    ]


@dataclass(frozen=True)
class BlockVerdict:
    """Why no node can give a block of ``size`` cores: a condition reason and its words."""

    reason: str
    message: str


def block_verdict(
    nodes: Sequence[NodeFree], size: int, instance_type: str | None = None
) -> BlockVerdict | None:
    """The reason a ``size``-core block claim cannot be allocated, from the nodes' free cores
    (only nodes of ``instance_type`` when given).  None when some node has a free run of
    ``size`` now (cores are not what holds the pod; the scheduler will try again)."""
    where = f" of type {instance_type}" if instance_type else ""
    fit = [n for n in nodes if instance_type is None or n.instance_type == instance_type]
    if any(n.longest >= size for n in fit):
        return None
    if not fit:
        return BlockVerdict(
            c.REASON_INSUFFICIENT_CORES,
            f"no node{where} offers NeuronCores through the DRA driver; add one",
        )
    roomy = [n for n in fit if len(n.free) >= size]
    if roomy:
        best = max(roomy, key=lambda n: (n.longest, len(n.free), n.node))
        return BlockVerdict(
            c.REASON_NO_CONTIGUOUS_RUN,
            f"no node{where} has a free run of {size} adjacent NeuronCores for its block claim: "
            f"{best.describe()}; its free cores are scattered. Add a node, or free a run of "
            f"{size} there (kubectl neuron cores {best.node} shows who holds which core)",
        )
    best = max(fit, key=lambda n: (len(n.free), n.longest, n.node))
    return BlockVerdict(
        c.REASON_INSUFFICIENT_CORES,
        f"no node{where} has {size} free NeuronCores for its block claim: the most is on "
        f"{best.describe()}. Add a node or free cores",
    )
