"""The pure reconcile decision: desired vs observed -> actions, and the status it implies."""

from __future__ import annotations

from typing import Any

import pytest

from neuron_operator import conditions as c
from neuron_operator.api import parse_spec
from neuron_operator.freecores import NodeFree
from neuron_operator.planner import plan
from neuron_operator.reconcile import (
    ObservedPod,
    compute_status,
    diff,
    invalid_status,
    max_unavailable,
    observe_pod,
)

NEW, OLD = "new", "old"


def pods(hash_: str, count: int, *, ready: bool = True, start: int = 0) -> list[ObservedPod]:
    return [ObservedPod(f"w-{hash_}-0-{i}", hash_, 0, i, ready=ready) for i in range(start, count)]


def names(hash_: str, count: int) -> list[str]:
    return [f"w-{hash_}-0-{i}" for i in range(count)]


DIFF_CASES: list[tuple[str, list[str], list[ObservedPod], list[str], list[str]]] = [
    ("nothing-exists", names(NEW, 3), [], names(NEW, 3), []),
    ("all-in-place", names(NEW, 3), pods(NEW, 3), [], []),
    ("hand-deleted-pod-is-recreated", names(NEW, 3), pods(NEW, 3)[1:], names(NEW, 1), []),
    ("scale-down-removes-extras", names(NEW, 2), pods(NEW, 4), [], names(NEW, 4)[2:]),
    ("scale-to-zero-removes-all", [], pods(NEW, 2), [], names(NEW, 2)),
    # A roll of 8 ready pods: all new ones are created, but only 2 (25%) old ones go at once.
    ("roll-bounded", names(NEW, 8), pods(OLD, 8), names(NEW, 8), names(OLD, 2)),
    # Unready old pods never count as available: they go at once.
    ("roll-unready-old-go", names(NEW, 4), pods(OLD, 4, ready=False), names(NEW, 4), names(OLD, 4)),
    # Half the new pods ready: as many old ones may go, keeping >= desired - 1 ready.
    (
        "roll-progresses-with-new-ready",
        names(NEW, 4),
        pods(OLD, 4) + pods(NEW, 2),
        names(NEW, 4)[2:],
        names(OLD, 3),
    ),
]


@pytest.mark.parametrize(
    ("desired", "observed", "create", "delete"),
    [d[1:] for d in DIFF_CASES],
    ids=[d[0] for d in DIFF_CASES],
)
def test_diff(
    desired: list[str], observed: list[ObservedPod], create: list[str], delete: list[str]
) -> None:
    actions = diff(desired, NEW, observed)
    assert list(actions.create) == create
    assert sorted(actions.delete) == sorted(delete)


def test_terminating_pod_is_not_recreated_until_gone() -> None:
    gone_soon = ObservedPod("w-new-0-0", NEW, 0, 0, terminating=True)
    assert diff(["w-new-0-0"], NEW, [gone_soon]).empty


def test_diff_is_idempotent_once_applied() -> None:
    desired = names(NEW, 5)
    first = diff(desired, NEW, pods(OLD, 2))
    after = [ObservedPod(n, NEW, 0, i, ready=True) for i, n in enumerate(first.create)]
    assert diff(desired, NEW, after).empty


@pytest.mark.parametrize(
    ("desired", "expected"), [(0, 1), (1, 1), (4, 1), (5, 2), (16, 4)], ids=str
)
def test_max_unavailable(desired: int, expected: int) -> None:
    assert max_unavailable(desired) == expected


def api_pod(**status: Any) -> dict[str, Any]:
    return {
        "metadata": {
            "name": "w-h-1-2",
            "labels": {
                "neurongroups.dev/template-hash": "h",
                "neurongroups.dev/replica": "1",
                "neurongroups.dev/pod-index": "2",
            },
        },
        "status": status,
    }


OBSERVE_CASES = [
    (
        "running-ready",
        api_pod(phase="Running", conditions=[{"type": "Ready", "status": "True"}]),
        True,
        None,
    ),
    (
        "running-not-ready",
        api_pod(phase="Running", conditions=[{"type": "Ready", "status": "False"}]),
        False,
        None,
    ),
    (
        "pending-no-cores",
        api_pod(
            phase="Pending",
            conditions=[
                {
                    "type": "PodScheduled",
                    "status": "False",
                    "reason": "Unschedulable",
                    "message": "0/2 nodes are available: 2 Insufficient aws.amazon.com/neuroncore.",
                }
            ],
        ),
        False,
        "0/2 nodes are available: 2 Insufficient aws.amazon.com/neuroncore.",
    ),
    ("no-status", api_pod(), False, None),
]


