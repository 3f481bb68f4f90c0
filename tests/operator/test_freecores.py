"""Each DRA node's free cores and longest free run, from real ResourceSlice bodies (the driver's
``pool_slices``) and allocated claims; and the verdict on a block no node could allocate."""

from __future__ import annotations

from typing import Any

import pytest

from neuron_dra_driver.layout import NodeShape, pool_slices
from neuron_operator import conditions as c
from neuron_operator.freecores import NodeFree, block_verdict, free_cores, longest_run

INF1_24X = NodeShape("inf1.24xlarge", devices=16, cores_per_device=4)
INF1_6X = NodeShape("inf1.6xlarge", devices=4, cores_per_device=4)


def claim(node: str, *devices: str, driver: str = "neuroncores.neurongroups.dev") -> Any:
    results = [{"driver": driver, "pool": node, "device": d} for d in devices]
    return {"metadata": {"name": "x"}, "status": {"allocation": {"devices": {"results": results}}}}


def every_other(node: str, cores: int) -> list[Any]:
    """Claims holding the even cores of a node: half its cores free, no two adjacent."""
    return [claim(node, f"core-{n}") for n in range(0, cores, 2)]


@pytest.mark.parametrize(
    ("cores", "expected"),
    [
        ([], None),
        ([5], (5, 5)),
        ([0, 2, 3, 4, 9, 10, 11], (2, 4)),  # equal length: the lowest
        ([7, 1, 2, 3, 4, 6], (1, 4)),
    ],
    ids=["none", "one", "ties-lowest", "unsorted"],
)
def test_longest_run(cores: list[int], expected: tuple[int, int] | None) -> None:
    assert longest_run(cores) == expected


def test_free_cores_of_two_nodes_from_their_slices_and_claims() -> None:
    slices = pool_slices("big", INF1_24X, generation=1) + pool_slices(
        "small", INF1_6X, generation=3
    )
    claims = [
        *every_other("big", 64),
        claim("small", "cores-0-7"),
        claim("small", "cores-12-13"),
        claim("gone", "cores-0-3"),  # a pool with no slices: ignored
        claim("small", "cores-14-15", driver="other.dev"),  # another driver's pool of that name
        {"metadata": {"name": "pending"}},  # not allocated
    ]
    big, small = free_cores(slices, claims)
    assert (big.node, big.instance_type, big.cores) == ("big", "inf1.24xlarge", 64)
    assert big.free == tuple(range(1, 64, 2))
    assert big.longest == 1
    assert (small.node, small.cores, small.free) == ("small", 16, (8, 9, 10, 11, 14, 15))
    assert small.longest == 4
    assert "node small has 6 free NeuronCores (8-11,14-15), longest free run 4" in small.describe()


def test_unhealthy_cores_are_not_free_and_old_generations_are_ignored() -> None:
    old = pool_slices("n", INF1_6X, generation=1)  # being replaced: says nothing of health
    new = pool_slices("n", INF1_6X, generation=2, unhealthy={5, 6})
    (node,) = free_cores(old + new, [claim("n", "cores-0-3")])
    assert node.free == (4, *range(7, 16))
    assert node.longest == 9


def test_slices_of_other_drivers_are_ignored() -> None:
    foreign = pool_slices("n", INF1_6X, generation=1)
    for item in foreign:
        item["spec"]["driver"] = "gpu.example.com"
    assert free_cores(foreign, []) == []


def node(name: str, free: list[int], kind: str = "inf1.24xlarge") -> NodeFree:
    return NodeFree(name, kind, 64, tuple(free))


SCATTERED = node("a", list(range(1, 64, 2)))  # 32 free, longest run 1
FEW = node("b", list(range(8)))  # 8 free in one run
VERDICTS = [
    ("run-exists", [SCATTERED, node("c", list(range(16, 32)))], 16, None, None, None),
    (
        "free-but-scattered",
        [FEW, SCATTERED],
        16,
        None,
        c.REASON_NO_CONTIGUOUS_RUN,
        "no node has a free run of 16 adjacent NeuronCores for its block claim: node a has 32 "
        "free NeuronCores",
    ),
    (
        "not-enough-anywhere",
        [FEW, SCATTERED],
        33,
        None,
        c.REASON_INSUFFICIENT_CORES,
        "no node has 33 free NeuronCores for its block claim: the most is on node a has 32 free",
    ),
    (
        "only-the-instance-type-counts",
        [FEW, node("x", list(range(64)), kind="trn1.32xlarge"), SCATTERED],
        16,
        "inf1.24xlarge",
        c.REASON_NO_CONTIGUOUS_RUN,
        "no node of type inf1.24xlarge has a free run of 16",
    ),
    (
        "no-node-of-the-type",
        [FEW],
        4,
        "trn1.32xlarge",
        c.REASON_INSUFFICIENT_CORES,
        "no node of type trn1.32xlarge offers NeuronCores through the DRA driver",
    ),
    (
        "one-core-none-free",
        [node("f", [])],
        1,
        None,
        c.REASON_INSUFFICIENT_CORES,
        "node f has 0 free NeuronCores (none), longest free run 0",
    ),
]


@pytest.mark.parametrize(
    ("nodes", "size", "instance_type", "reason", "fragment"),
    [v[1:] for v in VERDICTS],
    ids=[v[0] for v in VERDICTS],
)
def test_block_verdict(
    nodes: list[NodeFree],
    size: int,
    instance_type: str | None,
    reason: str | None,
    fragment: str | None,
) -> None:
    verdict = block_verdict(nodes, size, instance_type)
    if reason is None:
        assert verdict is None
        return
    assert verdict is not None
    assert verdict.reason == reason
    assert fragment is not None and fragment in verdict.message, verdict.message
