"""Pure builders of the child objects of a NeuronWorkload: its pods and its Service.

Kept apart from any API call so they can be tested as plain data and printed by
``neuron-operator plan`` without a cluster.  Pod names are deterministic,
``<workload>-<template hash>-<replica>-<pod>``: the reconcile loop finds a missing pod by name,
and a spec change (a new hash) yields new names, so the old pods can be replaced a few at a time.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping
from typing import Any

from neuron_cores import (
    CORE_RESOURCE,
    GROUP_SIZES_ENV,
    GRPC_PORT,
    HTTP_PORT,
    MODELS_ENV,
    NEURON_TAINT_EFFECT,
    NEURON_TAINT_KEY,
)
from neuron_operator.api import (
    ALLOCATION_DEVICE_PLUGIN,
    ALLOCATION_DRA,
    API_VERSION,
    KIND,
    MODEL_NAMES_ENV,
    POD_CORES_ENV,
    ContainerSettings,
    Workload,
    WorkloadSpec,
    expand_model_arg,
)
from neuron_operator.claims import pod_claim_refs
from neuron_operator.planner import PodPlan

INSTANCE_TYPE_LABEL = "node.kubernetes.io/instance-type"

LABEL_NAME = "app.kubernetes.io/name"
LABEL_INSTANCE = "app.kubernetes.io/instance"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_TEMPLATE_HASH = "neurongroups.dev/template-hash"
LABEL_REPLICA = "neurongroups.dev/replica"
LABEL_POD_INDEX = "neurongroups.dev/pod-index"
ANNOTATION_GROUPS = "neurongroups.dev/group-sizes"
ANNOTATION_MODELS = "neurongroups.dev/models"

APP_NAME = "neuron-workload"
MANAGER = "neuron-operator"
CONTAINER_NAME = "runtime"
# Bumped when the operator changes the pods it builds, so an upgrade rolls them.
POD_TEMPLATE_VERSION = "1"
RUN_AS_USER = 65532


def template_hash(spec: WorkloadSpec, allocation: str = ALLOCATION_DEVICE_PLUGIN) -> str:
    """A short hash of everything that shapes the pods (all of the spec but ``replicas``, and the
    allocation mode in force, ``allocation``: ``DevicePlugin`` or ``DRA``)."""
    shape = dataclasses.asdict(spec)
    shape.pop("replicas")
    if shape["container"] is None:  # absent before spec.container existed: keep those hashes
        shape.pop("container")
    # spec.allocation itself is not hashed, the mode it resolves to is, and only when it is DRA:
    # device-plugin pods keep the hashes they had before the field existed (no roll on upgrade,
    # nor when Auto keeps meaning the device plugin), and a switch either way rolls the pods.
    shape.pop("allocation")
    if allocation == ALLOCATION_DRA:
        shape["allocationMode"] = ALLOCATION_DRA
    text = json.dumps([POD_TEMPLATE_VERSION, shape], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:10]


def selector_labels(name: str) -> dict[str, str]:
    return {LABEL_NAME: APP_NAME, LABEL_INSTANCE: name}


def selector_string(name: str) -> str:
    """The label selector for status.selector (the scale subresource's labelSelectorPath)."""
    return ",".join(f"{k}={v}" for k, v in selector_labels(name).items())


def pod_name(workload_name: str, hash_: str, replica: int, index: int) -> str:
    return f"{workload_name}-{hash_}-{replica}-{index}"


def owner_reference(workload: Workload) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "name": workload.name,
        "uid": workload.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _metadata(workload: Workload, name: str, labels: dict[str, str]) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": workload.namespace, "labels": labels}
    if workload.uid:
        meta["ownerReferences"] = [owner_reference(workload)]
    return meta


def _resources(spec: WorkloadSpec, cores: int, claims: list[dict[str, Any]]) -> dict[str, Any]:
    requests = dict(spec.pod.resources.get("requests") or {})
    limits = dict(spec.pod.resources.get("limits") or {})
    if claims:  # DRA: the cores come from the pod's ResourceClaim
        result: dict[str, Any] = {"claims": claims}
        if requests:
            result["requests"] = requests
        if limits:
            result["limits"] = limits
        return result
    # Extended resources cannot be overcommitted: request equals limit.
    requests[CORE_RESOURCE] = str(cores)
    limits[CORE_RESOURCE] = str(cores)
    return {"requests": requests, "limits": limits}


def _probe(path: str, period: int, failures: int) -> dict[str, Any]:
    return {
        "httpGet": {"path": path, "port": "http"},
        "periodSeconds": period,
        "failureThreshold": failures,
    }


DEFAULT_COMMAND = ("neuron-runtime", "serve")
DEFAULT_PORTS = (
    {"name": "http", "containerPort": HTTP_PORT, "protocol": "TCP"},
    {"name": "grpc", "containerPort": GRPC_PORT, "protocol": "TCP"},
)


def container_ports(spec: WorkloadSpec) -> list[dict[str, Any]]:
    """The serving container's ports: spec.container.ports, else http 8000 and grpc 8001."""
    given = spec.container.ports if spec.container else None
    if given is None:
        return [dict(p) for p in DEFAULT_PORTS]
    return [{**p, "protocol": p.get("protocol", "TCP")} for p in given]


def model_args(settings: ContainerSettings, plan_pod: PodPlan) -> list[str]:
    """spec.container.modelArgs expanded once per model of the pod, in load order."""
    copies: dict[str, int] = {}
    first: dict[str, Any] = {}
    for copy in plan_pod.load_order:
        copies[copy.name] = copies.get(copy.name, 0) + 1
        first.setdefault(copy.name, copy)
    return [
        expand_model_arg(
            template,
            {"name": name, "path": m.path, "cores": m.cores, "copies": copies[name]},
        )
        for name, m in first.items()
        for template in settings.model_args
    ]


def _planned_env(spec: WorkloadSpec, plan_pod: PodPlan) -> list[dict[str, Any]]:
    env = [
        {"name": GROUP_SIZES_ENV, "value": plan_pod.group_sizes_env},
        {"name": MODELS_ENV, "value": plan_pod.models_env},
    ]
    if spec.container is not None:
        names = ",".join(dict.fromkeys(m.name for m in plan_pod.load_order))
        env += [
            {"name": MODEL_NAMES_ENV, "value": names},
            {"name": POD_CORES_ENV, "value": str(plan_pod.cores)},
        ]
    return env


def _serving(spec: WorkloadSpec, plan_pod: PodPlan) -> dict[str, Any]:
    """Command, args, ports and probes: spec.container merged over the defaults."""
    settings = spec.container or ContainerSettings()
    out: dict[str, Any] = {"command": list(settings.command or DEFAULT_COMMAND)}
    args = [*settings.args, *model_args(settings, plan_pod)]
    if args:
        out["args"] = args
    if settings.working_dir:
        out["workingDir"] = settings.working_dir
    out["ports"] = container_ports(spec)
    defaults = {
        "readinessProbe": _probe("/v2/health/ready", 5, 3),
        "livenessProbe": _probe("/v2/health/live", 10, 6),
    }
    for name in ("readinessProbe", "livenessProbe", "startupProbe"):
        probe = settings.probes.get(name) or defaults.get(name)
        if probe is not None:
            out[name] = _plain(probe)
    return out


def _plain(value: Any) -> Any:
    """A deep copy as plain dicts and lists (the spec holds mappings and tuples)."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _container(
    spec: WorkloadSpec, plan_pod: PodPlan, claims: list[dict[str, Any]]
) -> dict[str, Any]:
    env = [*_planned_env(spec, plan_pod), *(dict(e) for e in spec.pod.env)]
    mounts = [{"name": "tmp", "mountPath": "/tmp"}, *(dict(m) for m in spec.pod.volume_mounts)]
    serving = _serving(spec, plan_pod)
    return {
        "name": CONTAINER_NAME,
        "image": spec.image,
        "command": serving["command"],
        **{k: serving[k] for k in ("args", "workingDir") if k in serving},
        "ports": serving["ports"],
        "env": env,
        "resources": _resources(spec, plan_pod.cores, claims),
        **{k: v for k, v in serving.items() if k.endswith("Probe")},
        "volumeMounts": mounts,
        "securityContext": {
            "runAsNonRoot": True,
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
    }


def _tolerations(spec: WorkloadSpec) -> list[dict[str, Any]]:
    own = {"key": NEURON_TAINT_KEY, "operator": "Exists", "effect": NEURON_TAINT_EFFECT}
    given = [dict(t) for t in spec.pod.tolerations]
    return given if own in given else [own, *given]


def build_pod(
    plan_pod: PodPlan, workload: Workload, allocation: str = ALLOCATION_DEVICE_PLUGIN
) -> dict[str, Any]:
    """The Pod manifest for one planned pod of a workload, in the allocation mode in force
    (``DevicePlugin``: a neuroncore request; ``DRA``: a claim from the workload's template)."""
    spec = workload.spec
    hash_ = template_hash(spec, allocation)
    refs = pod_claim_refs(workload.name, plan_pod.cores) if allocation == ALLOCATION_DRA else {}
    labels = {
        **selector_labels(workload.name),
        LABEL_MANAGED_BY: MANAGER,
        LABEL_TEMPLATE_HASH: hash_,
        LABEL_REPLICA: str(plan_pod.replica),
        LABEL_POD_INDEX: str(plan_pod.index),
    }
    meta = _metadata(
        workload, pod_name(workload.name, hash_, plan_pod.replica, plan_pod.index), labels
    )
    meta["annotations"] = {
        ANNOTATION_GROUPS: plan_pod.group_sizes_env,
        # Each model once, in load order: a list of every copy could pass the API's 256 KiB
        # bound on a pod's annotations (NEURON_MODELS already carries every copy).
        ANNOTATION_MODELS: ",".join(dict.fromkeys(m.name for m in plan_pod.load_order)),
    }
    node_selector = dict(spec.pod.node_selector)
    if spec.instance_type:
        node_selector[INSTANCE_TYPE_LABEL] = spec.instance_type
    pod_spec: dict[str, Any] = {
        "containers": [_container(spec, plan_pod, refs.get("claims", []))],
        "restartPolicy": "Always",
        "automountServiceAccountToken": False,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": RUN_AS_USER,
            "runAsGroup": RUN_AS_USER,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "tolerations": _tolerations(spec),
        "volumes": [{"name": "tmp", "emptyDir": {}}, *(dict(v) for v in spec.pod.volumes)],
    }
    if node_selector:
        pod_spec["nodeSelector"] = node_selector
    if refs:
        pod_spec["resourceClaims"] = refs["resourceClaims"]
    if spec.pod.service_account_name:
        pod_spec["serviceAccountName"] = spec.pod.service_account_name
    if spec.pod.image_pull_secrets:
        pod_spec["imagePullSecrets"] = [dict(s) for s in spec.pod.image_pull_secrets]
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": pod_spec}


def build_service(workload: Workload) -> dict[str, Any]:
    """The Service in front of every pod of the workload (all replicas, any template)."""
    labels = {**selector_labels(workload.name), LABEL_MANAGED_BY: MANAGER}
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(workload, workload.name, labels),
        "spec": {
            "selector": selector_labels(workload.name),
            "ports": [
                {
                    "name": p["name"],
                    "port": p["containerPort"],
                    "targetPort": p["name"],
                    "protocol": p["protocol"],
                }
                for p in container_ports(workload.spec)
            ],
        },
    }


def _port_key(port: Mapping[str, Any]) -> tuple[str, int, str, str]:
    return (
        str(port.get("name", "")),
        int(port.get("port", 0)),
        str(port.get("targetPort", "")),
        str(port.get("protocol") or "TCP"),
    )


def service_ports_drift(
    existing: Mapping[str, Any], desired: Mapping[str, Any]
) -> list[dict[str, Any]] | None:
    """The ports to write when the Service in the cluster no longer has the desired ones (the
    spec's ``container.ports`` were edited), else None.  Compared as name, port, target port and
    protocol, in order (the API server adds nothing else to a ClusterIP Service's ports)."""
    have = [_port_key(p) for p in (existing.get("spec") or {}).get("ports") or []]
    want = list((desired.get("spec") or {}).get("ports") or [])
    if have == [_port_key(p) for p in want]:
        return None
    return [dict(p) for p in want]
