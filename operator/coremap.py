"""Pure logic of ``kubectl neuron``: each node's core map, and why a pod is Pending, in words.

No API calls here (``neuron_operator.kubectl_neuron`` reads the objects), so both are tested as
plain data.  Where the truth comes from:

* which pod holds which core: the node's allocation record (``neuron_cores.allocations``: a Node
  annotation written by the node side, from what the device plugin's Allocate answered);
* which NeuronWorkload and NeuronCore Group: the pod's labels and its
  ``neurongroups.dev/group-sizes`` annotation (the groups are consecutive runs of its cores);
* what a node offers and what is asked of it: node capacity/allocatable and the pods' requests.

A node without a record (a kwok node; a real node whose plugin does not publish one) still lists
the pods holding its cores, with their counts, and says that the placement is not reported.
* on DRA nodes (cores offered through ResourceSlices, no ``aws.amazon.com/neuroncore`` capacity):
  the pods' ResourceClaims' allocations (pool = node, device ``cores-4-7``) say which pod holds
  which core, on kwok nodes too; the node's size comes from its instance type.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from neuron_cores import (
    ALLOCATIONS_ANNOTATION,
    CORE_RESOURCE,
    AllocationRecord,
    AllocationRecordError,
    GroupSizesError,
    UnknownInstanceTypeError,
    format_core_list,
    is_contiguous,
    lookup_instance_type,
    parse_group_sizes,
    parse_record,
    read_natural,
    split_into_groups,
)
from neuron_operator.claims import claim_cores, runs_text
from neuron_operator.freecores import longest_run
from neuron_operator.pods import (
    ANNOTATION_GROUPS,
    INSTANCE_TYPE_LABEL,
    LABEL_INSTANCE,
    LABEL_MANAGED_BY,
    MANAGER,
)

TERMINAL_PHASES = ("Succeeded", "Failed")
SCHEDULING_EFFECTS = ("NoSchedule", "NoExecute")


@dataclass(frozen=True)
class Holder:
    """The pod holding a core, its NeuronWorkload (if the operator made it) and group index."""

    pod: str
    workload: str | None
    group: int | None


@dataclass(frozen=True)
class NodeCores:
    """One node's NeuronCores: who holds each (when recorded), and what is not recorded."""

    name: str
    instance_type: str | None
    capacity: int
    allocatable: int
    requested: int
    holders: Mapping[int, Holder]
    unhealthy: tuple[int, ...]
    recorded: bool
    unplaced: tuple[tuple[str, int], ...] = ()
    problem: str | None = None
    # pod -> its groups that are not a run of consecutive cores (the device plugin hands out
    # scattered cores when no run is free: the scheduler only counts them)
    split: Mapping[str, tuple[tuple[int, ...], ...]] = field(default_factory=dict)

    @property
    def free(self) -> int:
        """Cores the scheduler still counts as free (allocatable less the pods' requests)."""
        return max(self.allocatable - self.requested, 0)

    def free_cores(self) -> list[int] | None:
        """The free core indexes, when the record says which they are."""
        if not self.recorded:
            return None
        bad = set(self.unhealthy)
        return [c for c in range(self.capacity) if c not in self.holders and c not in bad]

    def longest_free_run(self) -> tuple[int, int] | None:
        """The longest run of free cores as inclusive (first, last), when known and any."""
        return longest_run(self.free_cores() or ())


def pod_key(pod: Mapping[str, Any]) -> str:
    meta = pod.get("metadata") or {}
    return f"{meta.get('namespace', '')}/{meta.get('name', '')}"


def core_request(pod: Mapping[str, Any]) -> int:
    """NeuronCores a pod asks for (limits, which equal requests for extended resources)."""
    total = 0
    for container in (pod.get("spec") or {}).get("containers") or []:
        resources = container.get("resources") or {}
        value = (resources.get("limits") or {}).get(CORE_RESOURCE) or (
            resources.get("requests") or {}
        ).get(CORE_RESOURCE)
        total += read_natural(str(value)) or 0 if value is not None else 0
    return total


def is_active(pod: Mapping[str, Any]) -> bool:
    return (pod.get("status") or {}).get("phase") not in TERMINAL_PHASES


def _count(node: Mapping[str, Any], part: str) -> int:
    value = ((node.get("status") or {}).get(part) or {}).get(CORE_RESOURCE)
    return (read_natural(str(value)) or 0) if value is not None else 0


