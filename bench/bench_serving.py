"""Benchmark: ``neuron-runtime serve`` against KServe's own Python model server, same model.

One small model (the runtime's ``mlp``, compiled here) is served by each server in its own
process, and both are driven by tritonclient's asyncio clients, over REST (binary tensor
extension, as tritonclient sends it) and over gRPC (``raw_input_contents``), at several
concurrencies.  The peer is KServe's ``ModelServer`` (the ``kserve`` PyPI package) wrapping the
*same numpy weights and layer code*: it imports the runtime's artifact reader and ``run_layer`` and
runs them in its predict handler, so both servers compute the same thing, and the bench checks
that their answers agree, on both protocols, before timing anything.

KServe pins its own dependencies, so it lives in a separate virtual environment, ``.venv-kserve/``,
which this script creates on first use (``pip install kserve``); pass ``--kserve-python`` to use
another interpreter.

Both servers run for the whole bench.  One *round* measures every (protocol, concurrency) cell
once for each server, back to back, in an order that alternates between rounds, so drifting load
on the machine affects both alike.  Each measurement is a fixed time window after a short warm-up.
Reported per cell: requests/s, p50 and p99 latency, server CPU per request (the servers'
processes, workers included) and the client's CPU per request (this process), the median over
rounds; and the per-round ratios ours/KServe and
their median.  The last line is one JSON object:
``{"http": {"1": R, ...}, "grpc": {...}, "p99_ratio": {"http": {...}, "grpc": {...}},
"cpu_ratio": {...}, "load_average": [...]}`` where R is our throughput over KServe's.

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
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import tritonclient.grpc.aio as grpcclient
import tritonclient.http.aio as httpclient
from tritonclient.utils import InferenceServerException

from neuron_cores import GROUP_SIZES_ENV, MODELS_ENV, ModelEntry, encode_models
from neuron_runtime import compile_model

REPO = Path(__file__).resolve().parent.parent
KSERVE_VENV = REPO / ".venv-kserve"
MODEL_NAME = "mlp"
SERVERS = ("neuron-runtime", "kserve")
PROTOCOLS = ("http", "grpc")

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
        # Raw bytes out when the client asks for them (tritonclient does, on both protocols).
        binary = payload.use_binary_outputs or any(
            o.binary_data for o in payload.request_outputs or []
        )
        output = InferOutput(name="output", shape=list(x.shape), datatype="FP32")
        output.set_data_from_numpy(x, binary_data=binary)
        return InferResponse(
            response_id=payload.id,
            model_name=self.name,
            infer_outputs=[output],
            use_binary_outputs=binary,
        )


model = NumpyModel(os.environ["BENCH_MODEL_NAME"], os.environ["BENCH_MODEL_PATH"])
ModelServer(
    http_port=int(os.environ["BENCH_HTTP_PORT"]),
    grpc_port=int(os.environ["BENCH_GRPC_PORT"]),
    enable_grpc=True,
    workers=1,
).start([model])
"""


@dataclass(frozen=True)
class Result:
    server: str
    protocol: str
    concurrency: int
    requests: int
    seconds: float
    latencies_ms: tuple[float, ...]
    # CPU seconds the server's processes (the server and, for ours, its core workers) used per
    # request: less sensitive than throughput to whatever else this machine is running.
    cpu_ms_per_request: float
    # CPU seconds this process (the client) used per request: it shares the machine's CPUs with
    # the servers, so on a small machine it bounds what a cheaper server can gain.
    client_cpu_ms_per_request: float

    @property
    def rps(self) -> float:
        return self.requests / self.seconds

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q))


@dataclass(frozen=True)
class Running:
    process: subprocess.Popen[bytes]
    http_port: int
    grpc_port: int


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


def start_ours(model: Path, state: Path) -> Running:
    http_port, grpc_port = free_port(), free_port()
    env = dict(
        os.environ,
        PYTHONSAFEPATH="1",
        **{MODELS_ENV: encode_models([ModelEntry(MODEL_NAME, str(model))]), GROUP_SIZES_ENV: "1"},
        NEURON_SIM_CORES="1",
        NEURON_SIM_STATE_DIR=str(state),
        NEURON_SERVE_HOST="127.0.0.1",
        NEURON_HTTP_PORT=str(http_port),
        NEURON_GRPC_PORT=str(grpc_port),
        NEURON_LOG_LEVEL="warning",
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "neuron_runtime.serving"], env=env, stdout=subprocess.DEVNULL
    )
    return Running(process, http_port, grpc_port)


