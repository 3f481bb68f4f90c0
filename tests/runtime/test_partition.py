import itertools

import pytest

from neuron_runtime.partition import balance_stages


def _brute_force_best(flops: list[int], stages: int) -> int:
    best = None
    for cuts in itertools.combinations(range(1, len(flops)), stages - 1):
        bounds = [0, *cuts, len(flops)]
        cost = max(sum(flops[a:b]) for a, b in itertools.pairwise(bounds))
        best = cost if best is None else min(best, cost)
    assert best is not None
    return best


@pytest.mark.parametrize(
    ("flops", "stages", "expected"),
    [
        ([5], 1, [(0, 1)]),
        ([1, 1, 1, 1], 2, [(0, 2), (2, 4)]),
        ([1, 1, 1, 1], 4, [(0, 1), (1, 2), (2, 3), (3, 4)]),
        ([10, 1, 1, 1, 1], 2, [(0, 1), (1, 5)]),
        ([1, 1, 1, 1, 10], 2, [(0, 4), (4, 5)]),
        ([3, 3, 2, 2, 2], 3, [(0, 1), (1, 3), (3, 5)]),
    ],
    ids=["one-stage", "even-halves", "one-per-layer", "heavy-first", "heavy-last", "three"],
)
def test_balance_stages_table(
    flops: list[int], stages: int, expected: list[tuple[int, int]]
) -> None:
    assert balance_stages(flops, stages) == expected


@pytest.mark.parametrize("seed", range(8), ids=[f"seed{s}" for s in range(8)])
def test_balance_stages_is_optimal_and_covers_every_layer(seed: int) -> None:
    import random

    rng = random.Random(seed)
    flops = [rng.randint(1, 100) for _ in range(rng.randint(2, 9))]
    stages = rng.randint(1, len(flops))
    ranges = balance_stages(flops, stages)
    assert len(ranges) == stages
    assert ranges[0][0] == 0 and ranges[-1][1] == len(flops)
    assert all(a < b for a, b in ranges)
    assert all(prev[1] == nxt[0] for prev, nxt in itertools.pairwise(ranges))
    assert max(sum(flops[a:b]) for a, b in ranges) == _brute_force_best(flops, stages)


@pytest.mark.parametrize(
    ("flops", "stages", "message"),
    [([1, 2], 3, "cannot split 2 layers into 3"), ([1], 0, "at least 1 stage")],
    ids=["more-stages-than-layers", "zero-stages"],
)
def test_balance_stages_rejects(flops: list[int], stages: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        balance_stages(flops, stages)
