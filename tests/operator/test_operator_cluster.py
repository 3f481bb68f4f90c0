"""The operator against the real API server, controller-manager and scheduler of the local cluster.

The operator runs out of cluster as ``neuron-operator run`` subprocesses, authenticated as the
chart's operator ServiceAccount (a TokenRequest token), so the chart's RBAC is exercised too.
Pods land on kwok nodes (kwok marks them Running and Ready); the test namespace enforces the
``restricted`` Pod Security Standard, so every pod the operator builds must pass it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from neuron_operator import conditions as c

from .conftest import Operators, apply, install_crd, kubectl_json, operators_as_chart_account

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
SAMPLES = REPO / "deploy/samples"
NS = "nwl-e2e"
OPERATOR_NS = "nwl-operator-e2e"
RELEASE = "nwl-e2e"
KWOK_ONLY = {"neuron-groups.io/simulation": "kwok"}
SELECTOR = "app.kubernetes.io/name=neuron-workload"
TIMEOUT = 90.0


@pytest.fixture(scope="module")
def operators(local_cluster: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Operators]:
    cluster = local_cluster
    install_crd(cluster)
    # A namespace left by an earlier run may still be terminating: wait until it is gone.
    cluster.kubectl("delete", "namespace", NS, "--ignore-not-found", "--wait=true", "--timeout=90s")
    restricted = {"pod-security.kubernetes.io/enforce": "restricted"}
    for name, labels in ((OPERATOR_NS, {}), (NS, restricted)):
        namespace: dict[str, Any] = {"apiVersion": "v1", "kind": "Namespace"}
        namespace["metadata"] = {"name": name, "labels": labels}
        assert apply(cluster, namespace).returncode == 0
    handle = operators_as_chart_account(
        cluster,
        RELEASE,
        OPERATOR_NS,
        log_dir=tmp_path_factory.mktemp("operator-logs"),
        namespaces=[NS],
    )
    handle.start("op-a")
    try:
        yield handle
    finally:
        for identity in list(handle.processes):
            handle.stop(identity)
        cluster.kubectl("delete", "namespace", NS, "--wait=false", check=False)


@pytest.fixture(autouse=True)
def clean_namespace(operators: Operators) -> Iterator[None]:
    """Every test starts with no NeuronWorkload left by another, even one that failed."""
    yield
    operators.cluster.kubectl("delete", "nwl", "--all", "-n", NS, "--wait=true", check=False)
    wait_for(
        operators,
        lambda: (
            not kubectl_json(operators.cluster, "get", "pods", "-n", NS, "-l", SELECTOR)["items"]
        ),
        "the test's pods to be garbage-collected",
    )


def wait_for(operators: Operators, predicate: Callable[[], Any], what: str) -> Any:
    try:
        return operators.cluster.wait_for(predicate, TIMEOUT, what)
    except Exception as error:
        story = _emulated_node_story(operators.cluster)
        raise AssertionError(f"{error}\noperator logs:\n{operators.logs()}\n{story}") from error


def _emulated_node_story(cluster: Any, lines: int = 30) -> str:
    """The test namespace's pods on the emulated node, their container logs and the node
    agent's log: what a timeout message needs when a pod there never became Ready."""

    def tail(path: Path) -> str:
        try:
            return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
        except OSError as exc:
            return f"({exc})"

    node = cluster.emulated_node
    found = kubectl_json(
        cluster, "get", "pods", "-n", NS, "--field-selector", f"spec.nodeName={node}"
    )
    out = [f"pods of {NS} on {node}:"]
    for pod in found["items"]:
        status = pod.get("status") or {}
        states = [
            (c.get("name"), c.get("restartCount"), c.get("state"), c.get("lastState"))
            for c in status.get("containerStatuses") or []
        ]
        out.append(f"  {pod['metadata']['name']} {status.get('phase')} {states}")
    workdir = cluster.layout.node_dir(node)
    for log in sorted((workdir / "pods").glob(f"{NS}_*/*.log")):
        out.append(f"--- {log.relative_to(workdir)}\n{tail(log)}")
    agent_log = cluster.layout.logs / f"node-agent-{node}.log"
    out.append(f"--- {agent_log.name}\n{tail(agent_log)}")
    return "\n".join(out)


