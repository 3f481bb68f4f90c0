"""The reconcile decision: desired pods vs the pods that exist -> actions, and the status to write.

Pure on purpose (kopf's own layering does the same): the API calls live in ``kube.py`` and the
wiring in ``handlers.py``; here the rules can be tested as tables.  The loop is level-based: it
looks only at what exists now, so running it twice, or after a missed event, changes nothing.

Rolling: pod names carry the template hash, so after a spec change the new pods are created next
to the old ones (they may stay pending while the nodes are full).  Old pods are removed only
while the number of ready pods stays at least ``desired - max_unavailable``; unready old pods and
surplus pods of the current template go at once.  Removing a few ready old pods frees the cores
the new pods wait for, so the roll always progresses, with bounded unavailability.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from neuron_cores import CORE_RESOURCE, read_natural
from neuron_operator import conditions as c
from neuron_operator.freecores import NodeFree, block_verdict
from neuron_operator.planner import Plan
from neuron_operator.pods import (
    LABEL_POD_INDEX,
    LABEL_REPLICA,
    LABEL_TEMPLATE_HASH,
)
from neuron_operator.refusals import Refusal, quote

MAX_UNAVAILABLE_FRACTION = 0.25
MAX_CONDITION_MESSAGE = 2000


@dataclass(frozen=True)
class ObservedPod:
    """What the reconcile loop needs to know about one existing pod."""

    name: str
    template_hash: str
    replica: int
    index: int
    ready: bool = False
    terminating: bool = False
    unschedulable: str | None = None  # the scheduler's message when it could not place the pod
    node: str = ""  # where the scheduler placed it


@dataclass(frozen=True)
class Actions:
    create: tuple[str, ...] = ()
    delete: tuple[str, ...] = ()

    @property
    def empty(self) -> bool:
        return not self.create and not self.delete


def _label_int(labels: Mapping[str, str], key: str) -> int:
    value = read_natural(labels.get(key, ""))
    return -1 if value is None else value


def observe_pod(pod: Mapping[str, Any]) -> ObservedPod:
    """Read an API Pod (as a dict) into an ``ObservedPod``."""
    meta = pod.get("metadata") or {}
    labels = meta.get("labels") or {}
    status = pod.get("status") or {}
    pod_conditions = status.get("conditions") or []
    ready = (
        any(x.get("type") == "Ready" and x.get("status") == c.TRUE for x in pod_conditions)
        and status.get("phase") == "Running"
    )
    unschedulable = next(
        (
            str(x.get("message") or "unschedulable")
            for x in pod_conditions
            if x.get("type") == "PodScheduled"
            and x.get("status") == c.FALSE
            and x.get("reason") == "Unschedulable"
        ),
        None,
    )
    return ObservedPod(
        name=str(meta.get("name")),
        template_hash=str(labels.get(LABEL_TEMPLATE_HASH, "")),
        replica=_label_int(labels, LABEL_REPLICA),
        index=_label_int(labels, LABEL_POD_INDEX),
        ready=ready,
        terminating=bool(meta.get("deletionTimestamp")),
        unschedulable=unschedulable,
        node=str((pod.get("spec") or {}).get("nodeName") or ""),
    )


def max_unavailable(desired: int) -> int:
    return max(1, math.ceil(desired * MAX_UNAVAILABLE_FRACTION))


def diff(desired: Sequence[str], current_hash: str, observed: Sequence[ObservedPod]) -> Actions:
    """The pods to create and to delete so that what exists moves towards ``desired``."""
    existing = {p.name for p in observed}  # terminating pods keep their name until gone
    create = tuple(name for name in desired if name not in existing)
    wanted = set(desired)
    live = [p for p in observed if not p.terminating]
    surplus = [p for p in live if p.name not in wanted]
    ready = sum(p.ready for p in live)
    delete: list[str] = []
    for pod in sorted(surplus, key=lambda p: (p.ready, p.replica, p.index, p.name)):
        if pod.template_hash == current_hash or not pod.ready:
            delete.append(pod.name)
            ready -= pod.ready
    floor = len(desired) - max_unavailable(len(desired))
    for pod in sorted(surplus, key=lambda p: (p.replica, p.index, p.name)):
        if pod.name in delete:
            continue
        if ready - 1 >= floor:
            delete.append(pod.name)
            ready -= 1
    return Actions(create=create, delete=tuple(delete))


def plan_status(result: Plan) -> list[dict[str, Any]]:
    return [
        {
            "pod": p.index,
            "cores": p.cores,
            "groupSizes": list(p.group_sizes),
            "models": [m.name for m in p.load_order],
        }
        for p in result.layout
    ]


def _ready_replicas(
    result: Plan, names: Mapping[tuple[int, int], str], live: Mapping[str, ObservedPod]
) -> int:
    count = 0
    for replica in range(result.replicas):
        pods = [live.get(names[(replica, p.index)]) for p in result.layout]
        count += all(p is not None and p.ready for p in pods)
    return count


# What kube-scheduler's DRA plugin says when no node has a device left for a pod's claim.
DRA_NO_DEVICE = "cannot allocate all claims"


def _block_detail(
    pod: ObservedPod, size: int, free: Sequence[NodeFree] | None, instance_type: str | None
) -> tuple[str, str]:
    """Reason and words for a pod whose block claim no node could allocate, from the nodes' free
    cores when known (``freecores``): no node with ``size`` free cores, or free cores but no run
    of ``size``.  Unknown (the operator could not read the slices or claims): the scheduler's
    words, as ``InsufficientNeuronCores``, what an autoscaler acts on in either case."""
    said = f"(the scheduler: {pod.unschedulable})"
    if free is None:
        return c.REASON_INSUFFICIENT_CORES, (
            f"no node could allocate its block of {size} NeuronCores {said}; which nodes have "
            "free cores is not known to the operator (it could not list resourceslices and "
            "resourceclaims)"
        )
    verdict = block_verdict(free, size, instance_type)
    if verdict is None:
        return c.REASON_POD_UNSCHEDULABLE, (
            f"a node has a free run of {size} NeuronCores now; the scheduler will try again {said}"
        )
    return verdict.reason, f"{verdict.message} {said}"


def _unschedulable(
    live: Sequence[ObservedPod],
    generation: int,
    pod_cores: Mapping[str, int],
    free: Sequence[NodeFree] | None = None,
    instance_type: str | None = None,
) -> dict[str, Any]:
    """``Unschedulable`` from the scheduler's messages.  ``InsufficientNeuronCores``: no node has
    the cores (device plugin: its count; DRA: ``free`` says no node has as many free cores as a
    pod's block).  ``NoContiguousRun`` (DRA): a node has that many free cores but no free run of
    them; scattered free cores do not help, so an autoscaler adds a node and a person frees or
    defragments one (``kubectl neuron cores``)."""
    stuck = [p for p in live if p.unschedulable]
    if not stuck:
        return c.condition(c.UNSCHEDULABLE, c.FALSE, c.REASON_SCHEDULED, "", generation)
    blocks = [p for p in stuck if DRA_NO_DEVICE in (p.unschedulable or "")]
    first = (blocks or stuck)[0]
    if blocks:
        found = [_block_detail(p, pod_cores.get(p.name, 1), free, instance_type) for p in blocks]
        # a pod short of a run speaks first: its words name the node to defragment
        index = next(
            (i for i, (reason, _) in enumerate(found) if reason == c.REASON_NO_CONTIGUOUS_RUN), 0
        )
        first = blocks[index]
        reason, detail = found[index]
    elif any(CORE_RESOURCE in (p.unschedulable or "") for p in stuck):
        reason, detail = c.REASON_INSUFFICIENT_CORES, str(first.unschedulable)
    else:
        reason, detail = c.REASON_POD_UNSCHEDULABLE, str(first.unschedulable)
    message = f"{len(stuck)} pods pending: {first.name}: {detail}"
    return c.condition(
        c.UNSCHEDULABLE, c.TRUE, reason, quote(message, MAX_CONDITION_MESSAGE), generation
    )


def _pod_cores(result: Plan, desired: Mapping[tuple[int, int], str]) -> dict[str, int]:
    cores = {p.index: p.cores for p in result.layout}
    return {name: cores.get(index, 0) for (_, index), name in desired.items()}


def compute_status(
    *,
    generation: int,
    result: Plan,
    current_hash: str,
    desired: Mapping[tuple[int, int], str],
    observed: Sequence[ObservedPod],
    selector: str,
    free_cores: Sequence[NodeFree] | None = None,
    instance_type: str | None = None,
) -> dict[str, Any]:
    """The status (without lastTransitionTimes; see ``conditions.merge_conditions``).

    ``free_cores``: each DRA node's free cores (``freecores.free_cores``), read when a pod's block
    claim could not be allocated, to tell a lack of cores from a lack of a run of them."""
    live = [p for p in observed if not p.terminating]
    by_name = {p.name: p for p in live}
    ready_replicas = _ready_replicas(result, desired, by_name)
    wanted = set(desired.values())
    missing = len(wanted - by_name.keys())
    stale = [p for p in live if p.name not in wanted]
    done = ready_replicas == result.replicas and not stale
    if done:
        progressing = c.condition(c.PROGRESSING, c.FALSE, c.REASON_COMPLETE, "", generation)
    else:
        reason = (
            c.REASON_ROLLING
            if any(p.template_hash != current_hash for p in stale)
            else c.REASON_REMOVING
            if stale
            else c.REASON_CREATING
            if missing
            else c.REASON_WAITING
        )
        message = f"{len(wanted) - missing}/{len(wanted)} pods exist, {len(stale)} to remove"
        progressing = c.condition(c.PROGRESSING, c.TRUE, reason, message, generation)
    ready_message = f"{ready_replicas}/{result.replicas} replicas ready"
    if result.replicas == 0:
        ready = c.condition(c.READY, c.TRUE, c.REASON_SCALED_TO_ZERO, ready_message, generation)
    elif done:
        ready = c.condition(c.READY, c.TRUE, c.REASON_ALL_READY, ready_message, generation)
    else:
        ready = c.condition(c.READY, c.FALSE, c.REASON_NOT_READY, ready_message, generation)
    return {
        "observedGeneration": generation,
        "replicas": len({p.replica for p in live}),
        "readyReplicas": ready_replicas,
        "selector": selector,
        "templateHash": current_hash,
        "coresPerReplica": result.cores_per_replica,
        "podsPerReplica": len(result.layout),
        "planSummary": result.summary(),
        "plan": plan_status(result),
        "conditions": [
            ready,
            progressing,
            c.condition(c.INVALID_SPEC, c.FALSE, c.REASON_SPEC_VALID, "", generation),
            _unschedulable(
                live, generation, _pod_cores(result, desired), free_cores, instance_type
            ),
            c.condition(c.REFUSED, c.FALSE, c.REASON_ACCEPTED, "", generation),
        ],
    }


def refused_status(
    status: Mapping[str, Any], refusals: Sequence[Refusal], generation: int
) -> dict[str, Any]:
    """``status`` (from ``compute_status``) with the refusals on it: ``Refused`` True with the
    first refusal's reason and every refusal in the message; ``Ready`` and ``Progressing`` False
    with that reason (the workload cannot become whole until the refusal is dealt with); and
    ``InvalidSpec`` True when the API server found the spec's pod settings invalid."""
    if not refusals:
        return dict(status)
    reason = refusals[0].reason
    message = quote("; ".join(r.describe() for r in refusals), MAX_CONDITION_MESSAGE)
    replaced = {
        c.READY: c.condition(c.READY, c.FALSE, reason, message, generation),
        c.PROGRESSING: c.condition(c.PROGRESSING, c.FALSE, reason, message, generation),
        c.REFUSED: c.condition(c.REFUSED, c.TRUE, reason, message, generation),
    }
    invalid = [r.describe() for r in refusals if r.reason == c.REASON_INVALID]
    if invalid:
        text = quote("; ".join(invalid), MAX_CONDITION_MESSAGE)
        replaced[c.INVALID_SPEC] = c.condition(
            c.INVALID_SPEC, c.TRUE, c.REASON_SPEC_INVALID, text, generation
        )
    conditions = [replaced.get(x["type"], x) for x in status.get("conditions") or []]
    return {**status, "conditions": conditions}


def invalid_status(
    *, generation: int, problems: Sequence[str], previous: Mapping[str, Any], selector: str
) -> dict[str, Any]:
    """Status for a spec the operator cannot plan: the pods that exist are left alone."""
    message = "; ".join(problems)
    kept = {k: v for k, v in previous.items() if k not in ("conditions", "observedGeneration")}
    return {
        **kept,
        "observedGeneration": generation,
        "selector": selector,
        "conditions": [
            c.condition(c.READY, c.FALSE, c.REASON_SPEC_INVALID, message, generation),
            c.condition(c.PROGRESSING, c.FALSE, c.REASON_SPEC_INVALID, message, generation),
            c.condition(c.INVALID_SPEC, c.TRUE, c.REASON_SPEC_INVALID, message, generation),
            *(
                x
                for type_ in (c.UNSCHEDULABLE, c.REFUSED)
                if (x := c.find(previous.get("conditions"), type_))
            ),
        ],
    }
