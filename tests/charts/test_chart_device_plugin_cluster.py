"""The chart's device-plugin RBAC and own-node policy on the real kube-apiserver (v1.36.1).

The ServiceAccount, ClusterRole(Binding) and ValidatingAdmissionPolicy(Binding) of the device
plugin are rendered from the chart (``devicePlugin.publishAllocations``, on by default) and
applied as they are (not the DaemonSet: its pods would land on the local nodes).  A pod of that
account is bound to kwok node A, and a TokenRequest bound to that pod gives the token a DaemonSet
pod on A would hold: it names node A.  The real ``neuron-device-plugin`` process then publishes
node A's core-allocation annotation with that token, from a PodResources socket served here; the
API server refuses, with the policy's message, the same for node B, any other change to node A
(a label, another annotation), and any write from a token not bound to a pod on a node.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client as k8s
from kubernetes import config as k8s_config

from neuron_cores import ALLOCATIONS_ANNOTATION, CORE_RESOURCE, parse_record
from neuron_device_plugin.ids import core_id
from neuron_device_plugin.nodeannotation import PatchError, node_patcher
from neuron_localcluster import LocalCluster
from neuron_localcluster.kube import raw_json
from neuron_localcluster.pod_resources_server import ContainerHolding, PodResourcesServer

pytestmark = pytest.mark.cluster

NS = "ng-dp-rbac"
RELEASE = "dprbac"
ACCOUNT = f"{RELEASE}-neuron-groups-device-plugin"
PLUGIN = str(Path(sys.executable).parent / "neuron-device-plugin")


def _annotation(cluster: LocalCluster, node: str) -> str | None:
    found = raw_json(k8s.CoreV1Api(cluster.api_client()).read_node(node, _preload_content=False))
    value = (found["metadata"].get("annotations") or {}).get(ALLOCATIONS_ANNOTATION)
    return None if value is None else str(value)


def _clear(cluster: LocalCluster, node: str) -> None:
    patch = {"metadata": {"annotations": {ALLOCATIONS_ANNOTATION: None}}}
    k8s.CoreV1Api(cluster.api_client()).patch_node(node, patch)


@pytest.fixture(scope="module")
def installed(local_cluster: LocalCluster, apply_node_agent_rbac: Any) -> Iterator[Any]:
    """The chart's RBAC for the agent, applied; what the tests wrote on the nodes, undone."""
    with apply_node_agent_rbac(
        local_cluster, "device-plugin", release=RELEASE, namespace=NS
    ) as rbac:
        assert rbac.account == ACCOUNT
        try:
            yield rbac
        finally:
            for node in local_cluster.kwok_nodes[:2]:
                _clear(local_cluster, node)


def _write(kubeconfig: Path, node: str, patch: dict[str, Any]) -> str | None:
    """Patch ``node`` as the token's holder; None when accepted, else the API server's words."""
    from_file: Any = k8s_config.new_client_from_config
    core: Any = k8s.CoreV1Api(from_file(config_file=str(kubeconfig)))
    try:
        core.patch_node(node, patch, _preload_content=False)
    except k8s.ApiException as err:
        return f"{err.status}: {json.loads(err.body or '{}').get('message')}"
    return None


@pytest.fixture(scope="module")
def on_node_a(local_cluster: LocalCluster, installed: Any) -> Path:
    """A kubeconfig with the token a device-plugin pod on kwok node A holds."""
    kubeconfig: Path = installed.pod_token(
        local_cluster.kwok_nodes[0], "plugin-on-a", "neuron-groups/device-plugin:test"
    )
    node_b = local_cluster.kwok_nodes[1]
    note = {"metadata": {"annotations": {ALLOCATIONS_ANNOTATION: "probe"}}}

    def policy_active() -> bool:
        # the policy is compiled a moment after it is created: wait until it refuses a write
        refused = _write(kubeconfig, node_b, note)
        _clear(local_cluster, node_b)
        return refused is not None and "may change only that Node" in refused

    local_cluster.wait_for(policy_active, 90, "the own-node policy to refuse node B's annotation")
    return kubeconfig


