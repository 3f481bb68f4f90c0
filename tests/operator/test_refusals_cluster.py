"""Refusals of the real API server reach a NeuronWorkload's status and Events, never a traceback.

One operator (``neuron-operator run`` as the chart's ServiceAccount, see ``conftest.py``) watches
a namespace per kind of refusal: one enforcing the ``restricted`` Pod Security Standard, one with
a ResourceQuota of 0 pods, and one holding a Service the operator does not own.  Each test waits
for the refusal on status and as a Warning Event, then removes its cause and waits for the
workload to become Ready: a refusal loses nothing, and the backoff retries.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from neuron_operator import conditions as c
from neuron_operator.api import workload_from_object
from neuron_operator.planner import plan
from neuron_operator.pods import build_pod

from .conftest import Operators, apply, kubectl_json, operators_as_chart_account

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
CRD = REPO / "charts/neuron-groups/crds/neuronworkloads.neurongroups.dev.yaml"
SAMPLE = REPO / "deploy/samples/01-resnet50-shared.yaml"
RELEASE = "nwl-refusals"
OPERATOR_NS = "nwl-refusals-operator"
RESTRICTED_NS = "nwl-refuse-psa"
QUOTA_NS = "nwl-refuse-quota"
PLAIN_NS = "nwl-refuse-plain"
NAMESPACES = (RESTRICTED_NS, QUOTA_NS, PLAIN_NS)
KWOK_ONLY = {"neuron-groups.io/simulation": "kwok"}
HOST_FOLDER = "/srv/models"
TIMEOUT = 90.0


@pytest.fixture(scope="module")
def operator(local_cluster: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Operators]:
    cluster = local_cluster
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD))
    cluster.kubectl(
        "wait", "--for=condition=Established", "--timeout=60s",
        "crd/neuronworkloads.neurongroups.dev",
    )  # fmt: skip
    for name in NAMESPACES:
        cluster.kubectl("delete", "namespace", name, "--ignore-not-found", "--timeout=90s")
    restricted = {"pod-security.kubernetes.io/enforce": "restricted"}
    for name in (OPERATOR_NS, *NAMESPACES):
        labels = restricted if name == RESTRICTED_NS else {}
        metadata = {"name": name, "labels": labels}
        namespace = {"apiVersion": "v1", "kind": "Namespace", "metadata": metadata}
        assert apply(cluster, namespace).returncode == 0
    handle = operators_as_chart_account(
        cluster,
        RELEASE,
        OPERATOR_NS,
        log_dir=tmp_path_factory.mktemp("operator-refusal-logs"),
        namespaces=list(NAMESPACES),
        extra_args=("--backoff-max-seconds", "4"),
        # The hostPath test needs the operator's own volume policy to let it through, where the
        # operator has one, so that Pod Security is what refuses it.
        extra_env={"NEURON_OPERATOR_ALLOWED_HOST_PATHS": HOST_FOLDER},
    )
    handle.start("op-refusals")
    try:
        yield handle
    finally:
        for identity in list(handle.processes):
            handle.stop(identity)
        for name in NAMESPACES:
            cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


def wait_for(operator: Operators, predicate: Callable[[], Any], what: str) -> Any:
    try:
        return operator.cluster.wait_for(predicate, TIMEOUT, what)
    except Exception as error:
        raise AssertionError(f"{error}\noperator logs:\n{operator.logs()}") from error


def workload(name: str, namespace: str, **spec: Any) -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(SAMPLE.read_text())
    document["metadata"] = {"name": name, "namespace": namespace}
    document["spec"]["nodeSelector"] = dict(KWOK_ONLY)
    document["spec"].update(spec)
    return document


def get_nwl(operator: Operators, namespace: str, name: str) -> dict[str, Any]:
    result: dict[str, Any] = kubectl_json(operator.cluster, "get", "nwl", name, "-n", namespace)
    return result


def condition_of(body: dict[str, Any], type_: str) -> dict[str, Any]:
    found = c.find((body.get("status") or {}).get("conditions"), type_)
    return dict(found) if found else {}


def pods_of(operator: Operators, namespace: str, name: str) -> list[dict[str, Any]]:
    found = kubectl_json(
        operator.cluster, "get", "pods", "-n", namespace, "-l", f"app.kubernetes.io/instance={name}"
    )
    return [p for p in found["items"] if not p["metadata"].get("deletionTimestamp")]


def refused(operator: Operators, namespace: str, name: str, reason: str) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        body = get_nwl(operator, namespace, name)
        return body if condition_of(body, c.REFUSED).get("reason") == reason else None

    body: dict[str, Any] = wait_for(operator, check, f"{name}: Refused {reason} on status")
    assert condition_of(body, c.REFUSED)["status"] == c.TRUE
    assert condition_of(body, c.READY)["status"] == c.FALSE
    assert condition_of(body, c.READY)["reason"] == reason
    return body


def warning_events(operator: Operators, namespace: str, name: str, reason: str) -> list[str]:
    def check() -> list[str] | None:
        events = kubectl_json(
            operator.cluster, "get", "events", "-n", namespace,
            "--field-selector", f"involvedObject.name={name},reason={reason},type=Warning",
        )["items"]  # fmt: skip
        return [str(e["message"]) for e in events] or None

    found: list[str] = wait_for(operator, check, f"a Warning Event {reason} on {name}")
    return found


def ready(operator: Operators, namespace: str, name: str) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        body = get_nwl(operator, namespace, name)
        ok = condition_of(body, c.READY).get("status") == c.TRUE
        return body if ok and condition_of(body, c.REFUSED).get("status") == c.FALSE else None

    body: dict[str, Any] = wait_for(operator, check, f"{name} Ready with no refusal")
    return body


def delete(operator: Operators, namespace: str, name: str) -> None:
    """Delete the test's workload, and check that no refusal cost a traceback in the log."""
    operator.cluster.kubectl("delete", "nwl", name, "-n", namespace, "--wait=true")
    assert "Traceback" not in operator.full_logs(), operator.logs()


