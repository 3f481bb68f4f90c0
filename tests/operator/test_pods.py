"""Pod and Service builders, checked as plain data."""

from __future__ import annotations

import json
from typing import Any

import pytest

from neuron_cores import CORE_RESOURCE, decode_models
from neuron_operator.api import MAX_ENV_TEXT, MAX_MODEL_PATH, MAX_PLAN_TEXT, Workload, parse_spec
from neuron_operator.planner import plan
from neuron_operator.pods import (
    ANNOTATION_MODELS,
    LABEL_TEMPLATE_HASH,
    build_pod,
    build_service,
    selector_string,
    template_hash,
)


def workload(uid: str | None = "uid-1", **overrides: Any) -> Workload:
    raw: dict[str, Any] = {
        "image": "runtime:1",
        "instanceType": "inf1.6xlarge",
        "models": [
            {"name": "a", "path": "/models/a", "cores": 2, "copies": 2},
            {"name": "b", "path": "/models/b", "cores": 4},
        ],
        "resources": {"requests": {"cpu": "1", "memory": "1Gi"}, "limits": {"memory": "1Gi"}},
        "env": [{"name": "LOG_LEVEL", "value": "debug"}],
        "volumes": [{"name": "models", "emptyDir": {}}],
        "volumeMounts": [{"name": "models", "mountPath": "/models", "readOnly": True}],
        "nodeSelector": {"zone": "a"},
        "tolerations": [{"key": "dedicated", "operator": "Exists"}],
        "serviceAccountName": "inference",
        "imagePullSecrets": [{"name": "registry"}],
    }
    raw.update(overrides)
    return Workload(name="w", namespace="ns", spec=parse_spec(raw), uid=uid)


def first_pod(w: Workload) -> dict[str, Any]:
    return build_pod(plan(w.spec).pods[0], w)


def env_of(pod: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in pod["spec"]["containers"][0]["env"]}


def test_env_carries_groups_and_models_in_load_order() -> None:
    env = env_of(first_pod(workload()))
    assert env["NEURONCORE_GROUP_SIZES"] == "2,2,4"
    assert env["NEURON_MODELS"] == "a=/models/a,a=/models/a,b=/models/b"
    assert env["LOG_LEVEL"] == "debug"


def test_a_path_with_a_comma_reaches_the_runtime_whole() -> None:
    models = [
        {"name": "a", "path": "/models/a,v2", "cores": 2, "copies": 2},
        {"name": "b", "path": "/models/b", "cores": 4},
    ]
    env = env_of(first_pod(workload(models=models)))
    assert env["NEURON_MODELS"] == ";a=/models/a,v2;a=/models/a,v2;b=/models/b"
    assert [(m.name, m.path) for m in decode_models(env["NEURON_MODELS"])] == [
        ("a", "/models/a,v2"),
        ("a", "/models/a,v2"),
        ("b", "/models/b"),
    ]


def test_neuroncore_request_equals_limit_and_keeps_cpu_memory() -> None:
    resources = first_pod(workload())["spec"]["containers"][0]["resources"]
    assert resources["requests"] == {"cpu": "1", "memory": "1Gi", CORE_RESOURCE: "8"}
    assert resources["limits"] == {"memory": "1Gi", CORE_RESOURCE: "8"}


def test_scheduling_settings() -> None:
    spec = first_pod(workload())["spec"]
    assert spec["nodeSelector"] == {"zone": "a", "node.kubernetes.io/instance-type": "inf1.6xlarge"}
    assert {"key": "aws.amazon.com/neuron", "operator": "Exists", "effect": "NoSchedule"} in spec[
        "tolerations"
    ]
    assert {"key": "dedicated", "operator": "Exists"} in spec["tolerations"]
    assert spec["serviceAccountName"] == "inference"
    assert spec["imagePullSecrets"] == [{"name": "registry"}]


def test_node_cores_spec_has_no_instance_selector() -> None:
    pod = first_pod(workload(instanceType=None, nodeCores=16, nodeSelector=None))
    assert "nodeSelector" not in pod["spec"]


