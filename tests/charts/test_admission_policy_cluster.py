"""The chart's NeuronWorkload policy and the CRD on the real kube-apiserver of the local cluster.

Two real RBAC identities (ServiceAccounts, each with a TokenRequest kubeconfig, so the API
server's authorizer sees exactly them): ``workloads-and-pods`` may create NeuronWorkloads and pods
in the namespace, ``workloads-only`` only NeuronWorkloads.  The ValidatingAdmissionPolicy and its
binding are rendered from the chart (helm template) and applied as they are, the binding limited
to this test's namespace so that other tests on the shared cluster are not affected.
"""

from __future__ import annotations

import copy
import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from neuron_localcluster import LocalCluster
from neuron_localcluster.clitools import ensure_helm, ensure_kubectl

pytestmark = pytest.mark.cluster

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "neuron-groups"
NS = "ng-policy-e2e"
RELEASE = "policy-e2e"
ALLOWED_USER = "workloads-and-pods"
NWL_ONLY_USER = "workloads-only"
POLICY_WAIT_S = 60.0

WORKLOAD: dict[str, Any] = {
    "apiVersion": "neurongroups.dev/v1alpha1",
    "kind": "NeuronWorkload",
    "metadata": {"name": "w", "namespace": NS},
    "spec": {
        "image": "ghcr.io/neuron-groups/neuron-groups:0.1.0",
        "instanceType": "inf1.6xlarge",
        "models": [{"name": "resnet50", "path": "/models/resnet50", "cores": 1, "copies": 2}],
    },
}


def workload(name: str, **spec: Any) -> dict[str, Any]:
    document = copy.deepcopy(WORKLOAD)
    document["metadata"]["name"] = name
    document["spec"].update(spec)
    return document


def models_volume(source: dict[str, Any], *, read_only: bool = True) -> dict[str, Any]:
    return {
        "volumes": [{"name": "models", **source}],
        "volumeMounts": [{"name": "models", "mountPath": "/models", "readOnly": read_only}],
    }


@dataclass
class Users:
    cluster: LocalCluster
    kubeconfigs: dict[str, Path]

    def apply(
        self, user: str | None, document: dict[str, Any], *extra: str
    ) -> subprocess.CompletedProcess[str]:
        """``kubectl apply`` as ``user`` (None: the cluster admin)."""
        kubeconfig = self.cluster.kubeconfig if user is None else self.kubeconfigs[user]
        return subprocess.run(
            [str(ensure_kubectl()), f"--kubeconfig={kubeconfig}", "apply", *extra, "-f", "-"],
            input=json.dumps(document),
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )


def render_policy(*sets: str) -> list[dict[str, Any]]:
    args = [str(ensure_helm()), "template", RELEASE, str(CHART)]
    args += ["--show-only", "templates/workload-policy/admission-policy.yaml"]
    for setting in sets:
        args += ["--set", setting]
    out = subprocess.run(args, check=True, capture_output=True, text=True).stdout
    documents = [d for d in yaml.safe_load_all(out) if d]
    for document in documents:
        if document["kind"] == "ValidatingAdmissionPolicyBinding":
            document["spec"]["matchResources"] = {
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": NS}}
            }
    return documents


def install_policy(users: Users, *sets: str, accepted: dict[str, Any] | None = None) -> None:
    """Apply the chart's policy with ``sets``; wait until the API server enforces it (a
    workload it refuses is refused), and, given ``accepted``, until that one passes."""
    documents = render_policy(*sets)
    users.cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(documents))
    probe = workload("probe")

    def enforced() -> bool:
        refused = users.apply(NWL_ONLY_USER, probe, "--dry-run=server").returncode != 0
        if accepted is None:
            return refused
        return refused and users.apply(ALLOWED_USER, accepted, "--dry-run=server").returncode == 0

    users.cluster.wait_for(enforced, POLICY_WAIT_S, "the admission policy to be enforced")


