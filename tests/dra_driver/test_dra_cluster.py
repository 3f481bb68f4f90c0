"""The DRA driver on the real local control plane: kube-scheduler allocates the published blocks.

The kwok nodes are inf1.6xlarge (16 cores).  The driver's own entry point publishes their pools
(``--backend simulated --once``), the DeviceClasses are the ones the chart installs, and every
claim is pinned to one node so the expected block is exactly what first-fit over the published
order gives (:func:`neuron_dra_driver.layout.first_fit`).
"""

from __future__ import annotations

import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client as k8s

from neuron_cores import CORE_RESOURCE, INSTANCE_TYPES
from neuron_device_plugin.topology import contiguous_topology
from neuron_dra_driver.classes import block_claim, device_classes
from neuron_dra_driver.cli import main
from neuron_dra_driver.kubeletplugin import DRAKubeletPlugin, KubeClaimReader
from neuron_dra_driver.layout import (
    DRIVER_NAME,
    Block,
    LayoutError,
    NodeShape,
    check_slices,
    first_fit,
    placement_order,
    pool_slices,
)
from neuron_dra_driver.prepare import (
    Checkpoint,
    ClaimRef,
    PrepareError,
    cdi_spec_path,
    parse_block,
)
from neuron_dra_driver.publisher import (
    ConflictError,
    KubeSliceApi,
    Publisher,
    PublishError,
    delete_pool,
)
from neuron_localcluster import LocalCluster
from neuron_localcluster.kube import ApiException, body, raw_json
from neuron_localcluster.nodes import NodeSpec, node_manifest

pytestmark = pytest.mark.cluster

SHAPE = NodeShape("inf1.6xlarge", 4, 4)
TOLERATE_NEURON = [{"key": "aws.amazon.com/neuron", "operator": "Exists", "effect": "NoSchedule"}]


def _publish(cluster: LocalCluster, node: str, *extra: str) -> None:
    argv = ["--node-name", node, "--backend", "simulated", "--instance-type", SHAPE.instance_type]
    argv += ["--kubeconfig", str(cluster.kubeconfig), "--once", "--log-level", "WARNING", *extra]
    assert main(argv) == 0


@pytest.fixture(scope="module")
def dra(local_cluster: LocalCluster) -> Iterator[LocalCluster]:
    """DeviceClasses and both kwok nodes' pools, removed afterwards."""
    resource = k8s.ResourceV1Api(local_cluster.api_client())
    for item in device_classes():
        try:
            resource.create_device_class(body(item))
        except ApiException as err:
            if err.status != 409:
                raise
    for node in local_cluster.kwok_nodes:
        _publish(local_cluster, node)
    yield local_cluster
    for node in local_cluster.kwok_nodes:
        assert (
            main(["--node-name", node, "--kubeconfig", str(local_cluster.kubeconfig), "--cleanup"])
            == 0
        )
    for item in device_classes():
        resource.delete_device_class(item["metadata"]["name"])


@pytest.fixture
def namespace(dra: LocalCluster) -> Iterator[str]:
    name = f"dra-{uuid.uuid4().hex[:8]}"
    core = k8s.CoreV1Api(dra.api_client())
    core.create_namespace(body({"metadata": {"name": name}}))
    dra.wait_for(
        lambda: core.read_namespaced_service_account("default", name), 60, f"the SA in {name}"
    )
    yield name
    core.delete_namespace(name)


def _claim_pod(cluster: LocalCluster, ns: str, name: str, cores: int, node: str) -> None:
    resource = k8s.ResourceV1Api(cluster.api_client())
    resource.create_namespaced_resource_claim(ns, body(block_claim(name, cores)))
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "nodeSelector": {"kubernetes.io/hostname": node},
            "tolerations": TOLERATE_NEURON,
            "resourceClaims": [{"name": "cores", "resourceClaimName": name}],
            "containers": [
                {"name": "c", "image": "busybox", "resources": {"claims": [{"name": "cores"}]}}
            ],
        },
    }
    k8s.CoreV1Api(cluster.api_client()).create_namespaced_pod(ns, body(pod))


def _allocated(cluster: LocalCluster, ns: str, name: str) -> tuple[str, str] | None:
    resource = k8s.ResourceV1Api(cluster.api_client())
    claim = raw_json(resource.read_namespaced_resource_claim(name, ns, _preload_content=False))
    allocation = claim.get("status", {}).get("allocation")
    if not allocation:
        return None
    (result,) = allocation["devices"]["results"]
    assert result["driver"] == DRIVER_NAME
    return result["pool"], result["device"]


