"""The judged case: a NeuronWorkload wanting a 16-core block on a cluster whose node has 16 free
cores (60, in fact) but no free run of 16 is ``Unschedulable``/``NoContiguousRun``, and one
wanting more cores than any node has free is ``InsufficientNeuronCores``; both messages name the
node with its free cores and longest run.

A ``--allocation dra`` local cluster with one kwok inf1.24xlarge (64 cores, published by the DRA
driver).  Four plain pods each hold one core through a claim pinned by CEL to cores 15, 31, 47 and
63, so the free cores are 0-14, 16-30, 32-46 and 48-62: 60 free, longest run 15.  The operator
runs as ``neuron-operator run`` with the chart's ServiceAccount and RBAC (so the cluster-wide list
of resourceslices and resourceclaims it needs is exercised).
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from neuron_dra_driver.classes import block_claim
from neuron_dra_driver.layout import DRIVER_NAME
from neuron_operator import conditions as c

from .conftest import Operators, apply, kubectl_json, operator_on_own_cluster

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

NS = "nwl-runs"
FILLERS = "fillers"  # another namespace: the operator must see every namespace's claims
OPERATOR_NS = "nwl-runs-operator"
NODE_TYPE = "inf1.24xlarge"
HELD = (15, 31, 47, 63)
TOLERATE = [{"key": "aws.amazon.com/neuron", "operator": "Exists", "effect": "NoSchedule"}]
TIMEOUT = 180.0


@pytest.fixture(scope="module")
def operators(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Operators]:
    with operator_on_own_cluster(
        kwok_nodes=f"1x{NODE_TYPE}",
        emulated_nodes="",
        allocation="dra",
        release="nwl-runs",
        operator_namespace=OPERATOR_NS,
        namespaces=[NS],
        other_namespaces=(FILLERS,),
        log_dir=tmp_path_factory.mktemp("operator-logs"),
    ) as handle:
        yield handle


def pinned_claim(name: str, core: int) -> dict[str, Any]:
    """A claim for the 1-core block of exactly ``core``."""
    claim = block_claim(name, 1, namespace=FILLERS)
    request = claim["spec"]["devices"]["requests"][0]["exactly"]
    pin = f'device.attributes["{DRIVER_NAME}"].firstCore == {core}'
    request["selectors"].append({"cel": {"expression": pin}})
    return claim


def holder_pod(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": FILLERS},
        "spec": {
            "tolerations": TOLERATE,
            "resourceClaims": [{"name": "cores", "resourceClaimName": name}],
            "containers": [
                {"name": "c", "image": "busybox", "resources": {"claims": [{"name": "cores"}]}}
            ],
        },
    }


def workload(name: str, cores: int) -> dict[str, Any]:
    return {
        "apiVersion": "neurongroups.dev/v1alpha1",
        "kind": "NeuronWorkload",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "image": "neuron-groups/runtime:0.1.0",
            "instanceType": NODE_TYPE,
            "allocation": "DRA",
            "models": [{"name": "m", "path": "/models/m", "cores": cores}],
        },
    }


def unschedulable(operators: Operators, name: str) -> dict[str, Any]:
    cluster = operators.cluster

    def check() -> dict[str, Any] | None:
        body = kubectl_json(cluster, "get", "nwl", name, "-n", NS)
        found = c.find((body.get("status") or {}).get("conditions"), c.UNSCHEDULABLE)
        return dict(found) if found and found.get("status") == c.TRUE else None

    try:
        result: dict[str, Any] = cluster.wait_for(check, TIMEOUT, f"{name} to be Unschedulable")
    except Exception as error:
        raise AssertionError(f"{error}\noperator logs:\n{operators.logs()}") from error
    return result


def test_free_cores_without_a_run_and_too_few_free_cores_are_told_apart(
    operators: Operators,
) -> None:
    cluster = operators.cluster
    node = cluster.kwok_nodes[0]
    for core in HELD:
        name = f"hold-{core}"
        assert apply(cluster, pinned_claim(name, core)).returncode == 0
        assert apply(cluster, holder_pod(name)).returncode == 0

    def held() -> list[str] | None:
        claims = kubectl_json(cluster, "get", "resourceclaims", "-n", FILLERS)["items"]
        devices = sorted(
            f"{r['pool']}/{r['device']}"
            for claim in claims
            for r in ((claim.get("status") or {}).get("allocation") or {})
            .get("devices", {})
            .get("results", [])
        )
        return devices if len(devices) == len(HELD) else None

    assert cluster.wait_for(held, TIMEOUT, "the four pinned cores to be allocated") == sorted(
        f"{node}/core-{core}" for core in HELD
    )
    # 60 free cores, longest run 15: a 16-core block has no run
    assert apply(cluster, workload("block-16", 16)).returncode == 0
    found = unschedulable(operators, "block-16")
    assert found["reason"] == c.REASON_NO_CONTIGUOUS_RUN, found
    assert (
        f"no node of type {NODE_TYPE} has a free run of 16 adjacent NeuronCores for its block "
        f"claim: node {node} has 60 free NeuronCores (0-14,16-30,32-46,48-62), longest free "
        "run 15"
    ) in found["message"], found["message"]
    assert "cannot allocate all claims" in found["message"]  # the scheduler's words, quoted
    # kubectl neuron why says the same from the pod's claimed block and the node's free cores
    why = subprocess.run(
        [sys.executable, "-m", "neuron_operator.kubectl_neuron", "--kubeconfig",
         str(cluster.kubeconfig), "why", "block-16", "-n", NS],
        capture_output=True, text=True, timeout=60, env={"PYTHONSAFEPATH": "1"}, check=False,
    )  # fmt: skip
    assert why.returncode == 0, why.stderr
    assert (
        f"no contiguous run: node {node} has 60 free NeuronCores (0-14,16-30,32-46,48-62) but "
        "its longest free run is 15"
    ) in why.stdout, why.stdout
    # 61 cores: more than the node has free at all
    assert apply(cluster, workload("block-61", 61)).returncode == 0
    found = unschedulable(operators, "block-61")
    assert found["reason"] == c.REASON_INSUFFICIENT_CORES, found
    assert (
        f"no node of type {NODE_TYPE} has 61 free NeuronCores for its block claim: the most is "
        f"on node {node} has 60 free NeuronCores"
    ) in found["message"], found["message"]
    # freeing core 15 makes a run of 31 (0-30): the 16-core pod is placed, the condition clears
    cluster.kubectl("delete", "pod", "hold-15", "-n", FILLERS, "--wait=true", "--timeout=60s")
    cluster.kubectl("delete", "resourceclaim", "hold-15", "-n", FILLERS, "--wait=true")

    def scheduled() -> dict[str, Any] | None:
        body = kubectl_json(cluster, "get", "nwl", "block-16", "-n", NS)
        found = c.find((body.get("status") or {}).get("conditions"), c.UNSCHEDULABLE)
        return body if found and found.get("status") == c.FALSE else None

    body = cluster.wait_for(scheduled, TIMEOUT, "the 16-core block to be placed")
    (allocated,) = body["status"]["allocatedCores"]
    assert allocated["node"] == node
    first, _, last = allocated["cores"].partition("-")
    assert int(last) - int(first) == 15 and int(last) <= 30, allocated
