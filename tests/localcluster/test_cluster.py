"""The local control plane, end to end: nodes, scheduling, controllers, admission, inference."""

from __future__ import annotations

import ipaddress
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.http as triton_http
from kubernetes import client as k8s

from neuron_localcluster import LocalCluster
from neuron_localcluster.kube import ApiException, body

pytestmark = pytest.mark.cluster

TOLERATE_NEURON = [{"key": "aws.amazon.com/neuron", "operator": "Exists", "effect": "NoSchedule"}]


def _json(cluster: LocalCluster, *args: str) -> Any:
    """``kubectl get ... -o json``: the object as on the wire (camelCase), untyped on purpose."""
    return json.loads(cluster.kubectl("get", *args, "-o", "json").stdout)


def _core(cluster: LocalCluster) -> k8s.CoreV1Api:
    return k8s.CoreV1Api(cluster.api_client())


def _pod(name: str, *, node_kind: str, container: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {
            "nodeSelector": {"neuron-groups.io/simulation": node_kind},
            "tolerations": TOLERATE_NEURON,
            "containers": [container],
        },
    }


def test_nodes_are_ready_with_neuron_capacity(local_cluster: LocalCluster) -> None:
    nodes = {n["metadata"]["name"]: n for n in _json(local_cluster, "nodes")["items"]}
    assert set(nodes) == {*local_cluster.kwok_nodes, local_cluster.emulated_node}
    assert len(local_cluster.kwok_nodes) == 2
    for name, node in nodes.items():
        assert node["metadata"]["labels"]["node.kubernetes.io/instance-type"] == "inf1.6xlarge"
        assert [(t["key"], t["effect"]) for t in node["spec"]["taints"]] == [
            ("aws.amazon.com/neuron", "NoSchedule")
        ]
        for part in (node["status"]["capacity"], node["status"]["allocatable"]):
            assert part["aws.amazon.com/neuroncore"] == "16", name
            assert part["aws.amazon.com/neuron"] == "4", name
        ready = [c["status"] for c in node["status"]["conditions"] if c["type"] == "Ready"]
        assert ready == ["True"], name


def test_plain_pod_is_scheduled_onto_a_kwok_node(
    local_cluster: LocalCluster, namespace: str
) -> None:
    core = _core(local_cluster)
    pod = _pod("plain", node_kind="kwok", container={"name": "c", "image": "busybox"})
    core.create_namespaced_pod(namespace, body(pod))

    def running() -> Any:
        got = _json(local_cluster, "pod", "plain", "-n", namespace)
        return got if got["status"].get("phase") == "Running" else None

    got = local_cluster.wait_for(running, 60, "the plain pod to run on a kwok node")
    assert got["spec"]["nodeName"] in local_cluster.kwok_nodes


def test_untolerated_pod_stays_pending(local_cluster: LocalCluster, namespace: str) -> None:
    core = _core(local_cluster)
    pod = _pod("untolerated", node_kind="kwok", container={"name": "c", "image": "busybox"})
    del pod["spec"]["tolerations"]
    core.create_namespaced_pod(namespace, body(pod))

    def unschedulable() -> bool:
        conds = _json(local_cluster, "pod", "untolerated", "-n", namespace)["status"]
        return any(
            c["type"] == "PodScheduled" and c.get("reason") == "Unschedulable"
            for c in conds.get("conditions") or []
        )

    local_cluster.wait_for(unschedulable, 60, "the scheduler to refuse the untolerated pod")
    assert "nodeName" not in _json(local_cluster, "pod", "untolerated", "-n", namespace)["spec"]


