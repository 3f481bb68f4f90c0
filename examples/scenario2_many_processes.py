"""Seed scenario 2: sixteen processes, each with ``NEURONCORE_GROUP_SIZES=1``, on one node.

The launcher compiles a model, then starts 16 copies of this script in ``--child`` mode, all
pointing at one node (a simulated inf1.6xlarge: one arbiter state directory).  Each child loads
the model (its runtime claims one free core from the node-local arbiter, as neuron-rtd used to
hand them out), runs inference, reports, and keeps its core until every child has reported, so
the 16 claims are held at once.  The launcher then prints the node's core table, shows that a
17th process gets the ResourceExhaustedError, and checks that the cores were disjoint and all
results identical.

With ``--models-per-process 2`` each child loads the model twice into its one group and context
switches between the copies: that is seed scenario 3 (examples/scenario3_context_switch.py).

    python examples/scenario2_many_processes.py
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent import futures
from pathlib import Path
from typing import Any

import numpy as np

SMALL_RESNET: dict[str, Any] = {
    "image_size": 64,
    "width": 8,
    "blocks": (1, 1, 1, 1),
    "classes": 1000,
}


def child(args: argparse.Namespace) -> int:
    """The seed's per-process script: load, infer, report (then hold the core until told)."""
    import neuron_runtime

    try:
        predictor_list = [
            neuron_runtime.load_model(args.model_dir) for _ in range(args.models_per_process)
        ]
    except neuron_runtime.NeuronRuntimeError as exc:
        print(json.dumps({"pid": os.getpid(), "error": str(exc)}), flush=True)
        return 1
    input_name = next(iter(predictor_list[0].feed_tensors))
    output_name = next(iter(predictor_list[0].fetch_tensors))
    shape = predictor_list[0].feed_tensors[input_name].shape[1:]
    image = np.random.default_rng(2020).uniform(-1, 1, (1, *shape)).astype(np.float32)
    feeds = [{input_name: image} for _ in range(args.images)]
    with futures.ThreadPoolExecutor(max_workers=args.threads) as executor:
        future_list = [
            executor.submit(predictor_list[i % len(predictor_list)], feed)
            for i, feed in enumerate(feeds)
        ]
        result_list = [f.result()[output_name] for f in future_list]
    first = result_list[0]
    identical = all(np.array_equal(first, r) for r in result_list[1:])
    runtime = neuron_runtime.default_runtime()
    group = runtime.stats().groups[0]
    top5 = np.argsort(first[0])[::-1][:5]
    report = {
        "pid": os.getpid(),
        "layout": runtime.describe_layout(),
        "cores": [list(g.cores) for g in runtime.groups],
        "top5": [(int(c), round(float(first[0][c]), 6)) for c in top5],
        "digest": hashlib.sha256(first.tobytes()).hexdigest(),
        "identical_within": identical,
        "requests": len(result_list),
        "switches": group.switches,
    }
    print(json.dumps(report), flush=True)
    while not Path(args.release).exists():  # hold the core until every process has reported
        time.sleep(0.01)
    return 0


def launch(args: argparse.Namespace, workdir: Path) -> int:
    import neuron_runtime
    from neuron_runtime.arbiter import CoreArbiter, iter_states_text

    model_dir = neuron_runtime.compile_model("resnet", 1, workdir / "resnet_neuron", **SMALL_RESNET)
    release = workdir / "release"
    env = {
        **os.environ,
        "NEURONCORE_GROUP_SIZES": "1",
        "NEURON_SIM_INSTANCE_TYPE": "inf1.6xlarge",
        "NEURON_SIM_STATE_DIR": os.environ.get("NEURON_SIM_STATE_DIR", str(workdir / "node")),
    }
    if args.models_per_process > 1:
        env.setdefault("NEURON_SIM_CORE_MEMORY_MB", "0")  # one resident model per group

    def start() -> subprocess.Popen[str]:
        command = [
            sys.executable, "-P", __file__, "--child", "--model-dir", str(model_dir),
            "--release", str(release), "--models-per-process", str(args.models_per_process),
            "--images", str(args.images), "--threads", str(args.threads),
        ]  # fmt: skip
        return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, text=True)

    # for i in {1..16}; do NEURONCORE_GROUP_SIZES=1 python infer_resnet50.py & done
    procs = [start() for _ in range(args.processes)]
    reports: list[dict[str, Any]] = []
    try:
        for proc in procs:
            assert proc.stdout is not None
            reports.append(json.loads(proc.stdout.readline()))
        failed = [r for r in reports if "error" in r]
        if failed:
            print(f"{len(failed)} process(es) failed; first error: {failed[0]['error']}")
            return 1
        print(f"{args.processes} processes hold their cores (NEURONCORE_GROUP_SIZES=1 each):")
        node = CoreArbiter(Path(env["NEURON_SIM_STATE_DIR"]), 16)
        for line in iter_states_text(node.snapshot()):
            print("  " + line)
        if args.processes == 16:
            extra = start()
            assert extra.stdout is not None
            refused = json.loads(extra.stdout.readline())
            extra.wait()
            extra.stdout.close()
            print("a 17th process is refused:", refused.get("error", refused)[:140], "...")
    finally:
        release.touch()
        for proc in procs:
            proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()
    for report in reports:
        print(f"pid {report['pid']}: {report['layout']}; top-5 {report['top5'][:2]}...; "
              f"{report['requests']} requests, {report['switches']} context switches")  # fmt: skip
    cores = [tuple(c) for r in reports for c in r["cores"]]
    assert len(set(cores)) == len(cores), f"two processes got the same core: {cores}"
    assert all(r["identical_within"] for r in reports), "results differ inside a process"
    assert len({r["digest"] for r in reports}) == 1, "results differ between processes"
    print(f"{len(reports)} processes on disjoint cores; all results identical")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--processes", type=int, default=16, help="processes to launch")
    parser.add_argument("--models-per-process", type=int, default=1, help="models per process")
    parser.add_argument("--images", type=int, default=1, help="images each process infers")
    parser.add_argument("--threads", type=int, default=1, help="client threads per process")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", help=argparse.SUPPRESS)
    parser.add_argument("--release", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)
    with tempfile.TemporaryDirectory(prefix="scenario2-") as tmp:
        return launch(args, Path(tmp))


if __name__ == "__main__":
    sys.exit(main())