def test_pod_security_refusal_is_forbidden_on_status(operator: Operators) -> None:
    host = {"name": "models", "hostPath": {"path": HOST_FOLDER, "type": "DirectoryOrCreate"}}
    mount = {"name": "models", "mountPath": "/models", "readOnly": True}
    document = workload("psa", RESTRICTED_NS, volumes=[host], volumeMounts=[mount])
    result = apply(operator.cluster, document)
    assert result.returncode == 0, result.stderr
    body = refused(operator, RESTRICTED_NS, "psa", c.REASON_FORBIDDEN)
    message = condition_of(body, c.REFUSED)["message"]
    assert 'violates PodSecurity "restricted:latest"' in message
    assert "hostPath" in message
    (event,) = warning_events(operator, RESTRICTED_NS, "psa", c.REASON_FORBIDDEN)
    assert 'violates PodSecurity "restricted:latest"' in event
    assert pods_of(operator, RESTRICTED_NS, "psa") == []
    # Without the volume the pod passes: the refusal clears (the edit retries at once).
    operator.cluster.kubectl(
        "patch", "nwl", "psa", "-n", RESTRICTED_NS, "--type=merge",
        "-p", json.dumps({"spec": {"volumes": None, "volumeMounts": None}}),
    )  # fmt: skip
    ready(operator, RESTRICTED_NS, "psa")
    delete(operator, RESTRICTED_NS, "psa")


def test_resource_quota_refusal_is_quota_exceeded_and_retried(operator: Operators) -> None:
    cluster = operator.cluster
    quota = {
        "apiVersion": "v1",
        "kind": "ResourceQuota",
        "metadata": {"name": "no-pods", "namespace": QUOTA_NS},
        "spec": {"hard": {"pods": "0"}},
    }
    assert apply(cluster, quota).returncode == 0
    wait_for(
        operator,
        lambda: (
            kubectl_json(cluster, "get", "resourcequota", "no-pods", "-n", QUOTA_NS)
            .get("status", {})
            .get("hard")
        ),
        "the quota controller to count the namespace",
    )
    assert apply(cluster, workload("quota", QUOTA_NS)).returncode == 0
    body = refused(operator, QUOTA_NS, "quota", c.REASON_QUOTA_EXCEEDED)
    assert "exceeded quota: no-pods" in condition_of(body, c.REFUSED)["message"]
    (event, *_) = warning_events(operator, QUOTA_NS, "quota", c.REASON_QUOTA_EXCEEDED)
    assert "exceeded quota: no-pods" in event
    # Raising the quota is not an event of the workload: the scheduled retry notices it.
    quota["spec"] = {"hard": {"pods": "5"}}
    assert apply(cluster, quota).returncode == 0
    ready(operator, QUOTA_NS, "quota")
    assert len(pods_of(operator, QUOTA_NS, "quota")) == 1
    delete(operator, QUOTA_NS, "quota")


