"""Seed scenario 1: sixteen copies of one model in parallel inside one process.

As in the tutorial: ``NEURONCORE_GROUP_SIZES=1,1,...,1`` (16 groups of one core), the model
loaded 16 times in sequence (copy k goes to group k), images submitted round-robin from a
thread pool, and every result checked to be identical.  The node is a simulated inf1.6xlarge
(16 NeuronCores) whose cores are claimed through the node-local arbiter.

    python examples/scenario1_one_process.py              # a small ResNet, seconds on 2 cores
    python examples/scenario1_one_process.py --model resnet50   # the real shape (slow on CPU)
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", type=int, default=16, help="copies (one group each)")
    parser.add_argument("--images", type=int, default=100, help="images to infer")
    parser.add_argument("--model", choices=["small", "resnet50"], default="small")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="scenario1-") as tmp:
        return run(args, Path(tmp))


def run(args: argparse.Namespace, workdir: Path) -> int:
    # A simulated inf1.6xlarge with its own arbiter state, unless the caller chose otherwise.
    os.environ.setdefault("NEURON_SIM_INSTANCE_TYPE", "inf1.6xlarge")
    os.environ.setdefault("NEURON_SIM_STATE_DIR", str(workdir / "node"))

    import neuron_runtime

    size = {} if args.model == "resnet50" else SMALL_RESNET
    arch = "resnet50" if args.model == "resnet50" else "resnet"
    neuron_model_dir = neuron_runtime.compile_model(arch, 1, workdir / "resnet_neuron", **size)

    # set NEURONCORE_GROUP_SIZES for 1-core models
    os.environ["NEURONCORE_GROUP_SIZES"] = ",".join("1" for _ in range(args.models))
    try:
        predictor_list = [neuron_runtime.load_model(neuron_model_dir) for _ in range(args.models)]
    except neuron_runtime.NeuronRuntimeError as exc:
        print(str(exc))
        return 1
    runtime = neuron_runtime.default_runtime()
    print(runtime.describe_layout())

    input_name = next(iter(predictor_list[0].feed_tensors))
    output_name = next(iter(predictor_list[0].fetch_tensors))
    shape = predictor_list[0].feed_tensors[input_name].shape[1:]
    image = np.random.default_rng(2020).uniform(-1, 1, (1, *shape)).astype(np.float32)
    feeds = [{input_name: image} for _ in range(args.images)]

    # submit each image to predictors in a round-robin fashion
    with futures.ThreadPoolExecutor(max_workers=len(predictor_list)) as executor:
        future_list = [
            executor.submit(predictor_list[i % len(predictor_list)], feed)
            for i, feed in enumerate(feeds)
        ]
        result_list = [f.result() for f in future_list]

    print(f"NEURONCORE_GROUP_SIZES={os.environ['NEURONCORE_GROUP_SIZES']}")
    first = result_list[0][output_name]
    top5 = np.argsort(first[0])[::-1][:5]
    print("top-5 classes:", [(int(c), round(float(first[0][c]), 6)) for c in top5])
    for result in result_list[1:]:
        assert np.array_equal(first, result[output_name]), "results differ between groups"
    served = [g.requests for g in runtime.stats().groups]
    print(f"all {len(result_list)} results identical; requests per group: {served}")
    runtime.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
