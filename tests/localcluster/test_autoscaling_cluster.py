"""Karpenter (kwok provider) adds and removes Neuron nodes for NeuronWorkloads, on the real cluster.

One cluster for the module, started with no Neuron node and ``autoscaler=Karpenter``; the chart
and the operator (a local process, as in ``make demo``) on it.  The tests run in order on one
NeuronWorkload of 64 one-core copies (isolation Process) on inf1.6xlarge (16 NeuronCores):
from zero Karpenter makes exactly 4 nodes; two replicas make 4 more and keep the first 4; one
replica again and then deleting the workload consolidate the nodes away.  The operator's
``Unschedulable`` condition is True while pods wait for nodes and clears when they run.
A node takes ``REGISTRATION_DELAY`` to appear (an instance's boot), so the wait is observable.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from neuron_localcluster import demo, karpenter, scaling
from neuron_localcluster.clitools import ensure_helm
from neuron_localcluster.cluster import LocalCluster
from neuron_operator import conditions as c

from .conftest import BUILD_ERROR

pytestmark = [pytest.mark.cluster, pytest.mark.slow, pytest.mark.autoscaling]

REPO = Path(__file__).resolve().parents[2]

NS = "autoscale"
NAME = "sixty-four"
COPIES = 64
INSTANCE_TYPE = "inf1.6xlarge"
REGISTRATION_DELAY = "5s"
CONSOLIDATE_AFTER = "5s"
WAIT_S = 240.0


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    if BUILD_ERROR:
        pytest.fail(f"Karpenter's kwok provider could not be built: {BUILD_ERROR[0]}")
    state = Path(tempfile.mkdtemp(prefix="ngk-"))
    settings = karpenter.Settings(
        consolidate_after=CONSOLIDATE_AFTER, registration_delay=REGISTRATION_DELAY
    )
    started = LocalCluster.up(state, kwok_nodes="", emulated_nodes="", autoscaler=settings)
    try:
        demo.install_chart(started)
        demo.start_operator(started)
        started.kubectl("create", "namespace", NS)
        yield started
    finally:
        started.down()
        shutil.rmtree(state, ignore_errors=True)


def nwl(cluster: LocalCluster) -> dict[str, Any]:
    found: dict[str, Any] = json.loads(
        cluster.kubectl("get", "nwl", NAME, "-n", NS, "-o", "json").stdout
    )
    return found


def condition(body: dict[str, Any], type_: str) -> str:
    found = c.find((body.get("status") or {}).get("conditions"), type_)
    return str(found.get("status")) if found else ""


@dataclass(frozen=True)
class Settled:
    last: scaling.Snapshot
    seen_unschedulable: bool  # the workload's Unschedulable condition was True on the way
    peak_claims: int  # the most NodeClaims that existed at once on the way


def wait_settled(cluster: LocalCluster, pods: int, nodes: int) -> Settled:
    """Wait until ``pods`` run on exactly ``nodes`` Karpenter nodes and the workload is Ready."""
    seen_unschedulable = False
    peak_claims = 0
    deadline = time.monotonic() + WAIT_S
    last = scaling.snapshot(cluster, NS, NAME)
    while time.monotonic() < deadline:
        body = nwl(cluster)
        seen_unschedulable |= condition(body, c.UNSCHEDULABLE) == c.TRUE
        last = scaling.snapshot(cluster, NS, NAME)
        peak_claims = max(peak_claims, len(scaling.nodeclaims(cluster)))
        current = (body.get("status") or {}).get("observedGeneration") == body["metadata"][
            "generation"
        ]
        if (
            current
            and last.running == pods == last.pods
            and len(last.nodes) == nodes
            and condition(body, c.READY) == c.TRUE
        ):
            return Settled(last, seen_unschedulable, peak_claims)
        time.sleep(0.5)
    logs = cluster.layout.logs / "karpenter.log"
    tail = "\n".join(logs.read_text(errors="replace").splitlines()[-30:])
    raise AssertionError(
        f"not settled at {pods} Running pods on {nodes} nodes after {WAIT_S:.0f}s: {last}\n"
        f"karpenter log tail:\n{tail}"
    )


def wait_nodes(cluster: LocalCluster, nodes: int) -> None:
    """Wait until exactly ``nodes`` Karpenter nodes and NodeClaims are left."""

    def settled() -> bool:
        left = len(scaling.karpenter_nodes(cluster)), len(scaling.nodeclaims(cluster))
        return left == (nodes, nodes)

    cluster.wait_for(settled, WAIT_S, f"{nodes} Karpenter nodes and NodeClaims (consolidation)")


def test_scale_from_zero_makes_the_planned_nodes(cluster: LocalCluster) -> None:
    assert scaling.karpenter_nodes(cluster) == []
    document = scaling.one_core_workload(NAME, NS, COPIES, INSTANCE_TYPE)
    cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(document))
    lower_bound = karpenter.nodes_lower_bound(COPIES, INSTANCE_TYPE)
    settled = wait_settled(cluster, COPIES, lower_bound)
    assert lower_bound == 4
    assert settled.last.node_types == (INSTANCE_TYPE,) * 4
    assert settled.peak_claims == 4, "Karpenter made more nodes than the pods need"
    assert settled.seen_unschedulable, "Unschedulable never turned True while pods waited"
    assert condition(nwl(cluster), c.UNSCHEDULABLE) == c.FALSE
    for node in scaling.karpenter_nodes(cluster):
        labels, status = node["metadata"]["labels"], node["status"]
        assert labels[karpenter.NODEPOOL_LABEL] == "neuron"
        assert labels["node.kubernetes.io/instance-type"] == INSTANCE_TYPE
        assert {"key": "aws.amazon.com/neuron", "effect": "NoSchedule"} in [
            {"key": t["key"], "effect": t["effect"]} for t in node["spec"].get("taints") or []
        ]
        for resource, count in (
            ("aws.amazon.com/neuroncore", "16"),
            ("aws.amazon.com/neuron", "4"),
        ):
            assert status["allocatable"][resource] == count, node["metadata"]["name"]
            assert status["capacity"][resource] == count, node["metadata"]["name"]


def test_scale_out_adds_nodes_only_for_what_does_not_fit(cluster: LocalCluster) -> None:
    before = set(scaling.snapshot(cluster, NS, NAME).nodes)
    assert len(before) == 4
    cluster.kubectl("scale", "nwl", NAME, "-n", NS, "--replicas=2")
    settled = wait_settled(cluster, 2 * COPIES, 8)
    assert before < set(settled.last.nodes), "scale-out replaced nodes instead of adding to them"
    assert settled.peak_claims == 8, "Karpenter made nodes for pods that fitted"
    assert settled.seen_unschedulable
    assert condition(nwl(cluster), c.UNSCHEDULABLE) == c.FALSE


def test_scale_in_and_delete_consolidate_nodes_away(cluster: LocalCluster) -> None:
    cluster.kubectl("scale", "nwl", NAME, "-n", NS, "--replicas=1")
    settled = wait_settled(cluster, COPIES, 4)
    assert settled.last.node_types == (INSTANCE_TYPE,) * 4
    cluster.kubectl("delete", "nwl", NAME, "-n", NS, "--wait=true")
    wait_nodes(cluster, 0)
    assert scaling.karpenter_nodes(cluster) == []


def _chart_nodepool() -> str:
    helm = ensure_helm()
    return subprocess.run(
        [
            str(helm), "template", "ng", str(REPO / "charts/neuron-groups"),
            "--set", "autoscaling.karpenter.nodePool.enabled=true",
            "--show-only", "templates/autoscaling/karpenter-nodepool.yaml",
        ],
        check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip


@pytest.mark.parametrize(
    "source",
    ["chart", "deploy/examples/karpenter-nodepool.yaml"],
    ids=["chart-render", "deploy-example"],
)
def test_eks_nodepools_pass_karpenters_own_schema(cluster: LocalCluster, source: str) -> None:
    """The EKS NodePools we ship pass the real karpenter.sh/v1 CRD (schema and CEL rules)."""
    text = _chart_nodepool() if source == "chart" else (REPO / source).read_text()
    (document,) = [d for d in yaml.safe_load_all(text) if d]
    assert document["kind"] == "NodePool"
    # The cluster's own NodePool is also called "neuron": a dry-run under that name would be an
    # update, refused for changing its nodeClassRef, not a check of the document.
    document["metadata"]["name"] = "eks-neuron"
    result = cluster.kubectl(
        "apply", "--dry-run=server", "-f", "-", input=yaml.safe_dump(document), check=False
    )
    assert result.returncode == 0, result.stderr
    assert "created (server dry run)" in result.stdout
    broken = yaml.safe_load(yaml.safe_dump(document))
    broken["spec"]["disruption"]["consolidateAfter"] = "5 min"
    refused = cluster.kubectl(
        "apply", "--dry-run=server", "-f", "-", input=yaml.safe_dump(broken), check=False
    )
    assert refused.returncode != 0
    assert "spec.disruption.consolidateAfter" in refused.stderr and "5 min" in refused.stderr
