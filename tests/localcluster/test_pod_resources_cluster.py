"""The emulated node serves the kubelet's PodResources API, and the device plugin follows it.

A node offers both Neuron resources over the same silicon: a pod holding a device whole takes that
device's cores off ``aws.amazon.com/neuroncore``.  The Device Plugin API never says when the pod is
gone; the kubelet's PodResources ``List`` does.  Without it (the node agent before this test) the
cores stayed off for good, so this test fails on a stand-in that lacks what the real kubelet has.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from kubernetes import client as k8s

from neuron_device_plugin.podresources import PodResourcesClient
from neuron_localcluster import LocalCluster
from neuron_localcluster.kube import body
from neuron_localcluster.node_files import pod_resources_socket_for

pytestmark = pytest.mark.cluster

CORES = "aws.amazon.com/neuroncore"
DEVICES = "aws.amazon.com/neuron"
# The plugin keeps a hold it made in the last 30 s even when no listing shows it yet (the kubelet
# records an allocation after Allocate returns); then a health poll and a node status report.
RELEASE_WITHIN_S = 90


def _get(cluster: LocalCluster, *args: str) -> Any:
    """``kubectl get ... -o json``: the object as on the wire, untyped on purpose."""
    return json.loads(cluster.kubectl("get", *args, "-o", "json").stdout)


def _allocatable(cluster: LocalCluster, node: str) -> dict[str, str]:
    return dict(_get(cluster, "node", node)["status"]["allocatable"])


def test_a_whole_device_pod_takes_its_cores_off_until_podresources_stops_listing_it(
    local_cluster: LocalCluster, namespace: str
) -> None:
    core = k8s.CoreV1Api(local_cluster.api_client())
    node = local_cluster.emulated_node
    total = int(_allocatable(local_cluster, node)[CORES])
    cores_per_device = total // int(_allocatable(local_cluster, node)[DEVICES])
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "whole-device"},
        "spec": {
            "nodeName": node,
            "tolerations": [{"key": DEVICES, "operator": "Exists", "effect": "NoSchedule"}],
            "containers": [
                {
                    "name": "main",
                    "image": "python",
                    "command": ["python", "-c", "import time; time.sleep(600)"],
                    "resources": {"limits": {DEVICES: "1"}, "requests": {DEVICES: "1"}},
                }
            ],
        },
    }
    core.create_namespaced_pod(namespace, body(pod))
    local_cluster.wait_for(
        lambda: (
            _get(local_cluster, "pod", "whole-device", "-n", namespace)["status"].get("phase")
            == "Running"
        ),
        60,
        "the whole-device pod to run",
    )
    listing = PodResourcesClient(pod_resources_socket_for(local_cluster.layout.node_dir(node)))
    held = local_cluster.wait_for(
        lambda: [ids for resource, ids in listing.list_devices() if resource == DEVICES],
        30,
        "PodResources to list the pod's device",
    )
    assert [len(ids) for ids in held] == [1]
    local_cluster.wait_for(
        lambda: int(_allocatable(local_cluster, node)[CORES]) == total - cores_per_device,
        30,
        f"the held device's {cores_per_device} cores to leave the node's allocatable cores",
    )

    core.delete_namespaced_pod("whole-device", namespace, grace_period_seconds=0)
    local_cluster.wait_for(
        lambda: not [ids for resource, ids in listing.list_devices() if resource == DEVICES],
        60,
        "PodResources to stop listing the deleted pod's device",
    )
    local_cluster.wait_for(
        lambda: int(_allocatable(local_cluster, node)[CORES]) == total,
        RELEASE_WITHIN_S,
        "the released device's cores to come back to the node's allocatable cores",
    )
