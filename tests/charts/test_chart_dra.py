"""The chart's ``dra.enabled``: the driver's DaemonSet, least-privilege RBAC, own-node policy."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from neuron_dra_driver.classes import device_classes
from neuron_dra_driver.cli import build_parser
from neuron_localcluster.clitools import ensure_helm

CHART = Path(__file__).resolve().parents[2] / "charts" / "neuron-groups"


def _render(*sets: str) -> list[dict[str, Any]]:
    args = [str(ensure_helm()), "template", "ng", str(CHART), "--namespace", "neuron"]
    for value in sets:
        args += ["--set", value]
    proc = subprocess.run(args, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


def _dra(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        d
        for d in docs
        if d["metadata"].get("labels", {}).get("app.kubernetes.io/component")
        in {"dra", "dra-driver"}
    ]


def _one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    (found,) = [d for d in _dra(docs) if d["kind"] == kind]
    return found


def test_nothing_of_the_driver_by_default() -> None:
    assert _dra(_render()) == []


def test_enabled_installs_classes_daemonset_account_rbac_and_policy() -> None:
    docs = _render("dra.enabled=true")
    kinds = sorted(d["kind"] for d in _dra(docs))
    assert kinds == sorted(
        [
            "ClusterRole",
            "ClusterRoleBinding",
            "DaemonSet",
            "DeviceClass",
            "DeviceClass",
            "ServiceAccount",
            "ValidatingAdmissionPolicy",
            "ValidatingAdmissionPolicyBinding",
        ]
    )
    classes = [d for d in _dra(docs) if d["kind"] == "DeviceClass"]
    assert [{**c, "metadata": {"name": c["metadata"]["name"]}} for c in classes] == (
        device_classes()
    )


def test_the_role_grants_exactly_what_the_driver_calls() -> None:
    role = _one(_render("dra.enabled=true"), "ClusterRole")
    rules = {
        (group, resource): sorted(rule["verbs"])
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
    }
    assert rules == {
        ("", "nodes"): ["get"],
        ("resource.k8s.io", "resourceslices"): sorted(
            ["get", "list", "watch", "create", "update", "patch", "delete"]
        ),
        ("resource.k8s.io", "resourceclaims"): ["get"],
    }
    binding = _one(_render("dra.enabled=true"), "ClusterRoleBinding")
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "ng-neuron-groups-dra-driver", "namespace": "neuron"}
    ]


@pytest.mark.parametrize(
    ("sets", "user"),
    [
        ((), "system:serviceaccount:neuron:ng-neuron-groups-dra-driver"),
        (("dra.serviceAccount.name=cores",), "system:serviceaccount:neuron:cores"),
    ],
    ids=["default-account", "named-account"],
)
def test_the_policy_binds_the_drivers_account_to_its_own_node(
    sets: tuple[str, ...], user: str
) -> None:
    docs = _render("dra.enabled=true", *sets)
    policy = _one(docs, "ValidatingAdmissionPolicy")
    spec = policy["spec"]
    assert spec["failurePolicy"] == "Fail"
    (rule,) = spec["matchConstraints"]["resourceRules"]
    assert rule["resources"] == ["resourceslices"]
    assert sorted(rule["operations"]) == ["CREATE", "DELETE", "UPDATE"]
    (condition,) = spec["matchConditions"]
    assert condition["expression"] == f'request.userInfo.username == "{user}"'
    assert "authentication.kubernetes.io/node-name" in spec["variables"][0]["expression"]
    binding = _one(docs, "ValidatingAdmissionPolicyBinding")
    assert binding["spec"]["policyName"] == policy["metadata"]["name"]
    assert binding["spec"]["validationActions"] == ["Deny"]
    account = _one(docs, "ServiceAccount")
    assert user.endswith(":" + account["metadata"]["name"])


def _driver(*sets: str) -> dict[str, Any]:
    daemonset = _one(_render("dra.enabled=true", *sets), "DaemonSet")
    pod: dict[str, Any] = daemonset["spec"]["template"]["spec"]
    return pod


def test_the_daemonset_runs_the_kubelet_plugin_unprivileged_on_the_kubelets_folders() -> None:
    pod = _driver()
    (container,) = pod["containers"]
    args = build_parser(environ={}).parse_args(container["args"])
    assert args.kubelet_plugin
    assert args.backend == "sysfs"
    assert (args.dev_root, args.host_dev_root) == ("/host/dev", "/dev")
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    for folder in (args.plugin_dir, args.registry_dir, args.cdi_dir):
        assert folder in mounts and not mounts[folder].get("readOnly")
    assert args.plugin_dir == "/var/lib/kubelet/plugins/neuroncores.neurongroups.dev"
    assert args.registry_dir == "/var/lib/kubelet/plugins_registry"
    assert mounts["/host/dev"]["readOnly"] and mounts["/host/sys"]["readOnly"]
    (env,) = container["env"]
    assert env == {
        "name": "NEURON_DRA_NODE_NAME",
        "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}},
    }
    security = container["securityContext"]
    assert security["privileged"] is False
    assert security["allowPrivilegeEscalation"] is False
    assert security["readOnlyRootFilesystem"] is True
    assert security["capabilities"] == {"drop": ["ALL"]}
    # the pod's own bound token: it names the node, which the admission policy checks
    assert pod.get("automountServiceAccountToken", True) is True
    assert pod["serviceAccountName"] == "ng-neuron-groups-dra-driver"


def test_the_simulated_backend_takes_the_instance_type() -> None:
    pod = _driver("dra.driver.backend=simulated", "dra.driver.simulatedInstanceType=inf2.xlarge")
    args = build_parser(environ={}).parse_args(pod["containers"][0]["args"])
    assert (args.backend, args.instance_type) == ("simulated", "inf2.xlarge")


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("dra.driver.backend=pci", "backend"),
        ("dra.driver.cdiDir=var/run/cdi", "cdiDir"),
        ("dra.driver.logLevel=chatty", "logLevel"),
    ],
    ids=["backend", "relative-cdi-dir", "log-level"],
)
def test_the_schema_refuses_bad_driver_values(value: str, message: str) -> None:
    args = [str(ensure_helm()), "template", "ng", str(CHART), "--set", "dra.enabled=true"]
    proc = subprocess.run([*args, "--set", value], capture_output=True, text=True, check=False)
    assert proc.returncode != 0
    assert message in proc.stderr
