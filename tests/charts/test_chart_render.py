"""What `helm template` renders, asserted as objects: RBAC, probes, security, placement, names.

Every assertion runs over the defaults and over every values file in charts/neuron-groups/ci/, so
a setting that only one values file turns on is still checked.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

CHART = Path(__file__).resolve().parents[2] / "charts" / "neuron-groups"
VALUE_SETS: dict[str, tuple[Path, ...]] = {"defaults": ()} | {
    f.stem: (f,) for f in sorted((CHART / "ci").glob("*.yaml"))
}
IDS = list(VALUE_SETS)
Obj = dict[str, Any]
Render = Callable[..., list[Obj]]
HelmRun = Callable[..., subprocess.CompletedProcess[str]]

_cache: dict[str, list[Obj]] = {}


@pytest.fixture(params=IDS)
def objects(request: pytest.FixtureRequest, render: Render) -> list[Obj]:
    name: str = request.param
    if name not in _cache:
        _cache[name] = render(values_files=VALUE_SETS[name])
    return _cache[name]


def pod_specs(objects: list[Obj]) -> list[tuple[Obj, Obj]]:
    return [
        (o, o["spec"]["template"]["spec"])
        for o in objects
        if o["kind"] in ("Deployment", "DaemonSet", "Job", "StatefulSet")
    ] + [(o, o["spec"]) for o in objects if o["kind"] == "Pod"]


def containers(spec: Obj) -> list[Obj]:
    return [*spec.get("initContainers", []), *spec.get("containers", [])]


def component(obj: Obj) -> str:
    labels: dict[str, str] = obj["metadata"].get("labels", {})
    return labels.get("app.kubernetes.io/component", "")


def one(objects: list[Obj], kind: str, comp: str) -> Obj:
    found = [o for o in objects if o["kind"] == kind and component(o) == comp]
    assert len(found) == 1, f"expected one {kind} for {comp}, found {len(found)}"
    return found[0]


@pytest.mark.parametrize("values", IDS, ids=IDS)
def test_helm_lint_strict_passes(helm_run: HelmRun, values: str) -> None:
    args = ["lint", str(CHART), "--strict"]
    for f in VALUE_SETS[values]:
        args += ["-f", str(f)]
    out = helm_run(*args).stdout
    assert "0 chart(s) failed" in out


def test_rbac_has_no_wildcards(objects: list[Obj]) -> None:
    rules = [
        rule for o in objects if o["kind"] in ("Role", "ClusterRole") for rule in o.get("rules", [])
    ]
    if any(o["kind"] == "Deployment" for o in objects):
        assert rules, "the operator is rendered without RBAC rules"
    for rule in rules:
        for field in ("apiGroups", "resources", "verbs", "resourceNames", "nonResourceURLs"):
            for item in rule.get(field, []):
                assert "*" not in item, f"wildcard {item!r} in {field} of {rule}"
        assert not set(rule["verbs"]) & {"escalate", "bind", "impersonate"}, rule


def _grants(objects: list[Obj]) -> set[tuple[str, str, str]]:
    return {
        (group, resource, verb)
        for o in objects
        if o["kind"] in ("Role", "ClusterRole") and component(o) == "operator"
        for rule in o["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


@pytest.mark.parametrize(
    ("group", "resource", "verbs"),
    [
        ("neurongroups.dev", "neuronworkloads", ("get", "list", "watch")),
        ("neurongroups.dev", "neuronworkloads/status", ("patch",)),
        ("", "pods", ("list", "watch", "create", "delete")),
        ("", "services", ("get", "create", "patch")),
        ("", "events", ("create",)),
        ("coordination.k8s.io", "leases", ("create", "get", "update")),
        ("resource.k8s.io", "resourceclaimtemplates", ("get", "list", "create", "delete")),
        ("resource.k8s.io", "resourceclaims", ("list",)),
        ("resource.k8s.io", "deviceclasses", ("get",)),
        ("resource.k8s.io", "resourceslices", ("list",)),
    ],
    ids=[
        "workloads",
        "status",
        "pods",
        "services",
        "events",
        "leases",
        "claim-templates",
        "claims",
        "device-classes",
        "resource-slices",
    ],
)
def test_operator_rbac_grants_what_it_needs(
    render: Render, group: str, resource: str, verbs: tuple[str, ...]
) -> None:
    grants = _grants(render())
    for verb in verbs:
        assert (group, resource, verb) in grants


@pytest.mark.parametrize(
    ("resource", "verb"),
    [
        ("secrets", "get"),
        ("secrets", "list"),
        ("nodes", "patch"),
        ("pods", "update"),
        ("pods", "patch"),
        ("neuronworkloads", "delete"),
        ("neuronworkloads", "create"),
        ("neuronworkloads", "patch"),
        ("neuronworkloads/scale", "update"),
        ("customresourcedefinitions", "get"),
        ("leases", "delete"),
        ("resourceclaims", "create"),
        ("resourceclaims", "delete"),
        ("resourceclaimtemplates", "update"),
        ("deviceclasses", "list"),
        ("resourceslices", "watch"),
        ("resourceslices", "create"),
        ("resourceclaims", "watch"),
        ("nodes", "get"),
        ("nodes", "watch"),
    ],
    ids=[
        "no-secret-get",
        "no-secret-list",
        "no-node-patch",
        "no-pod-update",
        "no-pod-patch",
        "no-nwl-delete",
        "no-nwl-create",
        "no-nwl-patch",
        "no-scale-update",
        "no-crd-get",
        "no-lease-delete",
        "no-claim-create",
        "no-claim-delete",
        "no-claim-template-update",
        "no-deviceclass-list",
        "no-slice-watch",
        "no-slice-create",
        "no-claim-watch",
        "no-node-get",
        "no-node-watch",
    ],
)
def test_operator_rbac_withholds_what_it_does_not_need(
    render: Render, resource: str, verb: str
) -> None:
    assert not any(r == resource and v == verb for _, r, v in _grants(render()))


def test_lease_rights_are_limited_to_the_one_lease(render: Render) -> None:
    role = next(o for o in render() if o["kind"] == "Role" and component(o) == "operator")
    assert role["metadata"]["namespace"] == "neuron-groups"
    for rule in role["rules"]:
        assert rule["resources"] == ["leases"]
        if set(rule["verbs"]) != {"create"}:
            assert rule["resourceNames"] == ["neuron-groups-operator"]


@pytest.mark.parametrize(
    "values", [None, "ha-namespaced-values"], ids=["cluster-wide", "namespaced"]
)
def test_device_class_read_is_one_class_bound_cluster_wide(
    render: Render, values: str | None
) -> None:
    objs = render(values_files=VALUE_SETS[values]) if values else render()
    role = next(
        o
        for o in objs
        if o["kind"] == "ClusterRole" and any("deviceclasses" in r["resources"] for r in o["rules"])
    )
    assert role["rules"] == [
        {
            "apiGroups": ["resource.k8s.io"],
            "resources": ["deviceclasses"],
            "resourceNames": ["neuroncores.neurongroups.dev"],
            "verbs": ["get"],
        }
    ]
    bound = {o["roleRef"]["name"] for o in objs if o["kind"] == "ClusterRoleBinding"}
    assert role["metadata"]["name"] in bound


@pytest.mark.parametrize(
    "values", [None, "ha-namespaced-values"], ids=["cluster-wide", "namespaced"]
)
def test_free_core_reads_are_list_only_and_bound_cluster_wide(
    render: Render, values: str | None
) -> None:
    """The nodes' free cores (slices and every namespace's claims) are read cluster-wide even
    for an operator serving some namespaces: the scheduler's view is the whole cluster's."""
    objs = render(values_files=VALUE_SETS[values]) if values else render()
    role = next(
        o
        for o in objs
        if o["kind"] == "ClusterRole"
        and any("resourceslices" in r["resources"] for r in o["rules"])
        and component(o) == "operator"
    )
    assert role["rules"] == [
        {
            "apiGroups": ["resource.k8s.io"],
            "resources": ["resourceslices", "resourceclaims"],
            "verbs": ["list"],
        },
        {"apiGroups": [""], "resources": ["nodes"], "verbs": ["list"]},
    ]
    bound = {o["roleRef"]["name"] for o in objs if o["kind"] == "ClusterRoleBinding"}
    assert role["metadata"]["name"] in bound


def test_namespaced_operator_is_bound_only_in_its_namespaces(render: Render) -> None:
    objs = render(values_files=VALUE_SETS["ha-namespaced-values"])
    bindings = [
        o for o in objs if o["kind"] == "RoleBinding" and o["roleRef"]["kind"] == "ClusterRole"
    ]
    assert sorted(b["metadata"]["namespace"] for b in bindings) == ["team-a", "team-b"]
    cluster_bound = {o["roleRef"]["name"] for o in objs if o["kind"] == "ClusterRoleBinding"}
    workloads_role = next(
        o
        for o in objs
        if o["kind"] == "ClusterRole" and any("pods" in r["resources"] for r in o["rules"])
    )
    assert workloads_role["metadata"]["name"] not in cluster_bound
    args = one(objs, "Deployment", "operator")["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--namespace=team-a" in args
    assert "--namespace=team-b" in args
    assert "--all-namespaces" not in args


def test_every_long_running_container_has_probes(objects: list[Obj]) -> None:
    checked = 0
    for owner, spec in pod_specs(objects):
        if owner["kind"] == "Job":
            # run-to-completion: bounded by a deadline instead of probed
            assert owner["spec"]["activeDeadlineSeconds"] > 0
            continue
        for c in containers(spec):
            assert "livenessProbe" in c, f"{owner['kind']}/{c['name']} has no liveness probe"
            assert "readinessProbe" in c, f"{owner['kind']}/{c['name']} has no readiness probe"
            checked += 1
    if any(o["kind"] in ("Deployment", "DaemonSet") for o in objects):
        assert checked > 0


def test_every_container_has_a_restrictive_security_context(objects: list[Obj]) -> None:
    specs = pod_specs(objects)
    assert specs
    for owner, spec in specs:
        pod_sc = spec.get("securityContext", {})
        for c in containers(spec):
            where = f"{owner['kind']}/{owner['metadata']['name']}/{c['name']}"
            sc = c.get("securityContext")
            assert sc, f"{where} has no securityContext"
            assert sc["allowPrivilegeEscalation"] is False, where
            assert sc["readOnlyRootFilesystem"] is True, where
            assert sc.get("privileged", False) is False, where
            assert sc["capabilities"]["drop"] == ["ALL"], where
            assert not sc["capabilities"].get("add"), where
            seccomp = sc.get("seccompProfile") or pod_sc.get("seccompProfile")
            assert seccomp == {"type": "RuntimeDefault"}, where
            if component(owner) != "device-plugin":
                non_root = sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot"))
                assert non_root is True, f"{where} may run as root"


def test_only_the_operator_and_the_publishing_device_plugin_get_an_api_token(
    objects: list[Obj],
) -> None:
    """The device plugin's token (devicePlugin.publishAllocations, on by default) may patch only
    its own Node's allocation annotation (test_chart_device_plugin_cluster.py)."""
    for owner, spec in pod_specs(objects):
        expected = component(owner) in ("operator", "device-plugin")
        assert spec.get("automountServiceAccountToken") is expected, owner["metadata"]["name"]