def workload(file_name: str, name: str | None = None, **spec: Any) -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load((SAMPLES / file_name).read_text())
    document["metadata"]["namespace"] = NS
    if name is not None:
        document["metadata"]["name"] = name
    document["spec"]["nodeSelector"] = dict(KWOK_ONLY)
    document["spec"].update(spec)
    return document


def pods_of(cluster: Any, name: str) -> list[dict[str, Any]]:
    found = kubectl_json(
        cluster, "get", "pods", "-n", NS, "-l", f"app.kubernetes.io/instance={name}"
    )
    return [p for p in found["items"] if not p["metadata"].get("deletionTimestamp")]


def get_nwl(cluster: Any, name: str) -> dict[str, Any]:
    result: dict[str, Any] = kubectl_json(cluster, "get", "nwl", name, "-n", NS)
    return result


def condition_of(body: dict[str, Any], type_: str) -> dict[str, Any]:
    found = c.find((body.get("status") or {}).get("conditions"), type_)
    return dict(found) if found else {}


def env_of(pod: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in pod["spec"]["containers"][0]["env"]}


def delete_and_wait(operators: Operators, name: str) -> None:
    operators.cluster.kubectl("delete", "nwl", name, "-n", NS, "--wait=true")
    wait_for(operators, lambda: not pods_of(operators.cluster, name), f"pods of {name} to go (GC)")


def ready_workload(operators: Operators, name: str, pods: int) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        body = get_nwl(operators.cluster, name)
        current = (body.get("status") or {}).get("observedGeneration") == body["metadata"][
            "generation"
        ]
        ready = current and condition_of(body, c.READY).get("status") == c.TRUE
        current = pods_of(operators.cluster, name)
        return body if ready and len(current) == pods else None

    result: dict[str, Any] = wait_for(operators, check, f"{name} Ready with {pods} pods")
    return result


SAMPLE_CASES = [
    (
        "01-resnet50-shared.yaml",
        "resnet50-shared",
        [(",".join(["1"] * 16), ",".join(["resnet50"] * 16), 16)],
    ),
    ("02-resnet50-process.yaml", "resnet50-process", [("1", "resnet50", 1)] * 16),
    (
        "03-two-models-context-switch.yaml",
        "two-models-switch",
        [("1", "resnet50,resnet50-v2", 1)] * 16,
    ),
    (
        "04-four-models-shared.yaml",
        "four-models",
        [("2,4,6,4", "model-a,model-b,model-c,model-d", 16)],
    ),
]


@pytest.mark.parametrize(
    ("file_name", "name", "expected"), SAMPLE_CASES, ids=[s[0] for s in SAMPLE_CASES]
)
def test_sample_becomes_planned_pods_on_neuron_nodes(
    operators: Operators, file_name: str, name: str, expected: list[tuple[str, str, int]]
) -> None:
    cluster = operators.cluster
    result = apply(cluster, workload(file_name))
    assert result.returncode == 0, result.stderr
    body = ready_workload(operators, name, len(expected))
    pods = sorted(
        pods_of(cluster, name),
        key=lambda p: int(p["metadata"]["labels"]["neurongroups.dev/pod-index"]),
    )
    seen = []
    for pod in pods:
        env = env_of(pod)
        models = ",".join(pair.split("=")[0] for pair in env["NEURON_MODELS"].split(","))
        resources = pod["spec"]["containers"][0]["resources"]
        assert (
            resources["requests"]["aws.amazon.com/neuroncore"]
            == resources["limits"]["aws.amazon.com/neuroncore"]
        )
        seen.append(
            (
                env["NEURONCORE_GROUP_SIZES"],
                models,
                int(resources["limits"]["aws.amazon.com/neuroncore"]),
            )
        )
        node = kubectl_json(cluster, "get", "node", pod["spec"]["nodeName"])
        assert node["metadata"]["labels"]["node.kubernetes.io/instance-type"] == "inf1.6xlarge"
        assert pod["metadata"]["ownerReferences"][0]["uid"] == body["metadata"]["uid"]
    assert seen == expected
    status = body["status"]
    assert status["observedGeneration"] == body["metadata"]["generation"]
    assert status["coresPerReplica"] == sum(e[2] for e in expected)
    assert [p["groupSizes"] for p in status["plan"]] == [
        [int(x) for x in e[0].split(",")] for e in expected
    ]
    service = kubectl_json(cluster, "get", "service", name, "-n", NS)
    assert service["spec"]["selector"]["app.kubernetes.io/instance"] == name
    delete_and_wait(operators, name)


