"""Helpers of the cluster tests of the operator: ``neuron-operator run`` as subprocesses,
authenticated as the chart's operator ServiceAccount (so the chart's RBAC is exercised too)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from neuron_localcluster import LocalCluster
from neuron_localcluster.clitools import ensure_helm
from neuron_localcluster.layout import DEVICE_PLUGIN

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts/neuron-groups"
CRD_FILE = CHART / "crds/neuronworkloads.neurongroups.dev.yaml"


@dataclass
class Operators:
    """The operator processes of one test module, started and stopped by its fixture."""

    cluster: Any
    lease: str
    kubeconfig: Path
    log_dir: Path
    namespaces: list[str]
    lease_namespace: str
    extra_args: tuple[str, ...] = ()
    extra_env: dict[str, str] = field(default_factory=dict)
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def start(self, identity: str) -> None:
        argv = [
            sys.executable, "-m", "neuron_operator.cli", "run",
            "--kubeconfig", str(self.kubeconfig),
            *(x for namespace in self.namespaces for x in ("--namespace", namespace)),
            "--lease-name", self.lease, "--lease-namespace", self.lease_namespace,
            "--identity", identity,
            "--lease-seconds", "6", "--renew-seconds", "2",
            "--resync-seconds", "5",
            "--metrics-port", "0",
            "--log-format", "json",
            *self.extra_args,
        ]  # fmt: skip
        env = {**os.environ, **self.extra_env, "PYTHONSAFEPATH": "1"}
        with (self.log_dir / f"{identity}.log").open("wb") as log:
            self.processes[identity] = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO
            )

    def stop(self, identity: str) -> None:
        process = self.processes.pop(identity)
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def full_logs(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in sorted(self.log_dir.glob("*.log")))

    def logs(self) -> str:
        return "\n".join(
            f"--- {p.name}\n" + p.read_text(errors="replace")[-3000:]
            for p in sorted(self.log_dir.glob("*.log"))
        )


def kubectl_json(cluster: Any, *args: str) -> Any:
    return json.loads(cluster.kubectl(*args, "-o", "json").stdout)


def apply(cluster: Any, document: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    result: subprocess.CompletedProcess[str] = cluster.kubectl(
        "apply", "-f", "-", check=False, input=yaml.safe_dump(document)
    )
    return result


def render_operator_rbac(release: str, namespace: str) -> list[dict[str, Any]]:
    helm = ensure_helm()
    rendered = subprocess.run(
        [
            str(helm), "template", release, str(CHART), "--namespace", namespace,
            "--show-only", "templates/operator/rbac.yaml",
            "--show-only", "templates/operator/serviceaccount.yaml",
        ],
        check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    return [d for d in yaml.safe_load_all(rendered) if d]


def operators_as_chart_account(
    cluster: Any,
    release: str,
    operator_namespace: str,
    *,
    namespaces: list[str],
    log_dir: Path,
    extra_args: tuple[str, ...] = (),
    extra_env: dict[str, str] | None = None,
) -> Operators:
    """The chart's operator RBAC applied (rendered for ``release``), and a handle that runs
    ``neuron-operator run`` as its ServiceAccount, watching ``namespaces``."""
    documents = render_operator_rbac(release, operator_namespace)
    account = next(d["metadata"]["name"] for d in documents if d["kind"] == "ServiceAccount")
    for document in documents:
        result = apply(cluster, document)
        assert result.returncode == 0, result.stderr
    return Operators(
        cluster=cluster,
        lease=chart_lease_name(documents),
        kubeconfig=cluster.impersonating_kubeconfig(operator_namespace, account),
        log_dir=log_dir,
        namespaces=namespaces,
        lease_namespace=operator_namespace,
        extra_args=extra_args,
        extra_env=dict(extra_env or {}),
    )


def install_crd(cluster: Any) -> None:
    """The chart's NeuronWorkload CRD, applied and Established."""
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD_FILE))
    # Right after the apply the CRD may have no status yet, which `kubectl wait` takes as an error.
    cluster.wait_for(
        lambda: cluster.kubectl(
            "wait", "--for=condition=Established", "--timeout=10s",
            "crd/neuronworkloads.neurongroups.dev", check=False,
        ).returncode == 0,
        60,
        "the NeuronWorkload CRD to be Established",
    )  # fmt: skip


def chart_lease_name(documents: list[dict[str, Any]]) -> str:
    """The Lease the chart's RBAC lets the operator update (its resourceNames)."""
    for document in documents:
        for rule in document.get("rules") or []:
            if "leases" in rule.get("resources", []) and rule.get("resourceNames"):
                return str(rule["resourceNames"][0])
    raise AssertionError("the chart's operator RBAC grants no named Lease")


@contextlib.contextmanager
def operator_on_own_cluster(
    *,
    kwok_nodes: str,
    emulated_nodes: str,
    allocation: str = DEVICE_PLUGIN,
    release: str,
    operator_namespace: str,
    namespaces: list[str],
    log_dir: Path,
    other_namespaces: tuple[str, ...] = (),
    extra_args: tuple[str, ...] = (),
    identity: str = "op",
) -> Iterator[Operators]:
    """A local cluster of its own (nodes and allocation as ``LocalCluster.up`` takes them), the
    CRD, the namespaces, and one operator (``identity``) running as the chart's account,
    watching ``namespaces``; all of it gone afterwards."""
    state = Path(tempfile.mkdtemp(prefix="ngo-"))
    cluster = LocalCluster.up(
        state, kwok_nodes=kwok_nodes, emulated_nodes=emulated_nodes, allocation=allocation
    )
    try:
        install_crd(cluster)
        for name in (operator_namespace, *namespaces, *other_namespaces):
            namespace = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}
            assert apply(cluster, namespace).returncode == 0
        handle = operators_as_chart_account(
            cluster,
            release,
            operator_namespace,
            log_dir=log_dir,
            namespaces=namespaces,
            extra_args=extra_args,
        )
        handle.start(identity)
        try:
            yield handle
        finally:
            for running in list(handle.processes):
                handle.stop(running)
    finally:
        cluster.down()
        shutil.rmtree(state, ignore_errors=True)
