"""Benchmark of the DRA driver's layout: slice counts and sizes, and the placement order's worth.

Part 1, for every instance type: devices, ResourceSlices, JSON bytes of the pool and the time
to build and check it.

Part 2, the order.  The scheduler allocates the first free block in the published order, so the
order is the placement policy.  A churn of random block claims and releases is replayed on one
node with three orders of the same blocks; a claim *fails from fragmentation* when no free run
of its size exists although enough cores are free.  The peers, measured in the same run on the
same claims: plain first-fit (every size from core 0 up) and power-of-two alignment (a block of
k cores tries starts aligned to the next power of two first, as a buddy allocator would).
The driver's two-ends rule should fail no more often; the ratios say by how much.

Run: ``PYTHONSAFEPATH=1 .venv/bin/python bench/bench_dra_layout.py``; the last line is JSON.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from collections.abc import Callable

from neuron_cores import INSTANCE_TYPES, contiguous_runs
from neuron_dra_driver.layout import Block, NodeShape, first_fit, placement_order, pool_slices

Order = Callable[[NodeShape], list[Block]]

CHURN_CASES = (
    ("inf1.6xlarge", (1, 1, 2, 2, 4, 6)),
    ("inf1.6xlarge", tuple(range(1, 9))),
    ("inf2.48xlarge", (1, 2, 2, 4, 6)),
    ("trn1.32xlarge", (1, 2, 4, 8, 16)),
    ("inf1.24xlarge", (1, 2, 4, 8, 16, 33)),
    ("inf1.24xlarge", tuple(range(1, 17))),
)


def ascending(shape: NodeShape) -> list[Block]:
    return [Block(f, k) for k in range(1, shape.cores + 1) for f in range(shape.cores - k + 1)]


def power_of_two_aligned(shape: NodeShape) -> list[Block]:
    blocks: list[Block] = []
    for k in range(1, shape.cores + 1):
        align = 1 << (k - 1).bit_length()
        aligned = [f for f in range(shape.cores - k + 1) if f % align == 0]
        others = [f for f in range(shape.cores - k + 1) if f % align != 0]
        blocks.extend(Block(f, k) for f in aligned + others)
    return blocks


ORDERS: dict[str, Order] = {
    "two-ends": placement_order,
    "first-fit": ascending,
    "pow2-aligned": power_of_two_aligned,
}


def layout_sizes() -> list[dict[str, object]]:
    rows = []
    for name, itype in sorted(INSTANCE_TYPES.items(), key=lambda kv: kv[1].cores):
        shape = NodeShape(name, itype.devices, itype.cores_per_device)
        started = time.perf_counter()
        slices = pool_slices("ip-10-0-0-1.ec2.internal", shape, generation=1)
        took = time.perf_counter() - started
        devices = sum(len(s["spec"].get("devices", [])) for s in slices)
        size = len(json.dumps(slices, separators=(",", ":")))
        print(
            f"{name:15s} {shape.cores:3d} cores {devices:5d} devices {len(slices):3d} slices "
            f"{size / 1024:8.1f} KiB  build+check {took * 1000:7.1f} ms"
        )
        row: dict[str, object] = {"type": name, "cores": shape.cores, "devices": devices}
        row.update(slices=len(slices), bytes=size, build_ms=round(took * 1000, 2))
        rows.append(row)
    return rows


def churn(
    shape: NodeShape, sizes: tuple[int, ...], order: list[Block], steps: int, seed: int
) -> float:
    """The share of claims that failed although enough cores were free."""
    rng = random.Random(seed)
    free = set(range(shape.cores))
    live: list[Block] = []
    claims = failed = 0
    for _ in range(steps):
        if live and rng.random() < 0.45:
            free |= set(live.pop(rng.randrange(len(live))).cores)
            continue
        size = rng.choice(sizes)
        if len(free) < size:
            continue
        claims += 1
        block = first_fit(order, free, size)
        if block is None:
            failed += 1
            assert max(b - a + 1 for a, b in contiguous_runs(free)) < size
            continue
        free -= set(block.cores)
        live.append(block)
    return failed / claims if claims else 0.0


def compare_orders(steps: int, seeds: int) -> dict[str, float]:
    means: dict[str, list[float]] = {name: [] for name in ORDERS}
    for type_name, sizes in CHURN_CASES:
        itype = INSTANCE_TYPES[type_name]
        shape = NodeShape(type_name, itype.devices, itype.cores_per_device)
        row = []
        for name, make in ORDERS.items():
            order = make(shape)
            share = statistics.mean(churn(shape, sizes, order, steps, s) for s in range(seeds))
            means[name].append(share)
            row.append(f"{name} {share:6.2%}")
        label = f"{type_name} sizes {','.join(map(str, sizes))}"
        print(f"{label:52s} " + "  ".join(row))
    overall = {name: statistics.mean(values) for name, values in means.items()}
    for peer in ("first-fit", "pow2-aligned"):
        print(
            f"fragmentation failures, two-ends / {peer}: "
            f"{overall['two-ends'] / overall[peer]:.3f} (mean over the cases)"
        )
    return overall


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--steps", type=int, default=3000, help="churn operations per seed")
    parser.add_argument("--seeds", type=int, default=8, help="churn seeds per case")
    args = parser.parse_args()
    rows = layout_sizes()
    overall = compare_orders(args.steps, args.seeds)
    by_cores = {str(r["cores"]): r for r in rows}
    print(
        json.dumps(
            {
                "bench": "dra_layout",
                "layout_16_cores": by_cores["16"],
                "layout_64_cores": by_cores["64"],
                "fragmentation_failure_share": {k: round(v, 4) for k, v in overall.items()},
                "two_ends_vs_first_fit": round(overall["two-ends"] / overall["first-fit"], 3),
                "two_ends_vs_pow2_aligned": round(overall["two-ends"] / overall["pow2-aligned"], 3),
            }
        )
    )


if __name__ == "__main__":
    main()