def workload_of(pod: Mapping[str, Any]) -> str | None:
    labels = (pod.get("metadata") or {}).get("labels") or {}
    return labels.get(LABEL_INSTANCE) if labels.get(LABEL_MANAGED_BY) == MANAGER else None


def _groups(pod: Mapping[str, Any] | None, cores: Sequence[int]) -> list[tuple[int, ...]]:
    sizes_text = ((pod or {}).get("metadata") or {}).get("annotations", {}).get(ANNOTATION_GROUPS)
    ordered = sorted(cores)
    if sizes_text:
        try:
            sizes = parse_group_sizes(sizes_text)
        except GroupSizesError:
            sizes = ()
        if sizes and sum(sizes) == len(ordered):
            return split_into_groups(ordered, sizes)
    return [tuple(ordered)]


def instance_cores(node: Mapping[str, Any]) -> int:
    """The NeuronCores of the node's instance type; 0 when it is not a known Neuron type."""
    kind = ((node.get("metadata") or {}).get("labels") or {}).get(INSTANCE_TYPE_LABEL)
    if not kind:
        return 0
    try:
        return lookup_instance_type(str(kind)).cores
    except UnknownInstanceTypeError:
        return 0


def claimed_cores(claims: Iterable[Mapping[str, Any]], node: str) -> dict[str, tuple[int, ...]]:
    """``namespace/pod`` -> the cores its DRA claims were allocated on ``node``."""
    out: dict[str, list[int]] = {}
    for claim in claims:
        found = claim_cores(claim)
        if found is None or found.node != node:
            continue
        namespace = (claim.get("metadata") or {}).get("namespace", "")
        out.setdefault(f"{namespace}/{found.pod}", []).extend(found.cores)
    return {key: tuple(sorted(cores)) for key, cores in out.items()}


def node_cores(
    node: Mapping[str, Any],
    pods: Iterable[Mapping[str, Any]],
    claims: Iterable[Mapping[str, Any]] = (),
    *,
    dra: bool = False,
) -> NodeCores:
    """The core map of ``node`` from its record (if any), the active pods bound to it and the
    ResourceClaims allocated on it; ``dra``: the node publishes its cores as ResourceSlices."""
    meta = node.get("metadata") or {}
    name = str(meta.get("name", ""))
    bound = [p for p in pods if (p.get("spec") or {}).get("nodeName") == name and is_active(p)]
    by_key = {pod_key(p): p for p in bound}
    held = {k: cores for k, cores in claimed_cores(claims, name).items() if k in by_key}
    asking = {pod_key(p): n for p in bound if (n := core_request(p)) > 0}
    asking.update({k: len(cores) for k, cores in held.items() if k not in asking})
    capacity = _count(node, "capacity")
    allocatable = _count(node, "allocatable")
    dra = capacity == 0 and (dra or bool(held))
    if dra:  # the cores are offered through DRA: the instance type says how many
        capacity = allocatable = max([instance_cores(node), *(max(c) + 1 for c in held.values())])
    record: AllocationRecord | None = None
    problem = None
    text = (meta.get("annotations") or {}).get(ALLOCATIONS_ANNOTATION)
    if text:
        try:
            record = parse_record(text, node=name)
        except AllocationRecordError as exc:
            problem = str(exc)
    holders: dict[int, Holder] = {}
    split: dict[str, tuple[tuple[int, ...], ...]] = {}
    placed_cores = {**held, **(record.pods if record is not None else {})}
    if placed_cores:
        for key, cores in placed_cores.items():
            pod = by_key.get(key)
            groups = _groups(pod, cores)
            for index, group in enumerate(groups):
                for core in group:
                    holders[core] = Holder(key, workload_of(pod) if pod else None, index)
            scattered = tuple(g for g in groups if not is_contiguous(g))
            if scattered:
                split[key] = scattered
    placed = set(placed_cores)
    return NodeCores(
        name=name,
        instance_type=(meta.get("labels") or {}).get(INSTANCE_TYPE_LABEL),
        capacity=record.cores if record else capacity,
        allocatable=record.cores - len(record.unhealthy) if record and dra else allocatable,
        requested=sum(asking.values()),
        holders=holders,
        unhealthy=record.unhealthy if record else (),
        recorded=record is not None or dra,
        unplaced=tuple(sorted((k, n) for k, n in asking.items() if k not in placed)),
        problem=problem,
        split=split,
    )


