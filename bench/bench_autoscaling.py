"""Karpenter from zero Neuron nodes: N one-core pods as a NeuronWorkload against a plain Deployment.

Each run starts a fresh local cluster with Karpenter's kwok provider and no Neuron node, applies
N one-NeuronCore pods pinned to one instance type, and measures the time from the apply to every
pod Running, pods per second, and the nodes Karpenter created (the most NodeClaims at once)
against the lower bound ceil(N cores / cores per node).  The baseline is a Deployment of the
same pods (no operator); the NeuronWorkload run adds the operator's planning and pod creation.
Karpenter's published figure, the anchor: 1,000 pods scheduled in under 2 minutes.

    python bench/bench_autoscaling.py [--pods 1000] [--instance-type inf1.6xlarge]
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client as k8s

from neuron_cores import lookup_instance_type
from neuron_localcluster import demo, karpenter, scaling
from neuron_localcluster.cluster import LocalCluster
from neuron_localcluster.kube import raw_json

NAMESPACE = "bench"
NAME = "bench"
ANCHOR_S = 120.0


@dataclass(frozen=True)
class Result:
    mode: str
    pods: int
    seconds: float  # apply -> every pod Running
    created_s: float  # apply -> every pod exists (the operator's or ReplicaSet's part)
    bound_s: float  # apply -> every pod bound to a node (Karpenter's and the scheduler's part)
    first_node_s: float  # apply -> the first Karpenter node exists
    nodes: int  # the most NodeClaims that existed at once
    lower_bound: int

    @property
    def pods_per_second(self) -> float:
        return self.pods / self.seconds


def _pods(core: k8s.CoreV1Api) -> tuple[int, int, int]:
    """(pods, pods bound to a node, pods Running) in the benchmark's namespace."""
    answer = core.list_namespaced_pod(NAMESPACE, _preload_content=False)
    items = raw_json(answer)["items"]
    bound = sum(bool(p["spec"].get("nodeName")) for p in items)
    running = sum((p.get("status") or {}).get("phase") == "Running" for p in items)
    return len(items), bound, running


def _claims(custom: k8s.CustomObjectsApi) -> int:
    answer = custom.list_cluster_custom_object(
        "karpenter.sh", "v1", "nodeclaims", _preload_content=False
    )
    return len(raw_json(answer)["items"])


def _nodes(core: k8s.CoreV1Api) -> int:
    return len(core.list_node(label_selector=karpenter.NODEPOOL_LABEL).items)


def measure(mode: str, pods: int, instance_type: str, timeout: float) -> Result:
    state = Path(tempfile.mkdtemp(prefix="ngb-"))
    cluster = LocalCluster.up(
        state, kwok_nodes="", emulated_nodes="", autoscaler=karpenter.Settings()
    )
    try:
        document: dict[str, Any]
        if mode == "NeuronWorkload":
            demo.install_chart(cluster)
            demo.start_operator(cluster)
            document = scaling.one_core_workload(NAME, NAMESPACE, pods, instance_type)
        else:
            document = scaling.one_core_deployment(NAME, NAMESPACE, pods, instance_type)
        cluster.kubectl("create", "namespace", NAMESPACE)
        api = cluster.api_client()
        core, custom = k8s.CoreV1Api(api), k8s.CustomObjectsApi(api)
        started = time.monotonic()
        cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(document))
        peak = 0
        first_node = created = bound = float("nan")
        while True:
            now = time.monotonic() - started
            peak = max(peak, _claims(custom))
            if math.isnan(first_node) and _nodes(core):
                first_node = now
            exist, placed, running = _pods(core)
            if math.isnan(created) and exist == pods:
                created = now
            if math.isnan(bound) and placed == pods:
                bound = now
            if running == pods:
                break
            if now > timeout:
                raise TimeoutError(
                    f"{mode}: not every pod Running after {timeout:.0f}s; logs in {state}/logs"
                )
            time.sleep(1.0)
        return Result(
            mode=mode,
            pods=pods,
            seconds=time.monotonic() - started,
            created_s=created,
            bound_s=bound,
            first_node_s=first_node,
            nodes=peak,
            lower_bound=karpenter.nodes_lower_bound(pods, instance_type),
        )
    finally:
        cluster.down()
        shutil.rmtree(state, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pods", type=int, default=1000, help="one-core pods (default 1000)")
    parser.add_argument("--instance-type", default="inf1.6xlarge")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per run")
    args = parser.parse_args()
    if args.pods < 1:
        parser.error(f"--pods {args.pods} must be at least 1")
    karpenter.Settings(instance_types=(args.instance_type,))  # a clear error for a bad type
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at start")
    assets = karpenter.ensure_karpenter()
    print(f"Karpenter {assets.version} (kwok provider), {args.pods} one-core pods on "
          f"{args.instance_type}, from zero Neuron nodes")  # fmt: skip
    results = [
        measure(mode, args.pods, args.instance_type, args.timeout)
        for mode in ("Deployment", "NeuronWorkload")
    ]
    print(
        f"{'mode':<15} {'pods':>5} {'created':>8} {'1st node':>9} {'all bound':>10} "
        f"{'all Running':>12} {'pods/s':>7} {'nodes':>6} {'lower':>6} {'anchor':>7}"
    )
    for r in results:
        anchor = "<120s" if r.seconds < ANCHOR_S else "MISSED"
        print(
            f"{r.mode:<15} {r.pods:>5} {r.created_s:>7.1f}s {r.first_node_s:>8.1f}s "
            f"{r.bound_s:>9.1f}s {r.seconds:>11.1f}s {r.pods_per_second:>7.1f} {r.nodes:>6} "
            f"{r.lower_bound:>6} {anchor:>7}"
        )
    base, ours = results
    print(
        f"times from the apply; nodes: the most NodeClaims at once; lower: ceil(cores / "
        f"{lookup_instance_type(args.instance_type).cores} cores per node)"
    )
    print(
        f"NeuronWorkload / Deployment: {ours.seconds / base.seconds:.2f}x the time; nodes "
        f"{ours.nodes} vs lower bound {ours.lower_bound} "
        f"({'at the bound' if ours.nodes == ours.lower_bound else 'above the bound'})"
    )
    print(f"machine load average {os.getloadavg()[0]:.1f} at end")


if __name__ == "__main__":
    main()
