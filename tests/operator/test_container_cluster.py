"""spec.container against the real API server: the serving-image samples and the pods they plan are
accepted (server-side dry-run, in a namespace enforcing the restricted Pod Security Standard), and
what a NeuronWorkload must not put into its container is refused at apply time with the reason."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from neuron_operator.api import workload_from_object
from neuron_operator.drasync import template_bodies

from .conftest import apply, install_crd

pytestmark = [pytest.mark.cluster]

REPO = Path(__file__).resolve().parents[2]
SAMPLES = REPO / "deploy/samples"
SERVING_SAMPLES = ("07-tensorflow-serving-neuron.yaml", "08-triton-neuron.yaml")
NS = "nwl-container"


@pytest.fixture(scope="module")
def cluster(local_cluster: Any) -> Iterator[Any]:
    install_crd(local_cluster)
    namespace = {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": NS, "labels": {"pod-security.kubernetes.io/enforce": "restricted"}},
    }
    assert apply(local_cluster, namespace).returncode == 0
    yield local_cluster
    local_cluster.kubectl("delete", "namespace", NS, "--wait=false", check=False)


def dry_run(cluster: Any, document: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    result: subprocess.CompletedProcess[str] = cluster.kubectl(
        "apply", "--dry-run=server", "-n", NS, "-f", "-",
        check=False, input=yaml.safe_dump(document),
    )  # fmt: skip
    return result


def sample(name: str) -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load((SAMPLES / name).read_text())
    return document


@pytest.mark.parametrize("name", SERVING_SAMPLES, ids=[s[:2] for s in SERVING_SAMPLES])
def test_serving_image_samples_are_accepted(cluster: Any, name: str) -> None:
    result = dry_run(cluster, sample(name))
    assert result.returncode == 0, result.stderr
    assert "(server dry run)" in result.stdout


@pytest.mark.parametrize("name", SERVING_SAMPLES, ids=[s[:2] for s in SERVING_SAMPLES])
def test_their_planned_pods_and_service_are_accepted(cluster: Any, name: str) -> None:
    planned = subprocess.run(
        [sys.executable, "-m", "neuron_operator.cli", "plan", str(SAMPLES / name), "-o", "json"],
        check=True, capture_output=True, text=True, env={"PYTHONSAFEPATH": "1"},
    ).stdout  # fmt: skip
    pods = json.loads(planned)["items"]
    assert pods
    for pod in pods:
        pod["metadata"]["namespace"] = NS
        result = cluster.kubectl(
            "create", "--dry-run=server", "-f", "-", check=False, input=json.dumps(pod)
        )
        assert result.returncode == 0, result.stderr


def with_container(name: str, **container: Any) -> dict[str, Any]:
    document = copy.deepcopy(sample(name))
    document["spec"]["container"].update(container)
    return document


TRITON = "08-triton-neuron.yaml"
TF = "07-tensorflow-serving-neuron.yaml"
REFUSED = [
    (
        "security-context",
        with_container(TRITON, securityContext={"privileged": True}),
        'unknown field "spec.container.securityContext"',
    ),
    (
        "host-port",
        with_container(TRITON, ports=[{"name": "http", "containerPort": 8000, "hostPort": 80}]),
        'unknown field "spec.container.ports[0].hostPort"',
    ),
    (
        "probe-host",
        with_container(TF, readinessProbe={"httpGet": {"host": "10.0.0.1", "port": 80}}),
        'unknown field "spec.container.readinessProbe.httpGet.host"',
    ),
    (
        "unknown-placeholder",
        with_container(TRITON, modelArgs=["--load-model={model}"]),
        "modelArgs placeholders are {name}, {path}, {cores} and {copies}",
    ),
    (
        "no-http-port-no-probes",
        with_container(TRITON, ports=[{"name": "rest", "containerPort": 8000}]),
        "give readinessProbe and livenessProbe for your image",
    ),
    (
        "two-probe-handlers",
        with_container(TF, livenessProbe={"tcpSocket": {"port": 1}, "exec": {"command": ["true"]}}),
        "a probe must have exactly one of httpGet, tcpSocket, grpc or exec",
    ),
]


@pytest.mark.parametrize(
    ("document", "message"), [r[1:] for r in REFUSED], ids=[r[0] for r in REFUSED]
)
def test_what_a_pod_creator_could_not_ask_through_it_is_refused(
    cluster: Any, document: dict[str, Any], message: str
) -> None:
    result = dry_run(cluster, document)
    assert result.returncode != 0
    assert message in result.stderr, result.stderr


def test_planned_env_names_cannot_be_set_by_hand(cluster: Any) -> None:
    document = sample(TRITON)
    document["spec"]["env"] = [{"name": "NEURON_POD_CORES", "value": "16"}]
    result = dry_run(cluster, document)
    assert result.returncode != 0
    assert "are set by the operator from the plan" in result.stderr


ALLOCATION_VALUES = [
    ("device-plugin", "DevicePlugin", True),
    ("dra", "DRA", True),
    ("auto", "Auto", True),
    ("unknown", "Gpu", False),
]


@pytest.mark.parametrize(
    ("value", "accepted"),
    [a[1:] for a in ALLOCATION_VALUES],
    ids=[a[0] for a in ALLOCATION_VALUES],
)
def test_allocation_modes_at_apply_time(cluster: Any, value: str, accepted: bool) -> None:
    document = sample(TRITON)
    document["spec"]["allocation"] = value
    result = dry_run(cluster, document)
    assert (result.returncode == 0) is accepted, result.stderr
    if not accepted:
        assert f'spec.allocation: Unsupported value: "{value}"' in result.stderr


@pytest.mark.parametrize("name", SERVING_SAMPLES, ids=[s[:2] for s in SERVING_SAMPLES])
def test_dra_mode_pods_and_claim_templates_are_accepted(cluster: Any, name: str) -> None:
    """The pods of DRA mode (a claim, no extended resource) and the ResourceClaimTemplates they
    name pass the API server's validation and the restricted Pod Security Standard."""
    document = sample(name)
    document["spec"]["allocation"] = "DRA"
    planned = subprocess.run(
        [sys.executable, "-m", "neuron_operator.cli", "plan", "-", "-o", "json"],
        check=True, capture_output=True, text=True, env={"PYTHONSAFEPATH": "1"},
        input=yaml.safe_dump(document),
    ).stdout  # fmt: skip
    pods = json.loads(planned)["items"]
    workload = workload_from_object(
        {**document, "metadata": {**document["metadata"], "namespace": NS}}
    )
    named = {p["spec"]["resourceClaims"][0]["resourceClaimTemplateName"] for p in pods}
    templates = template_bodies(workload, [int(n.rsplit("-", 1)[1]) for n in named])
    assert {t["metadata"]["name"] for t in templates} == named
    assert pods and templates
    for obj in [*templates, *pods]:
        obj["metadata"]["namespace"] = NS
        assert "aws.amazon.com/neuroncore" not in json.dumps(obj)
        result = cluster.kubectl(
            "create", "--dry-run=server", "-f", "-", check=False, input=json.dumps(obj)
        )
        assert result.returncode == 0, result.stderr