def test_the_plugin_on_node_a_publishes_node_as_allocations(
    local_cluster: LocalCluster, on_node_a: Path
) -> None:
    """The real plugin process, with node A's token, publishes from a PodResources listing."""
    node = local_cluster.kwok_nodes[0]
    folder = Path(tempfile.mkdtemp(prefix="dp-", dir="/tmp"))
    (folder / "plugins").mkdir()
    with PodResourcesServer(folder / "kubelet.sock") as listing:
        listing.set([ContainerHolding(NS, "web-0", "main", CORE_RESOURCE, (core_id(2),))])
        argv = [
            PLUGIN, "--backend=simulated", "--instance-type=inf1.6xlarge",
            f"--device-plugin-dir={folder / 'plugins'}", "--metrics-port=0",
            f"--pod-resources-socket={folder / 'kubelet.sock'}",
            "--publish-allocations=true", f"--node-name={node}", f"--kubeconfig={on_node_a}",
        ]  # fmt: skip
        process = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True)
        try:
            text = local_cluster.wait_for(
                lambda: _annotation(local_cluster, node), 60, "node A's record"
            )
        finally:
            process.send_signal(signal.SIGTERM)
            _, stderr = process.communicate(timeout=30)
    shutil.rmtree(folder, ignore_errors=True)
    assert process.returncode == 0, stderr
    record = parse_record(text)
    assert (record.cores, dict(record.pods)) == (16, {f"{NS}/web-0": (2,)})


@pytest.mark.parametrize(
    ("target", "patch", "fragment"),
    [
        (
            "b",
            {"metadata": {"annotations": {ALLOCATIONS_ANNOTATION: "{}"}}},
            "the device plugin on node {a} may change only that Node, not node {b}",
        ),
        (
            "a",
            {"metadata": {"labels": {"pwned": "yes"}}},
            "the device plugin may change only the annotation neurongroups.dev/core-allocations "
            "of node {a}, not its labels",
        ),
        (
            "a",
            {"metadata": {"annotations": {"other.example/x": "1"}}},
            "may change only the annotation neurongroups.dev/core-allocations",
        ),
        ("a", {"spec": {"unschedulable": True}}, "may change only the annotation"),
    ],
    ids=["other-node", "own-label", "own-other-annotation", "own-spec"],
)
def test_the_plugin_on_node_a_may_change_nothing_else(
    local_cluster: LocalCluster,
    on_node_a: Path,
    target: str,
    patch: dict[str, Any],
    fragment: str,
) -> None:
    node_a, node_b = local_cluster.kwok_nodes[:2]
    node = node_a if target == "a" else node_b
    before = raw_json(
        k8s.CoreV1Api(local_cluster.api_client()).read_node(node, _preload_content=False)
    )
    refused = _write(on_node_a, node, patch)
    assert refused is not None, "the API server accepted the write"
    assert refused.startswith("403: "), refused
    assert fragment.format(a=node_a, b=node_b) in refused, refused
    after = raw_json(
        k8s.CoreV1Api(local_cluster.api_client()).read_node(node, _preload_content=False)
    )
    assert after["metadata"].get("labels") == before["metadata"].get("labels")
    assert after["metadata"].get("annotations") == before["metadata"].get("annotations")
    assert after.get("spec") == before.get("spec")


def test_the_plugins_own_patch_says_why_it_was_refused(
    local_cluster: LocalCluster, on_node_a: Path
) -> None:
    patch = node_patcher(local_cluster.kwok_nodes[1], str(on_node_a))
    with pytest.raises(PatchError, match=r"HTTP 403 Forbidden: .*may change only that Node"):
        patch("{}")


def test_a_token_not_bound_to_a_pod_on_a_node_changes_no_node(
    local_cluster: LocalCluster, installed: Any, on_node_a: Path
) -> None:
    unbound = installed.token_kubeconfig("unbound", None)
    node = local_cluster.kwok_nodes[0]
    refused = _write(unbound, node, {"metadata": {"annotations": {ALLOCATIONS_ANNOTATION: "{}"}}})
    assert refused is not None and "is not bound to a pod on a node" in refused, refused


@pytest.mark.parametrize(
    ("verb", "resource", "allowed"),
    [
        ("patch", "nodes", True),
        ("get", "nodes", False),
        ("list", "nodes", False),
        ("update", "nodes", False),
        ("delete", "nodes", False),
        ("patch", "nodes --subresource=status", False),
        ("get", "secrets", False),
        ("list", "pods", False),
    ],
    ids=[
        "patch-nodes",
        "no-node-get",
        "no-node-list",
        "no-node-update",
        "no-node-delete",
        "no-node-status",
        "no-secrets",
        "no-pods",
    ],
)
def test_the_account_may_do_only_what_the_plugin_calls(
    local_cluster: LocalCluster,
    installed: Any,
    verb: str,
    resource: str,
    allowed: bool,
) -> None:
    assert installed.may(verb, *resource.split()) is allowed
