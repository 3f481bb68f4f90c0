"""Benchmark: ``neuron-runtime serve`` against KServe's own Python model server, same model.

One small model (the runtime's ``mlp``, compiled here) is served by each server in its own
process, one after the other, and hammered by the same asyncio client with the same JSON request
bodies over the Open Inference Protocol's REST ``/infer``.  The peer is KServe's ``ModelServer``
(the ``kserve`` PyPI package) wrapping the *same numpy weights and layer code*: it imports the
runtime's artifact reader and ``run_layer`` and runs them in its predict handler, so both servers
compute the same thing and the bench checks that their answers agree before timing anything.

KServe pins its own dependencies, so it lives in a separate virtual environment, ``.venv-kserve/``,
which this script creates on first use (``pip install kserve``); pass ``--kserve-python`` to use
another interpreter.  Each server is measured ``--rounds`` times, alternating, and the median
round is reported.  Output: requests/s, p50 and p99 latency for each, and the ratios
(target: >= 1.5x KServe's throughput at no worse p99).

Run: ``PYTHONSAFEPATH=1 .venv/bin/python bench/bench_serving.py``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import aiohttp
import numpy as np

from neuron_runtime import compile_model

REPO = Path(__file__).resolve().parent.parent
KSERVE_VENV = REPO / ".venv-kserve"
MODEL_NAME = "mlp"

# The peer server, run by the kserve venv's interpreter.  Configuration arrives in the
# environment because kserve parses sys.argv when it is imported.
PEER_SERVER = r"""
import os
import numpy as np
from kserve import InferOutput, InferRequest, InferResponse, Model, ModelServer
from neuron_runtime.artifact import load_artifact, read_stage_weights
from neuron_runtime.layers import run_layer


class NumpyModel(Model):
    def __init__(self, name, path):
        super().__init__(name)
        artifact = load_artifact(path)
        self.layers = artifact.stage_layers(0)
        self.weights = read_stage_weights(artifact, 0)
        self.ready = True

    def predict(self, payload: InferRequest, headers=None, response_headers=None):
        x = payload.inputs[0].as_numpy().astype(np.float32, copy=False)
        for layer in self.layers:
            x = run_layer(layer, self.weights[layer.name], x)
        output = InferOutput(name="output", shape=list(x.shape), datatype="FP32")
        output.set_data_from_numpy(x, binary_data=False)
        return InferResponse(response_id=payload.id, model_name=self.name, infer_outputs=[output])