def is_neuron_node(node: Mapping[str, Any], dra_nodes: Collection[str] = ()) -> bool:
    """A node offering NeuronCores: through the device plugin (capacity), a record, or the DRA
    driver (``dra_nodes``: the pools of its ResourceSlices)."""
    return (
        _count(node, "capacity") > 0
        or ALLOCATIONS_ANNOTATION in ((node.get("metadata") or {}).get("annotations") or {})
        or (node.get("metadata") or {}).get("name") in dra_nodes
    )


# ---- printing --------------------------------------------------------------------------------


def to_json(view: NodeCores) -> dict[str, Any]:
    unreported = max(view.capacity - view.allocatable, 0) if not view.recorded else None
    return {
        "node": view.name,
        "instanceType": view.instance_type,
        "capacity": view.capacity,
        "allocatable": view.allocatable,
        "requested": view.requested,
        "free": view.free,
        "allocationsReported": view.recorded,
        "cores": [
            {
                "core": core,
                "pod": h.pod if (h := view.holders.get(core)) else None,
                "neuronWorkload": h.workload if h else None,
                "group": h.group if h else None,
                "healthy": core not in view.unhealthy,
            }
            for core in range(view.capacity)
        ]
        if view.recorded
        else [],
        "unplacedPods": [{"pod": pod, "cores": n} for pod, n in view.unplaced],
        "nonContiguousGroups": [
            {"pod": pod, "cores": format_core_list(group)}
            for pod, groups in sorted(view.split.items())
            for group in groups
        ],
        **({"unhealthyNotReported": unreported} if unreported is not None else {}),
        **({"problem": view.problem} if view.problem else {}),
    }


def text_lines(view: NodeCores) -> list[str]:
    kind = f"{view.instance_type}, " if view.instance_type else ""
    unhealthy = len(view.unhealthy) if view.recorded else max(view.capacity - view.allocatable, 0)
    lines = [
        f"{view.name} ({kind}{view.capacity} NeuronCores: {view.free} free, {unhealthy} unhealthy)"
    ]
    if view.problem:
        lines.append(f"  ! {view.problem}")
    if view.recorded:
        width = max([len(h.pod) for h in view.holders.values()] + [3])
        lines.append(f"  {'CORE':>4}  {'POD':<{width}}  {'NEURONWORKLOAD':<20}  GROUP")
        for core in range(view.capacity):
            holder = view.holders.get(core)
            mark = "  unhealthy" if core in view.unhealthy else ""
            if holder is None:
                lines.append(f"  {core:>4}  {'-':<{width}}  {'-':<20}  -{mark}")
            else:
                workload = holder.workload or "-"
                lines.append(
                    f"  {core:>4}  {holder.pod:<{width}}  {workload:<20}  {holder.group}{mark}"
                )
    else:
        lines.append(
            f"  which pod holds which core is not reported for this node (no "
            f"{ALLOCATIONS_ANNOTATION} annotation; see docs/kubectl-neuron.md)"
        )
        if unhealthy:
            lines.append(f"  {unhealthy} unhealthy (capacity - allocatable), indexes not reported")
    for pod, count in view.unplaced:
        lines.append(f"  {pod} holds {count} NeuronCores, placement not reported")
    lines.extend(f"  ! {reason}" for reason in split_reasons(view))
    return lines


def split_reasons(view: NodeCores, only: str | None = None) -> list[str]:
    """One line per pod whose NeuronCore Group is not a contiguous run of cores."""
    return [
        f"no contiguous run: {pod} got cores {', '.join(format_core_list(g) for g in groups)} "
        f"on node {view.name} for a group that must be one run (the scheduler counts free cores, "
        "and the device plugin hands out scattered ones when no run is free); Neuron runtimes "
        "refuse such a group: delete the pod once a run is free, or free one"
        for pod, groups in sorted(view.split.items())
        if only is None or pod == only
    ]


# ---- why is a pod Pending --------------------------------------------------------------------


def _tolerates(tolerations: Sequence[Mapping[str, Any]], taint: Mapping[str, Any]) -> bool:
    for toleration in tolerations:
        effect = toleration.get("effect")
        if effect and effect != taint.get("effect"):
            continue
        if toleration.get("operator") == "Exists":
            if not toleration.get("key") or toleration.get("key") == taint.get("key"):
                return True
        elif toleration.get("key") == taint.get("key") and (toleration.get("value") or "") == (
            taint.get("value") or ""
        ):
            return True
    return False


def _taint_text(taint: Mapping[str, Any]) -> str:
    value = f"={taint['value']}" if taint.get("value") else ""
    return f"{taint.get('key')}{value}:{taint.get('effect')}"


