"""Splitting a model's layers into N pipeline stages balanced by FLOPs (pure).

The Neuron compiler pipelines a model across the NeuronCores of a group: each core holds a
contiguous slice of the layers and passes activations to the next.  A pipeline runs at the pace
of its slowest stage, so the split minimises the largest stage's FLOPs (the classic linear
partition problem, solved exactly by dynamic programming; models have tens of layers).
"""

from __future__ import annotations

from collections.abc import Sequence


def balance_stages(flops: Sequence[int], stages: int) -> list[tuple[int, int]]:
    """Half-open ``(start, end)`` layer ranges, one per stage, minimising the largest stage.

    Every stage gets at least one layer; ties prefer earlier boundaries (deterministic).
    """
    layers = len(flops)
    if stages < 1:
        raise ValueError(f"a model needs at least 1 stage, got {stages}")
    if stages > layers:
        raise ValueError(
            f"cannot split {layers} layers into {stages} pipeline stages (at most one stage per "
            f"layer); compile for {layers} cores or fewer, or use a deeper model"
        )
    prefix = [0]
    for f in flops:
        prefix.append(prefix[-1] + int(f))
    inf = float("inf")
    # best[k][i]: smallest possible largest-stage cost for the first i layers in k stages.
    best = [[inf] * (layers + 1) for _ in range(stages + 1)]
    cut = [[0] * (layers + 1) for _ in range(stages + 1)]
    best[0][0] = 0.0
    for k in range(1, stages + 1):
        for i in range(k, layers - (stages - k) + 1):
            for j in range(k - 1, i):
                cost = max(best[k - 1][j], float(prefix[i] - prefix[j]))
                if cost < best[k][i]:
                    best[k][i] = cost
                    cut[k][i] = j
    ranges: list[tuple[int, int]] = []
    end = layers
    for k in range(stages, 0, -1):
        start = cut[k][end]
        ranges.append((start, end))
        end = start
    ranges.reverse()
    return ranges
