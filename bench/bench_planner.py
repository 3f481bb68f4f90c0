"""Benchmark of the operator's planner: 10,000 model copies of mixed core counts, ``Shared``.

For several node sizes it prints the planning time and the pods used against the lower bound
ceil(total cores / node cores).  The peer, measured in the same run on the same groups, is a
textbook first-fit decreasing that scans every open pod for each group: the planner's bucketed
best-fit must use no more pods and take less time, and the ratios say by how much.

``plan_layout`` is timed (groups, packing and load order); the operator's refusal of plans with
more than ``MAX_PODS`` pods for one NeuronWorkload is a policy check outside the arithmetic.
Run: ``PYTHONSAFEPATH=1 .venv/bin/python bench/bench_planner.py``.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Sequence
from functools import partial

from neuron_operator.api import ISOLATION_SHARED, ModelSpec, WorkloadSpec
from neuron_operator.planner import expand_copies, pack_groups, plan_layout

COPIES = 10_000
NODE_SIZES = (4, 16, 32, 64)
CORE_CHOICES = (1, 1, 1, 2, 2, 4, 4, 6, 8, 12, 16)
REPEATS = 3


def mixed_models(node_cores: int, seed: int = 7) -> tuple[ModelSpec, ...]:
    """About 10,000 copies over many models, core counts drawn from a skewed mix."""
    rng = random.Random(seed)
    models: list[ModelSpec] = []
    left = COPIES
    while left:
        copies = min(left, rng.randint(20, 400))
        cores = min(rng.choice(CORE_CHOICES), node_cores)
        models.append(ModelSpec(f"m{len(models)}", f"/models/m{len(models)}", cores, copies))
        left -= copies
    return tuple(models)


def first_fit_decreasing(sizes: Sequence[int], node_cores: int) -> list[list[int]]:
    """The peer: scan the open pods in order for the first with room (O(groups x pods))."""
    bins: list[list[int]] = []
    free: list[int] = []
    for index in sorted(range(len(sizes)), key=lambda i: -sizes[i]):
        for b, room in enumerate(free):
            if room >= sizes[index]:
                bins[b].append(index)
                free[b] -= sizes[index]
                break
        else:
            bins.append([index])
            free.append(node_cores - sizes[index])
    return bins


def best_time(run: Callable[[], object]) -> float:
    timings = []
    for _ in range(REPEATS):
        started = time.perf_counter()
        run()
        timings.append(time.perf_counter() - started)
    return min(timings)


def main() -> None:
    print(f"planner: {COPIES} model copies, isolation Shared, best of {REPEATS} runs")
    header = (
        f"{'node':>5} {'cores':>6} {'bound':>6} {'pods':>6} {'pods/bound':>10} "
        f"{'plan ms':>8} {'FFD pods':>8} {'FFD ms':>8} {'FFD/plan time':>13}"
    )
    print(header)
    for node in NODE_SIZES:
        spec = WorkloadSpec(
            models=mixed_models(node), node_cores=node, image="img", isolation=ISOLATION_SHARED
        )
        layout = plan_layout(spec)
        total = sum(p.cores for p in layout)
        bound = math.ceil(total / node)
        plan_seconds = best_time(partial(plan_layout, spec))
        sizes = [c.cores for c in expand_copies(spec)]
        assert sorted(i for b in pack_groups(sizes, node) for i in b) == list(range(len(sizes)))
        ffd = first_fit_decreasing(sizes, node)
        ffd_seconds = best_time(partial(first_fit_decreasing, sizes, node))
        print(
            f"{node:>5} {total:>6} {bound:>6} {len(layout):>6} {len(layout) / bound:>10.4f} "
            f"{plan_seconds * 1000:>8.1f} {len(ffd):>8} {ffd_seconds * 1000:>8.1f} "
            f"{ffd_seconds / plan_seconds:>13.2f}"
        )
    budget_spec = WorkloadSpec(
        models=mixed_models(16), node_cores=16, image="img", cores=COPIES, isolation="Shared"
    )
    seconds = best_time(partial(plan_layout, budget_spec))
    layout = plan_layout(budget_spec)
    print(
        f"with spec.cores={COPIES} (below the demand, so models share groups): "
        f"{len(layout)} pods, {sum(len(g.models) for p in layout for g in p.groups)} copies "
        f"placed, {seconds * 1000:.1f} ms"
    )


if __name__ == "__main__":
    main()
