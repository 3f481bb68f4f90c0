"""What the autoscaling tests and benchmark apply and observe on a Karpenter-run local cluster.

Why shared: the cluster tests (tests/localcluster/test_autoscaling_cluster.py) and the benchmark
(bench/bench_autoscaling.py) must measure the same pods: one-NeuronCore copies pinned to an
instance type, either as a NeuronWorkload (isolation Process: one pod per copy) or, for the
baseline, as a plain Deployment with the pod shape the operator builds (instance-type node
selector, the Neuron toleration, one ``aws.amazon.com/neuroncore``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from neuron_cores import CORE_RESOURCE
from neuron_localcluster.cluster import LocalCluster
from neuron_localcluster.karpenter import NODEPOOL_LABEL
from neuron_localcluster.nodes import INSTANCE_TYPE_LABEL, NEURON_TAINT

IMAGE = "neuron-groups/runtime:0.1.0"
WORKLOAD_LABEL = "app.kubernetes.io/instance"


def one_core_workload(
    name: str, namespace: str, copies: int, instance_type: str, replicas: int = 1
) -> dict[str, Any]:
    """A NeuronWorkload of ``copies`` one-core copies, one pod each, on ``instance_type``."""
    return {
        "apiVersion": "neurongroups.dev/v1alpha1",
        "kind": "NeuronWorkload",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "image": IMAGE,
            "instanceType": instance_type,
            "isolation": "Process",
            "replicas": replicas,
            "models": [
                {"name": "resnet50", "path": "/models/resnet50", "cores": 1, "copies": copies}
            ],
        },
    }


def one_core_deployment(
    name: str, namespace: str, replicas: int, instance_type: str
) -> dict[str, Any]:
    """The baseline: the same one-core pods as a plain Deployment, no operator involved."""
    labels = {WORKLOAD_LABEL: name}
    one = {CORE_RESOURCE: "1"}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "nodeSelector": {INSTANCE_TYPE_LABEL: instance_type},
                    "tolerations": [{**NEURON_TAINT, "operator": "Exists"}],
                    "automountServiceAccountToken": False,
                    "containers": [
                        {
                            "name": "runtime",
                            "image": IMAGE,
                            "resources": {"requests": one, "limits": one},
                        }
                    ],
                },
            },
        },
    }


@dataclass(frozen=True)
class Snapshot:
    """Pods of one workload and the nodes Karpenter made, at one moment."""

    pods: int
    running: int
    pending: int
    nodes: tuple[str, ...]
    node_types: tuple[str, ...]


def _json(cluster: LocalCluster, *args: str) -> Any:
    return json.loads(cluster.kubectl(*args, "-o", "json", timeout=60).stdout)


def karpenter_nodes(cluster: LocalCluster) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = _json(cluster, "get", "nodes", "-l", NODEPOOL_LABEL)["items"]
    return found


def snapshot(cluster: LocalCluster, namespace: str, workload: str) -> Snapshot:
    pods = [
        p
        for p in _json(
            cluster, "get", "pods", "-n", namespace, "-l", f"{WORKLOAD_LABEL}={workload}"
        )["items"]
        if not p["metadata"].get("deletionTimestamp")
    ]
    nodes = karpenter_nodes(cluster)
    return Snapshot(
        pods=len(pods),
        running=sum((p.get("status") or {}).get("phase") == "Running" for p in pods),
        pending=sum((p.get("status") or {}).get("phase") == "Pending" for p in pods),
        nodes=tuple(sorted(n["metadata"]["name"] for n in nodes)),
        node_types=tuple(
            sorted(n["metadata"]["labels"].get(INSTANCE_TYPE_LABEL, "") for n in nodes)
        ),
    )


def nodeclaims(cluster: LocalCluster) -> Sequence[dict[str, Any]]:
    found: list[dict[str, Any]] = _json(cluster, "get", "nodeclaims")["items"]
    return found
