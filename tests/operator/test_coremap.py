"""``kubectl neuron``'s pure parts: core maps from a node's record and its pods, reasons a pod is
Pending, API errors in one line, and kubectl's flags before or after the command."""

from __future__ import annotations

from typing import Any

import pytest

from neuron_cores import ALLOCATIONS_ANNOTATION, format_record
from neuron_operator import coremap
from neuron_operator.kubectl_neuron import build_parser, explain_api_error

TAINT = {"key": "aws.amazon.com/neuron", "effect": "NoSchedule"}
TOLERATE = [{"key": "aws.amazon.com/neuron", "operator": "Exists", "effect": "NoSchedule"}]


def node(
    name: str,
    *,
    cores: int = 16,
    allocatable: int | None = None,
    record: str | None = None,
    kind: str = "inf1.6xlarge",
) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "name": name,
        "labels": {"node.kubernetes.io/instance-type": kind},
        "annotations": {ALLOCATIONS_ANNOTATION: record} if record else {},
    }
    count = {"aws.amazon.com/neuroncore": str(cores)}
    spare = {"aws.amazon.com/neuroncore": str(cores if allocatable is None else allocatable)}
    return {
        "metadata": meta,
        "spec": {"taints": [TAINT]},
        "status": {"capacity": count, "allocatable": spare},
    }


