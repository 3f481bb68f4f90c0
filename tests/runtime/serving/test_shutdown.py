"""SIGTERM on a real ``neuron-runtime serve`` process with requests in flight.

The process is started as a pod would run it (model list in ``NEURON_MODELS``, groups in
``NEURONCORE_GROUP_SIZES``).  Requests are sent from threads; once the server's own metrics show
some of them in flight, SIGTERM arrives.  Expected: readiness turns false at once, every request
still gets its 200, and the process exits 0.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from neuron_runtime import compile_model

pytestmark = pytest.mark.slow

GRPC_CLIENT = """
import json, sys
import numpy as np
import tritonclient.grpc as grpcclient
client = grpcclient.InferenceServerClient(sys.argv[1])
tensor = grpcclient.InferInput("input", [3, 64], "FP32")
tensor.set_data_from_numpy(np.ones((3, 64), np.float32))
result = client.infer("mlp", [tensor])
json.dump({"ready": client.is_server_ready(), "shape": list(result.as_numpy("output").shape)},
          sys.stdout)
client.close()
"""
WIDTH = 384
INPUT_DIM = 64


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _get(port: int, path: str) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def _infer(port: int, body: bytes) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        conn.request("POST", "/v2/models/mlp/infer", body=body)
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


def _in_flight(port: int) -> float:
    _, text = _get(port, "/metrics")
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.decode().splitlines()
        if line.startswith("neuron_serving_in_flight{")
    )


def _wait(predicate: Callable[[], bool], what: str, limit_s: float = 60) -> None:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except OSError:
            pass
        time.sleep(0.02)
    raise AssertionError(f"gave up waiting for {what}")


def test_sigterm_drains_in_flight_requests_and_exits_zero(tmp_path: Path) -> None:
    model = compile_model(
        "mlp", 1, tmp_path / "mlp", input_dim=INPUT_DIM, width=WIDTH, depth=4, classes=10
    )
    port, grpc_port = _free_port(), _free_port()
    env = dict(
        os.environ,
        PYTHONSAFEPATH="1",
        NEURON_MODELS=f"mlp={model}",
        NEURONCORE_GROUP_SIZES="1",
        NEURON_SIM_CORES="1",
        NEURON_SIM_CORE_MEMORY_MB="64",
        NEURON_SIM_STATE_DIR=str(tmp_path / "state"),
        NEURON_SERVE_HOST="127.0.0.1",
        NEURON_HTTP_PORT=str(port),
        NEURON_GRPC_PORT=str(grpc_port),
        NEURON_SERVE_DRAIN_DELAY="1",
        NEURON_SERVE_THREADS_PER_GROUP="2",
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "neuron_runtime.cli", "serve", "--log-format", "json"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        _wait(lambda: _get(port, "/v2/health/ready")[0] == 200, "readiness")
        # The production event loop (uvloop) serves gRPC too: one tritonclient round trip.
        client = subprocess.run(
            [sys.executable, "-c", GRPC_CLIENT, f"127.0.0.1:{grpc_port}"],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert client.returncode == 0, client.stderr
        assert json.loads(client.stdout) == {"ready": True, "shape": [3, 10]}
        batch = np.random.default_rng(0).standard_normal((2048, INPUT_DIM)).astype(np.float32)
        body = json.dumps(
            {"inputs": [{"name": "input", "shape": list(batch.shape), "datatype": "FP32",
                         "data": batch.ravel().tolist()}]}
        ).encode()  # fmt: skip
        with ThreadPoolExecutor(8) as pool:
            futures = [pool.submit(_infer, port, body) for _ in range(8)]
            _wait(lambda: _in_flight(port) >= 1, "a request in flight")
            process.send_signal(signal.SIGTERM)
            # Still listening during the drain delay, but no longer ready.
            _wait(lambda: _get(port, "/v2/health/ready")[0] == 400, "readiness to turn false", 5)
            statuses = [f.result(timeout=120) for f in futures]
        assert statuses == [200] * 8
        assert process.wait(timeout=60) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        _, err = process.communicate()
    lines = [json.loads(line) for line in err.decode().splitlines() if line.startswith("{")]
    messages = [line["message"] for line in lines]
    assert any(m.startswith("draining") for m in messages), err.decode()
    assert messages[-1] == "stopped"


@pytest.mark.parametrize(
    ("busy", "flag"), [("http", "--http-port"), ("grpc", "--grpc-port")], ids=["http", "grpc"]
)
def test_a_busy_port_is_a_clear_error_naming_it(tmp_path: Path, busy: str, flag: str) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = holder.getsockname()[1]
        ports = {"http": _free_port(), "grpc": _free_port(), busy: taken}
        env = dict(
            os.environ,
            PYTHONSAFEPATH="1",
            NEURON_SIM_CORES="1",
            NEURONCORE_GROUP_SIZES="1",
            NEURON_SIM_STATE_DIR=str(tmp_path / "state"),
        )
        argv = [sys.executable, "-m", "neuron_runtime.cli", "serve", "--model",
                f"m={tmp_path / 'missing'}", "--host", "127.0.0.1",
                "--http-port", str(ports["http"]), "--grpc-port", str(ports["grpc"])]  # fmt: skip
        done = subprocess.run(
            argv, env=env, capture_output=True, text=True, timeout=120, check=False
        )
    assert done.returncode == 2, done.stderr
    assert f"cannot listen for {'REST' if busy == 'http' else 'gRPC'} on 127.0.0.1:{taken}" in (
        done.stderr
    )
    assert flag in done.stderr
    assert "Traceback" not in done.stderr