def test_garbage_collector_deletes_the_owned_child(
    local_cluster: LocalCluster, namespace: str
) -> None:
    core = _core(local_cluster)
    core.create_namespaced_config_map(namespace, body({"metadata": {"name": "owner"}}))
    owner_uid = _json(local_cluster, "configmap", "owner", "-n", namespace)["metadata"]["uid"]
    child = {
        "metadata": {
            "name": "child",
            "ownerReferences": [
                {
                    "apiVersion": "v1",
                    "kind": "ConfigMap",
                    "name": "owner",
                    "uid": owner_uid,
                }
            ],
        }
    }
    core.create_namespaced_config_map(namespace, body(child))
    core.delete_namespaced_config_map("owner", namespace)

    def child_gone() -> bool:
        try:
            core.read_namespaced_config_map("child", namespace)
        except ApiException as exc:
            return bool(exc.status == 404)
        return False

    local_cluster.wait_for(child_gone, 60, "the garbage collector to delete the child")


def test_deployment_controllers_bring_replicas_up(
    local_cluster: LocalCluster, namespace: str
) -> None:
    apps = k8s.AppsV1Api(local_cluster.api_client())
    template = _pod("web", node_kind="kwok", container={"name": "c", "image": "busybox"})
    deployment = {
        "metadata": {"name": "web"},
        "spec": {
            "replicas": 3,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": template["metadata"], "spec": template["spec"]},
        },
    }
    apps.create_namespaced_deployment(namespace, body(deployment))

    def ready() -> bool:
        got = _json(local_cluster, "deployment", "web", "-n", namespace)
        return bool(got["status"].get("readyReplicas") == 3)

    local_cluster.wait_for(ready, 90, "the Deployment's 3 replicas to be ready")
    assert len(apps.list_namespaced_replica_set(namespace).items) == 1


def test_pod_security_admission_rejects_privileged_pods(
    local_cluster: LocalCluster, namespace: str
) -> None:
    local_cluster.kubectl(
        "label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted"
    )
    pod = _pod(
        "privileged",
        node_kind="kwok",
        container={"name": "c", "image": "busybox", "securityContext": {"privileged": True}},
    )
    proc = local_cluster.kubectl(
        "-n", namespace, "apply", "-f", "-", input=json.dumps(pod), check=False
    )
    assert proc.returncode != 0
    assert "violates PodSecurity" in proc.stderr


def test_service_account_kubeconfig_is_bound_by_rbac(
    local_cluster: LocalCluster, namespace: str
) -> None:
    local_cluster.kubectl("-n", namespace, "create", "serviceaccount", "reader")
    kubeconfig = local_cluster.impersonating_kubeconfig(namespace, "reader")
    as_reader = ["--kubeconfig", str(kubeconfig), "-n", namespace]
    denied = local_cluster.kubectl(*as_reader, "get", "configmaps", check=False)
    assert denied.returncode != 0
    assert "forbidden" in denied.stderr
    local_cluster.kubectl(
        "-n", namespace, "create", "role", "read-cm", "--verb=get,list", "--resource=configmaps"
    )
    local_cluster.kubectl(
        "-n",
        namespace,
        "create",
        "rolebinding",
        "read-cm",
        "--role=read-cm",
        f"--serviceaccount={namespace}:reader",
    )
    allowed = local_cluster.kubectl(*as_reader, "get", "configmaps", check=False)
    assert allowed.returncode == 0, allowed.stderr


@pytest.fixture(scope="module")
def mlp_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("models") / "mlp"
    subprocess.run(
        [
            str(Path(sys.executable).parent / "neuron-runtime"),
            "compile",
            "--arch",
            "mlp",
            "--cores",
            "1",
            "--out",
            str(out),
        ],
        check=True,
        capture_output=True,
    )
    return out


def _environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode().split("=", 1) for item in raw if b"=" in item)


