"""The planner: from a NeuronWorkload spec to NeuronCore Groups, and from groups to pods.

Pure functions, no API calls, so that ``neuron-operator plan`` and the reconcile loop agree and
the arithmetic can be tested exhaustively.  Three decisions, in order:

1. Groups.  Without ``spec.cores`` (or with a budget that covers the demand) every model copy
   gets its own group, sized to its compiled cores, in spec order: the seed's A(2) B(4) C(6) D(4)
   becomes ``2,4,6,4``.  With a smaller budget, copies are taken largest first; a copy opens a
   new group of its own size while the budget allows, otherwise it joins an existing group that
   is large enough, cycling through the groups in order so the extra models spread evenly.  The
   largest model always opens the first group, so every copy finds a group: the seed's A(4) B(3)
   with ``cores: 4`` becomes one group of 4 holding A then B.
2. Load order.  Within a process, the runtime puts the k-th model loaded into group k mod n
   (``neuron_cores.load_order``, the rule the runtime itself follows): one model per group in
   group order, then the further models again in group order.
3. Pods.  ``Process``: one pod per group.  ``Shared``: groups are packed into pods no larger
   than a node, best-fit decreasing, which keeps the pod count low (no two pods could be merged:
   any-fit packing guarantees it) and usually at the lower bound ceil(cores / node cores).
   Groups keep their plan order inside each pod, except that groups holding more models come
   first (see ``runtime_order``).
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Sequence
from dataclasses import dataclass

from neuron_cores import ModelEntry, can_load, encode_models, format_group_sizes
from neuron_cores import load_order as cores_load_order
from neuron_operator.api import ISOLATION_PROCESS, WorkloadSpec, check_pod_count


@dataclass(frozen=True)
class ModelCopy:
    """One copy of a model: its name, its directory and its compiled cores."""

    name: str
    path: str
    cores: int


@dataclass(frozen=True)
class Group:
    """A NeuronCore Group: its size and the model copies it holds, in load order."""

    size: int
    models: tuple[ModelCopy, ...]


@dataclass(frozen=True)
class PodPlan:
    """One pod of one replica: its groups in order."""

    replica: int
    index: int
    groups: tuple[Group, ...]

    @property
    def cores(self) -> int:
        return sum(g.size for g in self.groups)

    @property
    def group_sizes(self) -> tuple[int, ...]:
        return tuple(g.size for g in self.groups)

    @property
    def group_sizes_env(self) -> str:
        return format_group_sizes(self.group_sizes)

    @property
    def load_order(self) -> tuple[ModelCopy, ...]:
        return load_order(self.groups)

    @property
    def models_env(self) -> str:
        return encode_models(ModelEntry(m.name, m.path) for m in self.load_order)


@dataclass(frozen=True)
class Plan:
    """The whole plan: the pods of one replica's layout, repeated for every replica."""

    layout: tuple[PodPlan, ...]
    replicas: int
    node_cores: int

    @property
    def cores_per_replica(self) -> int:
        return sum(p.cores for p in self.layout)

    @property
    def pods(self) -> tuple[PodPlan, ...]:
        return tuple(
            PodPlan(replica=r, index=p.index, groups=p.groups)
            for r in range(self.replicas)
            for p in self.layout
        )

    @property
    def lower_bound(self) -> int:
        """The fewest pods one replica could use: ceil(cores / node cores)."""
        return math.ceil(self.cores_per_replica / self.node_cores)

    def summary(self) -> str:
        """A short text for the printer column, e.g. ``1x[2,4,6,4]`` or ``16x[1]``."""
        counts: dict[str, int] = {}
        for pod in self.layout:
            key = f"[{pod.group_sizes_env}]"
            counts[key] = counts.get(key, 0) + 1
        return " ".join(f"{n}x{key}" for key, n in counts.items())


def expand_copies(spec: WorkloadSpec) -> list[ModelCopy]:
    """Every model copy, in spec order (a model's copies together)."""
    return [ModelCopy(m.name, m.path, m.cores) for m in spec.models for _ in range(m.copies)]


