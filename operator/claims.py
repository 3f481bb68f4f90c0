"""DRA mode of a NeuronWorkload, as pure data: which mode applies, the ResourceClaimTemplates the
workload owns (one per distinct pod size), how a pod refers to its template, which templates are
no longer wanted, and the cores each pod's ResourceClaim was allocated.

In DRA mode each pod gets one ResourceClaim, made by Kubernetes' resourceclaim controller from
the workload's template ``<workload>-cores-<N>``; the claim asks the DRA driver's block
DeviceClass for exactly one device with ``cores == N``, so the scheduler itself picks N adjacent
free cores.  The pod asks for no ``aws.amazon.com/neuroncore``; the driver's CDI spec puts
``NEURON_RT_VISIBLE_CORES`` into the container, as the device plugin did.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from neuron_cores import AllocationRecord, AllocationRecordError, contiguous_runs, parse_record
from neuron_dra_driver.classes import BLOCKS_CLASS, block_claim
from neuron_dra_driver.layout import API_VERSION as RESOURCE_API_VERSION
from neuron_dra_driver.layout import DRIVER_NAME
from neuron_operator.api import (
    ALLOCATION_AUTO,
    ALLOCATION_DEVICE_PLUGIN,
    ALLOCATION_DRA,
    Workload,
)

CLAIM_NAME = "neuroncores"  # the name of the claim inside the pod spec
TEMPLATE_KIND = "ResourceClaimTemplate"


def resolve_allocation(requested: str, block_class_exists: bool) -> str:
    """The mode that applies: ``DevicePlugin`` or ``DRA``.  ``Auto`` means DRA when the DRA
    driver's block DeviceClass exists, else the device plugin."""
    if requested == ALLOCATION_AUTO:
        return ALLOCATION_DRA if block_class_exists else ALLOCATION_DEVICE_PLUGIN
    return requested


def template_name(workload_name: str, cores: int) -> str:
    return f"{workload_name}-cores-{cores}"


def pod_claim_refs(workload_name: str, cores: int) -> dict[str, Any]:
    """What a DRA-mode pod adds: its ``spec.resourceClaims`` and the container's ``claims``."""
    return {
        "resourceClaims": [
            {"name": CLAIM_NAME, "resourceClaimTemplateName": template_name(workload_name, cores)}
        ],
        "claims": [{"name": CLAIM_NAME}],
    }


def build_template(
    workload: Workload,
    cores: int,
    labels: Mapping[str, str],
    owner: Mapping[str, Any] | None,
) -> dict[str, Any]:
    """The ResourceClaimTemplate for pods of ``cores`` cores: one block of exactly that size.

    Its claims carry the workload's labels, so the operator finds them with one list."""
    name = template_name(workload.name, cores)
    meta: dict[str, Any] = {"name": name, "namespace": workload.namespace, "labels": dict(labels)}
    if owner is not None:
        meta["ownerReferences"] = [dict(owner)]
    claim = block_claim(name, cores)
    return {
        "apiVersion": RESOURCE_API_VERSION,
        "kind": TEMPLATE_KIND,
        "metadata": meta,
        "spec": {"metadata": {"labels": dict(labels)}, "spec": claim["spec"]},
    }


def template_sizes(pod_cores: Iterable[int]) -> list[int]:
    """The distinct pod sizes, smallest first: one template each."""
    return sorted(set(pod_cores))


def surplus_templates(
    existing: Iterable[str], wanted: Iterable[str], *, rolling: bool
) -> list[str]:
    """Owned templates no pod of the current plan uses.  Kept while a roll is under way (the old
    pods' claims were made from them; a pod being recreated would need its template)."""
    if rolling:
        return []
    keep = set(wanted)
    return sorted(n for n in existing if n not in keep)


@dataclass(frozen=True)
class ClaimCores:
    """The cores a pod's claim was allocated: the node (the driver's pool) and the core ids."""

    pod: str
    node: str
    cores: tuple[int, ...]

    @property
    def text(self) -> str:
        return cores_text(self.cores)


def runs_text(cores: Iterable[int]) -> str:
    """Cores as their runs: ``0-14,16``; "" for none."""
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in contiguous_runs(cores))


def cores_text(cores: Sequence[int]) -> str:
    if not cores:
        return ""
    return str(cores[0]) if len(cores) == 1 else f"{cores[0]}-{cores[-1]}"