def test_sample_5_needs_an_inf1_xlarge_and_reports_unschedulable(operators: Operators) -> None:
    cluster = operators.cluster
    assert apply(cluster, workload("05-shared-group.yaml")).returncode == 0

    def pending() -> dict[str, Any] | None:
        body = get_nwl(cluster, "shared-group")
        return body if condition_of(body, c.UNSCHEDULABLE).get("status") == c.TRUE else None

    body = wait_for(operators, pending, "shared-group Unschedulable (no inf1.xlarge node)")
    assert condition_of(body, c.UNSCHEDULABLE)["reason"] == c.REASON_POD_UNSCHEDULABLE
    (pod,) = pods_of(cluster, "shared-group")
    assert env_of(pod)["NEURONCORE_GROUP_SIZES"] == "4"
    assert env_of(pod)["NEURON_MODELS"] == "model-a=/models/a,model-b=/models/b"
    assert pod["spec"]["nodeSelector"]["node.kubernetes.io/instance-type"] == "inf1.xlarge"
    delete_and_wait(operators, "shared-group")


def test_full_nodes_make_the_workload_unschedulable(operators: Operators) -> None:
    cluster = operators.cluster
    # 3 replicas of 16 one-core pods: 48 cores, more than the two kwok inf1.6xlarge nodes hold.
    assert apply(cluster, workload("02-resnet50-process.yaml", replicas=3)).returncode == 0

    def stuck() -> dict[str, Any] | None:
        body = get_nwl(cluster, "resnet50-process")
        cond = condition_of(body, c.UNSCHEDULABLE)
        return body if cond.get("reason") == c.REASON_INSUFFICIENT_CORES else None

    body = wait_for(operators, stuck, "Unschedulable for lack of neuroncores")
    assert "aws.amazon.com/neuroncore" in condition_of(body, c.UNSCHEDULABLE)["message"]
    assert condition_of(body, c.READY)["status"] == c.FALSE
    events = kubectl_json(
        cluster, "get", "events", "-n", NS,
        "--field-selector", "involvedObject.name=resnet50-process",
    )  # fmt: skip
    assert {"CreatedPods", "Unschedulable"} <= {e["reason"] for e in events["items"]}
    delete_and_wait(operators, "resnet50-process")


def test_scale_subresource_scales_the_pods(operators: Operators) -> None:
    cluster = operators.cluster
    assert apply(cluster, workload("04-four-models-shared.yaml")).returncode == 0
    ready_workload(operators, "four-models", 1)
    cluster.kubectl("scale", "nwl/four-models", "-n", NS, "--replicas=2")
    body = ready_workload(operators, "four-models", 2)
    assert body["status"]["replicas"] == 2
    scale = kubectl_json(cluster, "get", "nwl", "four-models", "-n", NS, "--subresource=scale")
    assert scale["spec"]["replicas"] == 2
    assert scale["status"]["replicas"] == 2
    assert scale["status"]["selector"] == (
        "app.kubernetes.io/name=neuron-workload,app.kubernetes.io/instance=four-models"
    )
    cluster.kubectl("scale", "nwl/four-models", "-n", NS, "--replicas=0")
    wait_for(operators, lambda: not pods_of(cluster, "four-models"), "scale to zero")
    delete_and_wait(operators, "four-models")