def plan_groups(copies: Sequence[ModelCopy], budget: int | None) -> list[Group]:
    """Decide the groups, their sizes and which copies each holds (see the module docstring)."""
    if budget is None or sum(c.cores for c in copies) <= budget:
        return [Group(c.cores, (c,)) for c in copies]
    largest = max(c.cores for c in copies)
    if largest > budget:
        raise ValueError(f"a {largest}-core model cannot fit a budget of {budget} cores")
    ordered = sorted(copies, key=lambda c: -c.cores)  # stable: spec order among equals
    sizes: list[int] = []
    members: list[list[ModelCopy]] = []
    extras: list[ModelCopy] = []
    left = budget
    for copy in ordered:
        if copy.cores <= left:
            sizes.append(copy.cores)
            members.append([copy])
            left -= copy.cores
        else:
            extras.append(copy)
    # Groups are in non-increasing size order, so the groups a copy fits are a prefix, and it
    # only grows (copies come largest first).  Each copy joins the least-loaded group it fits
    # (earliest on ties), which keeps the counts even: the runtime places the k-th model loaded
    # into group k mod n, so a process's groups must differ by at most one model.
    heap: list[tuple[int, int]] = []
    opened = 0
    for copy in extras:
        while opened < len(sizes) and sizes[opened] >= copy.cores:
            heapq.heappush(heap, (len(members[opened]), opened))
            opened += 1
        _, index = heapq.heappop(heap)
        members[index].append(copy)
        heapq.heappush(heap, (len(members[index]), index))
    return [Group(size, tuple(ms)) for size, ms in zip(sizes, members, strict=True)]


def load_order(groups: Sequence[Group]) -> tuple[ModelCopy, ...]:
    """The order in which the runtime's rule loads each group's models into it.

    Raises ``neuron_cores.LoadOrderError`` for groups the rule cannot fill (``runtime_order``
    never makes those).
    """
    return tuple(cores_load_order([g.models for g in groups]))


def pack_groups(sizes: Sequence[int], node_cores: int) -> list[list[int]]:
    """Best-fit decreasing: pack group indexes into as few bins of ``node_cores`` as it can.

    Returns bins of group indexes, each bin in ascending index order, bins ordered by their first
    group.  Open bins are bucketed by free cores, so each group costs O(node_cores), not O(bins).
    """
    if any(s > node_cores or s <= 0 for s in sizes):
        raise ValueError(f"every group must hold 1 to {node_cores} cores, got {list(sizes)}")
    by_free: list[list[int]] = [[] for _ in range(node_cores + 1)]
    bins: list[list[int]] = []
    free: list[int] = []
    for index in sorted(range(len(sizes)), key=lambda i: (-sizes[i], i)):
        size = sizes[index]
        target = next((f for f in range(size, node_cores + 1) if by_free[f]), None)
        if target is None:
            bins.append([index])
            free.append(node_cores - size)
            by_free[node_cores - size].append(len(bins) - 1)
            continue
        bin_id = by_free[target].pop(0)
        bins[bin_id].append(index)
        free[bin_id] -= size
        by_free[free[bin_id]].append(bin_id)
    packed = [sorted(b) for b in bins]
    packed.sort(key=lambda b: b[0])
    return packed


def runtime_order(groups: Sequence[Group]) -> list[list[Group]]:
    """Order one process's groups for the runtime's rule, splitting it when no order works.

    The runtime puts the k-th model loaded into group k mod n, so the groups with one model more
    than the others must come first, and no group may hold two more than another.  Groups are
    sorted by model count (stable); a process whose counts differ by more than one is split into
    processes of equal counts, each still within the node's cores.
    """
    ordered = sorted(groups, key=lambda g: -len(g.models))
    if can_load([len(g.models) for g in ordered]):
        return [ordered]
    parts: dict[int, list[Group]] = {}
    for group in ordered:
        parts.setdefault(len(group.models), []).append(group)
    return list(parts.values())


def plan_layout(spec: WorkloadSpec) -> tuple[PodPlan, ...]:
    """The pods of one replica."""
    groups = plan_groups(expand_copies(spec), spec.cores)
    if spec.isolation == ISOLATION_PROCESS:
        bins = [[i] for i in range(len(groups))]
    else:
        bins = pack_groups([g.size for g in groups], spec.node_cores)
    processes = [part for b in bins for part in runtime_order([groups[i] for i in b])]
    return tuple(
        PodPlan(replica=0, index=n, groups=tuple(part)) for n, part in enumerate(processes)
    )


def plan(spec: WorkloadSpec) -> Plan:
    """Plan a validated spec; raises ``InvalidSpecError`` when the plan has too many pods."""
    layout = plan_layout(spec)
    check_pod_count(spec, len(layout))
    return Plan(layout=layout, replicas=spec.replicas, node_cores=spec.node_cores)