def test_device_plugin_daemonset_placement_and_mounts(render: Render) -> None:
    ds = one(render(), "DaemonSet", "device-plugin")
    spec = ds["spec"]["template"]["spec"]
    assert spec["priorityClassName"] == "system-node-critical"
    tolerations = {(t["key"], t.get("effect")) for t in spec["tolerations"]}
    assert ("aws.amazon.com/neuron", "NoSchedule") in tolerations
    assert ("CriticalAddonsOnly", None) in tolerations
    terms = spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    expr = terms["nodeSelectorTerms"][0]["matchExpressions"][0]
    assert expr["key"] == "node.kubernetes.io/instance-type"
    assert "inf1.6xlarge" in expr["values"]
    assert "m5.large" not in expr["values"]
    volumes = {v["name"]: v["hostPath"]["path"] for v in spec["volumes"]}
    assert volumes == {
        "device-plugins": "/var/lib/kubelet/device-plugins",
        "host-dev": "/dev",
        "host-sys": "/sys",
        "pod-resources": "/var/lib/kubelet/pod-resources",
    }
    mounts = {m["name"]: m for m in spec["containers"][0]["volumeMounts"]}
    assert mounts["host-dev"]["readOnly"] is True
    assert mounts["host-sys"]["readOnly"] is True
    assert mounts["pod-resources"]["readOnly"] is True
    assert not mounts["device-plugins"].get("readOnly", False)
    assert spec.get("hostNetwork", False) is False
    assert spec.get("hostPID", False) is False


