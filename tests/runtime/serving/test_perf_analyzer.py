"""Triton's own load tool, perf_analyzer, runs against a real ``neuron-runtime serve``.

perf_analyzer asks for the model's configuration (REST ``/v2/models/{m}/config``, gRPC
``ModelConfig``) before it sends anything, and reads ``ModelStatistics`` around each measurement
window when the server lists the ``statistics`` extension.  The test installs what the binary
needs when it is missing (Debian's ``libb64-0d``; PyPI's ``nvidia-cuda-runtime-cu12`` for
``libcudart.so.12``), runs a short measurement on each protocol, and checks that it completes, that
it reports a throughput, and that the server's statistics counted the requests it reports.  No
timing is asserted.
"""

from __future__ import annotations

import importlib.util
import json
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from neuron_runtime import compile_model

pytestmark = pytest.mark.slow

# The tritonclient 2.41 wheel puts perf_analyzer beside the interpreter.
PERF_ANALYZER = Path(sys.executable).parent / "perf_analyzer"


def _missing_libraries(binary: Path, env: dict[str, str]) -> list[str]:
    listing = subprocess.run(
        ["ldd", str(binary)], env=env, capture_output=True, text=True, check=False, timeout=60
    ).stdout
    return [line.split()[0] for line in listing.splitlines() if "not found" in line]


def _cudart_dir() -> Path | None:
    spec = importlib.util.find_spec("nvidia.cuda_runtime")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / "lib"


def _install_cudart() -> None:
    pip = [sys.executable, "-m", "pip", "install", "-q", "nvidia-cuda-runtime-cu12"]
    subprocess.run(pip, check=True, timeout=600)
    importlib.invalidate_caches()


def _install_libb64() -> None:
    if shutil.which("apt-get") is None or os.geteuid() != 0:
        pytest.fail(
            "perf_analyzer needs libb64.so.0d: install Debian's libb64-0d "
            "(apt-get install libb64-0d) or run the tests as root on a Debian-like system"
        )
    install = ["apt-get", "install", "-y", "-q", "libb64-0d"]
    if subprocess.run(install, capture_output=True, check=False, timeout=600).returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], capture_output=True, check=True, timeout=600)
        subprocess.run(install, capture_output=True, check=True, timeout=600)


@pytest.fixture(scope="module")
def perf_analyzer_env() -> dict[str, str]:
    """An environment in which perf_analyzer starts, installing its libraries when missing."""
    if sys.platform != "linux" or platform.machine() != "x86_64":
        pytest.skip("the perf_analyzer in tritonclient's wheel is a Linux x86-64 binary")
    if not PERF_ANALYZER.exists():
        pytest.fail(
            f"{PERF_ANALYZER} is missing: tritonclient 2.41 ships it; "
            "pip install 'tritonclient[http,grpc]==2.41.*' (the dev extras pin it)"
        )
    if _cudart_dir() is None:
        _install_cudart()
    cudart = _cudart_dir()
    assert cudart is not None, "nvidia-cuda-runtime-cu12 installed but not importable"
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = os.pathsep.join(
        p for p in (str(cudart), env.get("LD_LIBRARY_PATH", "")) if p
    )
    if any(lib.startswith("libb64") for lib in _missing_libraries(PERF_ANALYZER, env)):
        _install_libb64()
    missing = _missing_libraries(PERF_ANALYZER, env)
    assert not missing, f"perf_analyzer still lacks {missing}"
    return env


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _get_json(port: int, path: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@dataclass(frozen=True)
class Serving:
    http_port: int
    grpc_port: int


@pytest.fixture(scope="module")
def serving(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Serving]:
    root = tmp_path_factory.mktemp("perf-analyzer")
    model = compile_model("mlp", 1, root / "mlp", input_dim=16, width=32, depth=2)
    ports = Serving(_free_port(), _free_port())
    env = dict(
        os.environ,
        PYTHONSAFEPATH="1",
        NEURON_MODELS=f"mlp={model}",
        NEURONCORE_GROUP_SIZES="1",
        NEURON_SIM_CORES="1",
        NEURON_SIM_STATE_DIR=str(root / "state"),
        NEURON_SERVE_HOST="127.0.0.1",
        NEURON_HTTP_PORT=str(ports.http_port),
        NEURON_GRPC_PORT=str(ports.grpc_port),
    )
    log = root / "serve.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "neuron_runtime.serving"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=sink,
        )
    try:
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, f"serve exited: {log.read_text()}"
            assert time.monotonic() < deadline, "serve was not ready within 120 s"
            try:
                if _get_json(ports.http_port, "/v2/health/ready")[0] == 200:
                    break
            except OSError:
                pass
            time.sleep(0.2)
        yield ports
    finally:
        process.terminate()
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _executions(port: int) -> int:
    status, document = _get_json(port, "/v2/models/mlp/stats")
    assert status == 200, document
    (entry,) = document["model_stats"]
    count: int = entry["execution_count"]
    return count


@pytest.mark.parametrize("protocol", ["http", "grpc"], ids=["rest", "grpc"])
def test_perf_analyzer_measures_the_server(
    perf_analyzer_env: dict[str, str], serving: Serving, protocol: str
) -> None:
    port = serving.http_port if protocol == "http" else serving.grpc_port
    before = _executions(serving.http_port)
    command = [
        str(PERF_ANALYZER),
        "-m",
        "mlp",
        "-i",
        protocol,
        "-u",
        f"127.0.0.1:{port}",
        "--concurrency-range",
        "2",
        # Short and always "stable": a count of requests per window, any variation accepted.
        "--measurement-mode",
        "count_windows",
        "--measurement-request-count",
        "30",
        "--stability-percentage",
        "10000",
        "--max-trials",
        "3",
    ]
    result = subprocess.run(
        command, env=perf_analyzer_env, capture_output=True, text=True, timeout=240, check=False
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    throughput = re.search(r"Throughput: ([0-9.]+) infer/sec", output)
    assert throughput is not None and float(throughput.group(1)) > 0, output
    # The server side of the report comes from ModelStatistics: perf_analyzer found the model's
    # counts and they moved.
    server = re.search(r"Server: \n\s+Inference count: (\d+)\n\s+Execution count: (\d+)", output)
    assert server is not None, output
    assert int(server.group(1)) > 0 and int(server.group(2)) > 0, output
    requests = re.search(r"Request count: (\d+)", output)
    assert requests is not None, output
    assert _executions(serving.http_port) - before >= int(requests.group(1))