def _wait_allocated(cluster: LocalCluster, ns: str, name: str) -> tuple[str, str]:
    return cluster.wait_for(lambda: _allocated(cluster, ns, name), 60, f"claim {name} allocated")


def _pod_scheduled(cluster: LocalCluster, ns: str, name: str) -> dict[str, Any] | None:
    pod = raw_json(
        k8s.CoreV1Api(cluster.api_client()).read_namespaced_pod(name, ns, _preload_content=False)
    )
    for condition in pod.get("status", {}).get("conditions", []):
        if condition["type"] == "PodScheduled":
            return dict(condition)
    return None


def _unschedulable(cluster: LocalCluster, ns: str, name: str) -> dict[str, Any] | None:
    condition = _pod_scheduled(cluster, ns, name)
    return condition if condition and condition.get("reason") == "Unschedulable" else None


def test_blocks_of_6_4_2_2_1_1_are_contiguous_disjoint_and_in_published_order(
    dra: LocalCluster, namespace: str
) -> None:
    node = dra.kwok_nodes[0]
    order = placement_order(SHAPE)
    free = set(range(SHAPE.cores))
    got = []
    for index, cores in enumerate([6, 4, 2, 2, 1, 1]):
        name = f"c{index}-{cores}"
        _claim_pod(dra, namespace, name, cores, node)
        pool, device = _wait_allocated(dra, namespace, name)
        expected = first_fit(order, free, cores)
        assert expected is not None
        assert (pool, device) == (node, expected.name)
        free -= set(expected.cores)
        got.append(device)
    # Large and whole-device blocks from core 0 up, small ones from core 15 down: no gap left.
    assert got == ["cores-0-5", "cores-8-11", "cores-14-15", "cores-12-13", "core-7", "core-6"]
    assert free == set()


def test_a_block_size_no_node_has_stays_pending_with_the_schedulers_reason(
    dra: LocalCluster, namespace: str
) -> None:
    _claim_pod(dra, namespace, "too-big", SHAPE.cores + 1, dra.kwok_nodes[0])
    condition = dra.wait_for(
        lambda: _unschedulable(dra, namespace, "too-big"), 60, "a 17-core claim to be refused"
    )
    assert condition["status"] == "False"
    assert "cannot allocate all claims" in condition["message"], condition["message"]
    assert _allocated(dra, namespace, "too-big") is None


def test_a_tainted_cores_blocks_are_not_allocated_and_recovery_frees_them(
    dra: LocalCluster, namespace: str, tmp_path: Path
) -> None:
    node = dra.kwok_nodes[1]
    health = tmp_path / "unhealthy"
    health.write_text("15\n")
    _publish(dra, node, "--health-file", str(health))
    # 1-core blocks are tried from core 15 down: the taint moves the claim to core 14.
    _claim_pod(dra, namespace, "one", 1, node)
    assert _wait_allocated(dra, namespace, "one") == (node, Block(14, 1).name)
    _claim_pod(dra, namespace, "fourteen", 14, node)
    assert _wait_allocated(dra, namespace, "fourteen") == (node, Block(0, 14).name)
    # Only the tainted core 15 is left: a 1-core claim waits, with the scheduler's reason.
    _claim_pod(dra, namespace, "last", 1, node)
    dra.wait_for(
        lambda: _unschedulable(dra, namespace, "last"), 60, "the last claim to be unschedulable"
    )
    assert _allocated(dra, namespace, "last") is None
    # Recovery republishes without the taint (next generation); the waiting pod gets core 15.
    health.write_text("")
    _publish(dra, node, "--health-file", str(health))
    assert _wait_allocated(dra, namespace, "last") == (node, Block(15, 1).name)


@pytest.fixture
def dra_only_node(dra: LocalCluster) -> Iterator[str]:
    """A kwok inf1.6xlarge node with no device-plugin capacity: only DRA serves its cores."""
    spec = NodeSpec(f"kwok-dra-only-{uuid.uuid4().hex[:6]}", SHAPE.instance_type)
    core = k8s.CoreV1Api(dra.api_client())
    core.create_node(body(node_manifest(spec, capacity={}, allocatable={})))
    try:
        dra.wait_for(lambda: _ready(core, spec.name), 60, f"node {spec.name} Ready")
        _publish(dra, spec.name)
        yield spec.name
    finally:
        main(["--node-name", spec.name, "--kubeconfig", str(dra.kubeconfig), "--cleanup"])
        core.delete_node(spec.name)


