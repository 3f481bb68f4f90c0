"""The operator at scale: a NeuronWorkload of 1,600 one-core pods against a Deployment of the same.

The local cluster runs 100 kwok ``inf1.6xlarge`` nodes (16 NeuronCores each, 1,600 in all).  A
NeuronWorkload of 100 replicas of 16 one-core copies (``isolation: Process``: one pod per copy)
and a Deployment of 1,600 replicas of the very pod the operator builds take turns (interleaved,
so both see the same load): each is created until every pod is Running, then rolled (a new
image) until every pod is a new Running one, then deleted until no pod is left.  The operator
runs as ``neuron-operator run`` in a subprocess for the whole benchmark; its peak RSS (VmHWM)
and CPU time are read from /proc before it is stopped with SIGTERM, and its log is searched for
handlers kopf had to cancel.  Ratios are NeuronWorkload time / Deployment time (below 1: faster).

    python bench/bench_operator_scale.py [--nodes 100] [--rounds 1] [--cluster-dir DIR]
                                         [--operator-source CHECKOUT]

``--cluster-dir`` reuses a running cluster (``neuron-localcluster --state-dir DIR up
--kwok-nodes 100xinf1.6xlarge --emulated-nodes ''``) instead of starting one in a temp folder;
``--operator-source`` runs the operator of another checkout (e.g. the code before a change).
The last line is JSON: pods, create_ratio, roll_ratio, operator_peak_rss_mb, operator_cpu_s.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from neuron_localcluster import LocalCluster
from neuron_operator.api import workload_from_object
from neuron_operator.planner import plan
from neuron_operator.pods import build_pod

REPO = Path(__file__).resolve().parents[1]
CRD = REPO / "charts/neuron-groups/crds/neuronworkloads.neurongroups.dev.yaml"
NAMESPACE = "bench-operator-scale"
WORKLOAD = "bench-nwl"
DEPLOYMENT = "bench-deploy"
INSTANCE_TYPE = "inf1.6xlarge"
CORES_PER_NODE = 16
IMAGES = ("neuron-groups/runtime:0.1.0", "neuron-groups/runtime:0.1.1")
KWOK_ONLY = {"neuron-groups.io/simulation": "kwok"}
POLL_SECONDS = 1.0
CANCELLED = "is cancelled"


def workload_object(replicas: int, image: str) -> dict[str, Any]:
    return {
        "apiVersion": "neurongroups.dev/v1alpha1",
        "kind": "NeuronWorkload",
        "metadata": {"name": WORKLOAD, "namespace": NAMESPACE},
        "spec": {
            "image": image,
            "instanceType": INSTANCE_TYPE,
            "isolation": "Process",
            "replicas": replicas,
            "nodeSelector": dict(KWOK_ONLY),
            "models": [{"name": "m", "path": "/models/m", "cores": 1, "copies": CORES_PER_NODE}],
        },
    }


def deployment_object(replicas: int, image: str) -> dict[str, Any]:
    """A Deployment of the pod the operator builds for the workload (same spec, same size)."""
    nwl = workload_object(1, image)
    nwl["metadata"]["uid"] = "00000000-0000-0000-0000-000000000000"
    workload = workload_from_object(nwl)
    pod = build_pod(plan(workload.spec).pods[0], workload)
    labels = {"app": DEPLOYMENT}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": DEPLOYMENT, "namespace": NAMESPACE},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels, "annotations": pod["metadata"]["annotations"]},
                "spec": pod["spec"],
            },
        },
    }


class Pods:
    """Counts the pods of one label selector in the namespace (a list served from the cache)."""

    def __init__(self, core: k8s.CoreV1Api, selector: str) -> None:
        self.core = core
        self.selector = selector

    def count(self, image: str) -> tuple[int, int]:
        """(Running pods of ``image`` not being deleted, all pods)."""
        response: Any = self.core.list_namespaced_pod(
            NAMESPACE, label_selector=self.selector, resource_version="0", _preload_content=False
        )
        items = json.loads(response.data)["items"]
        running = sum(
            1
            for p in items
            if p.get("status", {}).get("phase") == "Running"
            and not p["metadata"].get("deletionTimestamp")
            and p["spec"]["containers"][0]["image"] == image
        )
        return running, len(items)


def wait(done: Callable[[], bool], timeout: float, what: str) -> float:
    started = time.monotonic()
    while not done():
        if time.monotonic() - started > timeout:
            raise TimeoutError(f"{what} did not happen in {timeout:.0f}s")
        time.sleep(POLL_SECONDS)
    return time.monotonic() - started


def trial(
    kind: str, cluster: LocalCluster, pods: int, replicas: int, timeout: float
) -> tuple[float, float]:
    """(seconds to create, seconds to roll) for the NeuronWorkload or the Deployment."""
    api = cluster.api_client()
    core, apps, custom = k8s.CoreV1Api(api), k8s.AppsV1Api(api), k8s.CustomObjectsApi(api)
    counter = Pods(core, f"app.kubernetes.io/instance={WORKLOAD}" if kind == "nwl" else
                   f"app={DEPLOYMENT}")  # fmt: skip

    def apply(image: str) -> None:
        if kind == "nwl":
            body: Any = workload_object(replicas, image)
            try:
                custom.create_namespaced_custom_object(
                    "neurongroups.dev", "v1alpha1", NAMESPACE, "neuronworkloads", body
                )
            except ApiException as error:
                if error.status != 409:
                    raise
                patch = {"spec": {"image": image}}
                custom.patch_namespaced_custom_object(
                    "neurongroups.dev", "v1alpha1", NAMESPACE, "neuronworkloads", WORKLOAD, patch
                )
        else:
            body = deployment_object(replicas * CORES_PER_NODE, image)
            try:
                apps.create_namespaced_deployment(NAMESPACE, body)
            except ApiException as error:
                if error.status != 409:
                    raise
                apps.patch_namespaced_deployment(
                    DEPLOYMENT,
                    NAMESPACE,
                    {"spec": {"template": {"spec": {"containers": [
                        {"name": body["spec"]["template"]["spec"]["containers"][0]["name"],
                         "image": image}]}}}},
                )  # fmt: skip

    def settled(image: str) -> Callable[[], bool]:
        def check() -> bool:
            running, total = counter.count(image)
            return running == pods and total == pods

        return check

    times = []
    for image in IMAGES:
        started = time.monotonic()
        apply(image)
        wait(settled(image), timeout, f"{pods} Running pods of {kind} with {image}")
        times.append(time.monotonic() - started)
    if kind == "nwl":
        custom.delete_namespaced_custom_object(
            "neurongroups.dev", "v1alpha1", NAMESPACE, "neuronworkloads", WORKLOAD
        )
    else:
        apps.delete_namespaced_deployment(DEPLOYMENT, NAMESPACE)
    wait(lambda: counter.count(IMAGES[-1])[1] == 0, timeout, f"the pods of {kind} to be gone")
    return times[0], times[1]


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of a process, in kB."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0])
    return fields


def cpu_seconds(pid: int) -> float:
    stat = Path(f"/proc/{pid}/stat").read_text()
    parts = stat[stat.rindex(")") + 2 :].split()
    return (int(parts[11]) + int(parts[12])) / os.sysconf("SC_CLK_TCK")


@contextmanager
def cluster_for(args: argparse.Namespace) -> Iterator[LocalCluster]:
    if args.cluster_dir:
        yield LocalCluster.attach(Path(args.cluster_dir))
        return
    state = Path(tempfile.mkdtemp(prefix="ngc-bench-"))
    cluster = LocalCluster.up(
        state, kwok_nodes=f"{args.nodes}x{INSTANCE_TYPE}", emulated_nodes="", progress=say
    )
    try:
        yield cluster
    finally:
        cluster.down()
        shutil.rmtree(state, ignore_errors=True)


@contextmanager
def operator(cluster: LocalCluster, source: Path | None, log: Path) -> Iterator[int]:
    """``neuron-operator run`` (of ``source``, a checkout, when given) for the namespace."""
    env = {**os.environ, "PYTHONSAFEPATH": "1"}
    shadow = None
    if source is not None:
        shadow = Path(tempfile.mkdtemp(prefix="bench-operator-src-"))
        (shadow / "neuron_operator").symlink_to(source.resolve() / "operator")
        env["PYTHONPATH"] = str(shadow)
    argv = [
        sys.executable, "-m", "neuron_operator.cli", "run",
        "--kubeconfig", str(cluster.kubeconfig), "--standalone", "--namespace", NAMESPACE,
        "--metrics-port", "0", "--log-format", "json",
    ]  # fmt: skip
    with log.open("wb") as out:
        process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        yield process.pid
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if shadow is not None:
            shutil.rmtree(shadow, ignore_errors=True)


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=100, help="kwok inf1.6xlarge nodes")
    parser.add_argument("--rounds", type=int, default=1, help="interleaved rounds of each")
    parser.add_argument("--timeout", type=float, default=900, help="seconds per wait")
    parser.add_argument("--cluster-dir", help="state folder of a running cluster to reuse")
    parser.add_argument("--operator-source", type=Path, help="checkout whose operator/ runs")
    parser.add_argument("--operator-log", type=Path, help="keep the operator's log here")
    args = parser.parse_args()
    pods, replicas = args.nodes * CORES_PER_NODE, args.nodes
    result: dict[str, Any] = {}
    with cluster_for(args) as cluster:
        cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD))
        cluster.kubectl(
            "wait", "--for=condition=Established", "--timeout=60s",
            "crd/neuronworkloads.neurongroups.dev",
        )  # fmt: skip
        # A reused cluster may still be deleting the namespace of a run before.
        cluster.kubectl(
            "delete", "namespace", NAMESPACE, "--ignore-not-found", "--wait=true", "--timeout=600s",
            timeout=660,
        )  # fmt: skip
        cluster.kubectl("create", "namespace", NAMESPACE)
        log_dir = Path(tempfile.mkdtemp(prefix="bench-operator-log-"))
        log = args.operator_log or log_dir / "operator.log"
        times: dict[str, list[tuple[float, float]]] = {"nwl": [], "deploy": []}
        with operator(cluster, args.operator_source, log) as pid:
            time.sleep(10)  # started, watches open, first (empty) resync done
            rest = proc_status(pid)["VmRSS"]
            cpu_at_rest = cpu_seconds(pid)
            say(f"operator pid {pid} at rest: {rest / 1024:.1f} MB; load {load()}")
            peak_after_create = 0
            for round_ in range(args.rounds):
                order = ("nwl", "deploy") if round_ % 2 == 0 else ("deploy", "nwl")
                for kind in order:
                    create, roll = trial(kind, cluster, pods, replicas, args.timeout)
                    times[kind].append((create, roll))
                    status = proc_status(pid)
                    say(
                        f"round {round_ + 1} {kind}: create {create:.1f}s, roll {roll:.1f}s; "
                        f"operator RSS {status['VmRSS'] / 1024:.1f} MB, "
                        f"peak {status['VmHWM'] / 1024:.1f} MB; load {load()}"
                    )
                    if kind == "nwl" and not peak_after_create:
                        peak_after_create = status["VmHWM"]
            status, cpu = proc_status(pid), cpu_seconds(pid)
            started = time.monotonic()
        stop_seconds = time.monotonic() - started
        text = log.read_text(errors="replace")
        cancelled = text.count(CANCELLED)
        if args.operator_log is None:
            shutil.rmtree(log_dir, ignore_errors=True)
        cluster.kubectl("delete", "namespace", NAMESPACE, "--wait=false", check=False)

    def median(kind: str, which: int) -> float:
        return statistics.median(t[which] for t in times[kind])

    result = {
        "nodes": args.nodes,
        "rounds": args.rounds,
        "nwl_create_s": round(median("nwl", 0), 1),
        "deploy_create_s": round(median("deploy", 0), 1),
        "nwl_roll_s": round(median("nwl", 1), 1),
        "deploy_roll_s": round(median("deploy", 1), 1),
        "operator_rest_rss_mb": round(rest / 1024, 1),
        "operator_create_peak_rss_mb": round(peak_after_create / 1024, 1),
        "operator_cpu_at_rest_s": round(cpu_at_rest, 1),
        "sigterm_seconds": round(stop_seconds, 1),
        "sigterm_cancelled_handlers": cancelled,
        "load_average": load(),
        "pods": pods,
        "create_ratio": round(median("nwl", 0) / median("deploy", 0), 2),
        "roll_ratio": round(median("nwl", 1) / median("deploy", 1), 2),
        "operator_peak_rss_mb": round(status["VmHWM"] / 1024, 1),
        "operator_cpu_s": round(cpu, 1),
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
