"""The chart against the real kube-apiserver of the local control plane.

1. Server-side dry-run: every object the chart renders, with the defaults and with every values
   file in ci/, is accepted by the real apiserver (schema, defaulting, admission).  ServiceMonitor
   and NodePool are left out: their CRDs (Prometheus Operator, Karpenter) are not installed there,
   and a stand-in CRD would accept anything; their shape is asserted in test_chart_render.py.
2. Install end to end: `helm install` with ci/local-cluster-values.yaml, the operator running as
   a local process with exactly the chart's ServiceAccount rights (an impersonating kubeconfig),
   `helm test` passing (its Job's pod runs on the emulated node, whose agent really runs the check
   against the operator's /healthz and /metrics), and a change through the NeuronWorkload's /scale
   subresource changing the number of pods.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from neuron_localcluster import LocalCluster
from neuron_localcluster.clitools import ensure_helm

pytestmark = pytest.mark.cluster

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "neuron-groups"
VALUE_SETS: dict[str, tuple[Path, ...]] = {"defaults": ()} | {
    f.stem: (f,) for f in sorted((CHART / "ci").glob("*.yaml"))
}
NOT_INSTALLED_KINDS = {"ServiceMonitor", "NodePool"}
RELEASE = "ngc"
NAMESPACE = "ng-chart-e2e"
WORKLOAD_NS = "ng-chart-workloads"
EXAMPLES_NS = "ng-chart-examples"


def _helm(
    cluster: LocalCluster, *args: str, check: bool = True
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [str(ensure_helm()), "--kubeconfig", str(cluster.kubeconfig), *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=280,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


def _namespace(cluster: LocalCluster, name: str) -> None:
    manifest = {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {
            "name": name,
            # the device plugin mounts host paths: only the privileged level allows that
            "labels": {"pod-security.kubernetes.io/enforce": "privileged"},
        },
    }
    cluster.kubectl("apply", "-f", "-", input=json.dumps(manifest))


def _apply_crds(cluster: LocalCluster) -> None:
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CHART / "crds"))
    cluster.kubectl(
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        "crd/neuronworkloads.neurongroups.dev",
    )


@pytest.mark.parametrize("values", list(VALUE_SETS), ids=list(VALUE_SETS))
def test_every_rendered_object_passes_server_side_dry_run(
    local_cluster: LocalCluster, values: str
) -> None:
    namespace = f"ng-dry-{values[:40]}".rstrip("-")
    _apply_crds(local_cluster)
    args = ["template", RELEASE, str(CHART), "--namespace", namespace]
    for f in VALUE_SETS[values]:
        args += ["-f", str(f)]
    objects = [doc for doc in yaml.safe_load_all(_helm(local_cluster, *args).stdout) if doc]
    for ns in {namespace} | {
        o["metadata"]["namespace"] for o in objects if o["metadata"].get("namespace")
    }:
        _namespace(local_cluster, ns)
    checked = [o for o in objects if o["kind"] not in NOT_INSTALLED_KINDS]
    assert checked
    proc = local_cluster.kubectl(
        "apply",
        "--server-side",
        "--dry-run=server",
        "--field-manager=chart-test",
        "-f",
        "-",
        input=yaml.safe_dump_all(checked),
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    accepted = [line for line in proc.stdout.splitlines() if "(server dry run)" in line]
    assert len(accepted) == len(checked), proc.stdout


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _host_seen_from_pods(cluster: LocalCluster) -> str:
    """The address at which processes of the emulated node's pods reach this host.

    The emulated node's agent runs pods in a network namespace joined to the host by a veth
    (198.18.K.0/24, the host holding .1) and records it in its workdir; without the privilege
    for that it runs them on the host's loopback.
    """
    record = cluster.layout.node_dir(cluster.emulated_node) / "netns"
    if record.is_file():
        subnet = record.read_text().split()[2]
        return subnet.rsplit(".", 1)[0] + ".1"
    return "127.0.0.1"


@pytest.fixture
def installed(local_cluster: LocalCluster) -> Iterator[dict[str, str]]:
    _apply_crds(local_cluster)
    _namespace(local_cluster, NAMESPACE)
    _namespace(local_cluster, WORKLOAD_NS)
    port = _free_port()
    base = f"http://{_host_seen_from_pods(local_cluster)}:{port}"
    _helm(
        local_cluster,
        "upgrade",
        "--install",
        RELEASE,
        str(CHART),
        "--namespace",
        NAMESPACE,
        "-f",
        str(CHART / "ci" / "local-cluster-values.yaml"),
        "--set",
        f"tests.urls={{{base}/healthz,{base}/metrics}}",
        "--wait",
        "--timeout",
        "180s",
    )
    service_account = f"{RELEASE}-neuron-groups-operator"
    kubeconfig = local_cluster.impersonating_kubeconfig(NAMESPACE, service_account)
    log = (Path(os.environ.get("TMPDIR", "/tmp")) / f"chart-operator-{port}.log").open("w")
    operator = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "neuron-operator"),
            "run",
            "--kubeconfig",
            str(kubeconfig),
            "--namespace",
            WORKLOAD_NS,
            "--lease-name",
            "neuron-groups-operator",
            "--lease-namespace",
            NAMESPACE,
            "--metrics-port",
            str(port),
            "--metrics-address",
            "0.0.0.0",
            "--resync-seconds",
            "5",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        env={**os.environ, "PYTHONSAFEPATH": "1"},
    )
    try:
        local_cluster.wait_for(
            lambda: _http_ok(f"http://127.0.0.1:{port}/healthz"), 60, "the operator's /healthz"
        )
        yield {"port": str(port), "log": log.name, "base": base}
    finally:
        os.killpg(operator.pid, signal.SIGTERM)
        try:
            operator.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(operator.pid, signal.SIGKILL)
            operator.wait()
        log.close()
        _helm(local_cluster, "uninstall", RELEASE, "--namespace", NAMESPACE, check=False)
        local_cluster.kubectl(
            "delete", "namespace", WORKLOAD_NS, "--wait=false", "--ignore-not-found", check=False
        )


def _http_ok(url: str) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return int(resp.status) == 200
    except OSError:
        return False


WORKLOAD = {
    "apiVersion": "neurongroups.dev/v1alpha1",
    "kind": "NeuronWorkload",
    "metadata": {"name": "scale-me", "namespace": WORKLOAD_NS},
    "spec": {
        "models": [{"name": "tiny", "path": "/models/tiny", "cores": 1, "copies": 1}],
        "isolation": "Shared",
        "instanceType": "inf1.6xlarge",
        "replicas": 1,
        "image": "ghcr.io/neuron-groups/neuron-groups:0.1.0",
        # kwok nodes only: no model exists on this machine for the emulated node to serve
        "nodeSelector": {"neuron-groups.io/simulation": "kwok"},
    },
}


def _pod_count(cluster: LocalCluster) -> int:
    proc = cluster.kubectl(
        "get",
        "pods",
        "-n",
        WORKLOAD_NS,
        "-l",
        "app.kubernetes.io/instance=scale-me",
        "-o",
        "json",
    )
    items = json.loads(proc.stdout)["items"]
    return len([p for p in items if not p["metadata"].get("deletionTimestamp")])


def test_install_helm_test_and_scale_subresource(
    local_cluster: LocalCluster, installed: dict[str, str]
) -> None:
    proc = _helm(
        local_cluster, "test", RELEASE, "--namespace", NAMESPACE, "--timeout", "180s", check=False
    )
    assert proc.returncode == 0, f"{proc.stdout}\n{proc.stderr}"
    assert "Succeeded" in proc.stdout

    # The check is real: pointed at a port where nothing listens, the same test fails.
    host = installed["base"].rsplit(":", 1)[0]
    _helm(
        local_cluster,
        "upgrade",
        RELEASE,
        str(CHART),
        "--namespace",
        NAMESPACE,
        "--reuse-values",
        "--set",
        f"tests.urls={{{host}:1/healthz}}",
    )
    failed = _helm(
        local_cluster, "test", RELEASE, "--namespace", NAMESPACE, "--timeout", "120s", check=False
    )
    assert failed.returncode != 0, failed.stdout

    local_cluster.kubectl("apply", "-f", "-", input=json.dumps(WORKLOAD))
    local_cluster.wait_for(lambda: _pod_count(local_cluster) == 1, 90, "1 pod of scale-me")

    scale_path = (
        f"/apis/neurongroups.dev/v1alpha1/namespaces/{WORKLOAD_NS}/neuronworkloads/scale-me/scale"
    )
    scale = json.loads(local_cluster.kubectl("get", "--raw", scale_path).stdout)
    assert scale["kind"] == "Scale"
    assert scale["spec"]["replicas"] == 1

    local_cluster.kubectl("scale", "-n", WORKLOAD_NS, "nwl/scale-me", "--replicas=3")
    local_cluster.wait_for(lambda: _pod_count(local_cluster) == 3, 90, "3 pods after /scale")

    def selector() -> str:
        raw = json.loads(local_cluster.kubectl("get", "--raw", scale_path).stdout)
        return str(raw.get("status", {}).get("selector", ""))

    # the HorizontalPodAutoscaler finds the pods through the selector /scale reports
    sel = local_cluster.wait_for(selector, 60, "a selector on /scale")
    listed = local_cluster.kubectl("get", "pods", "-n", WORKLOAD_NS, "-l", sel, "-o", "name")
    assert len(listed.stdout.split()) == 3

    local_cluster.kubectl("scale", "-n", WORKLOAD_NS, "nwl/scale-me", "--replicas=1")
    local_cluster.wait_for(lambda: _pod_count(local_cluster) == 1, 90, "1 pod after scale-down")

    # it did all that with exactly the chart's RBAC, and was never refused anything
    log = Path(installed["log"]).read_text()
    assert "created pods" in log
    assert "Forbidden" not in log
    assert "forbidden" not in log


def test_examples_pass_server_side_dry_run(local_cluster: LocalCluster) -> None:
    _apply_crds(local_cluster)
    _namespace(local_cluster, EXAMPLES_NS)
    examples = sorted((REPO / "deploy" / "examples").glob("*.yaml"))
    docs = [
        doc
        for path in examples
        for doc in yaml.safe_load_all(path.read_text())
        if doc and doc["kind"] not in NOT_INSTALLED_KINDS
    ]
    assert any(d["kind"] == "HorizontalPodAutoscaler" for d in docs)
    for doc in docs:
        doc["metadata"].setdefault("namespace", EXAMPLES_NS)
    proc = local_cluster.kubectl(
        "apply",
        "--server-side",
        "--dry-run=server",
        "-f",
        "-",
        input=yaml.safe_dump_all(docs),
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