def test_emulated_node_serves_inference_behind_its_service(
    local_cluster: LocalCluster, namespace: str, mlp_model: Path
) -> None:
    core = _core(local_cluster)
    container = {
        "name": "runtime",
        "image": "neuron-groups/runtime:dev",
        "command": ["neuron-runtime", "serve"],
        "env": [
            {"name": "NEURONCORE_GROUP_SIZES", "value": "1"},
            {"name": "NEURON_MODELS", "value": f"mlp={mlp_model}"},
            {"name": "NEURON_GRPC_PORT", "value": "0"},
        ],
        "ports": [{"name": "http", "containerPort": 8000}],
        "readinessProbe": {"httpGet": {"path": "/v2/health/ready", "port": "http"}},
        "resources": {"limits": {"aws.amazon.com/neuroncore": "1"}},
    }
    core.create_namespaced_pod(
        namespace, body(_pod("infer", node_kind="emulated", container=container))
    )
    service = {
        "metadata": {"name": "infer"},
        "spec": {"selector": {"app": "infer"}, "ports": [{"name": "http", "port": 8000}]},
    }
    core.create_namespaced_service(namespace, body(service))

    def ready_endpoint() -> tuple[str, int] | None:
        slices = _json(
            local_cluster,
            "endpointslices",
            "-n",
            namespace,
            "-l",
            "kubernetes.io/service-name=infer",
        )["items"]
        for eps in slices:
            for ep in eps.get("endpoints") or []:
                if (ep.get("conditions") or {}).get("ready"):
                    return str(ep["addresses"][0]), int(eps["ports"][0]["port"])
        return None

    address, port = local_cluster.wait_for(
        ready_endpoint, 120, "a ready endpoint in the Service's EndpointSlices"
    )
    pod = _json(local_cluster, "pod", "infer", "-n", namespace)
    assert pod["spec"]["nodeName"] == local_cluster.emulated_node
    assert address == pod["status"]["podIP"]
    assert not ipaddress.ip_address(address).is_loopback

    client = triton_http.InferenceServerClient(url=f"{address}:{port}")
    try:
        batch = np.ones((2, 64), dtype=np.float32)
        tensor = triton_http.InferInput("input", list(batch.shape), "FP32")
        tensor.set_data_from_numpy(batch)
        result = client.infer("mlp", [tensor]).as_numpy("output")
    finally:
        client.close()
    assert result is not None
    assert result.shape == (2, 10)
    assert np.isfinite(result).all()

    container_id = str(pod["status"]["containerStatuses"][0]["containerID"])
    pid = int(container_id.removeprefix("local://"))
    env = _environ(pid)
    visible = env.get("NEURON_RT_VISIBLE_CORES")
    assert visible is not None and visible.isdigit()
    assert 0 <= int(visible) < 16

    core.delete_namespaced_pod("infer", namespace)

    def process_gone() -> bool:
        return not Path(f"/proc/{pid}").exists()

    local_cluster.wait_for(process_gone, 60, "the pod's process to stop after deletion")


@pytest.mark.parametrize(
    ("host_network", "script", "phase"),
    [
        (True, "import os; assert os.environ['NEURON_SERVE_HOST'] == '127.0.0.1'", "Succeeded"),
        (
            False,
            "import os; assert os.environ['NEURON_SERVE_HOST'].startswith('198.18.')",
            "Succeeded",
        ),
        (False, "raise SystemExit(3)", "Failed"),
    ],
    ids=["host-network-uses-node-address", "pod-network-address", "exit-code-fails-pod"],
)
def test_run_to_completion_pods_report_their_outcome(
    local_cluster: LocalCluster, namespace: str, host_network: bool, script: str, phase: str
) -> None:
    pod = _pod(
        "once",
        node_kind="emulated",
        container={"name": "c", "image": "python", "command": ["python", "-c", script]},
    )
    pod["spec"]["restartPolicy"] = "Never"
    pod["spec"]["hostNetwork"] = host_network
    _core(local_cluster).create_namespaced_pod(namespace, body(pod))

    def finished() -> Any:
        got = _json(local_cluster, "pod", "once", "-n", namespace)
        return got if got["status"].get("phase") in ("Succeeded", "Failed") else None

    got = local_cluster.wait_for(finished, 60, "the run-to-completion pod to finish")
    assert got["status"]["phase"] == phase
    state = got["status"]["containerStatuses"][0]["state"]
    assert state["terminated"]["exitCode"] == (0 if phase == "Succeeded" else 3)
