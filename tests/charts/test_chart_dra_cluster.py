"""The chart's DRA RBAC and own-node policy on the real kube-apiserver (v1.36.1).

The ServiceAccount, ClusterRole(Binding) and ValidatingAdmissionPolicy(Binding) are rendered from
the chart (``helm template --set dra.enabled=true``) and applied as they are (not the DaemonSet:
its pods would land on the local nodes).  A pod of that account is bound to kwok node A, and a
TokenRequest bound to that pod gives the token a DaemonSet pod on A would hold: it names node A.
The real ``neuron-dra-driver`` process then runs with that token: it may publish and delete node
A's pool, and the API server refuses its writes to node B's pool with the policy's message; a
token not bound to a pod on a node may write no slice.  ``kubectl auth can-i`` shows what the
account may not do.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client as k8s

from neuron_dra_driver.layout import DRIVER_NAME
from neuron_localcluster import LocalCluster
from neuron_localcluster.kube import raw_json

pytestmark = pytest.mark.cluster

NS = "ng-dra-rbac"
RELEASE = "drarbac"
ACCOUNT = f"{RELEASE}-neuron-groups-dra-driver"
DRIVER = str(Path(sys.executable).parent / "neuron-dra-driver")


@pytest.fixture(scope="module")
def installed(local_cluster: LocalCluster, apply_node_agent_rbac: Any) -> Iterator[Any]:
    """The chart's RBAC for the agent, applied; what the tests wrote on the nodes, undone."""
    with apply_node_agent_rbac(
        local_cluster, "dra-driver", release=RELEASE, namespace=NS, set_values=["dra.enabled=true"]
    ) as rbac:
        assert rbac.account == ACCOUNT
        try:
            yield rbac
        finally:
            for node in local_cluster.kwok_nodes[:2]:
                _driver(local_cluster.kubeconfig, node, "--cleanup")


def _driver(kubeconfig: Path, node: str, *flags: str) -> subprocess.CompletedProcess[str]:
    argv = [DRIVER, f"--node-name={node}", f"--kubeconfig={kubeconfig}", *flags]
    if "--cleanup" not in flags:
        argv += ["--backend=simulated", "--instance-type=inf1.6xlarge"]
    return subprocess.run(argv, capture_output=True, text=True, check=False, timeout=120)


def _slices(cluster: LocalCluster, node: str) -> int:
    listed = k8s.ResourceV1Api(cluster.api_client()).list_resource_slice(
        field_selector=f"spec.driver={DRIVER_NAME},spec.nodeName={node}", _preload_content=False
    )
    return len(raw_json(listed)["items"])


@pytest.fixture(scope="module")
def on_node_a(local_cluster: LocalCluster, installed: Any) -> Path:
    """A kubeconfig with the token a driver pod on kwok node A holds."""
    kubeconfig: Path = installed.pod_token(
        local_cluster.kwok_nodes[0], "driver-on-a", "neuron-groups/driver:test"
    )
    node_b = local_cluster.kwok_nodes[1]

    def policy_active() -> bool:
        # the policy is compiled a moment after it is created: wait until it refuses a write
        proc = _driver(kubeconfig, node_b, "--once")
        # undo whatever it let through: a policy that becomes active while the driver publishes
        # refuses only the later slices, and the earlier ones stay behind
        _driver(local_cluster.kubeconfig, node_b, "--cleanup")
        return proc.returncode == 1 and "may write only" in proc.stderr

    local_cluster.wait_for(policy_active, 90, "the own-node policy to refuse node B's slices")
    return kubeconfig


def test_the_driver_on_node_a_publishes_and_deletes_node_as_pool(
    local_cluster: LocalCluster, on_node_a: Path
) -> None:
    node = local_cluster.kwok_nodes[0]
    published = _driver(on_node_a, node, "--once")
    assert published.returncode == 0, published.stderr
    assert _slices(local_cluster, node) == 4  # 16 cores: 3 device slices and the counters
    deleted = _driver(on_node_a, node, "--cleanup")
    assert deleted.returncode == 0, deleted.stderr
    assert _slices(local_cluster, node) == 0


def test_the_driver_on_node_a_may_not_write_node_bs_pool(
    local_cluster: LocalCluster, on_node_a: Path
) -> None:
    node_a, node_b = local_cluster.kwok_nodes[:2]
    refused = _driver(on_node_a, node_b, "--once")
    assert refused.returncode == 1
    assert (
        f"the DRA driver on node {node_a} may write only that node's ResourceSlices, not one "
        f"of node {node_b}"
    ) in refused.stderr
    assert _slices(local_cluster, node_b) == 0
    # node B's own pool (published here as admin) cannot be deleted from node A either
    assert _driver(local_cluster.kubeconfig, node_b, "--once").returncode == 0
    kept = _driver(on_node_a, node_b, "--cleanup")
    assert kept.returncode == 1
    assert "may write only that node's ResourceSlices" in kept.stderr
    assert _slices(local_cluster, node_b) == 4


def test_a_token_not_bound_to_a_pod_on_a_node_writes_no_slice(
    local_cluster: LocalCluster, installed: Any, on_node_a: Path
) -> None:
    unbound = installed.token_kubeconfig("unbound", None)
    node = local_cluster.kwok_nodes[0]
    before = _slices(local_cluster, node)
    refused = _driver(unbound, node, "--once")
    assert refused.returncode == 1
    assert "is not bound to a pod on a node" in refused.stderr
    assert _slices(local_cluster, node) == before


@pytest.mark.parametrize(
    ("verb", "resource", "allowed"),
    [
        ("create", "resourceslices.resource.k8s.io", True),
        ("delete", "resourceslices.resource.k8s.io", True),
        ("get", "resourceclaims.resource.k8s.io", True),
        ("get", "nodes", True),
        ("update", "resourceclaims.resource.k8s.io", False),
        ("list", "nodes", False),
        ("get", "secrets", False),
        ("list", "pods", False),
        ("create", "deviceclasses.resource.k8s.io", False),
    ],
    ids=[
        "create-slices",
        "delete-slices",
        "read-claims",
        "read-node",
        "no-claim-writes",
        "no-node-listing",
        "no-secrets",
        "no-pods",
        "no-device-classes",
    ],
)
def test_the_account_may_do_only_what_the_driver_calls(
    local_cluster: LocalCluster,
    installed: Any,
    verb: str,
    resource: str,
    allowed: bool,
) -> None:
    assert installed.may(verb, resource) is allowed