def test_spec_change_rolls_every_pod(operators: Operators) -> None:
    cluster = operators.cluster
    assert apply(cluster, workload("02-resnet50-process.yaml")).returncode == 0
    body = ready_workload(operators, "resnet50-process", 16)
    old_hash = body["status"]["templateHash"]
    cluster.kubectl(
        "patch", "nwl", "resnet50-process", "-n", NS, "--type=merge",
        "-p", json.dumps({"spec": {"image": "neuron-groups/runtime:0.2.0"}}),
    )  # fmt: skip

    def rolled() -> bool:
        pods = pods_of(cluster, "resnet50-process")
        hashes = {p["metadata"]["labels"]["neurongroups.dev/template-hash"] for p in pods}
        images = {p["spec"]["containers"][0]["image"] for p in pods}
        body = get_nwl(cluster, "resnet50-process")
        done = condition_of(body, c.READY).get("status") == c.TRUE
        return (
            done
            and len(pods) == 16
            and old_hash not in hashes
            and images == {"neuron-groups/runtime:0.2.0"}
        )

    wait_for(operators, rolled, "the roll to the new image")
    delete_and_wait(operators, "resnet50-process")


def test_the_service_ports_follow_spec_container_ports(operators: Operators) -> None:
    """An edit of spec.container.ports reaches the existing Service (with the chart's RBAC)."""
    cluster = operators.cluster
    ports = [{"name": "http", "containerPort": 8000}, {"name": "grpc", "containerPort": 8001}]
    document = workload("01-resnet50-shared.yaml", "ported", container={"ports": ports})
    assert apply(cluster, document).returncode == 0

    def service_ports() -> list[tuple[str, int, str]]:
        found = kubectl_json(cluster, "get", "service", "ported", "-n", NS)
        return [(p["name"], p["port"], p["targetPort"]) for p in found["spec"]["ports"]]

    def has(expected: list[tuple[str, int, str]]) -> bool:
        return service_ports() == expected  # a Service not created yet: ClusterError, retried

    wait_for(
        operators,
        lambda: has([("http", 8000, "http"), ("grpc", 8001, "grpc")]),
        "the Service with the first ports",
    )
    edited = [
        {"name": "http", "containerPort": 8080},
        {"name": "metrics", "containerPort": 9100},
    ]
    cluster.kubectl(
        "patch", "nwl", "ported", "-n", NS, "--type=merge",
        "-p", json.dumps({"spec": {"container": {"ports": edited}}}),
    )  # fmt: skip
    wait_for(
        operators,
        lambda: has([("http", 8080, "http"), ("metrics", 9100, "metrics")]),
        "the Service's ports to follow the edit",
    )
    delete_and_wait(operators, "ported")


def test_hand_deleted_pod_comes_back_and_stray_pod_goes(operators: Operators) -> None:
    cluster = operators.cluster
    assert apply(cluster, workload("01-resnet50-shared.yaml")).returncode == 0
    ready_workload(operators, "resnet50-shared", 1)
    (pod,) = pods_of(cluster, "resnet50-shared")
    name, uid = pod["metadata"]["name"], pod["metadata"]["uid"]
    cluster.kubectl("delete", "pod", name, "-n", NS, "--wait=false")

    def recreated() -> bool:
        pods = pods_of(cluster, "resnet50-shared")
        return [p["metadata"]["name"] for p in pods] == [name] and pods[0]["metadata"]["uid"] != uid

    wait_for(operators, recreated, "the deleted pod to be recreated")
    # An owned pod the plan does not call for (as left by an older layout) is removed.
    stray = json.loads(json.dumps(pod))
    stray["metadata"] = {
        "name": "resnet50-shared-stray-9-9",
        "namespace": NS,
        "labels": {**pod["metadata"]["labels"], "neurongroups.dev/replica": "9"},
        "ownerReferences": pod["metadata"]["ownerReferences"],
    }
    stray["spec"].pop("nodeName", None)
    stray.pop("status", None)
    assert apply(cluster, stray).returncode == 0
    wait_for(
        operators,
        lambda: [p["metadata"]["name"] for p in pods_of(cluster, "resnet50-shared")] == [name],
        "the stray pod to be removed",
    )
    delete_and_wait(operators, "resnet50-shared")