def test_restricted_security_and_writable_tmp() -> None:
    pod = first_pod(workload())
    container = pod["spec"]["containers"][0]
    assert container["securityContext"] == {
        "runAsNonRoot": True,
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    assert pod["spec"]["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]
    assert {"name": "models", "mountPath": "/models", "readOnly": True} in container["volumeMounts"]


def test_serving_command_ports_and_probes() -> None:
    container = first_pod(workload())["spec"]["containers"][0]
    assert container["command"] == ["neuron-runtime", "serve"]
    assert [(p["name"], p["containerPort"]) for p in container["ports"]] == [
        ("http", 8000),
        ("grpc", 8001),
    ]
    assert container["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": "http"}


def test_identity_labels_and_owner() -> None:
    w = workload()
    meta = first_pod(w)["metadata"]
    assert meta["name"] == f"w-{template_hash(w.spec)}-0-0"
    assert meta["labels"]["app.kubernetes.io/name"] == "neuron-workload"
    assert meta["labels"]["app.kubernetes.io/instance"] == "w"
    assert meta["labels"]["app.kubernetes.io/managed-by"] == "neuron-operator"
    assert meta["ownerReferences"] == [
        {
            "apiVersion": "neurongroups.dev/v1alpha1",
            "kind": "NeuronWorkload",
            "name": "w",
            "uid": "uid-1",
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]
    assert "ownerReferences" not in first_pod(workload(uid=None))["metadata"]


HASH_CASES = [
    ("replicas-do-not-roll", {"replicas": 5}, True),
    ("image-rolls", {"image": "runtime:2"}, False),
    ("env-rolls", {"env": [{"name": "X", "value": "1"}]}, False),
    ("isolation-rolls", {"isolation": "Process"}, False),
]


@pytest.mark.parametrize(
    ("change", "same"), [c[1:] for c in HASH_CASES], ids=[c[0] for c in HASH_CASES]
)
def test_template_hash(change: dict[str, Any], same: bool) -> None:
    before = template_hash(workload().spec)
    after = template_hash(workload(**change).spec)
    assert (before == after) is same
    pod = first_pod(workload(**change))
    assert pod["metadata"]["labels"][LABEL_TEMPLATE_HASH] == after


def test_service_selects_every_pod_of_the_workload() -> None:
    w = workload()
    service = build_service(w)
    pod_labels = first_pod(w)["metadata"]["labels"]
    assert service["metadata"]["name"] == "w"
    assert all(pod_labels[k] == v for k, v in service["spec"]["selector"].items())
    assert (
        selector_string("w")
        == "app.kubernetes.io/name=neuron-workload,app.kubernetes.io/instance=w"
    )
    assert [p["port"] for p in service["spec"]["ports"]] == [8000, 8001]


# The API server's limits a pod must stay under: a request body of 3 MiB, etcd's 1.5 MiB object,
# and 256 KiB for all of an object's annotations together.
ETCD_OBJECT_LIMIT = 1536 * 1024
ANNOTATIONS_LIMIT = 256 * 1024
LONG_NAME = "m" * 62


def largest_admitted(name: str, path: str) -> Workload:
    """Every copy in one pod (a 1-core budget), as many copies as the plan bound admits, and
    the largest env the bound admits."""
    per_copy = len(name) + len(path) + 2
    models = []
    copies = MAX_PLAN_TEXT // per_copy
    for index in range(0, copies, 4096):
        model_name = f"{name[:-2]}{index // 4096:02d}"
        count = min(4096, copies - index)
        models.append({"name": model_name, "path": path, "cores": 1, "copies": count})
    env = [{"name": f"E{i:03d}", "value": "v" * 1019} for i in range(MAX_ENV_TEXT // 1024)]
    return workload(models=models, cores=1, env=env)


@pytest.mark.parametrize(
    ("name", "path"),
    [(LONG_NAME, "/"), ("m00", "/" + "p" * (MAX_MODEL_PATH - 1))],
    ids=["long-names-short-paths", "short-names-long-paths"],
)
def test_the_largest_admitted_plan_fits_the_api_server(name: str, path: str) -> None:
    w = largest_admitted(name, path)
    pods = plan(w.spec).pods
    assert len(pods) == 1
    pod = build_pod(pods[0], w)
    assert len(json.dumps(pod).encode()) < ETCD_OBJECT_LIMIT
    annotations = pod["metadata"]["annotations"]
    assert sum(len(k) + len(v) for k, v in annotations.items()) < ANNOTATIONS_LIMIT


def test_models_annotation_names_each_model_once_in_load_order() -> None:
    annotations = first_pod(workload())["metadata"]["annotations"]
    assert annotations[ANNOTATION_MODELS] == "a,b"
