"""SIGTERM while pod events pour in: the operator stops at once and cleanly, and a new one
finishes the work.

Creating 32 pods makes a burst of pod events (created, bound, running, ready).  The operator's
kopf handlers only request a reconcile, so at SIGTERM kopf has no handler to cancel (before, each
pod event waited in kopf's thread pool for its own reconcile, and a backlog of them was cancelled
with a "Handler ... is cancelled" warning each).  The operator runs standalone, as the cluster
admin, in a namespace of its own.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from neuron_operator import conditions as c

from .conftest import Operators, apply, install_crd, kubectl_json
from .test_operator_cluster import KWOK_ONLY, SELECTOR, condition_of

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

NS = "nwl-shutdown"
NAME = "burst"
PODS = 32
TIMEOUT = 90.0
STOP_SECONDS = 15.0


@pytest.fixture(scope="module")
def operators(local_cluster: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Operators]:
    cluster = local_cluster
    install_crd(cluster)
    cluster.kubectl("delete", "namespace", NS, "--ignore-not-found", "--wait=true", "--timeout=90s")
    namespace = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}}
    assert apply(cluster, namespace).returncode == 0
    handle = Operators(
        cluster=cluster,
        lease="unused",
        kubeconfig=Path(cluster.kubeconfig),
        log_dir=tmp_path_factory.mktemp("shutdown-logs"),
        namespaces=[NS],
        lease_namespace=NS,
        extra_args=("--standalone",),
    )
    try:
        yield handle
    finally:
        for identity in list(handle.processes):
            handle.stop(identity)
        cluster.kubectl("delete", "namespace", NS, "--wait=false", check=False)


def burst_workload() -> dict[str, Any]:
    return {
        "apiVersion": "neurongroups.dev/v1alpha1",
        "kind": "NeuronWorkload",
        "metadata": {"name": NAME, "namespace": NS},
        "spec": {
            "image": "neuron-groups/runtime:0.1.0",
            "instanceType": "inf1.6xlarge",
            "isolation": "Process",
            "replicas": PODS // 16,
            "nodeSelector": dict(KWOK_ONLY),
            "models": [{"name": "m", "path": "/models/m", "cores": 1, "copies": 16}],
        },
    }


def pod_count(cluster: Any) -> int:
    return len(kubectl_json(cluster, "get", "pods", "-n", NS, "-l", SELECTOR)["items"])


def test_sigterm_amid_a_burst_of_pod_events_cancels_no_handler(operators: Operators) -> None:
    cluster = operators.cluster
    operators.start("first")
    process = operators.processes["first"]
    assert apply(cluster, burst_workload()).returncode == 0
    cluster.wait_for(lambda: pod_count(cluster) >= PODS // 4, TIMEOUT, "the first pods")
    process.terminate()
    started = time.monotonic()
    try:
        code = process.wait(timeout=STOP_SECONDS)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        pytest.fail(f"the operator took more than {STOP_SECONDS:g}s to stop:\n{operators.logs()}")
    took = time.monotonic() - started
    operators.processes.pop("first")
    log = operators.full_logs()
    assert code == 0, log[-3000:]
    assert "is cancelled" not in log, log[-3000:]
    assert "Traceback" not in log, log[-3000:]
    print(f"stopped in {took:.1f}s")

    # A new operator finishes what the first left: every pod, and Ready on status.
    operators.start("second")

    def ready() -> bool:
        body = kubectl_json(cluster, "get", "nwl", NAME, "-n", NS)
        return pod_count(cluster) == PODS and condition_of(body, c.READY).get("status") == c.TRUE

    try:
        cluster.wait_for(ready, TIMEOUT, f"{NAME} Ready with {PODS} pods")
    except Exception as error:
        raise AssertionError(f"{error}\n{operators.logs()}") from error
    cluster.kubectl("delete", "nwl", NAME, "-n", NS, "--wait=true")
