"""Every way writing a child object can fail becomes one refusal with a reason a person can act on.

The API server's answers here are the bodies it really sends (status, reason, message), so the
table is also a record of what each refusal looks like on the wire.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from urllib3 import HTTPConnectionPool
from urllib3.exceptions import MaxRetryError

from neuron_operator import conditions as c
from neuron_operator.kube import SERVICE_UPDATED, ChildRefusedError, Kube
from neuron_operator.refusals import (
    MAX_ANNOTATION_BYTES,
    MAX_ENV_STRING_BYTES,
    MAX_POD_BYTES,
    MAX_QUOTE,
    classify_exception,
    pod_size_refusal,
    quote,
)

PSA = (
    'pods "w-abc-0-0" is forbidden: violates PodSecurity "restricted:latest": '
    'restricted volume types (volume "host" uses restricted volume type "hostPath")'
)
QUOTA = (
    'pods "w-abc-0-0" is forbidden: exceeded quota: pods, requested: pods=1, used: pods=0, '
    "limited: pods=0"
)
INVALID = (
    'Pod "w-abc-0-0" is invalid: spec.containers[0].resources.requests[cpu]: Invalid value: '
    '"lots": quantities must match the regular expression'
)
UNMARSHAL = (
    'Pod in version "v1" cannot be handled as a Pod: json: cannot unmarshal number into Go '
    "struct field EnvVar.spec.containers.env.value of type string"
)


def api_error(status: int, message: str, reason: str = "") -> ApiException:
    error = ApiException(status=status, reason=reason or "Refused")
    error.body = json.dumps({"kind": "Status", "status": "Failure", "message": message})
    return error


CASES: list[tuple[str, BaseException, str, bool, str]] = [
    ("pod-security-403", api_error(403, PSA), c.REASON_FORBIDDEN, False, "violates PodSecurity"),
    ("quota-403", api_error(403, QUOTA), c.REASON_QUOTA_EXCEEDED, False, "exceeded quota: pods"),
    ("quota-not-counted-yet-403", api_error(403, 'status unknown for quota: q, resource: pods'),
     c.REASON_API_UNAVAILABLE, True, "status unknown for quota"),
    ("rbac-403", api_error(403, "cannot create resource"), c.REASON_FORBIDDEN, False, "cannot"),
    ("invalid-422", api_error(422, INVALID), c.REASON_INVALID, False, "quantities must match"),
    ("bad-request-400", api_error(400, UNMARSHAL), c.REASON_INVALID, False, "cannot unmarshal"),
    ("too-large-413", api_error(413, "Request entity too large: limit is 3145728"),
     c.REASON_POD_TOO_LARGE, False, "limit is 3145728"),
    ("etcd-too-large-500", api_error(500, "etcdserver: request is too large"),
     c.REASON_POD_TOO_LARGE, False, "request is too large"),
    ("etcd-grpc-too-large-500", api_error(500, "rpc error: code = ResourceExhausted desc = "
     "trying to send message larger than max (2500744 vs. 2097152)"),
     c.REASON_POD_TOO_LARGE, False, "larger than max"),
    ("unauthorized-401", api_error(401, "Unauthorized"), c.REASON_UNAUTHORIZED, False, "401"),
    ("conflict-409", api_error(409, "the object has been modified"),
     c.REASON_API_UNAVAILABLE, True, "has been modified"),
    ("throttled-429", api_error(429, "too many requests"), c.REASON_API_UNAVAILABLE, True, "429"),
    ("server-503", api_error(503, "etcd leader changed"), c.REASON_API_UNAVAILABLE, True, "etcd"),
    ("other-4xx", api_error(405, "method not allowed"), c.REASON_REFUSED, False, "not allowed"),
    ("no-json-body", ApiException(status=403, reason="Forbidden"), c.REASON_FORBIDDEN, False,
     "Forbidden"),
    ("client-value-error", ValueError("Invalid value for `value`, must be a string"),
     c.REASON_INVALID, False, "Kubernetes client refused pod w-abc-0-0"),
    ("client-type-error", TypeError("Object of type set is not JSON serializable"),
     c.REASON_INVALID, False, "not JSON serializable"),
    ("no-connection", MaxRetryError(HTTPConnectionPool("x"), "/api", ConnectionRefusedError()),
     c.REASON_API_UNAVAILABLE, True, "could not be reached"),
    ("socket-error", ConnectionResetError("reset by peer"), c.REASON_API_UNAVAILABLE, True,
     "reset by peer"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("error", "reason", "transient", "quoted"), [x[1:] for x in CASES], ids=[x[0] for x in CASES]
)
def test_every_error_is_one_refusal_with_an_actionable_reason(
    error: BaseException, reason: str, transient: bool, quoted: str
) -> None:
    refusal = classify_exception(error, "Pod", "w-abc-0-0")
    assert (refusal.reason, refusal.transient) == (reason, transient)
    assert quoted in refusal.message
    assert "w-abc-0-0" in refusal.message
    assert refusal.advice  # every reason says what to do


def test_a_long_api_message_is_quoted_with_a_bound() -> None:
    refusal = classify_exception(api_error(422, "x" * 200_000), "Pod", "p")
    assert len(refusal.describe()) < MAX_QUOTE + 400
    assert f"({200_000 - MAX_QUOTE} more characters)" in refusal.message


def test_quote_keeps_short_text_and_folds_whitespace() -> None:
    assert quote("a\n  b") == "a b"


def pod(env_value: str = "1", annotation: str = "m", extra_env: int = 0) -> dict[str, Any]:
    env = [{"name": "NEURON_MODELS", "value": env_value}]
    env += [{"name": f"E{i}", "value": "v" * 100_000} for i in range(extra_env)]
    return {
        "metadata": {"name": "w-abc-0-0", "annotations": {"neurongroups.dev/models": annotation}},
        "spec": {"containers": [{"name": "runtime", "env": env}]},
    }


SIZE_CASES: list[tuple[str, dict[str, Any], str | None]] = [
    ("small", pod(), None),
    ("env-at-the-kernel-limit", pod("x" * (MAX_ENV_STRING_BYTES - len("NEURON_MODELS=x"))), None),
    ("env-over-the-kernel-limit", pod("x" * MAX_ENV_STRING_BYTES), "the kernel allows"),
    ("annotations-over-256k", pod(annotation="m," * (MAX_ANNOTATION_BYTES // 2)), "annotations"),
    ("pod-over-1mib", pod(extra_env=MAX_POD_BYTES // 100_000 + 1), "of JSON, above the 1.0 MiB"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("manifest", "says"), [x[1:] for x in SIZE_CASES], ids=[x[0] for x in SIZE_CASES]
)
def test_a_pod_too_large_to_send_or_start_is_refused_before_sending(
    manifest: dict[str, Any], says: str | None
) -> None:
    refusal = pod_size_refusal(manifest)
    if says is None:
        assert refusal is None
        return
    assert refusal is not None
    assert refusal.reason == c.REASON_POD_TOO_LARGE
    assert says in refusal.message
    assert "fewer model copies per pod" in refusal.advice


class FakeCore:
    """The CoreV1Api calls ``Kube`` makes for children, answering from a script."""

    def __init__(self, create_error: BaseException | None, existing: dict[str, Any] | None):
        self.create_error = create_error
        self.existing = existing
        self.created: list[str] = []
        self.patched: list[Any] = []
        self.patch_error: BaseException | None = None

    def _response(self, document: dict[str, Any]) -> Any:
        return type("Response", (), {"data": json.dumps(document).encode()})()

    def create_namespaced_pod(self, namespace: str, body: Any, **_: Any) -> Any:
        if self.create_error is not None:
            raise self.create_error
        self.created.append(body["metadata"]["name"])

    create_namespaced_service = create_namespaced_pod

    def list_namespaced_pod(self, namespace: str, **_: Any) -> Any:
        return self._response({"items": [self.existing] if self.existing else []})

    def patch_namespaced_service(self, name: str, namespace: str, body: Any, **_: Any) -> Any:
        if self.patch_error is not None:
            raise self.patch_error
        self.patched.append(body)

    def read_namespaced_service(self, name: str, namespace: str, **_: Any) -> Any:
        if self.existing is None:
            raise ApiException(status=404, reason="Not Found")
        return self._response(self.existing)


def child(kind: str, owner_uid: str | None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": "w", "namespace": "ns"}
    if owner_uid:
        meta["ownerReferences"] = [
            {
                "apiVersion": "neurongroups.dev/v1alpha1",
                "kind": "NeuronWorkload",
                "name": "w",
                "uid": owner_uid,
                "controller": True,
            }
        ]
    return {"apiVersion": "v1", "kind": kind, "metadata": meta}


def kube_with(core: FakeCore) -> Kube:
    kube = Kube(client.ApiClient())
    kube.core = core  # type: ignore[assignment]
    return kube


KUBE_CASES: list[tuple[str, str, BaseException | None, dict[str, Any] | None, str | None]] = [
    ("pod-created", "Pod", None, None, None),
    ("pod-quota", "Pod", api_error(403, QUOTA), None, c.REASON_QUOTA_EXCEEDED),
    ("pod-client-side", "Pod", ValueError("bad"), None, c.REASON_INVALID),
    ("pod-exists-and-is-ours", "Pod", api_error(409, "exists"), child("Pod", "uid-1"), None),
    ("pod-exists-foreign", "Pod", api_error(409, "exists"), child("Pod", None), c.REASON_NOT_OWNED),
    ("pod-exists-other-owner", "Pod", api_error(409, "exists"), child("Pod", "uid-2"),
     c.REASON_NOT_OWNED),
    ("pod-409-then-gone", "Pod", api_error(409, "exists"), None, c.REASON_API_UNAVAILABLE),
    ("service-created", "Service", None, None, None),
    ("service-forbidden", "Service", api_error(403, "no"), None, c.REASON_FORBIDDEN),
    ("service-ours", "Service", None, child("Service", "uid-1"), None),
    ("service-foreign", "Service", None, child("Service", None), c.REASON_NOT_OWNED),
    ("service-other-owner", "Service", None, child("Service", "uid-2"), c.REASON_NOT_OWNED),
]  # fmt: skip


@pytest.mark.parametrize(
    ("kind", "create_error", "existing", "reason"),
    [x[1:] for x in KUBE_CASES],
    ids=[x[0] for x in KUBE_CASES],
)
def test_kube_turns_every_child_write_error_into_a_refusal(
    kind: str,
    create_error: BaseException | None,
    existing: dict[str, Any] | None,
    reason: str | None,
) -> None:
    core = FakeCore(create_error, existing)
    kube = kube_with(core)
    write = kube.create_pod if kind == "Pod" else kube.ensure_service
    if reason is None:
        write(child(kind, "uid-1"), "uid-1")
        return
    with pytest.raises(ChildRefusedError) as caught:
        write(child(kind, "uid-1"), "uid-1")
    assert caught.value.refusal.reason == reason
    assert caught.value.refusal.kind == kind
    if reason == c.REASON_NOT_OWNED:
        assert f"{kind} ns/w exists and is" in caught.value.refusal.message
    assert core.created == []


def test_a_foreign_service_is_never_written() -> None:
    core = FakeCore(None, child("Service", None))
    with pytest.raises(ChildRefusedError):
        kube_with(core).ensure_service(child("Service", "uid-1"), "uid-1")
    assert core.created == []


def service(owner_uid: str, *ports: tuple[str, int]) -> dict[str, Any]:
    body = child("Service", owner_uid)
    body["metadata"]["resourceVersion"] = "42"
    body["spec"] = {
        "ports": [{"name": n, "port": p, "targetPort": n, "protocol": "TCP"} for n, p in ports]
    }
    return body


def test_the_services_ports_follow_the_spec() -> None:
    """An edit of spec.container.ports reaches the existing Service: its ports are replaced as a
    whole (a JSON patch guarded by its resourceVersion), and nothing is written when they match."""
    desired = service("uid-1", ("http", 8080))
    core = FakeCore(None, service("uid-1", ("http", 8000), ("grpc", 8001)))
    assert kube_with(core).ensure_service(desired, "uid-1") == SERVICE_UPDATED
    assert core.patched == [
        [
            {"op": "test", "path": "/metadata/resourceVersion", "value": "42"},
            {"op": "replace", "path": "/spec/ports", "value": desired["spec"]["ports"]},
        ]
    ]
    same = FakeCore(None, service("uid-1", ("http", 8080)))
    assert kube_with(same).ensure_service(desired, "uid-1") == ""
    assert same.patched == []
    refused = FakeCore(None, service("uid-1", ("http", 8000)))
    refused.patch_error = api_error(403, "no")
    with pytest.raises(ChildRefusedError) as caught:
        kube_with(refused).ensure_service(desired, "uid-1")
    assert caught.value.refusal.reason == c.REASON_FORBIDDEN
    foreign = FakeCore(None, service("", ("http", 8000)))
    with pytest.raises(ChildRefusedError):
        kube_with(foreign).ensure_service(desired, "uid-1")
    assert foreign.patched == []  # a foreign Service is never changed


def test_the_real_client_refusing_a_non_string_env_value_is_invalid_spec() -> None:
    """The Kubernetes client validates a pod before sending it (no server is needed to see it)."""
    pod = child("Pod", "uid-1")
    pod["spec"] = {"containers": [{"name": "c", "image": "i", "env": [{"name": "A", "value": 5}]}]}
    with pytest.raises(ChildRefusedError) as caught:
        Kube(client.ApiClient()).create_pod(pod, "uid-1")
    assert caught.value.refusal.reason == c.REASON_INVALID
    assert "the Kubernetes client refused pod w" in caught.value.refusal.message