def rbac(cluster: LocalCluster) -> None:
    def role(name: str, rules: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": {"name": name, "namespace": NS},
            "rules": rules,
        }

    def binding(name: str, role_name: str, account: str) -> dict[str, Any]:
        return {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {"name": name, "namespace": NS},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": role_name},
            "subjects": [{"kind": "ServiceAccount", "name": account, "namespace": NS}],
        }

    workloads = [
        {
            "apiGroups": ["neurongroups.dev"],
            "resources": ["neuronworkloads"],
            "verbs": ["get", "list", "create", "update", "patch", "delete"],
        }
    ]
    pods = [{"apiGroups": [""], "resources": ["pods"], "verbs": ["create"]}]
    documents: list[dict[str, Any]] = [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": n, "namespace": NS}}
        for n in (ALLOWED_USER, NWL_ONLY_USER)
    ]
    documents += [role("workload-writer", workloads), role("pod-creator", pods)]
    documents += [
        binding(f"{ALLOWED_USER}-workloads", "workload-writer", ALLOWED_USER),
        binding(f"{ALLOWED_USER}-pods", "pod-creator", ALLOWED_USER),
        binding(f"{NWL_ONLY_USER}-workloads", "workload-writer", NWL_ONLY_USER),
    ]
    cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(documents))


@pytest.fixture(scope="module")
def users(local_cluster: LocalCluster) -> Iterator[Users]:
    cluster = local_cluster
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CHART / "crds"))
    cluster.kubectl(
        "wait", "--for=condition=Established", "--timeout=60s",
        "crd/neuronworkloads.neurongroups.dev",
    )  # fmt: skip
    cluster.kubectl("delete", "namespace", NS, "--ignore-not-found", "--wait=true", "--timeout=90s")
    cluster.kubectl("create", "namespace", NS)
    rbac(cluster)
    handle = Users(
        cluster,
        {u: cluster.impersonating_kubeconfig(NS, u) for u in (ALLOWED_USER, NWL_ONLY_USER)},
    )
    install_policy(handle)
    try:
        yield handle
    finally:
        names = [d["metadata"]["name"] for d in render_policy()]
        cluster.kubectl("delete", "validatingadmissionpolicybinding", names[1], check=False)
        cluster.kubectl("delete", "validatingadmissionpolicy", names[0], check=False)
        cluster.kubectl("delete", "namespace", NS, "--wait=false", check=False)


def test_a_requester_who_may_create_pods_may_create_a_workload(users: Users) -> None:
    result = users.apply(ALLOWED_USER, workload("allowed"))
    assert result.returncode == 0, result.stderr
    assert "neuronworkload.neurongroups.dev/allowed created" in result.stdout


def test_a_requester_who_may_not_create_pods_is_refused(users: Users) -> None:
    result = users.apply(NWL_ONLY_USER, workload("escalation"))
    assert result.returncode != 0
    account = f"system:serviceaccount:{NS}:{NWL_ONLY_USER}"
    assert "ValidatingAdmissionPolicy" in result.stderr
    assert f"{account} may not create pods in namespace {NS}" in result.stderr
    assert "a NeuronWorkload needs the same right as its pods" in result.stderr
    found = users.cluster.kubectl("get", "nwl", "escalation", "-n", NS, check=False)
    assert found.returncode != 0


def test_only_spec_changes_need_the_right_to_create_pods(users: Users) -> None:
    created = users.apply(None, workload("by-admin"))
    assert created.returncode == 0, created.stderr
    changed = users.apply(NWL_ONLY_USER, workload("by-admin", replicas=3))
    assert changed.returncode != 0
    assert "may not create pods" in changed.stderr
    labelled = workload("by-admin")
    labelled["metadata"]["labels"] = {"team": "a"}
    relabel = users.apply(NWL_ONLY_USER, labelled)
    assert relabel.returncode == 0, relabel.stderr


ALLOWED_TYPES = "emptyDir, configMap, secret, persistentVolumeClaim, image, projected, downwardAPI"
REFUSED_BY_DEFAULT = [
    (
        "host-root",
        models_volume({"hostPath": {"path": "/"}}, read_only=False),
        f"spec.volumes: volume models uses hostPath, which NeuronWorkloads may not use in this "
        f"cluster; use one of {ALLOWED_TYPES} (hostPath needs the chart value "
        "workloadPolicy.allowedHostPaths)",
    ),
    (
        "csi",
        models_volume({"csi": {"driver": "secrets-store.csi.k8s.io"}}),
        "volume models uses csi, which NeuronWorkloads may not use in this cluster",
    ),
]


@pytest.mark.parametrize(
    ("spec", "message"), [c[1:] for c in REFUSED_BY_DEFAULT], ids=[c[0] for c in REFUSED_BY_DEFAULT]
)
def test_volumes_outside_the_default_list_are_refused(
    users: Users, spec: dict[str, Any], message: str
) -> None:
    result = users.apply(ALLOWED_USER, workload("volumes", **spec))
    assert result.returncode != 0
    assert message in result.stderr, result.stderr


