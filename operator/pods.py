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
from typing import Any

from neuron_cores import GROUP_SIZES_ENV
from neuron_operator.api import API_VERSION, KIND, MODELS_ENV, Workload, WorkloadSpec
from neuron_operator.planner import PodPlan

NEURONCORE_RESOURCE = "aws.amazon.com/neuroncore"
NEURON_TAINT_KEY = "aws.amazon.com/neuron"
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
HTTP_PORT = 8000
GRPC_PORT = 8001
# Bumped when the operator changes the pods it builds, so an upgrade rolls them.
POD_TEMPLATE_VERSION = "1"
RUN_AS_USER = 65532


def template_hash(spec: WorkloadSpec) -> str:
    """A short hash of everything that shapes the pods (all of the spec but ``replicas``)."""
    shape = dataclasses.asdict(spec)
    shape.pop("replicas")
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


def _resources(spec: WorkloadSpec, cores: int) -> dict[str, Any]:
    requests = dict(spec.pod.resources.get("requests") or {})
    limits = dict(spec.pod.resources.get("limits") or {})
    # Extended resources cannot be overcommitted: request equals limit.
    requests[NEURONCORE_RESOURCE] = str(cores)
    limits[NEURONCORE_RESOURCE] = str(cores)
    return {"requests": requests, "limits": limits}


def _probe(path: str, period: int, failures: int) -> dict[str, Any]:
    return {
        "httpGet": {"path": path, "port": "http"},
        "periodSeconds": period,
        "failureThreshold": failures,
    }


def _container(spec: WorkloadSpec, plan_pod: PodPlan) -> dict[str, Any]:
    env = [
        {"name": GROUP_SIZES_ENV, "value": plan_pod.group_sizes_env},
        {"name": MODELS_ENV, "value": plan_pod.models_env},
        *(dict(e) for e in spec.pod.env),
    ]
    mounts = [{"name": "tmp", "mountPath": "/tmp"}, *(dict(m) for m in spec.pod.volume_mounts)]
    return {
        "name": CONTAINER_NAME,
        "image": spec.image,
        "command": ["neuron-runtime", "serve"],
        "ports": [
            {"name": "http", "containerPort": HTTP_PORT, "protocol": "TCP"},
            {"name": "grpc", "containerPort": GRPC_PORT, "protocol": "TCP"},
        ],
        "env": env,
        "resources": _resources(spec, plan_pod.cores),
        "readinessProbe": _probe("/v2/health/ready", 5, 3),
        "livenessProbe": _probe("/v2/health/live", 10, 6),
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
    own = {"key": NEURON_TAINT_KEY, "operator": "Exists", "effect": "NoSchedule"}
    given = [dict(t) for t in spec.pod.tolerations]
    return given if own in given else [own, *given]


def build_pod(plan_pod: PodPlan, workload: Workload) -> dict[str, Any]:
    """The Pod manifest for one planned pod of a workload."""
    spec = workload.spec
    hash_ = template_hash(spec)
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
        "containers": [_container(spec, plan_pod)],
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
                {"name": "http", "port": HTTP_PORT, "targetPort": "http", "protocol": "TCP"},
                {"name": "grpc", "port": GRPC_PORT, "targetPort": "grpc", "protocol": "TCP"},
            ],
        },
    }
