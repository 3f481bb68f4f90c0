"""Benchmark of DRA scheduling on the real local control plane, 16- and 64-core layouts.

Starts its own local cluster (kube-apiserver, kube-scheduler, kube-controller-manager and kwok,
v1.36.1, built once into ~/.cache/neuron-groups/bin) with one kwok inf1.6xlarge (16 cores) and
one kwok inf1.24xlarge (64 cores), publishes both pools with the driver's publisher and measures:

* the pool: ResourceSlices, devices, the JSON bytes the API server returns for them, and the time
  to publish them;
* the scheduler's time per pod: from the pod's creation to its ``spec.nodeName`` being set, for
  pods that each claim one block (sizes that fill the node: 6,4,2,2,1,1 and 33,16,8,4,2,1),
  created one at a time, several rounds.  The peer, measured in the same run on the same node:
  the same number of plain pods with no claim.  The ratio is the price of DRA allocation over
  thousands of published devices.

Every allocation is checked to be the block first-fit over the published order predicts.
Run: ``PYTHONSAFEPATH=1 .venv/bin/python bench/bench_dra_scheduling.py``; the last line is JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from kubernetes import client as k8s

from neuron_cores import NEURON_TAINT_EFFECT, NEURON_TAINT_KEY, lookup_instance_type
from neuron_dra_driver.classes import block_claim, device_classes
from neuron_dra_driver.layout import DRIVER_NAME, NodeShape, first_fit, placement_order
from neuron_dra_driver.publisher import KubeSliceApi, Publisher
from neuron_localcluster import LocalCluster, ensure_binaries
from neuron_localcluster.kube import body, raw_json

FILLS = {16: (6, 4, 2, 2, 1, 1), 64: (33, 16, 8, 4, 2, 1)}
TOLERATE_NEURON = [{"key": NEURON_TAINT_KEY, "operator": "Exists", "effect": NEURON_TAINT_EFFECT}]
POLL_S = 0.005
TIMEOUT_S = 60.0


def pod_manifest(name: str, node: str, claim: str | None) -> dict[str, Any]:
    container: dict[str, Any] = {"name": "c", "image": "busybox"}
    spec: dict[str, Any] = {
        "nodeSelector": {"kubernetes.io/hostname": node},
        "tolerations": TOLERATE_NEURON,
        "containers": [container],
    }
    if claim is not None:
        spec["resourceClaims"] = [{"name": "cores", "resourceClaimName": claim}]
        container["resources"] = {"claims": [{"name": "cores"}]}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec}


def wait(predicate: Any, what: str) -> Any:
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline:
        got = predicate()
        if got:
            return got
        time.sleep(POLL_S)
    raise TimeoutError(f"gave up after {TIMEOUT_S:.0f}s waiting for {what}")


def bind_time(core: k8s.CoreV1Api, ns: str, manifest: dict[str, Any]) -> float:
    """Seconds from creating the pod to seeing it bound to a node."""
    name = manifest["metadata"]["name"]
    started = time.monotonic()
    core.create_namespaced_pod(ns, body(manifest))

    def bound() -> bool:
        pod = raw_json(core.read_namespaced_pod(name, ns, _preload_content=False))
        return bool(pod["spec"].get("nodeName"))

    wait(bound, f"pod {name} to be bound")
    return time.monotonic() - started


def allocated_device(resource: k8s.ResourceV1Api, ns: str, name: str) -> str:
    def device() -> str | None:
        claim = raw_json(resource.read_namespaced_resource_claim(name, ns, _preload_content=False))
        allocation = claim.get("status", {}).get("allocation")
        return str(allocation["devices"]["results"][0]["device"]) if allocation else None

    return str(wait(device, f"claim {name} allocated"))


def clear(core: k8s.CoreV1Api, resource: k8s.ResourceV1Api, ns: str) -> None:
    """Delete the round's pods and claims and wait until the claims are gone (deallocated)."""
    core.delete_collection_namespaced_pod(ns, grace_period_seconds=0)
    resource.delete_collection_namespaced_resource_claim(ns)

    def empty() -> bool:
        pods = raw_json(core.list_namespaced_pod(ns, _preload_content=False))["items"]
        claims = raw_json(resource.list_namespaced_resource_claim(ns, _preload_content=False))[
            "items"
        ]
        return not pods and not claims

    wait(empty, f"pods and claims of {ns} to be deleted")