def _selector_text(selector: Mapping[str, str]) -> str:
    kind = selector.get(INSTANCE_TYPE_LABEL)
    others = [f"{k}={v}" for k, v in selector.items() if k != INSTANCE_TYPE_LABEL]
    parts = ([f"of type {kind}"] if kind else []) + (
        [f"labelled {', '.join(others)}"] if others else []
    )
    return " and ".join(parts)


def why_pending(
    pod: Mapping[str, Any],
    nodes: Sequence[Mapping[str, Any]],
    views: Mapping[str, NodeCores],
    scheduler_messages: Sequence[str] = (),
    *,
    claimed_cores: int = 0,
) -> list[str]:
    """Why ``pod`` is not running, in words, from the nodes, their core maps and the scheduler.
    ``claimed_cores``: the block its ResourceClaims ask for (DRA; ``block_size``), when it asks
    for no ``aws.amazon.com/neuroncore``."""
    name = pod_key(pod)
    spec = pod.get("spec") or {}
    status = pod.get("status") or {}
    phase = status.get("phase", "Pending")
    lines: list[str] = []
    if phase == "Failed":
        lines.append(
            f"{name} failed on node {spec.get('nodeName') or '?'}: "
            f"{status.get('reason') or ''} {status.get('message') or ''}".rstrip()
        )
        return lines
    if spec.get("nodeName"):
        lines.append(
            f"{name} is {phase} on node {spec['nodeName']}: the scheduler has placed it"
            + ("" if phase == "Running" else "; its containers are starting")
        )
        placed = views.get(spec["nodeName"])
        if placed is not None:
            lines.extend(split_reasons(placed, only=name))
        return lines
    want = core_request(pod) or claimed_cores
    selector = spec.get("nodeSelector") or {}
    matching = [
        n
        for n in nodes
        if all(
            ((n.get("metadata") or {}).get("labels") or {}).get(k) == v for k, v in selector.items()
        )
    ]
    where = _selector_text(selector)
    if not matching:
        lines.append(
            f"no node {where or 'at all'}: {name} waits for one (a cluster autoscaler with a "
            "node group of that type adds it)"
        )
    else:
        tolerations = spec.get("tolerations") or []
        open_nodes = []
        for node in matching:
            taints = [
                t
                for t in (node.get("spec") or {}).get("taints") or []
                if t.get("effect") in SCHEDULING_EFFECTS and not _tolerates(tolerations, t)
            ]
            if taints:
                node_name = node["metadata"]["name"]
                lines.append(
                    f"taint: node {node_name} has {', '.join(_taint_text(t) for t in taints)}, "
                    f"which {name} does not tolerate"
                )
            else:
                open_nodes.append(node)
        lines.extend(_core_reasons(name, want, open_nodes, views, where, dra=not core_request(pod)))
    for message in dict.fromkeys(scheduler_messages):
        lines.append(f"scheduler: {message}")
    if not lines:
        lines.append(f"{name} is Pending and the scheduler has not reported on it yet")
    return lines


def _core_reasons(
    name: str,
    want: int,
    nodes: Sequence[Mapping[str, Any]],
    views: Mapping[str, NodeCores],
    where: str,
    *,
    dra: bool = False,
) -> list[str]:
    if not nodes or want <= 0:
        return []
    found = [views[n["metadata"]["name"]] for n in nodes if n["metadata"]["name"] in views]
    if not found:
        return []
    roomy = [v for v in found if v.free >= want]
    if not roomy:
        best = max(found, key=lambda v: v.free)
        return [
            (
                f"not enough cores: {name} needs {want} NeuronCores and the most any node "
                f"{where or ''} has free is {best.free} (node {best.name}); free cores or add a "
                "node "
                + (
                    "(the scheduler says its claims cannot be allocated)"
                    if dra
                    else f"(the scheduler says Insufficient {CORE_RESOURCE})"
                )
            ).replace("  ", " ")
        ]
    lines = []
    for view in roomy:
        run = view.longest_free_run()
        if not view.recorded:
            lines.append(
                f"node {view.name} has {view.free} free NeuronCores; whether {want} of them are "
                "contiguous is not reported for this node"
            )
        elif run is None or run[1] - run[0] + 1 < want:
            free = view.free_cores() or []
            longest = 0 if run is None else run[1] - run[0] + 1
            lines.append(
                f"no contiguous run: node {view.name} has {len(free)} free NeuronCores "
                f"({runs_text(free) if free else 'none'}) but its longest free run is "
                f"{longest}; {name} needs {want} contiguous cores (a NeuronCore Group is a run)"
            )
    return lines
