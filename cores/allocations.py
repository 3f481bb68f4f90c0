"""The node's core-allocation record: which pod holds which NeuronCore, as a Node annotation.

Why a record on the Node: with the device plugin, the only complete answer to "which pod holds
core 7" is on the node (the kubelet's checkpoint, served by its PodResources socket, and the
``NEURON_RT_VISIBLE_CORES`` each Allocate returned); nothing in the API says it.  So a node-side
component publishes it as one annotation on its own Node, and readers (``kubectl neuron``) need
only ``get nodes``.  Writer: the device plugin (``--publish-allocations``), from its
PodResources listing, on real nodes and on the local cluster's emulated nodes alike; on emulated
DRA nodes, where no device plugin runs, the local cluster's node agent (docs/kubectl-neuron.md).

The value is JSON::

    {"version": 1, "cores": 16, "pods": {"demo/web-0": "0-3", "demo/web-1": "4,5"},
     "unhealthy": "9"}

``pods`` maps ``namespace/name`` to the core list the pod's processes got (the form of
``NEURON_RT_VISIBLE_CORES``); ``unhealthy`` lists cores the plugin reports unhealthy ("" if none).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from neuron_cores.numbers import MAX_NODE_CORES
from neuron_cores.visible import CoreListError, format_core_list, parse_core_list

ALLOCATIONS_ANNOTATION = "neurongroups.dev/core-allocations"
RECORD_VERSION = 1


class AllocationRecordError(ValueError):
    """A record that cannot be read; the message names the bad part."""


@dataclass(frozen=True)
class AllocationRecord:
    """One node's record: its core count, each pod's cores, and the unhealthy cores."""

    cores: int
    pods: Mapping[str, tuple[int, ...]] = field(default_factory=dict)
    unhealthy: tuple[int, ...] = ()

    def holders(self) -> dict[int, str]:
        """core index -> ``namespace/name`` of the pod holding it."""
        return {core: pod for pod, cores in self.pods.items() for core in cores}


def format_record(
    cores: int, pods: Mapping[str, Sequence[int]], unhealthy: Sequence[int] = ()
) -> str:
    """The annotation value (keys sorted, so an unchanged record is an unchanged string)."""
    body = {
        "version": RECORD_VERSION,
        "cores": cores,
        "pods": {pod: format_core_list(list(held)) for pod, held in sorted(pods.items()) if held},
        "unhealthy": format_core_list(list(unhealthy)) if unhealthy else "",
    }
    return json.dumps(body, sort_keys=True, separators=(",", ":"))


def parse_record(text: str, *, node: str = "the node") -> AllocationRecord:
    """Read an annotation value; ``AllocationRecordError`` names what is wrong."""
    where = f"annotation {ALLOCATIONS_ANNOTATION} on {node}"
    try:
        body = json.loads(text)
    except ValueError as exc:
        raise AllocationRecordError(f"{where} is not JSON ({exc})") from exc
    if not isinstance(body, dict) or body.get("version") != RECORD_VERSION:
        raise AllocationRecordError(
            f"{where} is not a version {RECORD_VERSION} record; upgrade kubectl-neuron or the "
            "component that wrote it"
        )
    cores = body.get("cores")
    if isinstance(cores, bool) or not isinstance(cores, int) or not 0 < cores <= MAX_NODE_CORES:
        raise AllocationRecordError(f"{where}: cores {cores!r} is not 1 to {MAX_NODE_CORES}")
    pods = body.get("pods")
    if not isinstance(pods, dict):
        raise AllocationRecordError(f"{where}: pods {pods!r} is not an object")
    try:
        held = {
            str(pod): parse_core_list(str(value), what=f"{where}: pod {pod}", node_cores=cores)
            for pod, value in pods.items()
        }
        text_unhealthy = str(body.get("unhealthy") or "")
        unhealthy = (
            parse_core_list(text_unhealthy, what=f"{where}: unhealthy", node_cores=cores)
            if text_unhealthy
            else ()
        )
    except CoreListError as exc:
        raise AllocationRecordError(str(exc)) from exc
    seen: dict[int, str] = {}
    for pod, indexes in held.items():
        for core in indexes:
            if core in seen:
                raise AllocationRecordError(
                    f"{where}: core {core} is held by both {seen[core]} and {pod}"
                )
            seen[core] = pod
    return AllocationRecord(cores=cores, pods=held, unhealthy=unhealthy)