def test_host_path_is_accepted_only_under_the_opted_in_folder(users: Users) -> None:
    inside = workload("host-models", **models_volume({"hostPath": {"path": "/srv/models/r50"}}))
    install_policy(users, "workloadPolicy.allowedHostPaths={/srv/models}", accepted=inside)
    try:
        result = users.apply(ALLOWED_USER, inside)
        assert result.returncode == 0, result.stderr
        outside = workload("host-etc", **models_volume({"hostPath": {"path": "/etc"}}))
        result = users.apply(ALLOWED_USER, outside)
        assert result.returncode != 0
        assert (
            "spec.volumes: hostPath volume models names /etc, which is not under a host folder "
            "NeuronWorkloads may mount; use a folder under /srv/models/"
        ) in result.stderr
        climbing = models_volume({"hostPath": {"path": "/srv/models/../../etc"}})
        result = users.apply(ALLOWED_USER, workload("host-climb", **climbing))
        assert "names /srv/models/../../etc, which is not under" in result.stderr
        writable = models_volume({"hostPath": {"path": "/srv/models"}}, read_only=False)
        result = users.apply(ALLOWED_USER, workload("host-writable", **writable))
        assert result.returncode != 0
        assert "mount of hostPath volume models at /models is not read-only" in result.stderr
        # the right to create pods is still checked with hostPath allowed
        hosted = models_volume({"hostPath": {"path": "/srv/models"}})
        result = users.apply(NWL_ONLY_USER, workload("host-escalation", **hosted))
        assert "may not create pods" in result.stderr
    finally:
        install_policy(users)


TOKEN_VOLUME = models_volume(
    {"projected": {"sources": [{"serviceAccountToken": {"path": "token"}}]}}
)
CRD_CASES = [
    (
        "env-integer",
        {"env": [{"name": "FOO", "value": 5}]},
        (),
        'spec.env[0].value: Invalid value: "integer": spec.env[0].value in body must be of type '
        "string",
    ),
    (
        "plan-too-large",
        {
            "cores": 1,
            "models": [
                {"name": f"m{i:02d}", "path": f"/models/m{i:02d}", "cores": 1, "copies": 4096}
                for i in range(64)
            ],
        },
        (),
        "spec.models: Invalid value: 262144 copies need up to 4194304 characters of NEURON_MODELS "
        "in one pod, "
        "more than 1048576",
    ),
    (
        "projected-token-strict",
        TOKEN_VOLUME,
        (),
        'unknown field "spec.volumes[0].projected.sources[0].serviceAccountToken"',
    ),
    (
        "projected-token-pruned",
        TOKEN_VOLUME,
        ("--validate=false",),
        "each projected source must be exactly one of configMap, secret or downwardAPI",
    ),
    (
        "unknown-volume-type-pruned",
        models_volume({"nfs": {"server": "nfs.example", "path": "/"}}),
        ("--validate=false",),
        "volume models must have exactly one source",
    ),
    (
        "path-with-quote",
        {"models": [{"name": "a", "path": '/models/"a"', "cores": 1}]},
        (),
        "path must be an absolute directory inside the container, in printable ASCII without "
        "'\"' or backslash",
    ),
    (
        "unknown-toleration-field",
        {"tolerations": [{"operator": "Exists", "tolerationSecond": 1}]},
        (),
        'unknown field "spec.tolerations[0].tolerationSecond"',
    ),
]


@pytest.mark.parametrize(
    ("spec", "flags", "message"), [c[1:] for c in CRD_CASES], ids=[c[0] for c in CRD_CASES]
)
def test_the_crd_refuses_what_no_pod_could_carry(
    users: Users, spec: dict[str, Any], flags: tuple[str, ...], message: str
) -> None:
    result = users.apply(None, workload("crd-refused", **spec), *flags)
    assert result.returncode != 0
    assert message in result.stderr, result.stderr


def test_the_crd_accepts_a_model_path_with_a_comma(users: Users) -> None:
    # NEURON_MODELS carries such a path (neuron_cores.encode_models), so the CRD lets it in.
    spec = {"models": [{"name": "a", "path": "/models/a,v2", "cores": 1, "copies": 2}]}
    result = users.apply(None, workload("comma-path", **spec))
    assert result.returncode == 0, result.stderr