@pytest.mark.parametrize(
    ("pod", "ready", "unschedulable"),
    [o[1:] for o in OBSERVE_CASES],
    ids=[o[0] for o in OBSERVE_CASES],
)
def test_observe_pod(pod: dict[str, Any], ready: bool, unschedulable: str | None) -> None:
    seen = observe_pod(pod)
    assert (seen.name, seen.template_hash, seen.replica, seen.index) == ("w-h-1-2", "h", 1, 2)
    assert (seen.ready, seen.unschedulable) == (ready, unschedulable)


def status_for(observed: list[ObservedPod], replicas: int = 2) -> dict[str, Any]:
    spec = parse_spec(
        {
            "image": "i",
            "nodeCores": 4,
            "replicas": replicas,
            "isolation": "Process",
            "models": [{"name": "m", "path": "/m", "cores": 1, "copies": 2}],
        }
    )
    result = plan(spec)
    desired = {(p.replica, p.index): f"w-{NEW}-{p.replica}-{p.index}" for p in result.pods}
    return compute_status(
        generation=3,
        result=result,
        current_hash=NEW,
        desired=desired,
        observed=observed,
        selector="sel",
    )


def cond(status: dict[str, Any], type_: str) -> tuple[str, str]:
    found = c.find(status["conditions"], type_)
    assert found is not None
    return str(found["status"]), str(found["reason"])


def all_pods(ready: bool = True, hash_: str = NEW) -> list[ObservedPod]:
    return [
        ObservedPod(f"w-{hash_}-{r}-{i}", hash_, r, i, ready=ready)
        for r in range(2)
        for i in range(2)
    ]


def test_status_all_ready() -> None:
    status = status_for(all_pods())
    assert (status["replicas"], status["readyReplicas"]) == (2, 2)
    assert status["observedGeneration"] == 3
    assert status["plan"] == [
        {"pod": 0, "cores": 1, "groupSizes": [1], "models": ["m"]},
        {"pod": 1, "cores": 1, "groupSizes": [1], "models": ["m"]},
    ]
    assert (status["coresPerReplica"], status["podsPerReplica"], status["planSummary"]) == (
        2,
        2,
        "2x[1]",
    )
    assert cond(status, c.READY) == (c.TRUE, c.REASON_ALL_READY)
    assert cond(status, c.PROGRESSING) == (c.FALSE, c.REASON_COMPLETE)
    assert cond(status, c.INVALID_SPEC) == (c.FALSE, c.REASON_SPEC_VALID)
    assert cond(status, c.UNSCHEDULABLE) == (c.FALSE, c.REASON_SCHEDULED)


def test_status_rolling_and_unschedulable() -> None:
    stuck = ObservedPod(
        "w-new-0-0", NEW, 0, 0, unschedulable="Insufficient aws.amazon.com/neuroncore"
    )
    status = status_for([*all_pods(hash_=OLD), stuck])
    assert status["readyReplicas"] == 0
    assert cond(status, c.READY) == (c.FALSE, c.REASON_NOT_READY)
    assert cond(status, c.PROGRESSING) == (c.TRUE, c.REASON_ROLLING)
    assert cond(status, c.UNSCHEDULABLE) == (c.TRUE, c.REASON_INSUFFICIENT_CORES)


def test_status_creating_and_partial_ready() -> None:
    status = status_for(all_pods()[:3])
    assert status["readyReplicas"] == 1
    assert cond(status, c.PROGRESSING) == (c.TRUE, c.REASON_CREATING)


def test_status_scaled_to_zero_is_ready() -> None:
    status = status_for([], replicas=0)
    assert cond(status, c.READY) == (c.TRUE, c.REASON_SCALED_TO_ZERO)


def test_invalid_status_keeps_what_was_there() -> None:
    previous = {"replicas": 2, "readyReplicas": 2, "plan": [{"pod": 0}], "conditions": []}
    status = invalid_status(generation=4, problems=["a", "b"], previous=previous, selector="s")
    assert (status["replicas"], status["readyReplicas"], status["plan"]) == (2, 2, [{"pod": 0}])
    assert status["observedGeneration"] == 4
    assert cond(status, c.INVALID_SPEC) == (c.TRUE, c.REASON_SPEC_INVALID)
    found = c.find(status["conditions"], c.INVALID_SPEC)
    assert found is not None and found["message"] == "a; b"