def device_cores(device: str) -> tuple[int, ...] | None:
    """The cores of one of the driver's device names: ``cores-4-7`` -> 4..7, ``core-3`` -> 3."""
    parts = device.split("-")
    try:
        if len(parts) == 2 and parts[0] == "core":
            return (int(parts[1]),)
        if len(parts) == 3 and parts[0] == "cores":
            first, last = int(parts[1]), int(parts[2])
            return tuple(range(first, last + 1)) if first <= last else None
    except ValueError:
        return None
    return None


def claim_owner_pod(claim: Mapping[str, Any]) -> str | None:
    for ref in (claim.get("metadata") or {}).get("ownerReferences") or []:
        if ref.get("kind") == "Pod" and ref.get("controller"):
            return str(ref.get("name"))
    return None


def allocation_results(claim: Mapping[str, Any]) -> list[tuple[str, tuple[int, ...]]]:
    """The blocks of this driver a claim was allocated, as (pool = node, cores); empty while it
    is not allocated."""
    results = (((claim.get("status") or {}).get("allocation") or {}).get("devices") or {}).get(
        "results"
    ) or []
    found: list[tuple[str, tuple[int, ...]]] = []
    for result in results:
        if result.get("driver") != DRIVER_NAME:
            continue
        cores = device_cores(str(result.get("device", "")))
        if cores is not None:
            found.append((str(result.get("pool", "")), cores))
    return found


def reserved_pod(claim: Mapping[str, Any]) -> str | None:
    """The first pod a claim is reserved for (``status.reservedFor``): the consumer of a claim
    made on its own and named by pods (``resourceClaimName``), which no pod owns."""
    for ref in (claim.get("status") or {}).get("reservedFor") or []:
        if ref.get("resource") == "pods" and not ref.get("apiGroup"):
            return str(ref.get("name"))
    return None


def claim_cores(claim: Mapping[str, Any]) -> ClaimCores | None:
    """The cores allocated to a pod's claim of this driver (the pod that owns it, else the pod it
    is reserved for), or None while it is not allocated."""
    pod = claim_owner_pod(claim) or reserved_pod(claim)
    node, cores = "", list[int]()
    for pool, found in allocation_results(claim):
        node = pool
        cores.extend(found)
    if pod is None or not cores:
        return None
    return ClaimCores(pod=pod, node=node, cores=tuple(sorted(cores)))


def allocated_cores(
    claims: Iterable[Mapping[str, Any]], pods: Iterable[str]
) -> list[dict[str, Any]]:
    """``status.allocatedCores``: for each of ``pods`` (in order) whose claim is allocated, the
    node and the cores (``4-7``)."""
    by_pod = {found.pod: found for claim in claims if (found := claim_cores(claim))}
    return [
        {"pod": name, "node": found.node, "cores": found.text}
        for name in pods
        if (found := by_pod.get(name)) is not None
    ]


def recorded_cores(
    namespace: str, pods: Iterable[tuple[str, str]], records: Mapping[str, str]
) -> list[dict[str, Any]]:
    """``status.allocatedCores`` on the device-plugin path: for each of ``pods`` (name, node; in
    order) that its node's allocation record (``records``: node -> the annotation's text, written
    by the device plugin) places, the node and the cores as runs (``0-3``, or ``0-14,16`` when the
    plugin could only give scattered cores).  A record that cannot be read places nothing."""
    parsed: dict[str, AllocationRecord | None] = {}
    out: list[dict[str, Any]] = []
    for name, node in pods:
        if node not in parsed:
            text = records.get(node)
            try:
                parsed[node] = parse_record(text, node=node) if text else None
            except AllocationRecordError:
                parsed[node] = None
        record = parsed[node]
        cores = record.pods.get(f"{namespace}/{name}") if record is not None else None
        if cores:
            out.append({"pod": name, "node": node, "cores": runs_text(cores)})
    return out


def allocated_summary(allocated: Sequence[Mapping[str, Any]]) -> str:
    """One line for ``kubectl get nwl -o wide``: each node's pods' cores, ``n1: 0-3 4-7; n2: 0``."""
    by_node: dict[str, list[str]] = {}
    for entry in allocated:
        by_node.setdefault(str(entry["node"]), []).append(str(entry["cores"]))
    return "; ".join(f"{node}: {' '.join(cores)}" for node, cores in sorted(by_node.items()))


__all__ = [
    "BLOCKS_CLASS",
    "CLAIM_NAME",
    "ClaimCores",
    "allocated_cores",
    "allocated_summary",
    "allocation_results",
    "build_template",
    "claim_cores",
    "device_cores",
    "pod_claim_refs",
    "recorded_cores",
    "resolve_allocation",
    "surplus_templates",
    "template_name",
    "template_sizes",
]