def start_peer(python: str, model: Path, tree: Path) -> Running:
    http_port, grpc_port = free_port(), free_port()
    env = dict(
        os.environ,
        PYTHONPATH=str(tree),
        PYTHONSAFEPATH="1",
        BENCH_MODEL_NAME=MODEL_NAME,
        BENCH_MODEL_PATH=str(model),
        BENCH_HTTP_PORT=str(http_port),
        BENCH_GRPC_PORT=str(grpc_port),
        OMP_NUM_THREADS="1",
        OPENBLAS_NUM_THREADS="1",
    )
    process = subprocess.Popen(
        [python, "-c", PEER_SERVER],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return Running(process, http_port, grpc_port)


def stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


class Client:
    """One tritonclient asyncio client of one server over one protocol."""

    def __init__(self, server: Running, protocol: str, x: np.ndarray[Any, Any]) -> None:
        self.protocol = protocol
        self.client: Any
        if protocol == "http":
            self.client = httpclient.InferenceServerClient(
                f"127.0.0.1:{server.http_port}", conn_limit=64
            )
            tensor: Any = httpclient.InferInput("input", list(x.shape), "FP32")
            tensor.set_data_from_numpy(x, binary_data=True)
            self.outputs: list[Any] = [httpclient.InferRequestedOutput("output", binary_data=True)]
        else:
            self.client = grpcclient.InferenceServerClient(f"127.0.0.1:{server.grpc_port}")
            tensor = grpcclient.InferInput("input", list(x.shape), "FP32")
            tensor.set_data_from_numpy(x)
            self.outputs = [grpcclient.InferRequestedOutput("output")]
        self.inputs = [tensor]

    async def infer(self) -> np.ndarray[Any, Any]:
        result = await self.client.infer(MODEL_NAME, self.inputs, outputs=self.outputs)
        array: np.ndarray[Any, Any] = result.as_numpy("output")
        return array

    async def ready(self) -> bool:
        try:
            return bool(await self.client.is_model_ready(MODEL_NAME))
        except (InferenceServerException, aiohttp.ClientError, OSError):
            return False

    async def close(self) -> None:
        await self.client.close()


async def wait_ready(client: Client, process: subprocess.Popen[bytes], limit_s: float) -> None:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode} before it was ready")
        if await client.ready():
            return
        await asyncio.sleep(0.2)
    raise RuntimeError(f"{client.protocol} not ready after {limit_s}s")


async def measure(
    client: Client,
    *,
    server: str,
    pid: int,
    concurrency: int,
    seconds: float,
    warmup_s: float,
) -> Result:
    latencies: list[float] = []
    state = {"measuring": False, "stop": False}

    async def worker() -> None:
        while not state["stop"]:
            began = time.perf_counter()
            await client.infer()
            if state["measuring"] and not state["stop"]:
                latencies.append((time.perf_counter() - began) * 1000)

    workers = [asyncio.create_task(worker()) for _ in range(concurrency)]
    try:
        await asyncio.sleep(warmup_s)
        cpu_before = process_tree_cpu_s(pid)
        client_before = time.process_time()
        started = time.perf_counter()
        state["measuring"] = True
        await asyncio.sleep(seconds)
        state["stop"] = True
        elapsed = time.perf_counter() - started
        cpu = process_tree_cpu_s(pid) - cpu_before
        client_cpu = time.process_time() - client_before
        await asyncio.gather(*workers)
    finally:
        state["stop"] = True
        for task in workers:
            task.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
    count = len(latencies)
    return Result(
        server,
        client.protocol,
        concurrency,
        count,
        elapsed,
        tuple(latencies),
        cpu * 1000 / max(count, 1),
        client_cpu * 1000 / max(count, 1),
    )


def ratio_table(
    rounds: Sequence[dict[tuple[str, str, int], Result]],
    concurrencies: Sequence[int],
    value: Callable[[Result], float],
) -> dict[str, dict[str, list[float]]]:
    """Per protocol and concurrency, the per-round ratios ours / KServe."""
    table: dict[str, dict[str, list[float]]] = {}
    for protocol in PROTOCOLS:
        table[protocol] = {}
        for c in concurrencies:
            table[protocol][str(c)] = [
                value(r[(SERVERS[0], protocol, c)]) / value(r[(SERVERS[1], protocol, c)])
                for r in rounds
            ]
    return table


def medians(table: dict[str, dict[str, list[float]]]) -> dict[str, dict[str, float]]:
    return {
        protocol: {c: round(statistics.median(v), 3) for c, v in cells.items()}
        for protocol, cells in table.items()
    }


async def run_rounds(
    clients: dict[tuple[str, str], Client],
    pids: dict[str, int],
    args: argparse.Namespace,
) -> list[dict[tuple[str, str, int], Result]]:
    rounds: list[dict[tuple[str, str, int], Result]] = []
    for index in range(args.rounds):
        cells: dict[tuple[str, str, int], Result] = {}
        order = SERVERS if index % 2 == 0 else SERVERS[::-1]
        for protocol in PROTOCOLS:
            for concurrency in args.concurrency:
                for server in order:
                    result = await measure(
                        clients[(server, protocol)],
                        server=server,
                        pid=pids[server],
                        concurrency=concurrency,
                        seconds=args.seconds,
                        warmup_s=args.warmup,
                    )
                    cells[(server, protocol, concurrency)] = result
                    print(
                        f"round {index + 1} {protocol:>4} c={concurrency:<3} {server:>15}: "
                        f"{result.rps:8.1f} req/s  p50 {result.percentile(50):7.2f} ms  "
                        f"p99 {result.percentile(99):7.2f} ms  "
                        f"server CPU {result.cpu_ms_per_request:.3f} ms/request  "
                        f"client CPU {result.client_cpu_ms_per_request:.3f}",
                        flush=True,
                    )
        rounds.append(cells)
    return rounds


