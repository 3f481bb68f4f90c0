"""devicePlugin.resourceMode and podResourcesDir: which resources a node offers, and the mount
that lets the plugin keep the two exclusive (docs/device-plugin.md, "One silicon, two
resources")."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

Obj = dict[str, Any]
Render = Callable[..., list[Obj]]
SOCKET = "/var/lib/kubelet/pod-resources/kubelet.sock"
QUIET = "devicePlugin.publishAllocations=false"


def _plugin(render: Render, set_values: list[str]) -> tuple[list[str], dict[str, Obj], set[str]]:
    [ds] = [
        o
        for o in render(set_values=set_values)
        if o["kind"] == "DaemonSet"
        and o["metadata"]["labels"].get("app.kubernetes.io/component") == "device-plugin"
    ]
    spec = ds["spec"]["template"]["spec"]
    container = spec["containers"][0]
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    return container["args"], mounts, {v["name"] for v in spec["volumes"]}


@pytest.mark.parametrize(
    ("set_values", "mode", "socket", "mounted"),
    [
        ([], "both", SOCKET, True),
        (["devicePlugin.resourceMode=neuroncore", QUIET], "neuroncore", "none", False),
        (["devicePlugin.resourceMode=neuron", QUIET], "neuron", "none", False),
        (["devicePlugin.resourceMode=neuroncore"], "neuroncore", SOCKET, True),
        (["devicePlugin.podResourcesDir="], "both", "none", False),
        (
            ["devicePlugin.podResourcesDir=/run/kubelet/pr"],
            "both",
            "/run/kubelet/pr/kubelet.sock",
            True,
        ),
    ],
    ids=[
        "default-both",
        "cores-only",
        "devices-only",
        "cores-only-publishing",
        "both-without-pod-resources",
        "custom-dir",
    ],
)
def test_resource_mode_flags_and_mount(
    render: Render, set_values: list[str], mode: str, socket: str, mounted: bool
) -> None:
    args, mounts, volumes = _plugin(render, set_values)
    assert f"--resources={mode}" in args
    assert f"--pod-resources-socket={socket}" in args
    assert ("pod-resources" in volumes) is mounted
    assert ("pod-resources" in mounts) is mounted
    if mounted:
        assert mounts["pod-resources"]["readOnly"] is True
        assert socket.startswith(mounts["pod-resources"]["mountPath"] + "/")


@pytest.mark.parametrize(
    "value",
    ["devicePlugin.resourceMode=all", "devicePlugin.podResourcesDir=relative/dir"],
    ids=["unknown-mode", "relative-dir"],
)
def test_bad_values_are_refused_by_the_schema(render: Render, value: str) -> None:
    key = value.partition("=")[0]
    with pytest.raises(AssertionError, match=key.replace(".", "/")):
        render(set_values=[value])


def _by_component(objs: list[Obj], kind: str) -> list[Obj]:
    return [
        o
        for o in objs
        if o["kind"] == kind
        and o["metadata"]["labels"].get("app.kubernetes.io/component") == "device-plugin"
    ]


@pytest.mark.parametrize(
    ("set_values", "publishing"),
    [([], True), ([QUIET], False), (["devicePlugin.podResourcesDir="], False)],
    ids=["default-on", "off", "no-pod-resources-folder"],
)
def test_publishing_allocations_brings_a_token_patch_on_nodes_and_the_own_node_policy(
    render: Render, set_values: list[str], publishing: bool
) -> None:
    objs = render(set_values=set_values)
    args, _, _ = _plugin(render, set_values)
    [ds] = _by_component(objs, "DaemonSet")
    assert ds["spec"]["template"]["spec"]["automountServiceAccountToken"] is publishing
    assert ("--publish-allocations=true" in args) is publishing
    assert ("--node-name=$(NODE_NAME)" in args) is publishing
    roles = _by_component(objs, "ClusterRole")
    policies = _by_component(objs, "ValidatingAdmissionPolicy")
    bindings = _by_component(objs, "ValidatingAdmissionPolicyBinding")
    if not publishing:
        assert not roles and not policies and not bindings
        return
    [role] = roles
    assert role["rules"] == [{"apiGroups": [""], "resources": ["nodes"], "verbs": ["patch"]}]
    [binding] = _by_component(objs, "ClusterRoleBinding")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"][0]["name"] == ds["spec"]["template"]["spec"]["serviceAccountName"]
    [policy] = policies
    assert [b["spec"]["policyName"] for b in bindings] == [policy["metadata"]["name"]]
    assert bindings[0]["spec"]["validationActions"] == ["Deny"]
    account = ds["spec"]["template"]["spec"]["serviceAccountName"]
    [condition] = policy["spec"]["matchConditions"]
    assert f"system:serviceaccount:neuron-groups:{account}" in condition["expression"]