def measure_node(cluster: LocalCluster, node: str, rounds: int) -> dict[str, Any]:
    api_client = cluster.api_client()
    core, resource = k8s.CoreV1Api(api_client), k8s.ResourceV1Api(api_client)
    metadata = raw_json(core.read_node(node, _preload_content=False))["metadata"]
    uid = metadata["uid"]
    itype = lookup_instance_type(metadata["labels"]["node.kubernetes.io/instance-type"])
    shape = NodeShape(itype.name, itype.devices, itype.cores_per_device)
    publisher = Publisher(KubeSliceApi(api_client), node, shape, owner={"name": node, "uid": uid})
    started = time.monotonic()
    publisher.publish(set())
    publish_s = time.monotonic() - started
    listed: Any = resource.list_resource_slice(
        field_selector=f"spec.driver={DRIVER_NAME},spec.nodeName={node}", _preload_content=False
    )
    data: bytes = listed.data
    items = json.loads(data)["items"]
    devices = sum(len(s["spec"].get("devices", [])) for s in items)

    ns = f"bench-{uuid.uuid4().hex[:6]}"
    core.create_namespace(body({"metadata": {"name": ns}}))
    wait(lambda: core.read_namespaced_service_account("default", ns), "the default SA")
    dra_times: list[float] = []
    plain_times: list[float] = []
    order = placement_order(shape)
    for round_ in range(rounds):
        free = set(range(shape.cores))
        for index, size in enumerate(FILLS[shape.cores]):
            name = f"r{round_}-{index}-{size}"
            resource.create_namespaced_resource_claim(ns, body(block_claim(name, size)))
            dra_times.append(bind_time(core, ns, pod_manifest(name, node, name)))
            expected = first_fit(order, free, size)
            assert expected is not None
            got = allocated_device(resource, ns, name)
            assert got == expected.name, f"claim {name}: got {got}, expected {expected.name}"
            free -= set(expected.cores)
        for index in range(len(FILLS[shape.cores])):
            plain = pod_manifest(f"r{round_}-plain-{index}", node, None)
            plain_times.append(bind_time(core, ns, plain))
        clear(core, resource, ns)
    core.delete_namespace(ns)
    publisher.cleanup()
    dra_ms = statistics.median(dra_times) * 1000
    plain_ms = statistics.median(plain_times) * 1000
    print(
        f"{node}: {shape.cores} cores, {devices} devices in {len(items)} slices, "
        f"{len(data) / 1024:.1f} KiB listed, published in {publish_s * 1000:.0f} ms"
    )
    print(
        f"  pod create->bound, median of {len(dra_times)}: with a block claim {dra_ms:.1f} ms "
        f"(max {max(dra_times) * 1000:.1f}), plain pod {plain_ms:.1f} ms "
        f"(max {max(plain_times) * 1000:.1f}); ratio {dra_ms / plain_ms:.2f}"
    )
    return {
        "cores": shape.cores,
        "devices": devices,
        "slices": len(items),
        "bytes": len(data),
        "publish_ms": round(publish_s * 1000, 1),
        "pods": len(dra_times),
        "dra_bind_median_ms": round(dra_ms, 1),
        "dra_bind_max_ms": round(max(dra_times) * 1000, 1),
        "plain_bind_median_ms": round(plain_ms, 1),
        "dra_vs_plain": round(dra_ms / plain_ms, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="times each node is filled")
    args = parser.parse_args()
    ensure_binaries()
    state = Path(tempfile.mkdtemp(prefix="ngc-bench-dra-"))
    cluster = LocalCluster.up(state, kwok_nodes="inf1.6xlarge,inf1.24xlarge", emulated_nodes="")
    try:
        resource = k8s.ResourceV1Api(cluster.api_client())
        for item in device_classes():
            resource.create_device_class(body(item))
        measured = [measure_node(cluster, node, args.rounds) for node in cluster.kwok_nodes]
        results = {str(r["cores"]): r for r in measured}
    finally:
        cluster.down()
        shutil.rmtree(state, ignore_errors=True)
    load = os.getloadavg()[0]
    print(f"machine load average (1 min) at the end: {load:.2f} on {os.cpu_count()} CPUs")
    print(
        json.dumps(
            {
                "bench": "dra_scheduling",
                "layout_16": results["16"],
                "layout_64": results["64"],
                "load_1min": round(load, 2),
            }
        )
    )


if __name__ == "__main__":
    main()
