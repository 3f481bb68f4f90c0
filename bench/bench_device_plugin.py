"""Device plugin benchmark: RPC latency over the unix socket, and contiguity under churn.

1. Latency: Allocate and GetPreferredAllocation on a simulated inf1.24xlarge (64 cores), called by
   the kubelet emulator over real gRPC on unix sockets, against GetDevicePluginOptions (a bare
   round trip with no device logic) measured in the same run, so the ratio shows what our logic
   adds to the transport.
2. Churn: a seeded random sequence of allocations and releases of 1-8 cores on a 64-core node,
   replayed once per policy (identical operations), printing the share of requests that got one
   contiguous run: best-fit (ours) against plain first-fit.

Run: ``PYTHONSAFEPATH=1 .venv/bin/python bench/bench_device_plugin.py [--calls N] [--steps N]``.
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from neuron_cores import CORE_RESOURCE, is_contiguous
from neuron_device_plugin.plugin import PluginConfig, PluginManager
from neuron_device_plugin.policy import POLICIES, Policy
from neuron_device_plugin.simulated_backend import SimulatedBackend
from neuron_localcluster.kubelet_emulator import KubeletEmulator, PluginClient

CORES = CORE_RESOURCE
NODE_CORES = 64


def _percentiles(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    p50 = statistics.median(ordered)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return p50 * 1e3, p99 * 1e3


def _time_calls(call: Callable[[], object], count: int) -> list[float]:
    for _ in range(20):  # warm-up: channel, thread pool, caches
        call()
    samples = []
    for _ in range(count):
        start = time.perf_counter()
        call()
        samples.append(time.perf_counter() - start)
    return samples


def latency(calls: int) -> None:
    with tempfile.TemporaryDirectory(prefix="dpb-", dir="/tmp") as tmp:
        plugin_dir = Path(tmp)
        with (
            KubeletEmulator(plugin_dir) as kubelet,
            PluginManager(SimulatedBackend(16, 4), PluginConfig(plugin_dir=plugin_dir)),
        ):
            client: PluginClient = kubelet.wait_for_registration(CORES, timeout=10)
            ids = [d.id for d in client.devices()]
            # A fragmented free list: every 5th core taken, so the policy has runs to compare.
            free = [i for n, i in enumerate(ids) if n % 5 != 4]
            rng = random.Random(7)

            def allocate() -> object:
                start = rng.randrange(0, NODE_CORES - 4)
                return client.allocate(ids[start : start + 4])

            measured = {
                "GetDevicePluginOptions (bare round trip)": _time_calls(client.options, calls),
                "GetPreferredAllocation (4 of 52 free)": _time_calls(
                    lambda: client.preferred_allocation(free, [], 4), calls
                ),
                "Allocate (4 cores)": _time_calls(allocate, calls),
            }
    base_p50, base_p99 = _percentiles(measured["GetDevicePluginOptions (bare round trip)"])
    print(f"RPC latency over a unix socket, {calls} calls each (ms)")
    print(f"{'call':44s} {'p50':>8s} {'p99':>8s} {'p50/bare':>9s} {'p99/bare':>9s}")
    for name, samples in measured.items():
        p50, p99 = _percentiles(samples)
        print(f"{name:44s} {p50:8.3f} {p99:8.3f} {p50 / base_p50:9.2f} {p99 / base_p99:9.2f}")


def _operations(steps: int, seed: int) -> list[tuple[str, int]]:
    """('alloc', size) or ('release', pick); the same list is replayed for every policy."""
    rng = random.Random(seed)
    return [
        ("alloc", rng.randint(1, 8)) if rng.random() < 0.55 else ("release", rng.randrange(1 << 30))
        for _ in range(steps)
    ]


def replay(policy: Policy, operations: list[tuple[str, int]]) -> tuple[int, int]:
    """Return (requests served, requests that got one contiguous run)."""
    free = set(range(NODE_CORES))
    live: list[tuple[int, ...]] = []
    served = contiguous = 0
    for op, value in operations:
        if op == "release":
            if live:
                free.update(live.pop(value % len(live)))
            continue
        if value > len(free):
            continue  # the scheduler would not place this pod on the node
        chosen = policy(sorted(free), [], value)
        served += 1
        contiguous += is_contiguous(chosen)
        free.difference_update(chosen)
        live.append(chosen)
    return served, contiguous


def churn(steps: int, seeds: int) -> None:
    print(
        f"\nChurn: {seeds} seeds x {steps} operations, requests of 1-8 cores on {NODE_CORES} cores"
    )
    shares: dict[str, list[float]] = {name: [] for name in POLICIES}
    for seed in range(seeds):
        operations = _operations(steps, seed)
        for name, policy in POLICIES.items():
            served, contiguous = replay(policy, operations)
            shares[name].append(contiguous / served)
    for name, values in shares.items():
        print(
            f"{name:10s} contiguous share {statistics.mean(values):7.2%} "
            f"(min {min(values):.2%}, max {max(values):.2%})"
        )
    best, first = statistics.mean(shares["best-fit"]), statistics.mean(shares["first-fit"])
    print(f"best-fit / first-fit contiguous share: {best / first:.3f}")
    print(
        f"non-contiguous requests: best-fit {1 - best:.2%} vs first-fit {1 - first:.2%} "
        f"({(1 - best) / (1 - first):.2f}x)"
        if first < 1
        else "first-fit was always contiguous"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000, help="RPCs timed per call type")
    parser.add_argument("--steps", type=int, default=20000, help="churn operations per seed")
    parser.add_argument("--seeds", type=int, default=5, help="churn seeds")
    args = parser.parse_args()
    latency(args.calls)
    churn(args.steps, args.seeds)


if __name__ == "__main__":
    main()