TWINS = [{"name": "a", "path": "/a", "cores": 1}, {"name": "a", "path": "/b", "cores": 1}]
CEL_CASES = [
    (
        "too-large-model",
        "06-invalid-too-large.yaml",
        {},
        "model big-model needs 6 NeuronCores but a node of type inf1.xlarge has 4",
    ),
    (
        "both-node-fields",
        "01-resnet50-shared.yaml",
        {"nodeCores": 16},
        "give exactly one of spec.instanceType",
    ),
    (
        "reserved-env",
        "01-resnet50-shared.yaml",
        {"env": [{"name": "NEURON_MODELS", "value": "x"}]},
        "set by the operator",
    ),
    (
        "budget-below-model",
        "04-four-models-shared.yaml",
        {"cores": 4},
        "model model-c needs 6 NeuronCores but spec.cores allows 4",
    ),
    (
        "unknown-instance",
        "01-resnet50-shared.yaml",
        {"instanceType": "p4d.24xlarge"},
        "Unsupported value",
    ),
    ("duplicate-model", "01-resnet50-shared.yaml", {"models": TWINS}, "Duplicate value"),
    (
        "mount-without-volume",
        "01-resnet50-shared.yaml",
        {"volumeMounts": [{"name": "missing", "mountPath": "/models"}]},
        "volumeMounts name missing names no volume in spec.volumes",
    ),
]


@pytest.mark.parametrize(
    ("file_name", "spec", "message"), [x[1:] for x in CEL_CASES], ids=[x[0] for x in CEL_CASES]
)
def test_apiserver_refuses_bad_specs(
    operators: Operators, file_name: str, spec: dict[str, Any], message: str
) -> None:
    document = workload(file_name, **spec)
    document["metadata"]["name"] = "refused"
    result = apply(operators.cluster, document)
    assert result.returncode != 0
    assert message in result.stderr


def test_what_cel_cannot_see_is_reported_as_invalid_spec(operators: Operators) -> None:
    cluster = operators.cluster
    # Too many pods is a property of the plan, which CEL cannot compute: 16 pods per replica
    # (Process) x 200 replicas is more than the operator creates for one NeuronWorkload.
    document = workload("01-resnet50-shared.yaml", isolation="Process", replicas=200)
    document["metadata"]["name"] = "invalid-plan"
    assert apply(cluster, document).returncode == 0

    def flagged() -> dict[str, Any] | None:
        body = get_nwl(cluster, "invalid-plan")
        return body if condition_of(body, c.INVALID_SPEC).get("status") == c.TRUE else None

    body = wait_for(operators, flagged, "InvalidSpec on status")
    assert "the plan needs 3200 pods" in condition_of(body, c.INVALID_SPEC)["message"]
    assert pods_of(cluster, "invalid-plan") == []
    # Fixing the spec clears the condition and creates the pod.
    cluster.kubectl(
        "patch", "nwl", "invalid-plan", "-n", NS, "--type=merge",
        "-p", json.dumps({"spec": {"isolation": "Shared", "replicas": 1}}),
    )  # fmt: skip
    body = ready_workload(operators, "invalid-plan", 1)
    assert condition_of(body, c.INVALID_SPEC)["status"] == c.FALSE
    delete_and_wait(operators, "invalid-plan")


def test_a_pod_the_api_server_refuses_is_reported_as_invalid_spec(operators: Operators) -> None:
    # The CRD takes any string as a quantity (int-or-string); the API server refuses the pod.
    cluster = operators.cluster
    document = workload("01-resnet50-shared.yaml", resources={"requests": {"cpu": "lots"}})
    document["metadata"]["name"] = "refused-pod"
    assert apply(cluster, document).returncode == 0

    def flagged() -> dict[str, Any] | None:
        body = get_nwl(cluster, "refused-pod")
        return body if condition_of(body, c.INVALID_SPEC).get("status") == c.TRUE else None

    body = wait_for(operators, flagged, "InvalidSpec on status")
    message = condition_of(body, c.INVALID_SPEC)["message"]
    assert "the API server refused pod refused-pod-" in message
    assert "quantities must match" in message
    assert pods_of(cluster, "refused-pod") == []
    cluster.kubectl(
        "patch", "nwl", "refused-pod", "-n", NS, "--type=merge",
        "-p", json.dumps({"spec": {"resources": {"requests": {"cpu": "100m"}}}}),
    )  # fmt: skip
    body = ready_workload(operators, "refused-pod", 1)
    assert condition_of(body, c.INVALID_SPEC)["status"] == c.FALSE
    delete_and_wait(operators, "refused-pod")