def test_merge_conditions_keeps_transition_time_while_status_holds() -> None:
    first = c.merge_conditions(None, [c.condition(c.READY, c.FALSE, "X", "", 1)], "t1")
    same = c.merge_conditions(first, [c.condition(c.READY, c.FALSE, "Y", "m", 2)], "t2")
    flipped = c.merge_conditions(same, [c.condition(c.READY, c.TRUE, "Z", "", 2)], "t3")
    assert [x["lastTransitionTime"] for x in (*first, *same, *flipped)] == ["t1", "t1", "t3"]


@pytest.mark.parametrize(
    "label",
    ["\u00b9", "\u0661", "-1", "", "1" * 40],
    ids=["superscript", "arabic-indic", "negative", "empty", "huge"],
)
def test_observe_pod_reads_only_ascii_label_numbers(label: str) -> None:
    """A hand-edited label never crashes the operator: anything but ASCII digits is no index."""
    pod = api_pod()
    pod["metadata"]["labels"]["neurongroups.dev/replica"] = label
    seen = observe_pod(pod)
    assert seen.index == 2
    assert seen.replica == (-1 if label in ("\u00b9", "\u0661", "-1", "") else 10**18)


DRA_FULL = (
    "0/3 nodes are available: 1 node(s) didn't match Pod's node affinity/selector, 2 cannot "
    "allocate all claims. preemption: 0/3 nodes are available: 3 Preemption is not helpful for "
    "scheduling."
)
SCATTERED = NodeFree("node-a", "inf1.24xlarge", 64, tuple(range(1, 64, 2)))  # 32 free, no pair
UNSCHEDULABLE_CASES = [
    (
        "dra-block-scattered",
        16,
        DRA_FULL,
        [SCATTERED],
        c.REASON_NO_CONTIGUOUS_RUN,
        "no node has a free run of 16 adjacent NeuronCores for its block claim: node node-a has "
        "32 free NeuronCores",
    ),
    (
        "dra-block-too-few-free",
        33,
        DRA_FULL,
        [SCATTERED],
        c.REASON_INSUFFICIENT_CORES,
        "no node has 33 free NeuronCores for its block claim: the most is on node node-a",
    ),
    (
        "dra-block-run-freed-since",
        16,
        DRA_FULL,
        [NodeFree("node-b", None, 16, tuple(range(16)))],
        c.REASON_POD_UNSCHEDULABLE,
        "a node has a free run of 16 NeuronCores now",
    ),
    (
        "dra-block-free-unknown",
        16,
        DRA_FULL,
        None,
        c.REASON_INSUFFICIENT_CORES,
        "which nodes have free cores is not known to the operator",
    ),
    (
        "dra-one-core",
        1,
        DRA_FULL,
        [NodeFree("node-c", None, 16, ())],
        c.REASON_INSUFFICIENT_CORES,
        "cannot allocate all claims",
    ),
    (
        "device-plugin",
        16,
        "0/3 nodes are available: 3 Insufficient aws.amazon.com/neuroncore.",
        None,
        c.REASON_INSUFFICIENT_CORES,
        "Insufficient aws.amazon.com/neuroncore",
    ),
    (
        "other",
        16,
        "0/3 nodes are available: 3 node(s) didn't match Pod's node affinity/selector.",
        None,
        c.REASON_POD_UNSCHEDULABLE,
        "node affinity",
    ),
]


@pytest.mark.parametrize(
    ("cores", "message", "free", "reason", "fragment"),
    [u[1:] for u in UNSCHEDULABLE_CASES],
    ids=[u[0] for u in UNSCHEDULABLE_CASES],
)
def test_unschedulable_reason_from_the_scheduler(
    cores: int, message: str, free: list[NodeFree] | None, reason: str, fragment: str
) -> None:
    spec = parse_spec(
        {
            "image": "i",
            "nodeCores": 64,
            "models": [{"name": "m", "path": "/m", "cores": cores}],
        }
    )
    result = plan(spec)
    desired = {(p.replica, p.index): f"w-{NEW}-{p.replica}-{p.index}" for p in result.pods}
    stuck = ObservedPod(desired[(0, 0)], NEW, 0, 0, unschedulable=message)
    status = compute_status(
        generation=1, result=result, current_hash=NEW, desired=desired, observed=[stuck],
        selector="sel", free_cores=free,
    )  # fmt: skip
    found = c.find(status["conditions"], c.UNSCHEDULABLE)
    assert found is not None
    assert (found["status"], found["reason"]) == (c.TRUE, reason)
    assert fragment in found["message"], found["message"]
