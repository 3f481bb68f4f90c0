"""Small pure pieces of the controller and the kopf wiring."""

from __future__ import annotations

from typing import Any

import pytest
from kubernetes import client

from neuron_operator.controller import status_changed
from neuron_operator.handlers import connection_info
from neuron_operator.kube import controller_name, controller_uid

BASE: dict[str, Any] = {
    "replicas": 1,
    "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": "t1"}],
}

CHANGE_CASES: list[tuple[str, dict[str, Any], bool]] = [
    ("same", {"replicas": 1, "conditions": [{"type": "Ready", "status": "True"}]}, False),
    (
        "only-transition-time",
        {
            "replicas": 1,
            "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": "t9"}],
        },
        False,
    ),
    ("field-changed", {"replicas": 2, "conditions": [{"type": "Ready", "status": "True"}]}, True),
    (
        "condition-changed",
        {"replicas": 1, "conditions": [{"type": "Ready", "status": "False"}]},
        True,
    ),
    ("new-field", {**BASE, "planSummary": "1x[1]"}, True),
]


@pytest.mark.parametrize(
    ("new", "changed"), [c[1:] for c in CHANGE_CASES], ids=[c[0] for c in CHANGE_CASES]
)
def test_status_changed_ignores_transition_times(new: dict[str, Any], changed: bool) -> None:
    assert status_changed(BASE, new) is changed


def owned(kind: str, controller: bool) -> dict[str, Any]:
    ref = {"apiVersion": "neurongroups.dev/v1alpha1", "kind": kind, "name": "w", "uid": "u"}
    return {"metadata": {"ownerReferences": [{**ref, "controller": controller}]}}


OWNER_CASES = [
    ("controlled", owned("NeuronWorkload", True), "u", "w"),
    ("not-controller", owned("NeuronWorkload", False), None, None),
    ("other-kind", owned("ReplicaSet", True), None, None),
    ("no-owner", {"metadata": {}}, None, None),
]


@pytest.mark.parametrize(
    ("obj", "uid", "name"), [c[1:] for c in OWNER_CASES], ids=[c[0] for c in OWNER_CASES]
)
def test_controller_reference(obj: dict[str, Any], uid: str | None, name: str | None) -> None:
    assert controller_uid(obj) == uid
    assert controller_name(obj) == name


def test_kopf_logs_in_with_the_client_configuration() -> None:
    configuration = client.Configuration()
    configuration.host = "https://127.0.0.1:6443"
    configuration.ssl_ca_cert = "/tmp/ca.crt"
    configuration.api_key = {"BearerToken": "abc"}
    configuration.api_key_prefix = {"BearerToken": "Bearer"}
    info = connection_info(configuration)
    assert (info.server, info.ca_path, info.scheme, info.token) == (
        "https://127.0.0.1:6443",
        "/tmp/ca.crt",
        "Bearer",
        "abc",
    )
    assert info.insecure is False