def test_only_the_lease_holder_acts_and_a_standby_takes_over(operators: Operators) -> None:
    cluster = operators.cluster
    operators.start("op-b")

    def holder() -> str | None:
        lease = kubectl_json(cluster, "get", "lease", operators.lease, "-n", OPERATOR_NS)
        value = lease["spec"].get("holderIdentity")
        return str(value) if value else None

    first = wait_for(operators, holder, "a lease holder")
    assert first in ("op-a", "op-b")
    assert apply(cluster, workload("01-resnet50-shared.yaml", name="ha-check")).returncode == 0
    ready_workload(operators, "ha-check", 1)
    events = kubectl_json(
        cluster, "get", "events", "-n", NS,
        "--field-selector", "involvedObject.name=ha-check,reason=CreatedPods",
    )  # fmt: skip
    assert {e["reportingInstance"] for e in events["items"]} == {first}
    operators.stop(first)
    standby = "op-b" if first == "op-a" else "op-a"
    wait_for(operators, lambda: holder() == standby, f"{standby} to take the lease over")
    (pod,) = pods_of(cluster, "ha-check")
    cluster.kubectl("delete", "pod", pod["metadata"]["name"], "-n", NS, "--wait=false")

    def replaced() -> bool:
        pods = pods_of(cluster, "ha-check")
        return len(pods) == 1 and pods[0]["metadata"]["uid"] != pod["metadata"]["uid"]

    wait_for(operators, replaced, "the standby to recreate the pod")
    delete_and_wait(operators, "ha-check")