model = NumpyModel(os.environ["BENCH_MODEL_NAME"], os.environ["BENCH_MODEL_PATH"])
ModelServer(http_port=int(os.environ["BENCH_HTTP_PORT"]), enable_grpc=False, workers=1).start(
    [model]
)
"""


@dataclass(frozen=True)
class Result:
    name: str
    requests: int
    seconds: float
    latencies_ms: tuple[float, ...]
    # CPU seconds the server's processes (the server and, for ours, its core workers) used per
    # request: less sensitive than throughput to whatever else this machine is running.
    cpu_ms_per_request: float = 0.0

    @property
    def rps(self) -> float:
        return self.requests / self.seconds

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def process_tree_cpu_s(root: int) -> float:
    """User+system CPU seconds of ``root`` and its descendants (Linux /proc)."""
    tick = os.sysconf("SC_CLK_TCK")
    children: dict[int, list[int]] = {}
    times: dict[int, float] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        pid = int(entry.name)
        children.setdefault(int(fields[1]), []).append(pid)
        times[pid] = (int(fields[11]) + int(fields[12])) / tick
    total, stack = 0.0, [root]
    while stack:
        pid = stack.pop()
        total += times.get(pid, 0.0)
        stack.extend(children.get(pid, []))
    return total


def ensure_kserve(python: str | None) -> str:
    if python:
        return python
    interpreter = KSERVE_VENV / "bin" / "python"
    if interpreter.exists():
        probe = [str(interpreter), "-c", "import kserve"]
        if subprocess.run(probe, check=False, capture_output=True, cwd="/").returncode == 0:
            return str(interpreter)
    print(f"installing kserve into {KSERVE_VENV} (first run only)...", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(KSERVE_VENV)], check=True)
    pip = [str(interpreter), "-m", "pip", "install", "-q"]
    subprocess.run([*pip, "--upgrade", "pip"], check=True)
    subprocess.run([*pip, "kserve>=0.13", "numpy"], check=True)
    return str(interpreter)


def link_tree(root: Path) -> Path:
    """A folder that makes ``neuron_runtime`` importable from the kserve venv without installing."""
    tree = root / "pythonpath"
    tree.mkdir()
    (tree / "neuron_runtime").symlink_to(REPO / "runtime")
    (tree / "neuron_cores").symlink_to(REPO / "cores")
    return tree


async def wait_ready(port: int, process: subprocess.Popen[bytes], limit_s: float = 120) -> None:
    deadline = time.monotonic() + limit_s
    url = f"http://127.0.0.1:{port}/v2/models/{MODEL_NAME}/ready"
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"server exited with {process.returncode} before it was ready")
            try:
                async with session.get(url) as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
    raise RuntimeError(f"server on port {port} not ready after {limit_s}s")


async def probe(port: int, body: bytes) -> list[float]:
    url = f"http://127.0.0.1:{port}/v2/models/{MODEL_NAME}/infer"
    headers = {"Content-Type": "application/json"}
    async with (
        aiohttp.ClientSession() as session,
        session.post(url, data=body, headers=headers) as response,
    ):
        document = await response.json(content_type=None)
        if response.status != 200:
            raise RuntimeError(f"probe failed with {response.status}: {document}")
    data: list[float] = document["outputs"][0]["data"]
    return [float(v) for v in np.asarray(data).ravel()]


async def load(
    name: str, port: int, body: bytes, *, concurrency: int, requests: int, warmup: int
) -> Result:
    url = f"http://127.0.0.1:{port}/v2/models/{MODEL_NAME}/infer"
    headers = {"Content-Type": "application/json"}
    connector = aiohttp.TCPConnector(limit=concurrency)
    latencies: list[float] = []
    remaining = warmup + requests
    started_at = 0.0

    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker() -> None:
            nonlocal remaining, started_at
            while remaining > 0:
                remaining -= 1
                measured = remaining < requests
                if measured and started_at == 0.0:
                    started_at = time.perf_counter()
                began = time.perf_counter()
                async with session.post(url, data=body, headers=headers) as response:
                    await response.read()
                    if response.status != 200:
                        raise RuntimeError(f"{name}: status {response.status}")
                if measured:
                    latencies.append((time.perf_counter() - began) * 1000)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started_at
    return Result(name, len(latencies), elapsed, tuple(latencies))


def start_ours(model: Path, port: int, state: Path) -> subprocess.Popen[bytes]:
    env = dict(
        os.environ,
        PYTHONSAFEPATH="1",
        NEURON_MODELS=f"{MODEL_NAME}={model}",
        NEURONCORE_GROUP_SIZES="1",
        NEURON_SIM_CORES="1",
        NEURON_SIM_STATE_DIR=str(state),
        NEURON_SERVE_HOST="127.0.0.1",
        NEURON_HTTP_PORT=str(port),
        NEURON_GRPC_PORT="0",
        NEURON_LOG_LEVEL="warning",
    )
    return subprocess.Popen(
        [sys.executable, "-m", "neuron_runtime.serving"], env=env, stdout=subprocess.DEVNULL
    )


def start_peer(python: str, model: Path, port: int, tree: Path) -> subprocess.Popen[bytes]:
    env = dict(
        os.environ,
        PYTHONPATH=str(tree),
        PYTHONSAFEPATH="1",
        BENCH_MODEL_NAME=MODEL_NAME,
        BENCH_MODEL_PATH=str(model),
        BENCH_HTTP_PORT=str(port),
        OMP_NUM_THREADS="1",
        OPENBLAS_NUM_THREADS="1",
    )
    return subprocess.Popen(
        [python, "-c", PEER_SERVER],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def summarize(rounds: Mapping[str, Sequence[Result]]) -> dict[str, Result]:
    """The median round (by throughput) of each server."""
    return {
        name: sorted(results, key=lambda r: r.rps)[len(results) // 2]
        for name, results in rounds.items()
    }


async def main_async(args: argparse.Namespace) -> int:
    python = ensure_kserve(args.kserve_python)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model = compile_model(
            "mlp", 1, root / "mlp", input_dim=args.input_dim, width=args.width, depth=args.depth
        )
        tree = link_tree(root)
        x = np.random.default_rng(0).standard_normal((args.batch, args.input_dim))
        body = json.dumps(
            {
                "id": "bench",
                "inputs": [
                    {
                        "name": "input",
                        "shape": [args.batch, args.input_dim],
                        "datatype": "FP32",
                        "data": x.astype(np.float32).ravel().tolist(),
                    }
                ],
            }
        ).encode()
        servers: dict[str, Callable[[int], subprocess.Popen[bytes]]] = {
            "neuron-runtime": lambda port: start_ours(model, port, root / "state"),
            "kserve": lambda port: start_peer(python, model, port, tree),
        }
        rounds: dict[str, list[Result]] = {name: [] for name in servers}
        answers: dict[str, list[float]] = {}
        for round_index in range(args.rounds):
            for name, start in servers.items():
                port = free_port()
                process = start(port)
                try:
                    await wait_ready(port, process)
                    answers.setdefault(name, await probe(port, body))
                    cpu_before = process_tree_cpu_s(process.pid)
                    result = await load(
                        name,
                        port,
                        body,
                        concurrency=args.concurrency,
                        requests=args.requests,
                        warmup=args.warmup,
                    )
                    cpu = process_tree_cpu_s(process.pid) - cpu_before
                    result = replace(
                        result, cpu_ms_per_request=cpu * 1000 / (args.requests + args.warmup)
                    )
                finally:
                    stop(process)
                rounds[name].append(result)
                print(
                    f"round {round_index + 1} {name:>15}: {result.rps:8.1f} req/s  "
                    f"p50 {result.percentile(50):7.2f} ms  p99 {result.percentile(99):7.2f} ms  "
                    f"server CPU {result.cpu_ms_per_request:.3f} ms/request",
                    flush=True,
                )
    if not np.allclose(answers["neuron-runtime"], answers["kserve"], rtol=1e-4, atol=1e-5):
        print("ERROR: the two servers disagree on the model's output", file=sys.stderr)
        return 1
    best = summarize(rounds)
    ours, peer = best["neuron-runtime"], best["kserve"]
    print()
    print(
        f"model mlp input_dim={args.input_dim} width={args.width} depth={args.depth}, "
        f"batch {args.batch}, {args.concurrency} concurrent clients, {args.requests} requests "
        f"per round, median of {args.rounds} rounds; outputs agree"
    )
    print(f"{'server':>15} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'CPU ms/req':>11}")
    for result in (ours, peer):
        print(
            f"{result.name:>15} {result.rps:9.1f} {result.percentile(50):8.2f} "
            f"{result.percentile(99):8.2f} {result.cpu_ms_per_request:11.3f}"
        )
    # Ratios per round (the two servers measured back to back), then their median: steadier than
    # a ratio of medians when the machine's load drifts between rounds.
    pairs = list(zip(rounds["neuron-runtime"], rounds["kserve"], strict=True))
    throughputs = [a.rps / b.rps for a, b in pairs]
    p99s = [a.percentile(99) / b.percentile(99) for a, b in pairs]
    p50s = [a.percentile(50) / b.percentile(50) for a, b in pairs]
    cpus = [a.cpu_ms_per_request / b.cpu_ms_per_request for a, b in pairs]
    throughput, p99 = statistics.median(throughputs), statistics.median(p99s)

    def listed(values: list[float]) -> str:
        return ", ".join(f"{v:.2f}" for v in values)

    print(
        f"throughput ratio neuron-runtime/kserve: {throughput:.2f}x median "
        f"(rounds: {listed(throughputs)}; target >= 1.5x)"
    )
    print(f"p50 latency ratio neuron-runtime/kserve: {statistics.median(p50s):.2f} median")
    print(
        f"p99 latency ratio neuron-runtime/kserve: {p99:.2f} median "
        f"(rounds: {listed(p99s)}; target <= 1.0)"
    )
    print(f"server CPU per request ratio neuron-runtime/kserve: {statistics.median(cpus):.2f}")
    verdict = "MET" if throughput >= 1.5 and p99 <= 1.0 else "MISSED"
    print(f"target {verdict}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--requests", type=int, default=2000, help="measured requests per round")
    parser.add_argument("--warmup", type=int, default=200, help="unmeasured requests first")
    parser.add_argument("--concurrency", type=int, default=16, help="concurrent client loops")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per server, alternating")
    parser.add_argument("--batch", type=int, default=8, help="rows per request")
    parser.add_argument("--input-dim", type=int, default=64, help="model input features")
    parser.add_argument("--width", type=int, default=256, help="model hidden width")
    parser.add_argument("--depth", type=int, default=4, help="model hidden layers")
    parser.add_argument(
        "--kserve-python", help="interpreter with kserve installed (default: .venv-kserve)"
    )
    args = parser.parse_args(argv)
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main_async(args))
    return uvloop.run(main_async(args))  # the client costs less CPU, for both servers alike


if __name__ == "__main__":
    sys.exit(main())
