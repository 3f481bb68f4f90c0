"""Throughput of N NeuronCore Groups of 1 core against 1 group, for N up to the machine's cores.

Each group's worker is a separate process (facts §9: threads stop scaling), so N groups should
serve close to N times the requests of one.  "busy" is the fraction of wall time the workers
spent computing (the rest is waiting on the parent's dispatch or on a CPU held by something
else).  "parent us/req" is the CPU time (user + system, all threads) the runtime's own process
spends per request: client threads, dispatchers, copies into and out of shared memory.  On a
machine with as many cores as groups that time is taken from the workers, so it is what limits
the scaling at small batches.  "worker us/req" is the workers' CPU time per request (the matmuls
and their own message handling).  Unlike rates, both mean something on a loaded machine too
(medians over the rounds), and with N groups on N cores they predict the scaling as
N x W / (W + P), assuming one group gets a whole core (the line under each table; on a busy
machine where one group does not, the measured ratio can come out above it).  Every N is
measured in this same run against the N=1 baseline; the target is a scaling ratio of at least
0.9 x N on N physical cores, which needs N cores free of other work.

    python bench/bench_runtime_scaling.py [--max-groups N] [--seconds S] [--batch 64,512]
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from neuron_cores import GROUP_SIZES_ENV
from neuron_runtime import NeuronRuntime, compile_model

MODEL: dict[str, Any] = {"input_dim": 512, "width": 512, "depth": 4, "classes": 10}
CLIENTS_PER_GROUP = 3
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Point:
    rate: float  # requests per second
    busy: float  # mean fraction of wall time the used cores spent computing
    parent_us: float  # this process's CPU per request
    worker_us: float  # the workers' CPU per request


def cpu_seconds() -> float:
    """CPU time of this process so far, every thread, user and system."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def process_cpu_seconds(pid: int) -> float:
    """CPU time of another process so far (user + system, from /proc)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def measure(
    groups: int, *, node_cores: int, model: Path, state: Path, seconds: float, batch: int
) -> Point:
    """One measurement of ``groups`` 1-core groups."""
    env = {
        "NEURON_SIM_CORES": str(node_cores),
        GROUP_SIZES_ENV: f"{groups}x1",
        "NEURON_SIM_STATE_DIR": str(state),
    }
    x = np.random.default_rng(0).standard_normal((batch, MODEL["input_dim"]), dtype=np.float32)
    with NeuronRuntime.from_env(env) as runtime:
        predictors = [runtime.load_model(model) for _ in range(groups)]
        for predictor in predictors:  # warm up: first call maps the arena
            predictor({"input": x})
        before = runtime.stats()
        stop = time.perf_counter() + seconds
        counts = [0] * (groups * CLIENTS_PER_GROUP)

        def client(slot: int) -> None:
            predictor = predictors[slot % groups]
            while time.perf_counter() < stop:
                predictor({"input": x})
                counts[slot] += 1

        threads = [threading.Thread(target=client, args=(i,)) for i in range(len(counts))]
        pids = runtime.worker_pids()
        started = time.perf_counter()
        cpu_before = cpu_seconds()
        workers_before = sum(process_cpu_seconds(pid) for pid in pids)
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        elapsed = time.perf_counter() - started
        cpu = cpu_seconds() - cpu_before
        workers_cpu = sum(process_cpu_seconds(pid) for pid in pids) - workers_before
        after = runtime.stats()
    busy = [
        after.core_busy_seconds[c] - before.core_busy_seconds[c] for c in after.core_busy_seconds
    ]
    requests = max(1, sum(counts))
    return Point(
        rate=sum(counts) / elapsed,
        busy=sum(busy) / (len(busy) * elapsed),
        parent_us=1e6 * cpu / requests,
        worker_us=1e6 * workers_cpu / requests,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--max-groups", type=int, default=os.cpu_count() or 1, help="largest N (default: CPUs)"
    )
    parser.add_argument("--seconds", type=float, default=2.0, help="measuring time per point")
    parser.add_argument(
        "--batch",
        default="64,512",
        help="comma list of examples per request; each is its own table. Small batches show the "
        "cost of dispatch, which on a machine with as many cores as groups competes with the "
        "workers for CPU; large ones show the compute scaling",
    )
    parser.add_argument("--rounds", type=int, default=3, help="rounds; each N keeps its best")
    args = parser.parse_args()
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at start")
    powers = [n for n in (2, 4, 8, 16, 32, 64) if n < args.max_groups]
    counts = sorted({1, *powers, args.max_groups})
    batches = [int(b) for b in args.batch.split(",") if b.strip()]
    with tempfile.TemporaryDirectory() as tmp:
        model = compile_model("mlp", 1, Path(tmp) / "mlp", **MODEL)
        for batch in batches:
            print(
                f"\nmodel: mlp {MODEL}, batch {batch}; {os.cpu_count()} CPUs; "
                f"{CLIENTS_PER_GROUP} client threads per group; best of {args.rounds} x "
                f"{args.seconds}s; load average {os.getloadavg()[0]:.1f} before"
            )
            points = measure_all(counts, args, model=model, state=Path(tmp) / "node", batch=batch)
            report(points, cpus=os.cpu_count() or 1)
            print(f"load average {os.getloadavg()[0]:.1f} after")


def measure_all(
    counts: list[int], args: argparse.Namespace, *, model: Path, state: Path, batch: int
) -> dict[int, list[Point]]:
    """Every round's point of each group count; rounds interleave the counts so that load from
    other processes on the machine falls on all of them alike."""
    points: dict[int, list[Point]] = {n: [] for n in counts}
    for _ in range(args.rounds):
        for n in counts:
            points[n].append(
                measure(
                    n,
                    node_cores=args.max_groups,
                    model=model,
                    state=state,
                    seconds=args.seconds,
                    batch=batch,
                )
            )
    return points


def report(points: dict[int, list[Point]], *, cpus: int) -> None:
    """The best round's rate of each count, and the median CPU costs over all rounds."""
    header = f"{'groups':>6} {'req/s':>10} {'scaling':>8} {'target':>7} {'per-N':>6} {'busy':>5}"
    print(f"{header} {'parent us/req':>13} {'worker us/req':>13}")
    base = max(p.rate for p in points[1])
    for n, rounds in sorted(points.items()):
        best = max(rounds, key=lambda p: p.rate)
        parent = statistics.median(p.parent_us for p in rounds)
        worker = statistics.median(p.worker_us for p in rounds)
        ratio = best.rate / base
        line = f"{n:>6} {best.rate:>10.1f} {ratio:>7.2f}x {0.9 * n:>6.1f}x {ratio / n:>6.2f}"
        print(f"{line} {best.busy:>5.2f} {parent:>13.0f} {worker:>13.0f}")
    if cpus in points and cpus > 1:
        rounds = points[cpus]
        parent = statistics.median(p.parent_us for p in rounds)
        worker = statistics.median(p.worker_us for p in rounds)
        bound = cpus * worker / (worker + parent)
        print(
            f"expected from CPU per request with {cpus} groups on {cpus} free cores: {bound:.2f}x "
            f"({cpus} x W / (W + P), W = worker, P = parent us/req)"
        )


if __name__ == "__main__":
    main()