@pytest.fixture(scope="module")
def mlp_model() -> Iterator[Path]:
    """A compiled 1-core model outside /tmp: the pods mount an emptyDir on /tmp, and the emulated
    node honours that mount, so a model under /tmp would be hidden from the runtime."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    if cache.resolve().is_relative_to("/tmp"):  # an XDG_CACHE_HOME under /tmp would hide it too
        cache = Path.home() / ".cache"
    (cache / "neuron-groups").mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix="operator-test-models-", dir=cache / "neuron-groups"))
    runtime = Path(sys.executable).parent / "neuron-runtime"
    try:
        subprocess.run(
            [
                str(runtime),
                "compile",
                "--arch",
                "mlp",
                "--cores",
                "1",
                "--out",
                str(folder / "mlp"),
            ],
            check=True,
            capture_output=True,
        )
        yield folder / "mlp"
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_workload_on_the_emulated_node_serves_through_its_service(
    operators: Operators, mlp_model: Path
) -> None:
    """End to end: operator -> scheduler -> device plugin -> runtime processes -> Service."""
    import numpy as np
    import tritonclient.http as triton_http

    cluster = operators.cluster
    document = workload(
        "01-resnet50-shared.yaml",
        name="mlp-served",
        models=[{"name": "mlp", "path": str(mlp_model), "cores": 1, "copies": 2}],
        nodeSelector={"neuron-groups.io/simulation": "emulated"},
        env=[{"name": "NEURON_GRPC_PORT", "value": "0"}],
    )
    assert apply(cluster, document).returncode == 0
    body = ready_workload(operators, "mlp-served", 1)
    assert body["status"]["plan"] == [
        {"pod": 0, "cores": 2, "groupSizes": [1, 1], "models": ["mlp", "mlp"]}
    ]
    (pod,) = pods_of(cluster, "mlp-served")
    assert pod["spec"]["nodeName"] == cluster.emulated_node
    assert env_of(pod)["NEURON_MODELS"] == f"mlp={mlp_model},mlp={mlp_model}"

    def ready_endpoint() -> tuple[str, int] | None:
        slices = kubectl_json(
            cluster,
            "get",
            "endpointslices",
            "-n",
            NS,
            "-l",
            "kubernetes.io/service-name=mlp-served",
        )["items"]
        for eps in slices:
            ports = {p["name"]: p["port"] for p in eps.get("ports") or []}
            for ep in eps.get("endpoints") or []:
                if (ep.get("conditions") or {}).get("ready") and "http" in ports:
                    return str(ep["addresses"][0]), int(ports["http"])
        return None

    address, port = wait_for(operators, ready_endpoint, "a ready endpoint of the Service")
    assert address == pod["status"]["podIP"]
    client = triton_http.InferenceServerClient(url=f"{address}:{port}")
    try:
        batch = np.ones((2, 64), dtype=np.float32)
        tensor = triton_http.InferInput("input", list(batch.shape), "FP32")
        tensor.set_data_from_numpy(batch)
        result = client.infer("mlp", [tensor]).as_numpy("output")
    finally:
        client.close()
    assert result is not None and result.shape == (2, 10)
    assert np.isfinite(result).all()


def test_a_model_path_with_a_comma_is_served(operators: Operators, mlp_model: Path) -> None:
    """The CRD admits the path, the operator writes NEURON_MODELS in its separated form, and the
    runtime on the emulated node reads it back whole: both copies load and the pod turns Ready."""
    cluster = operators.cluster
    path = mlp_model.parent / "mlp,v2"
    path.symlink_to(mlp_model, target_is_directory=True)
    document = workload(
        "01-resnet50-shared.yaml",
        name="mlp-comma",
        models=[{"name": "mlp", "path": str(path), "cores": 1, "copies": 2}],
        nodeSelector={"neuron-groups.io/simulation": "emulated"},
        env=[{"name": "NEURON_GRPC_PORT", "value": "0"}],
    )
    result = apply(cluster, document)
    assert result.returncode == 0, result.stderr
    ready_workload(operators, "mlp-comma", 1)
    (pod,) = pods_of(cluster, "mlp-comma")
    assert env_of(pod)["NEURON_MODELS"] == f";mlp={path};mlp={path}"
    assert all(s["ready"] for s in pod["status"]["containerStatuses"])


def test_spec_container_runs_its_command_args_ports_and_probes(
    operators: Operators, mlp_model: Path
) -> None:
    """spec.container end to end: the emulated node runs the given command with the per-model
    args, the given probe on the given named port gates readiness, and the Service exposes it."""
    import urllib.request

    cluster = operators.cluster
    rest = {"httpGet": {"path": "/v2/health/ready", "port": "rest"}, "periodSeconds": 2}
    document = workload(
        "01-resnet50-shared.yaml",
        name="custom-served",
        models=[{"name": "mlp", "path": str(mlp_model), "cores": 1}],
        nodeSelector={"neuron-groups.io/simulation": "emulated"},
        container={
            "command": ["neuron-runtime", "serve"],
            "args": ["--http-port=9000", "--grpc-port=0"],
            "modelArgs": ["--model={name}={path}"],
            "ports": [{"name": "rest", "containerPort": 9000}],
            "readinessProbe": rest,
            "livenessProbe": {**rest, "periodSeconds": 10},
        },
    )
    assert apply(cluster, document).returncode == 0
    ready_workload(operators, "custom-served", 1)
    (pod,) = pods_of(cluster, "custom-served")
    (container,) = pod["spec"]["containers"]
    assert container["args"] == ["--http-port=9000", "--grpc-port=0", f"--model=mlp={mlp_model}"]
    assert env_of(pod)["NEURON_POD_CORES"] == "1"
    service = kubectl_json(cluster, "get", "service", "custom-served", "-n", NS)
    assert [(p["name"], p["port"]) for p in service["spec"]["ports"]] == [("rest", 9000)]
    url = f"http://{pod['status']['podIP']}:9000/v2/models/mlp"
    with urllib.request.urlopen(url, timeout=10) as response:
        assert json.loads(response.read())["name"] == "mlp"