def test_custom_affinity_replaces_instance_type_list(render: Render) -> None:
    ds = one(
        render(values_files=VALUE_SETS["single-operator-custom-affinity-values"]),
        "DaemonSet",
        "device-plugin",
    )
    terms = ds["spec"]["template"]["spec"]["affinity"]["nodeAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"
    ]["nodeSelectorTerms"]
    assert terms[0]["matchExpressions"][0]["key"] == "karpenter.k8s.aws/instance-family"
    args = ds["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--core-resource-name=example.com/neuroncore" in args


@pytest.mark.parametrize(
    ("replicas", "pdb"),
    [("0", False), ("1", False), ("2", True), ("4", True)],
    ids=["zero", "one", "two", "four"],
)
def test_operator_replicas_and_disruption_budget(render: Render, replicas: str, pdb: bool) -> None:
    objs = render(set_values=[f"operator.replicas={replicas}"])
    assert one(objs, "Deployment", "operator")["spec"]["replicas"] == int(replicas)
    budgets = [o for o in objs if o["kind"] == "PodDisruptionBudget"]
    assert bool(budgets) is pdb
    if pdb:
        assert budgets[0]["spec"]["maxUnavailable"] == int(replicas) - 1


def test_default_operator_is_highly_available_with_a_lease(render: Render) -> None:
    objs = render()
    dep = one(objs, "Deployment", "operator")
    assert dep["spec"]["replicas"] == 2
    args = dep["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[0] == "run"
    assert "--leader-election=true" in args
    assert "--lease-name=neuron-groups-operator" in args
    assert "--lease-namespace=neuron-groups" in args
    anti = dep["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"]
    assert anti["preferredDuringSchedulingIgnoredDuringExecution"]


def test_metrics_services_select_their_pods(objects: list[Obj]) -> None:
    workloads = {component(o): o for o in objects if o["kind"] in ("Deployment", "DaemonSet")}
    services = [o for o in objects if o["kind"] == "Service"]
    for svc in services:
        pods = workloads[component(svc)]["spec"]["template"]["metadata"]["labels"]
        assert svc["spec"]["selector"].items() <= pods.items()
        container_ports = {
            p["name"]
            for p in workloads[component(svc)]["spec"]["template"]["spec"]["containers"][0]["ports"]
        }
        assert {p["targetPort"] for p in svc["spec"]["ports"]} <= container_ports


def test_names_and_labels_within_kubernetes_limits(objects: list[Obj]) -> None:
    for o in objects:
        name = o["metadata"]["name"]
        assert len(name) <= 63, name
        assert not name.endswith("-"), name
        labels = o["metadata"].get("labels", {})
        assert labels.get("app.kubernetes.io/part-of") == "neuron-groups", name
        assert all(len(v) <= 63 for v in labels.values()), labels


def test_names_are_unique_per_kind_and_namespace(objects: list[Obj]) -> None:
    keys = [(o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"]) for o in objects]
    assert len(keys) == len(set(keys))


@pytest.mark.parametrize(
    ("set_values", "expected"),
    [
        ([], ["http", "http"]),
        (["operator.replicas=0"], ["dns"]),
        (["tests.checkDevicePlugin=true"], ["http", "http", "http"]),
        (["tests.checkServices=false", "tests.urls={http://127.0.0.1:1/healthz}"], ["http"]),
    ],
    ids=["operator-running", "operator-out-of-cluster", "with-device-plugin", "urls-only"],
)
def test_helm_test_job_checks(render: Render, set_values: list[str], expected: list[str]) -> None:
    job = one(render(set_values=set_values), "Job", "test")
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "test"
    command = job["spec"]["template"]["spec"]["containers"][0]["command"]
    checks = command[3:]
    assert [c.split(" ")[0] for c in checks] == expected


def test_image_digest_wins_over_tag(render: Render) -> None:
    digest = "sha256:" + "ab" * 32
    objs = render(set_values=[f"image.digest={digest}", "image.tag=9.9.9"])
    images = {c["image"] for _, spec in pod_specs(objs) for c in containers(spec)}
    assert images == {f"ghcr.io/neuron-groups/neuron-groups@{digest}"}


def test_karpenter_nodepool_limits_to_neuron_families(render: Render) -> None:
    pool = one(render(values_files=VALUE_SETS["autoscaling-values"]), "NodePool", "autoscaling")
    reqs = {r["key"]: r for r in pool["spec"]["template"]["spec"]["requirements"]}
    assert reqs["karpenter.k8s.aws/instance-family"]["values"] == ["inf2", "trn1"]
    assert pool["spec"]["template"]["spec"]["taints"] == [
        {"key": "aws.amazon.com/neuron", "effect": "NoSchedule"}
    ]


def _cli_args(objects: list[Obj]) -> list[tuple[str, list[str]]]:
    return [
        (c["command"][0], list(c.get("args", [])))
        for owner, spec in pod_specs(objects)
        if owner["kind"] != "Job"
        for c in containers(spec)
    ]


def test_rendered_flags_are_accepted_by_the_real_clis(objects: list[Obj]) -> None:
    """argparse validates each value and choice before it reaches --help, so `CLI ARGS --help`
    exits 0 only if the program accepts every value the chart gives it; flag names are looked up
    in the help text it prints."""
    bin_dir = Path(sys.executable).parent
    for program, args in _cli_args(objects):
        proc = subprocess.run(
            [str(bin_dir / program), *args, "--help"],
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )
        assert proc.returncode == 0, f"{program} refuses {args}: {proc.stderr.strip()}"
        # --help exits before argparse reports unknown flags, so look each one up in the help
        offered = set(re.findall(r"--[a-z][a-z0-9-]*", proc.stdout))
        for arg in args:
            if arg.startswith("--"):
                assert arg.split("=", 1)[0] in offered, f"{program} has no {arg.split('=')[0]}"
