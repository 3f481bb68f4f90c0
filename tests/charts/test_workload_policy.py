"""The chart's NeuronWorkload policy as rendered: the ValidatingAdmissionPolicy, its binding and
the operator flags, all from workloadPolicy (their effect on a real API server is in
test_admission_policy_cluster.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from neuron_operator import api

CHART = Path(__file__).resolve().parents[2] / "charts" / "neuron-groups"
Obj = dict[str, Any]
Render = Callable[..., list[Obj]]
HelmRun = Callable[..., subprocess.CompletedProcess[str]]


def _workload_policy(objects: list[Obj], kind: str) -> list[Obj]:
    """Objects of ``kind`` of the workload policy (the device plugin has a policy too)."""
    return [
        o
        for o in objects
        if o["kind"] == kind
        and o["metadata"]["labels"].get("app.kubernetes.io/component") == "workload-policy"
    ]


def policy_objects(objects: list[Obj]) -> tuple[Obj, Obj]:
    policies = _workload_policy(objects, "ValidatingAdmissionPolicy")
    bindings = _workload_policy(objects, "ValidatingAdmissionPolicyBinding")
    assert len(policies) == 1 and len(bindings) == 1
    return policies[0], bindings[0]


def variables(policy: Obj) -> dict[str, str]:
    return {v["name"]: v["expression"] for v in policy["spec"]["variables"]}


def operator_args(objects: list[Obj]) -> list[str]:
    deployment = next(o for o in objects if o["kind"] == "Deployment")
    args: list[str] = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    return args


def test_default_policy_checks_the_requester_and_the_safe_volume_list(render: Render) -> None:
    objects = render()
    policy, binding = policy_objects(objects)
    spec = policy["spec"]
    assert spec["failurePolicy"] == "Fail"
    assert spec["matchConstraints"]["resourceRules"] == [
        {
            "apiGroups": [api.GROUP],
            "apiVersions": ["*"],
            "operations": ["CREATE", "UPDATE"],
            "resources": [api.PLURAL],
        }
    ]
    first = spec["validations"][0]
    assert first["expression"] == (
        "authorizer.group('').resource('pods').namespace(request.namespace)"
        ".check('create').allowed()"
    )
    assert first["reason"] == "Forbidden"
    assert json.loads(variables(policy)["allowedTypes"]) == list(api.DEFAULT_VOLUME_TYPES)
    assert "hostPrefixes" not in variables(policy)
    assert len(spec["validations"]) == 2
    assert binding["spec"] == {
        "policyName": policy["metadata"]["name"],
        "validationActions": ["Deny"],
    }
    assert not policy["metadata"].get("namespace")


def test_metadata_only_updates_are_not_checked(render: Render) -> None:
    policy, _ = policy_objects(render())
    (condition,) = policy["spec"]["matchConditions"]
    assert "object.spec != oldObject.spec" in condition["expression"]
    assert "request.operation == 'CREATE'" in condition["expression"]


HOST_CASES = [
    ("one-folder", ["/srv/models"], ["/srv/models/"]),
    ("trailing-slash-and-root", ["/data/", "/"], ["/data/", "/"]),
]


@pytest.mark.parametrize(
    ("paths", "prefixes"), [c[1:] for c in HOST_CASES], ids=[c[0] for c in HOST_CASES]
)
def test_host_paths_opt_in(render: Render, paths: list[str], prefixes: list[str]) -> None:
    objects = render(set_values=[f"workloadPolicy.allowedHostPaths={{{','.join(paths)}}}"])
    policy, _ = policy_objects(objects)
    found = variables(policy)
    assert json.loads(found["allowedTypes"]) == [*api.DEFAULT_VOLUME_TYPES, api.HOST_PATH]
    assert json.loads(found["hostPrefixes"]) == prefixes
    assert len(policy["spec"]["validations"]) == 4
    assert f"--allowed-host-paths={','.join(paths)}" in operator_args(objects)


def test_operator_flags_follow_the_values(render: Render) -> None:
    args = operator_args(render(set_values=["workloadPolicy.allowedVolumeTypes={emptyDir,csi}"]))
    assert "--allowed-volume-types=emptyDir,csi" in args
    assert "--allowed-host-paths=" in args
    defaults = operator_args(render())
    assert f"--allowed-volume-types={','.join(api.DEFAULT_VOLUME_TYPES)}" in defaults


def test_rendered_policy_flags_are_what_the_operator_parses(render: Render) -> None:
    args = operator_args(render(set_values=["workloadPolicy.allowedHostPaths={/srv/m}"]))
    values = dict(a.removeprefix("--").split("=", 1) for a in args if a.startswith("--allowed-"))
    assert api.parse_volume_types(values["allowed-volume-types"]) == api.DEFAULT_VOLUME_TYPES
    assert api.parse_host_paths(values["allowed-host-paths"]) == ("/srv/m",)
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "neuron-operator"), *args, "--help"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr


def test_policy_can_be_left_out(render: Render) -> None:
    objects = render(set_values=["workloadPolicy.admissionPolicy=false"])
    for kind in ("ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"):
        assert not _workload_policy(objects, kind)


BAD_VALUES = [
    ("host-path-as-type", "workloadPolicy.allowedVolumeTypes={hostPath}", "allowedVolumeTypes"),
    ("unknown-type", "workloadPolicy.allowedVolumeTypes={nfs}", "allowedVolumeTypes"),
    ("relative-folder", "workloadPolicy.allowedHostPaths={srv/models}", "allowedHostPaths"),
    ("climbing-folder", "workloadPolicy.allowedHostPaths={/srv/../etc}", "climbs with '..'"),
]


@pytest.mark.parametrize(
    ("setting", "needle"), [c[1:] for c in BAD_VALUES], ids=[c[0] for c in BAD_VALUES]
)
def test_bad_policy_values_are_refused(helm_run: HelmRun, setting: str, needle: str) -> None:
    proc = helm_run("template", "ng", str(CHART), "--set", setting, check=False)
    assert proc.returncode != 0
    assert needle in proc.stderr, proc.stderr
