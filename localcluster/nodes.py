"""Node objects for simulated Neuron nodes, as plain dicts.

Why these fields: EKS labels a node with its EC2 type (``node.kubernetes.io/instance-type``),
AWS taints Neuron nodes ``aws.amazon.com/neuron:NoSchedule`` and advertises
``aws.amazon.com/neuroncore`` (one per core) and ``aws.amazon.com/neuron`` (one per device).
The scheduler, the device plugin's DaemonSet affinity and the operator all read exactly these, so
the simulated nodes carry them, with counts from the shared instance table
(:func:`neuron_cores.lookup_instance_type`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from neuron_cores import (
    CORE_RESOURCE,
    DEVICE_RESOURCE,
    NEURON_TAINT_EFFECT,
    NEURON_TAINT_KEY,
    is_ascii_digits,
    lookup_instance_type,
)
from neuron_localcluster.layout import KWOK_NODE_ANNOTATION, KWOK_NODE_ANNOTATION_VALUE

INSTANCE_TYPE_LABEL = "node.kubernetes.io/instance-type"
NEURON_TAINT = {"key": NEURON_TAINT_KEY, "effect": NEURON_TAINT_EFFECT}
ROLE_LABEL = "neuron-groups.io/simulation"
# Plain resources a node offers besides Neuron ones: generous, so Neuron capacity is what binds.
BASE_CAPACITY = {"cpu": "64", "memory": "256Gi", "pods": "110", "ephemeral-storage": "100Gi"}


@dataclass(frozen=True)
class NodeSpec:
    """One simulated node: its name, its EC2 type, and who runs it (kwok or the node agent)."""

    name: str
    instance_type: str
    emulated: bool = False

    def __post_init__(self) -> None:
        lookup_instance_type(self.instance_type)  # raises a clear error for an unknown type


def parse_node_specs(text: str, *, emulated: bool) -> list[NodeSpec]:
    """``"2xinf1.6xlarge,inf2.xlarge"`` -> node specs; names are filled in by :func:`name_nodes`."""
    specs: list[NodeSpec] = []
    for raw in text.split(","):
        item = raw.strip()
        if not item:
            continue
        counted = is_ascii_digits(item[0])
        count_text, sep, itype = item.partition("x") if counted else ("1", "x", item)
        if not sep or not is_ascii_digits(count_text) or int(count_text) < 1:
            raise ValueError(
                f"bad node list item {item!r} in {text!r}: write INSTANCE_TYPE or "
                "COUNTxINSTANCE_TYPE, comma-separated, e.g. '2xinf1.6xlarge,inf2.xlarge'"
            )
        specs.extend(NodeSpec("", itype, emulated) for _ in range(int(count_text)))
    return specs


def name_nodes(specs: list[NodeSpec]) -> list[NodeSpec]:
    """Give each spec a stable name: ``kwok-<type>-<n>`` or ``emulated-<type>-<n>``."""
    counts: dict[tuple[bool, str], int] = {}
    named = []
    for spec in specs:
        key = (spec.emulated, spec.instance_type)
        counts[key] = counts.get(key, 0) + 1
        prefix = "emulated" if spec.emulated else "kwok"
        slug = spec.instance_type.replace(".", "-")
        named.append(NodeSpec(f"{prefix}-{slug}-{counts[key]}", spec.instance_type, spec.emulated))
    return named


def neuron_capacity(instance_type: str) -> dict[str, str]:
    itype = lookup_instance_type(instance_type)
    return {CORE_RESOURCE: str(itype.cores), DEVICE_RESOURCE: str(itype.devices)}


def node_manifest(
    spec: NodeSpec,
    *,
    capacity: dict[str, str] | None = None,
    allocatable: dict[str, str] | None = None,
) -> dict[str, Any]:
    """The Node to create; kwok nodes carry the annotation kwok selects by, emulated ones not."""
    neuron = neuron_capacity(spec.instance_type)
    cap = {**BASE_CAPACITY, **(neuron if capacity is None else capacity)}
    alloc = {**BASE_CAPACITY, **(neuron if allocatable is None else allocatable)}
    annotations = {"node.alpha.kubernetes.io/ttl": "0"}
    if not spec.emulated:
        annotations[KWOK_NODE_ANNOTATION] = KWOK_NODE_ANNOTATION_VALUE
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": spec.name,
            "labels": {
                INSTANCE_TYPE_LABEL: spec.instance_type,
                "kubernetes.io/hostname": spec.name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                ROLE_LABEL: "emulated" if spec.emulated else "kwok",
            },
            "annotations": annotations,
        },
        "spec": {"taints": [dict(NEURON_TAINT)]},
        "status": {"capacity": cap, "allocatable": alloc},
    }