def pod(
    name: str,
    cores: int,
    on: str | None = None,
    *,
    groups: str | None = None,
    workload: str | None = None,
    phase: str = "Running",
    selector: dict[str, str] | None = None,
    tolerations: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    labels = (
        {"app.kubernetes.io/instance": workload, "app.kubernetes.io/managed-by": "neuron-operator"}
        if workload
        else {}
    )
    limits = {"aws.amazon.com/neuroncore": str(cores)}
    return {
        "metadata": {
            "name": name,
            "namespace": "ns",
            "labels": labels,
            "annotations": {"neurongroups.dev/group-sizes": groups} if groups else {},
        },
        "spec": {
            **({"nodeName": on} if on else {}),
            "nodeSelector": selector or {"node.kubernetes.io/instance-type": "inf1.6xlarge"},
            "tolerations": TOLERATE if tolerations is None else tolerations,
            "containers": [{"name": "c", "resources": {"limits": limits}}],
        },
        "status": {"phase": phase},
    }


def test_recorded_node_names_pod_workload_group_and_unhealthy() -> None:
    record = format_record(8, {"ns/a": [0, 1, 2], "ns/b": [4, 5]}, [7])
    pods = [
        pod("a", 3, "n1", groups="1,2", workload="w"),
        pod("b", 2, "n1"),
        pod("c", 1, "n1"),  # bound but not started: no record entry yet
        pod("done", 4, "n1", phase="Succeeded"),
        pod("elsewhere", 2, "n2"),
    ]
    view = coremap.node_cores(node("n1", cores=8, allocatable=7, record=record), pods)
    assert view.recorded
    assert view.holders[0] == coremap.Holder("ns/a", "w", 0)
    assert view.holders[2] == coremap.Holder("ns/a", "w", 1)
    assert view.holders[5] == coremap.Holder("ns/b", None, 0)
    assert view.unhealthy == (7,)
    assert view.unplaced == (("ns/c", 1),)
    assert (view.requested, view.free) == (6, 1)
    assert view.free_cores() == [3, 6]
    assert view.longest_free_run() == (3, 3)
    data = coremap.to_json(view)
    assert data["cores"][7] == {
        "core": 7,
        "pod": None,
        "neuronWorkload": None,
        "group": None,
        "healthy": False,
    }
    text = "\n".join(coremap.text_lines(view))
    assert "n1 (inf1.6xlarge, 8 NeuronCores: 1 free, 1 unhealthy)" in text
    assert "unhealthy" in text.splitlines()[-2]
    assert "ns/c holds 1 NeuronCores, placement not reported" in text


def test_unrecorded_node_lists_pods_and_counts_unhealthy() -> None:
    view = coremap.node_cores(node("k", allocatable=15), [pod("p", 4, "k")])
    assert not view.recorded
    assert view.free_cores() is None
    assert view.unplaced == (("ns/p", 4),)
    text = "\n".join(coremap.text_lines(view))
    assert "not reported for this node" in text
    assert "1 unhealthy (capacity - allocatable), indexes not reported" in text
    assert coremap.to_json(view)["unhealthyNotReported"] == 1


def test_a_bad_record_is_reported_not_fatal() -> None:
    view = coremap.node_cores(node("n", record="{"), [pod("p", 1, "n")])
    assert not view.recorded
    assert view.problem is not None and "is not JSON" in view.problem
    assert "  ! annotation" in "\n".join(coremap.text_lines(view))


FRAGMENTED = format_record(16, {f"ns/one-{i}": [i * 2] for i in range(8)})

WHY = [
    (
        "no-node-of-type",
        pod("p", 1, selector={"node.kubernetes.io/instance-type": "inf2.xlarge"}),
        [node("n1")],
        "no node of type inf2.xlarge",
    ),
    (
        "taint",
        pod("p", 1, tolerations=[]),
        [node("n1")],
        "taint: node n1 has aws.amazon.com/neuron:NoSchedule, which ns/p does not tolerate",
    ),
    (
        "not-enough-cores",
        pod("p", 17),
        [node("n1"), node("n2", allocatable=12)],
        "not enough cores: ns/p needs 17 NeuronCores and the most any node of type "
        "inf1.6xlarge has free is 16 (node n1)",
    ),
    (
        "no-contiguous-run",
        pod("p", 8),
        [node("n1", record=FRAGMENTED)],
        "no contiguous run: node n1 has 8 free NeuronCores (1,3,5,7,9,11,13,15) but its longest "
        "free run is 1; ns/p needs 8 contiguous cores",
    ),
    (
        "run-unknown",
        pod("p", 8),
        [node("n1")],
        "node n1 has 16 free NeuronCores; whether 8 of them are contiguous is not reported",
    ),
    ("placed", pod("p", 1, "n1", phase="Pending"), [node("n1")], "its containers are starting"),
    (
        "failed-admission",
        {**pod("p", 1, "n1", phase="Failed"), "status": {"phase": "Failed", "reason": "X"}},
        [node("n1")],
        "ns/p failed on node n1: X",
    ),
]


@pytest.mark.parametrize(
    ("subject", "nodes", "expected"), [w[1:] for w in WHY], ids=[w[0] for w in WHY]
)
def test_why_pending_in_words(
    subject: dict[str, Any], nodes: list[dict[str, Any]], expected: str
) -> None:
    # The pods holding the fragmented node's cores are bound to it, as the record says.
    bound = [pod(f"one-{i}", 1, "n1") for i in range(8) if FRAGMENTED in str(nodes)]
    views = {n["metadata"]["name"]: coremap.node_cores(n, bound) for n in nodes}
    reasons = coremap.why_pending(subject, nodes, views, ["0/1 nodes are available"])
    assert any(expected in r for r in reasons), reasons
    if not subject["spec"].get("nodeName"):
        assert reasons[-1] == "scheduler: 0/1 nodes are available"


ERRORS = [
    (403, b'{"message": "nodes is forbidden"}', "access denied: cannot list nodes"),
    (401, b"{}", "not authenticated"),
    (
        404,
        b'{"message": "the server could not find the requested resource"}',
        "the NeuronWorkload CRD (neuronworkloads.neurongroups.dev, neurongroups.dev/v1alpha1) "
        "is not installed",
    ),
    (500, b"oops", "HTTP 500: oops"),
]


@pytest.mark.parametrize(("status", "body", "expected"), ERRORS, ids=["403", "401", "404", "500"])
def test_api_errors_in_one_line(status: int, body: bytes, expected: str) -> None:
    what = "get NeuronWorkload w in namespace ns" if status == 404 else "list nodes"
    assert expected in explain_api_error(what, status, body)


FLAGS = [
    ("before", ["--kubeconfig", "k", "--context", "c", "-n", "x", "cores"], ("k", "c", "x")),
    ("after", ["cores", "--kubeconfig", "k", "--context", "c", "-n", "x"], ("k", "c", "x")),
    ("none", ["why", "p"], (None, None, None)),
]


@pytest.mark.parametrize(("argv", "expected"), [f[1:] for f in FLAGS], ids=[f[0] for f in FLAGS])
def test_kubectl_flags_before_or_after_the_command(
    argv: list[str], expected: tuple[str | None, ...]
) -> None:
    args = build_parser().parse_args(argv)
    assert (args.kubeconfig, args.context, args.namespace) == expected


def test_scattered_groups_are_flagged_in_the_map_and_in_why() -> None:
    record = format_record(8, {"ns/odd": [1, 3, 5, 7], "ns/ok": [0]})
    pods = [pod("odd", 4, "n1", groups="4"), pod("ok", 1, "n1")]
    view = coremap.node_cores(node("n1", cores=8, record=record), pods)
    assert list(view.split) == ["ns/odd"]
    assert coremap.to_json(view)["nonContiguousGroups"] == [{"pod": "ns/odd", "cores": "1,3,5,7"}]
    text = "\n".join(coremap.text_lines(view))
    assert "! no contiguous run: ns/odd got cores 1,3,5,7 on node n1" in text
    reasons = coremap.why_pending(pods[0], [node("n1", cores=8)], {"n1": view})
    assert reasons[0].startswith("ns/odd is Running on node n1")
    assert "no contiguous run: ns/odd got cores 1,3,5,7" in reasons[1]
    assert coremap.why_pending(pods[1], [node("n1", cores=8)], {"n1": view})[1:] == []


def dra_claim(pod_name: str, device: str, node_name: str) -> dict[str, Any]:
    result = {"driver": "neuroncores.neurongroups.dev", "pool": node_name, "device": device}
    return {
        "metadata": {
            "namespace": "ns",
            "ownerReferences": [{"kind": "Pod", "name": pod_name, "controller": True}],
        },
        "status": {"allocation": {"devices": {"results": [result]}}},
    }


def test_dra_node_map_comes_from_the_claims() -> None:
    dra_node = node("n1", cores=0)  # DRA: no aws.amazon.com/neuroncore capacity
    dra_pod = pod("a", 0, on="n1", groups="2,2", workload="w")
    dra_pod["spec"]["containers"][0]["resources"] = {"claims": [{"name": "neuroncores"}]}
    claims = [
        dra_claim("a", "cores-4-7", "n1"),
        dra_claim("b", "core-0", "n1"),  # its pod is gone: not shown
        dra_claim("c", "cores-0-1", "n2"),  # another node
    ]
    assert not coremap.is_neuron_node(dra_node)
    assert coremap.is_neuron_node(dra_node, {"n1"})
    view = coremap.node_cores(dra_node, [dra_pod], claims, dra=True)
    assert view.recorded and view.capacity == 16 and view.allocatable == 16
    assert view.requested == 4 and view.free == 12
    assert {core: h.pod for core, h in view.holders.items()} == dict.fromkeys(range(4, 8), "ns/a")
    assert [view.holders[c].group for c in (4, 5, 6, 7)] == [0, 0, 1, 1]
    assert view.free_cores() == [0, 1, 2, 3, *range(8, 16)]
    assert not view.unplaced
    lines = coremap.text_lines(view)
    assert lines[0] == "n1 (inf1.6xlarge, 16 NeuronCores: 12 free, 0 unhealthy)"
    empty = coremap.node_cores(dra_node, [], [], dra=True)
    assert empty.recorded and empty.free == 16 and not empty.holders


@pytest.mark.parametrize(
    ("held", "want", "expected"),
    [
        (["core-3", "core-7", "core-11", "core-15"], 4, "no contiguous run: node n1 has 12 free"),
        (["cores-0-7", "cores-8-11"], 8, "not enough cores: ns/p needs 8 NeuronCores"),
    ],
    ids=["scattered", "too-few"],
)
def test_why_a_dra_pod_waits_counts_its_claimed_block(
    held: list[str], want: int, expected: str
) -> None:
    dra_node = node("n1", cores=0)
    dra_node["spec"]["taints"] = []
    holders = [pod(f"h{i}", 0, on="n1") for i in range(len(held))]
    claims = [dra_claim(f"h{i}", device, "n1") for i, device in enumerate(held)]
    view = coremap.node_cores(dra_node, holders, claims, dra=True)
    waiting = pod("p", 0)
    reasons = coremap.why_pending(waiting, [dra_node], {"n1": view}, claimed_cores=want)
    assert any(expected in r for r in reasons), reasons
    assert not any("Insufficient aws.amazon.com/neuroncore" in r for r in reasons)
    # without the claimed block, nothing is said of cores (the pod asks for none itself)
    assert not any("cores" in r for r in coremap.why_pending(waiting, [dra_node], {"n1": view}))


def test_a_claim_made_on_its_own_holds_cores_for_the_pod_it_is_reserved_for() -> None:
    dra_node = node("n1", cores=0)
    holder = pod("holder", 0, on="n1")
    standalone = dra_claim("nobody", "cores-0-3", "n1")
    standalone["metadata"].pop("ownerReferences")
    standalone["status"]["reservedFor"] = [{"resource": "pods", "name": "holder", "uid": "u"}]
    view = coremap.node_cores(dra_node, [holder], [standalone], dra=True)
    assert {core: h.pod for core, h in view.holders.items()} == dict.fromkeys(range(4), "ns/holder")
    assert view.free == 12