def _ready(core: k8s.CoreV1Api, name: str) -> bool:
    node = raw_json(core.read_node(name, _preload_content=False))
    conditions = node.get("status", {}).get("conditions", [])
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


def test_the_extended_resource_class_serves_neuroncore_requests_with_1_core_blocks(
    dra: LocalCluster, namespace: str, dra_only_node: str
) -> None:
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "plain-request"},
        "spec": {
            "nodeSelector": {"kubernetes.io/hostname": dra_only_node},
            "tolerations": TOLERATE_NEURON,
            "containers": [
                {
                    "name": "c",
                    "image": "busybox",
                    "resources": {"limits": {CORE_RESOURCE: "2"}},
                }
            ],
        },
    }
    core = k8s.CoreV1Api(dra.api_client())
    core.create_namespaced_pod(namespace, body(pod))

    def claim_status() -> dict[str, Any] | None:
        got = raw_json(core.read_namespaced_pod("plain-request", namespace, _preload_content=False))
        status = got.get("status", {}).get("extendedResourceClaimStatus")
        return dict(status) if status else None

    status = dra.wait_for(claim_status, 60, "the scheduler to make a claim for the pod")
    claim = status["resourceClaimName"]
    pool, device = _wait_allocated_any(dra, namespace, claim)
    assert pool == {dra_only_node}
    assert device == {"core-15", "core-14"}  # 1-core blocks from the last core down


def _wait_allocated_any(cluster: LocalCluster, ns: str, name: str) -> tuple[set[str], set[str]]:
    resource = k8s.ResourceV1Api(cluster.api_client())

    def results() -> list[dict[str, Any]] | None:
        claim = raw_json(resource.read_namespaced_resource_claim(name, ns, _preload_content=False))
        allocation = claim.get("status", {}).get("allocation")
        return list(allocation["devices"]["results"]) if allocation else None

    found = cluster.wait_for(results, 60, f"claim {name} allocated")
    return {r["pool"] for r in found}, {r["device"] for r in found}


def test_the_kubelet_side_prepares_a_claim_the_scheduler_allocated(
    dra: LocalCluster, namespace: str, tmp_path: Path
) -> None:
    node = dra.kwok_nodes[0]
    _claim_pod(dra, namespace, "prep", 4, node)
    _, device = _wait_allocated(dra, namespace, "prep")
    block = parse_block(device, SHAPE)
    assert block is not None
    resource = k8s.ResourceV1Api(dra.api_client())
    uid = raw_json(
        resource.read_namespaced_resource_claim("prep", namespace, _preload_content=False)
    )["metadata"]["uid"]
    plugin = DRAKubeletPlugin(
        node=node,
        shape=SHAPE,
        topology=contiguous_topology(SHAPE.devices, SHAPE.cores_per_device),
        reader=KubeClaimReader(dra.api_client()),
        cdi_dir=tmp_path / "cdi",
        checkpoint=Checkpoint(tmp_path / "checkpoint.json"),
    )
    prepared = plugin.prepare(ClaimRef(namespace, "prep", uid))
    (cdi,) = prepared.cdi_spec["devices"]
    assert cdi["containerEdits"]["env"] == [f"NEURON_RT_VISIBLE_CORES={block.first}-{block.last}"]
    assert cdi_spec_path(tmp_path / "cdi", uid).exists()
    with pytest.raises(PrepareError, match="has uid"):
        plugin.prepare(ClaimRef(namespace, "prep", "not-" + uid))
    with pytest.raises(PrepareError, match="does not exist on the API server"):
        plugin.prepare(ClaimRef(namespace, "nothing", "u-0"))


