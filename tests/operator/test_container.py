"""spec.container: any serving image's command, args, ports and probes over the default container.

Parsing refuses what a pod creator could not do through a NeuronWorkload (a securityContext, a
hostPort, a probe on another host) with the field and the fix; the pod builder merges what is given
over the default and expands modelArgs per model of each pod.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from neuron_operator.api import (
    MODEL_NAMES_ENV,
    POD_CORES_ENV,
    InvalidSpecError,
    Workload,
    parse_spec,
    workload_from_object,
)
from neuron_operator.planner import plan
from neuron_operator.pods import build_pod, build_service, service_ports_drift, template_hash

SAMPLES = Path(__file__).resolve().parents[2] / "deploy" / "samples"


def raw_spec(container: Any, **overrides: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "image": "img",
        "instanceType": "inf1.6xlarge",
        "models": [
            {"name": "a", "path": "/models/a", "cores": 1, "copies": 2},
            {"name": "b", "path": "/models/b", "cores": 2},
        ],
        "container": container,
    }
    spec.update(overrides)
    return spec


def pods_of(container: Any, **overrides: Any) -> list[dict[str, Any]]:
    w = Workload(name="w", namespace="ns", spec=parse_spec(raw_spec(container, **overrides)))
    return [build_pod(p, w) for p in plan(w.spec).pods]


def main_container(container: Any, **overrides: Any) -> dict[str, Any]:
    result: dict[str, Any] = pods_of(container, **overrides)[0]["spec"]["containers"][0]
    return result


TRITON_PORTS = [
    {"name": "http", "containerPort": 8000},
    {"name": "grpc", "containerPort": 8001},
    {"name": "metrics", "containerPort": 8002},
]

BAD = [
    ("not-object", "tritonserver", ["spec.container: 'tritonserver' is not an object"]),
    (
        "security-context",
        {"securityContext": {"privileged": True}},
        ["spec.container.securityContext", "is not a field", "command, args, modelArgs"],
    ),
    ("image", {"image": "other"}, ["spec.container.image", "is not a field"]),
    ("empty-command", {"command": []}, ["spec.container.command: [] is empty"]),
    ("command-not-strings", {"command": ["a", 1]}, ["spec.container.command", "list of strings"]),
    (
        "unknown-placeholder",
        {"modelArgs": ["--load-model={model}"]},
        ["spec.container.modelArgs[0]", "{model}", "{name}, {path}, {cores}, {copies}"],
    ),
    (
        "host-port",
        {"ports": [{"name": "http", "containerPort": 8000, "hostPort": 80}]},
        ["spec.container.ports[0].hostPort", "is not a field"],
    ),
    (
        "port-name",
        {"ports": [{"name": "HTTP_PORT", "containerPort": 8000}]},
        ["spec.container.ports[0].name: 'HTTP_PORT' is not a port name"],
    ),
    (
        "port-number",
        {"ports": [{"name": "http", "containerPort": 70000}]},
        ["spec.container.ports[0].containerPort: 70000", "1 to 65535"],
    ),
    (
        "port-twice",
        {"ports": [{"name": "http", "containerPort": 1}, {"name": "http", "containerPort": 2}]},
        ["spec.container.ports[1].name: 'http' is a port name used twice"],
    ),
    (
        "no-http-port-no-probes",
        {"ports": [{"name": "rest", "containerPort": 8501}]},
        ["spec.container.readinessProbe: None is absent", "spec.container.livenessProbe"],
    ),
    (
        "probe-on-another-host",
        {"readinessProbe": {"httpGet": {"host": "10.0.0.1", "port": 80, "path": "/"}}},
        ["spec.container.readinessProbe.httpGet.host", "is not a field"],
    ),
    (
        "probe-two-handlers",
        {"livenessProbe": {"tcpSocket": {"port": 1}, "exec": {"command": ["true"]}}},
        ["spec.container.livenessProbe", "is not exactly one handler"],
    ),
    (
        "probe-unknown-port-name",
        {"readinessProbe": {"httpGet": {"port": "rest", "path": "/"}}},
        ["spec.container.readinessProbe.httpGet.port: 'rest' names no port", "http, grpc"],
    ),
    (
        "probe-timing",
        {"readinessProbe": {"tcpSocket": {"port": 1}, "periodSeconds": 0}},
        ["spec.container.readinessProbe.periodSeconds: 0 is out of range"],
    ),
    (
        "probe-lifecycle-field",
        {"readinessProbe": {"tcpSocket": {"port": 1}, "terminationGracePeriodSeconds": 1}},
        ["readinessProbe.terminationGracePeriodSeconds", "is not a field"],
    ),
    ("working-dir", {"workingDir": "srv"}, ["spec.container.workingDir: 'srv' is not absolute"]),
]


@pytest.mark.parametrize(("container", "fragments"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_containers_are_refused_clearly(container: Any, fragments: list[str]) -> None:
    with pytest.raises(InvalidSpecError) as error:
        parse_spec(raw_spec(container))
    text = str(error.value)
    for fragment in fragments:
        assert fragment in text


def test_reserved_planned_env_cannot_be_set_by_hand() -> None:
    for name in (MODEL_NAMES_ENV, POD_CORES_ENV):
        with pytest.raises(InvalidSpecError, match="is set by the operator from the plan"):
            parse_spec(raw_spec(None, env=[{"name": name, "value": "x"}]))


def test_without_container_the_default_is_kept() -> None:
    container = main_container(None)
    assert container["command"] == ["neuron-runtime", "serve"]
    assert "args" not in container
    assert [p["name"] for p in container["ports"]] == ["http", "grpc"]
    names = [e["name"] for e in container["env"]]
    assert MODEL_NAMES_ENV not in names
    assert POD_CORES_ENV not in names


def test_a_spec_without_container_keeps_its_template_hash() -> None:
    """Existing NeuronWorkloads must not roll when the operator learns spec.container."""
    document = yaml.safe_load((SAMPLES / "01-resnet50-shared.yaml").read_text())
    # The hash every release before spec.container gave this sample.
    assert template_hash(workload_from_object(document).spec) == "a17f55f4e8"


def test_command_args_and_model_args_expand_per_model_in_load_order() -> None:
    container = main_container(
        {
            "command": ["tritonserver"],
            "args": ["--model-repository=/models", "--log=$(NEURON_MODEL_NAMES)"],
            "modelArgs": ["--load-model={name}", "--info={path}:{cores}x{copies}"],
            "ports": TRITON_PORTS,
        }
    )
    assert container["command"] == ["tritonserver"]
    assert container["args"] == [
        "--model-repository=/models",
        "--log=$(NEURON_MODEL_NAMES)",  # left for Kubernetes to expand from the env below
        "--load-model=a",
        "--info=/models/a:1x2",
        "--load-model=b",
        "--info=/models/b:2x1",
    ]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env[MODEL_NAMES_ENV] == "a,b"
    assert env[POD_CORES_ENV] == "4"
    assert env["NEURONCORE_GROUP_SIZES"] == "1,1,2"


def test_ports_replace_the_defaults_and_the_service_follows() -> None:
    spec = parse_spec(raw_spec({"ports": TRITON_PORTS}))
    w = Workload(name="w", namespace="ns", spec=spec)
    container = build_pod(plan(spec).pods[0], w)["spec"]["containers"][0]
    assert [(p["name"], p["containerPort"], p["protocol"]) for p in container["ports"]] == [
        ("http", 8000, "TCP"),
        ("grpc", 8001, "TCP"),
        ("metrics", 8002, "TCP"),
    ]
    assert container["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": "http"}
    service_ports = build_service(w)["spec"]["ports"]
    assert [(p["name"], p["port"], p["targetPort"]) for p in service_ports] == [
        ("http", 8000, "http"),
        ("grpc", 8001, "grpc"),
        ("metrics", 8002, "metrics"),
    ]


def test_given_probes_replace_only_their_own_default() -> None:
    readiness = {"httpGet": {"path": "/v1/models/a", "port": "http"}, "periodSeconds": 3}
    startup = {"tcpSocket": {"port": 8000}, "failureThreshold": 30}
    container = main_container({"readinessProbe": readiness, "startupProbe": startup})
    assert container["readinessProbe"] == readiness
    assert container["startupProbe"] == startup
    assert container["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"


def test_the_operators_security_settings_stay() -> None:
    container = main_container({"command": ["sh", "-c", "id"]})
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert all("hostPort" not in p for p in container["ports"])


HASH_CASES = [
    ("args-roll", {"args": ["--x"]}),
    ("probe-rolls", {"startupProbe": {"tcpSocket": {"port": 8000}}}),
]


@pytest.mark.parametrize("container", [c[1] for c in HASH_CASES], ids=[c[0] for c in HASH_CASES])
def test_container_changes_roll_the_pods(container: dict[str, Any]) -> None:
    assert template_hash(parse_spec(raw_spec(container))) != template_hash(
        parse_spec(raw_spec(None))
    )


SAMPLE_CASES = [
    (
        "07-tensorflow-serving-neuron.yaml",
        ["tensorflow_model_server_neuron"],
        [
            "--port=8500",
            "--rest_api_port=8501",
            "--model_name=bert-large",
            "--model_base_path=/models/bert-large",
        ],
        "4",
    ),
    (
        "08-triton-neuron.yaml",
        ["tritonserver"],
        [
            "--model-repository=/models",
            "--http-port=8000",
            "--grpc-port=8001",
            "--metrics-port=8002",
            "--model-control-mode=explicit",
            "--load-model=resnet50",
            "--load-model=bert-base",
        ],
        "1,1,2",
    ),
]


@pytest.mark.parametrize(
    ("sample", "command", "args", "groups"), SAMPLE_CASES, ids=[c[0][:2] for c in SAMPLE_CASES]
)
def test_serving_image_samples_plan(
    sample: str, command: list[str], args: list[str], groups: str
) -> None:
    w = workload_from_object(yaml.safe_load((SAMPLES / sample).read_text()))
    (pod,) = [build_pod(p, w) for p in plan(w.spec).pods]
    container = pod["spec"]["containers"][0]
    assert container["command"] == command
    assert container["args"] == args
    assert {e["name"]: e["value"] for e in container["env"]}["NEURONCORE_GROUP_SIZES"] == groups


ALLOCATION_CASES = [
    ("absent-is-auto", None, "Auto"),
    ("device-plugin", "DevicePlugin", "DevicePlugin"),
]


@pytest.mark.parametrize(
    ("given", "parsed"), [a[1:] for a in ALLOCATION_CASES], ids=[a[0] for a in ALLOCATION_CASES]
)
def test_allocation_modes_build_the_same_pods(given: str | None, parsed: str) -> None:
    raw = raw_spec(None)
    if given is not None:
        raw["allocation"] = given
    spec = parse_spec(raw)
    assert spec.allocation == parsed
    assert template_hash(spec) == template_hash(parse_spec(raw_spec(None)))
    container = main_container(None, **({"allocation": given} if given else {}))
    assert container["resources"]["limits"]["aws.amazon.com/neuroncore"] == "4"


@pytest.mark.parametrize(
    ("value", "fragment"),
    [("Gpu", "use DevicePlugin, DRA, Auto"), ("dra", "use DevicePlugin, DRA, Auto")],
    ids=["unknown", "wrong-case"],
)
def test_unknown_allocation_modes_are_refused(value: str, fragment: str) -> None:
    with pytest.raises(InvalidSpecError) as error:
        parse_spec(raw_spec(None, allocation=value))
    assert f"spec.allocation: {value!r} is not an allocation mode" in str(error.value)
    assert fragment in str(error.value)


def _live(ports: list[tuple[str, int, str, str | None]]) -> dict[str, Any]:
    """A Service as the API server returns it (protocol defaulted, clusterIP, ...)."""
    listed = [
        {"name": n, "port": p, "targetPort": t, **({"protocol": proto} if proto else {})}
        for n, p, t, proto in ports
    ]
    return {"spec": {"clusterIP": "10.0.0.7", "ports": listed}}


DRIFT_CASES = [
    ("same", [("http", 8000, "http", "TCP"), ("grpc", 8001, "grpc", "TCP")], False),
    ("protocol-defaulted", [("http", 8000, "http", None), ("grpc", 8001, "grpc", None)], False),
    ("port-moved", [("http", 8080, "http", "TCP"), ("grpc", 8001, "grpc", "TCP")], True),
    ("one-more", [("http", 8000, "http", "TCP")], True),
    ("renamed", [("web", 8000, "web", "TCP"), ("grpc", 8001, "grpc", "TCP")], True),
    ("reordered", [("grpc", 8001, "grpc", "TCP"), ("http", 8000, "http", "TCP")], True),
    ("udp", [("http", 8000, "http", "UDP"), ("grpc", 8001, "grpc", "TCP")], True),
]


@pytest.mark.parametrize(
    ("live", "drifted"), [d[1:] for d in DRIFT_CASES], ids=[d[0] for d in DRIFT_CASES]
)
def test_service_ports_drift_from_the_spec(
    live: list[tuple[str, int, str, str | None]], drifted: bool
) -> None:
    w = Workload(name="w", namespace="ns", spec=parse_spec(raw_spec(None)))
    desired = build_service(w)
    found = service_ports_drift(_live(live), desired)
    assert (found is not None) is drifted
    if found is not None:
        assert found == desired["spec"]["ports"]
