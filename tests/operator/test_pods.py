"""Pod and Service builders, checked as plain data."""

from __future__ import annotations

from typing import Any

import pytest

from neuron_operator.api import Workload, parse_spec
from neuron_operator.planner import plan
from neuron_operator.pods import (
    LABEL_TEMPLATE_HASH,
    NEURONCORE_RESOURCE,
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


def test_neuroncore_request_equals_limit_and_keeps_cpu_memory() -> None:
    resources = first_pod(workload())["spec"]["containers"][0]["resources"]
    assert resources["requests"] == {"cpu": "1", "memory": "1Gi", NEURONCORE_RESOURCE: "8"}
    assert resources["limits"] == {"memory": "1Gi", NEURONCORE_RESOURCE: "8"}


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