def test_the_running_driver_follows_the_health_file_and_stops_on_sigterm(
    dra: LocalCluster, tmp_path: Path
) -> None:
    node = dra.kwok_nodes[1]
    health = tmp_path / "unhealthy"
    resource = k8s.ResourceV1Api(dra.api_client())

    def pool() -> list[dict[str, Any]]:
        listed = resource.list_resource_slice(
            field_selector=f"spec.driver={DRIVER_NAME},spec.nodeName={node}",
            _preload_content=False,
        )
        return list(raw_json(listed)["items"])

    def tainted() -> set[str]:
        return {d["name"] for s in pool() for d in s["spec"].get("devices", []) if d.get("taints")}

    before = max(s["spec"]["pool"]["generation"] for s in pool())
    argv = ["--node-name", node, "--backend", "simulated", "--instance-type", SHAPE.instance_type]
    argv += ["--health-file", str(health), "--poll-seconds", "0.2"]
    argv += ["--kubeconfig", str(dra.kubeconfig), "--log-format", "json"]
    process = subprocess.Popen(
        [sys.executable, "-m", "neuron_dra_driver.cli", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        dra.wait_for(
            lambda: min(s["spec"]["pool"]["generation"] for s in pool()) > before,
            60,
            "the driver to publish the next generation at start",
        )
        health.write_text("0\n")
        got = dra.wait_for(lambda: tainted() or None, 60, "blocks covering core 0 tainted")
        assert got == {"core-0"} | {f"cores-0-{last}" for last in range(1, 16)}
        health.write_text("")
        dra.wait_for(lambda: not tainted(), 60, "the taints to go on recovery")
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, stderr
    assert "the slices stay published" in stderr
    assert len(pool()) == 4 and {s["spec"]["pool"]["resourceSliceCount"] for s in pool()} == {4}


SHAPES_BY_CORES = {
    t.cores: NodeShape(name, t.devices, t.cores_per_device)
    for name, t in sorted(INSTANCE_TYPES.items(), reverse=True)
}


@pytest.mark.parametrize(
    "cores", sorted(SHAPES_BY_CORES), ids=[f"{c}-cores" for c in sorted(SHAPES_BY_CORES)]
)
def test_the_api_server_accepts_every_instance_types_pool_with_taints(
    dra: LocalCluster, cores: int
) -> None:
    shape = SHAPES_BY_CORES[cores]
    pool = f"dra-limits-{cores}"  # a pool for no real node: only the API server's validation
    api = KubeSliceApi(dra.api_client())
    publisher = Publisher(api, pool, shape)
    try:
        assert publisher.publish({0, cores - 1})  # taints on the first and last blocks too
        listed = api.list_slices(pool)
        assert len(listed) == len(pool_slices(pool, shape, generation=0))
        assert {s.generation for s in listed} == {0}
    finally:
        assert publisher.cleanup() > 0


@pytest.mark.parametrize(
    ("how", "message"),
    [
        ("65-devices", r"spec.devices: Too many: 65: must have at most 64 items"),
        ("3-counter-sets", r"consumesCounters: Too many: 3: must have at most 2 items"),
    ],
    ids=["65-devices-in-a-slice", "a-device-consuming-from-3-sets"],
)
def test_the_api_server_refuses_what_check_slices_refuses(
    dra: LocalCluster, how: str, message: str
) -> None:
    """The limits ``check_slices`` applies are the API server's: one over each is refused."""
    pool = f"dra-over-{how}"
    slices = pool_slices(pool, SHAPES_BY_CORES[64], generation=0)
    target = slices[0]
    if how == "65-devices":
        target["spec"]["devices"].append(slices[1]["spec"]["devices"][0])
    else:
        counters = slices[-1]["spec"]["sharedCounters"]
        counters.append({"name": "extra", "counters": {"core-x": {"value": "1"}}})
        device = target["spec"]["devices"][0]
        device["consumesCounters"] += [
            {"counterSet": s["name"], "counters": {next(iter(s["counters"])): {"value": "1"}}}
            for s in counters[1:]
        ]
    with pytest.raises(LayoutError):
        check_slices(slices)
    api = KubeSliceApi(dra.api_client())
    try:
        with pytest.raises(PublishError, match=message):
            api.create_slice(target)
    finally:
        delete_pool(api, pool)


def test_the_api_adapter_maps_a_stale_write_to_a_conflict_and_a_missing_delete_to_done(
    dra: LocalCluster,
) -> None:
    pool = "dra-adapter"
    api = KubeSliceApi(dra.api_client())
    publisher = Publisher(api, pool, SHAPE)
    try:
        publisher.publish(set())
        (first, *_) = api.list_slices(pool)
        body = pool_slices(pool, SHAPE, generation=1)[0]
        body["metadata"]["resourceVersion"] = str(int(first.resource_version) - 1)
        with pytest.raises(ConflictError, match=f"replace ResourceSlice {first.name}"):
            api.replace_slice(first.name, body)
        api.delete_slice("dra-adapter-no-such-slice")  # already gone: not an error
        # The refused write changed nothing: the next publication is generation 1.
        assert publisher.publish({2})
        assert {s.generation for s in api.list_slices(pool)} == {1}
    finally:
        publisher.cleanup()
