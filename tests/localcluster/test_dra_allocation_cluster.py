"""``--allocation dra`` end to end on the real control plane: nodes offer NeuronCores through the
DRA driver only; kube-scheduler allocates blocks on kwok and emulated nodes; the emulated node
registers the driver, prepares claims before starting containers, hands the CDI env to the
processes (which serve inference) and unprepares the claims when the pods go.

Its own cluster (one kwok and one emulated inf1.6xlarge), because the session's cluster runs the
device-plugin path.  The operator does not create claims yet (issue 11), so the seed's pod shapes
are created here directly: one pod per block claim of 6, 4, 2 cores from ResourceClaimTemplates,
serving a model, plus a pod asking ``aws.amazon.com/neuroncore: 2`` served through the extended
resource DeviceClass.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client as k8s

from neuron_cores import parse_core_list
from neuron_dra_driver.classes import block_claim
from neuron_dra_driver.layout import DRIVER_NAME
from neuron_localcluster import LocalCluster
from neuron_localcluster.kube import body, raw_json
from neuron_localcluster.node_files import ALLOCATIONS_FILE, dra_dir_for

from .conftest import fresh_namespace

pytestmark = pytest.mark.cluster

TOLERATE_NEURON = [{"key": "aws.amazon.com/neuron", "operator": "Exists", "effect": "NoSchedule"}]
BLOCKS = (6, 4, 2)


@pytest.fixture(scope="module")
def dra_cluster() -> Iterator[LocalCluster]:
    state = Path(tempfile.mkdtemp(prefix="ngd-"))
    cluster = LocalCluster.up(
        state, kwok_nodes="inf1.6xlarge", emulated_nodes="inf1.6xlarge", allocation="dra"
    )
    try:
        yield cluster
    finally:
        cluster.down()
        shutil.rmtree(state, ignore_errors=True)


@pytest.fixture
def namespace(dra_cluster: LocalCluster) -> Iterator[str]:
    yield from fresh_namespace(dra_cluster)


@pytest.fixture(scope="module")
def mlp_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("models") / "mlp"
    subprocess.run(
        [
            str(Path(sys.executable).parent / "neuron-runtime"),
            *("compile", "--arch", "mlp", "--cores", "1", "--out", str(out)),
        ],
        check=True,
        capture_output=True,
    )
    return out


def _get(cluster: LocalCluster, *args: str) -> Any:
    return json.loads(cluster.kubectl("get", *args, "-o", "json").stdout)


def _environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode().split("=", 1) for item in raw if b"=" in item)


def _serving_container(model: Path, resources: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": "runtime",
        "image": "neuron-groups/runtime:dev",
        "command": ["neuron-runtime", "serve"],
        "env": [
            {"name": "NEURON_MODELS", "value": f"mlp={model}"},
            {"name": "NEURON_GRPC_PORT", "value": "0"},
        ],
        "ports": [{"name": "http", "containerPort": 8000}],
        "readinessProbe": {"httpGet": {"path": "/v2/health/ready", "port": "http"}},
        "resources": resources,
    }


def _pod(name: str, node_kind: str, container: dict[str, Any], **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "nodeSelector": {"neuron-groups.io/simulation": node_kind},
            "tolerations": TOLERATE_NEURON,
            "containers": [container],
            **spec,
        },
    }


def _template(cores: int) -> dict[str, Any]:
    claim = block_claim(f"block-{cores}", cores)
    return {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceClaimTemplate",
        "metadata": {"name": f"block-{cores}"},
        "spec": {"spec": claim["spec"]},
    }


def _block_pod(name: str, node_kind: str, cores: int, container: dict[str, Any]) -> dict[str, Any]:
    container = {**container, "resources": {"claims": [{"name": "cores"}]}}
    claims = [{"name": "cores", "resourceClaimTemplateName": f"block-{cores}"}]
    return _pod(name, node_kind, container, resourceClaims=claims)


def _infer(address: str) -> list[float]:
    request = {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32"}]}
    request["inputs"][0]["data"] = [0.5] * 64
    req = urllib.request.Request(
        f"http://{address}:8000/v2/models/mlp/infer",
        data=json.dumps(request).encode(),
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        answer = json.loads(resp.read())
    return [float(x) for x in answer["outputs"][0]["data"]]


def test_nodes_offer_cores_through_dra_only(dra_cluster: LocalCluster) -> None:
    nodes = _get(dra_cluster, "nodes")["items"]
    assert {n["metadata"]["name"] for n in nodes} == {
        *dra_cluster.kwok_nodes,
        *dra_cluster.emulated_nodes,
    }
    for node in nodes:
        assert "aws.amazon.com/neuroncore" not in node["status"]["capacity"]
        assert "aws.amazon.com/neuron" not in node["status"]["capacity"]
    listed = k8s.ResourceV1Api(dra_cluster.api_client()).list_resource_slice(_preload_content=False)
    devices: dict[str, int] = {}
    for item in raw_json(listed)["items"]:
        spec = item["spec"]
        assert spec["driver"] == DRIVER_NAME
        devices[spec["pool"]["name"]] = devices.get(spec["pool"]["name"], 0) + len(
            spec.get("devices") or []
        )
    # 16 cores: every contiguous block, 16 * 17 / 2 devices, on every node
    assert devices == {n["metadata"]["name"]: 136 for n in nodes}
    classes = _get(dra_cluster, "deviceclasses")["items"]
    assert {c["metadata"]["name"] for c in classes} == {DRIVER_NAME, "neuroncore.neurongroups.dev"}


def test_block_claims_run_serve_and_are_unprepared_on_the_emulated_node(
    dra_cluster: LocalCluster, namespace: str, mlp_model: Path
) -> None:
    core = k8s.CoreV1Api(dra_cluster.api_client())
    resource = k8s.ResourceV1Api(dra_cluster.api_client())
    for cores in BLOCKS:
        resource.create_namespaced_resource_claim_template(namespace, body(_template(cores)))
    container = _serving_container(mlp_model, {})
    for cores in BLOCKS:
        pod = _block_pod(f"serve-{cores}", "emulated", cores, container)
        core.create_namespaced_pod(namespace, body(pod))

    def all_ready() -> list[dict[str, Any]] | None:
        pods = _get(dra_cluster, "pods", "-n", namespace)["items"]
        ready = [
            p
            for p in pods
            if any(
                c["type"] == "Ready" and c["status"] == "True"
                for c in (p.get("status") or {}).get("conditions") or []
            )
        ]
        return pods if len(ready) == len(BLOCKS) else None

    pods = dra_cluster.wait_for(all_ready, 240, "the three block pods to be Ready")
    node_dir = dra_cluster.layout.node_dir(dra_cluster.emulated_node)
    held: set[int] = set()
    pids = []
    claim_uids = []
    for pod in pods:
        cores = int(pod["metadata"]["name"].removeprefix("serve-"))
        assert pod["spec"]["nodeName"] == dra_cluster.emulated_node
        claim_name = pod["status"]["resourceClaimStatuses"][0]["resourceClaimName"]
        claim = _get(dra_cluster, "resourceclaim", claim_name, "-n", namespace)
        claim_uids.append(claim["metadata"]["uid"])
        (result,) = claim["status"]["allocation"]["devices"]["results"]
        pid = int(pod["status"]["containerStatuses"][0]["containerID"].removeprefix("local://"))
        pids.append(pid)
        visible = _environ(pid)["NEURON_RT_VISIBLE_CORES"]
        got = parse_core_list(visible)
        # one contiguous run of the claimed size, exactly the allocated block, no overlap
        assert len(got) == cores
        assert list(got) == list(range(got[0], got[0] + cores))
        expected_name = f"cores-{got[0]}-{got[-1]}"
        assert result["device"] == expected_name
        assert result["pool"] == dra_cluster.emulated_node
        assert not held & set(got)
        held |= set(got)
        spec = node_dir / "cdi" / f"neurongroups.dev-neuroncores_{claim['metadata']['uid']}.json"
        assert spec.exists()
        output = _infer(pod["status"]["podIP"])
        assert len(output) == 10
    allocations = json.loads((node_dir / ALLOCATIONS_FILE).read_text())
    recorded = {e["name"]: e for e in allocations.values()}
    assert recorded["serve-6"]["cdi"]["runtime"]["deviceNodes"]  # recorded, not applied

    for cores in BLOCKS:
        core.delete_namespaced_pod(f"serve-{cores}", namespace)

    def unprepared() -> bool:
        left = list((node_dir / "cdi").glob("*.json"))
        gone = all(not Path(f"/proc/{pid}").exists() for pid in pids)
        return gone and not any(uid in p.name for p in left for uid in claim_uids)

    dra_cluster.wait_for(unprepared, 90, "the pods' processes to stop and claims to be unprepared")
    checkpoint = dra_dir_for(node_dir) / "plugins" / DRIVER_NAME / "checkpoint.json"
    text = checkpoint.read_text()
    assert not [uid for uid in claim_uids if uid in text]


def test_extended_resource_pod_runs_with_dra_cores(
    dra_cluster: LocalCluster, namespace: str, mlp_model: Path
) -> None:
    core = k8s.CoreV1Api(dra_cluster.api_client())
    limits = {"limits": {"aws.amazon.com/neuroncore": "2"}}
    core.create_namespaced_pod(
        namespace, body(_pod("ext", "emulated", _serving_container(mlp_model, limits)))
    )

    def running() -> dict[str, Any] | None:
        pod = _get(dra_cluster, "pod", "ext", "-n", namespace)
        statuses = (pod.get("status") or {}).get("containerStatuses") or []
        return pod if statuses and statuses[0].get("containerID") else None

    pod = dra_cluster.wait_for(running, 180, "the extended-resource pod to run")
    assert pod["status"]["extendedResourceClaimStatus"]["resourceClaimName"]
    pid = int(pod["status"]["containerStatuses"][0]["containerID"].removeprefix("local://"))
    assert len(parse_core_list(_environ(pid)["NEURON_RT_VISIBLE_CORES"])) == 2
    core.delete_namespaced_pod("ext", namespace)


def test_kube_scheduler_allocates_blocks_on_kwok_nodes(
    dra_cluster: LocalCluster, namespace: str
) -> None:
    core = k8s.CoreV1Api(dra_cluster.api_client())
    resource = k8s.ResourceV1Api(dra_cluster.api_client())
    resource.create_namespaced_resource_claim_template(namespace, body(_template(8)))
    container = {"name": "c", "image": "x", "command": ["sleep", "600"]}
    for index in range(2):
        core.create_namespaced_pod(
            namespace, body(_block_pod(f"kwok-{index}", "kwok", 8, container))
        )

    def allocated() -> list[str] | None:
        claims = _get(dra_cluster, "resourceclaims", "-n", namespace)["items"]
        devices = [
            r["device"]
            for c in claims
            for r in ((c.get("status") or {}).get("allocation") or {})
            .get("devices", {})
            .get("results", [])
        ]
        return devices if len(devices) == 2 else None

    devices = dra_cluster.wait_for(allocated, 120, "two 8-core blocks allocated on the kwok node")
    assert sorted(devices) == ["cores-0-7", "cores-8-15"]
    for index in range(2):
        pod = _get(dra_cluster, "pod", f"kwok-{index}", "-n", namespace)
        assert pod["spec"]["nodeName"] == dra_cluster.kwok_nodes[0]