def report(
    rounds: list[dict[tuple[str, str, int], Result]], args: argparse.Namespace
) -> dict[str, Any]:
    print()
    print(
        f"model mlp input_dim={args.input_dim} width={args.width} depth={args.depth}, "
        f"batch {args.batch} FP32, {args.seconds}s windows, {args.rounds} interleaved rounds; "
        "medians over rounds"
    )
    print(
        f"{'protocol':>8} {'conc':>4} {'server':>15} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} "
        f"{'CPU ms/req':>11} {'client CPU':>11}"
    )
    for protocol in PROTOCOLS:
        for c in args.concurrency:
            for server in SERVERS:
                cell = [r[(server, protocol, c)] for r in rounds]
                print(
                    f"{protocol:>8} {c:>4} {server:>15} "
                    f"{statistics.median(x.rps for x in cell):9.1f} "
                    f"{statistics.median(x.percentile(50) for x in cell):8.2f} "
                    f"{statistics.median(x.percentile(99) for x in cell):8.2f} "
                    f"{statistics.median(x.cpu_ms_per_request for x in cell):11.3f} "
                    f"{statistics.median(x.client_cpu_ms_per_request for x in cell):11.3f}"
                )
    throughput = ratio_table(rounds, args.concurrency, lambda r: r.rps)
    p99 = ratio_table(rounds, args.concurrency, lambda r: r.percentile(99))
    cpu = ratio_table(rounds, args.concurrency, lambda r: r.cpu_ms_per_request)
    print()
    print("throughput ratio neuron-runtime/kserve, per round (min / median / max):")
    for protocol in PROTOCOLS:
        for c, values in throughput[protocol].items():
            print(
                f"  {protocol:>4} c={c:<3} {min(values):.2f} / {statistics.median(values):.2f} / "
                f"{max(values):.2f}   p99 ratio median {statistics.median(p99[protocol][c]):.2f}"
                f"   CPU/request ratio median {statistics.median(cpu[protocol][c]):.2f}"
            )
    summary: dict[str, Any] = medians(throughput)
    summary["p99_ratio"] = medians(p99)
    summary["cpu_ratio"] = medians(cpu)
    summary["load_average"] = [round(v, 2) for v in os.getloadavg()]
    summary["cpus"] = os.cpu_count()
    return summary


async def main_async(args: argparse.Namespace) -> int:
    python = ensure_kserve(args.kserve_python)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model = compile_model(
            "mlp", 1, root / "mlp", input_dim=args.input_dim, width=args.width, depth=args.depth
        )
        x = np.random.default_rng(0).standard_normal((args.batch, args.input_dim))
        x = x.astype(np.float32)
        running = {
            "neuron-runtime": start_ours(model, root / "state"),
            "kserve": start_peer(python, model, link_tree(root)),
        }
        clients: dict[tuple[str, str], Client] = {}
        try:
            for server, run in running.items():
                for protocol in PROTOCOLS:
                    clients[(server, protocol)] = Client(run, protocol, x)
                    await wait_ready(clients[(server, protocol)], run.process, 120)
            answers = {key: await client.infer() for key, client in clients.items()}
            first = answers[("neuron-runtime", "http")]
            for key, answer in answers.items():
                if not np.allclose(first, answer, rtol=1e-4, atol=1e-5):
                    print(f"ERROR: {key} disagrees on the model's output", file=sys.stderr)
                    return 1
            print("outputs agree across both servers and both protocols", flush=True)
            pids = {name: run.process.pid for name, run in running.items()}
            rounds = await run_rounds(clients, pids, args)
        finally:
            for client in clients.values():
                await client.close()
            for run in running.values():
                stop(run.process)
    summary = report(rounds, args)
    print(json.dumps(summary))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=2.0, help="measured window per cell")
    parser.add_argument("--warmup", type=float, default=0.3, help="unmeasured seconds first")
    parser.add_argument(
        "--concurrency",
        type=lambda s: [int(v) for v in s.split(",")],
        default=[1, 4, 16],
        help="comma-separated concurrencies (default 1,4,16)",
    )
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds")
    parser.add_argument("--batch", type=int, default=8, help="rows per request")
    parser.add_argument("--input-dim", type=int, default=64, help="model input features")
    parser.add_argument("--width", type=int, default=256, help="model hidden width")
    parser.add_argument("--depth", type=int, default=4, help="model hidden layers")
    parser.add_argument(
        "--kserve-python", help="interpreter with kserve installed (default: .venv-kserve)"
    )
    args = parser.parse_args(argv)
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