def test_a_foreign_service_is_not_adopted_and_the_workload_is_not_ready(
    operator: Operators,
) -> None:
    cluster = operator.cluster
    foreign = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "taken", "namespace": PLAIN_NS, "labels": {"app": "other"}},
        "spec": {"selector": {"app": "other"}, "ports": [{"port": 80}]},
    }
    assert apply(cluster, foreign).returncode == 0
    assert apply(cluster, workload("taken", PLAIN_NS)).returncode == 0
    body = refused(operator, PLAIN_NS, "taken", c.REASON_NOT_OWNED)
    message = condition_of(body, c.REFUSED)["message"]
    assert f"Service {PLAIN_NS}/taken exists and is not controlled by any NeuronWorkload" in message
    (event, *_) = warning_events(operator, PLAIN_NS, "taken", c.REASON_NOT_OWNED)
    assert f"Service {PLAIN_NS}/taken" in event
    # The pods are created and ready; the workload stays not Ready while its Service is foreign.
    wait_for(
        operator,
        lambda: get_nwl(operator, PLAIN_NS, "taken")["status"].get("readyReplicas") == 1,
        "the workload's pod ready",
    )
    body = get_nwl(operator, PLAIN_NS, "taken")
    assert condition_of(body, c.READY)["reason"] == c.REASON_NOT_OWNED
    service = kubectl_json(cluster, "get", "service", "taken", "-n", PLAIN_NS)
    assert service["spec"]["selector"] == {"app": "other"}  # never patched
    assert not service["metadata"].get("ownerReferences")  # never adopted
    # Once the foreign Service is gone, the operator creates its own and the workload is Ready.
    cluster.kubectl("delete", "service", "taken", "-n", PLAIN_NS, "--wait=true")
    ready(operator, PLAIN_NS, "taken")
    service = kubectl_json(cluster, "get", "service", "taken", "-n", PLAIN_NS)
    assert service["metadata"]["ownerReferences"][0]["uid"] == body["metadata"]["uid"]
    delete(operator, PLAIN_NS, "taken")


def test_a_foreign_pod_of_a_planned_name_is_not_adopted(operator: Operators) -> None:
    cluster = operator.cluster
    document = workload("squatted", PLAIN_NS)
    parsed = workload_from_object(document)
    (planned,) = plan(parsed.spec).pods
    name = build_pod(planned, parsed)["metadata"]["name"]  # names do not depend on the uid
    foreign = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": PLAIN_NS},
        "spec": {"containers": [{"name": "c", "image": "other"}], "nodeSelector": KWOK_ONLY},
    }
    assert apply(cluster, foreign).returncode == 0
    assert apply(cluster, document).returncode == 0
    body = refused(operator, PLAIN_NS, "squatted", c.REASON_NOT_OWNED)
    message = condition_of(body, c.REFUSED)["message"]
    assert f"Pod {PLAIN_NS}/{name} exists and is not controlled by any NeuronWorkload" in message
    warning_events(operator, PLAIN_NS, "squatted", c.REASON_NOT_OWNED)
    pod = kubectl_json(cluster, "get", "pod", name, "-n", PLAIN_NS)
    assert not pod["metadata"].get("ownerReferences")  # never adopted
    cluster.kubectl("delete", "pod", name, "-n", PLAIN_NS, "--wait=true", "--grace-period=0")
    ready(operator, PLAIN_NS, "squatted")
    delete(operator, PLAIN_NS, "squatted")


def test_a_pod_too_large_to_start_is_refused_before_sending(operator: Operators) -> None:
    # 600 copies in one group: NEURON_MODELS of 600 name=path pairs of ~260 bytes is over the
    # 128 KiB the kernel allows one environment string (the pod would never start).
    model = {"name": "m", "path": "/models/" + "p" * 250, "cores": 1, "copies": 600}
    document = workload("huge", PLAIN_NS, models=[model], cores=1, nodeCores=16)
    document["spec"].pop("instanceType")
    result = apply(operator.cluster, document)
    assert result.returncode == 0, result.stderr
    body = refused(operator, PLAIN_NS, "huge", c.REASON_POD_TOO_LARGE)
    assert "the kernel allows one environment string" in condition_of(body, c.REFUSED)["message"]
    warning_events(operator, PLAIN_NS, "huge", c.REASON_POD_TOO_LARGE)
    assert pods_of(operator, PLAIN_NS, "huge") == []
    delete(operator, PLAIN_NS, "huge")


def test_a_non_string_env_value_is_refused_at_apply_or_reported_invalid(
    operator: Operators,
) -> None:
    document = workload("int-env", PLAIN_NS, env=[{"name": "FOO", "value": 5}])
    result = apply(operator.cluster, document)
    if result.returncode != 0:  # a CRD that types env values refuses it at once
        assert "env" in result.stderr
        return
    body = refused(operator, PLAIN_NS, "int-env", c.REASON_INVALID)
    assert condition_of(body, c.INVALID_SPEC)["status"] == c.TRUE
    warning_events(operator, PLAIN_NS, "int-env", c.REASON_INVALID)
    delete(operator, PLAIN_NS, "int-env")
