"""The server over the real runtime: worker processes, group placement, switches, runtime metrics.

Models are compiled into a temporary directory, and the runtime's node-local state (core claims)
lives there too, so these tests do not compete with other runtimes on the machine.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

import neuron_runtime.group
from neuron_runtime import compile_model
from neuron_runtime.serving.runtime_binding import server_for_runtime


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    return {
        "a": compile_model("mlp", 1, root / "a", seed=1, input_dim=16, width=64, depth=2),
        "b": compile_model("mlp", 1, root / "b", seed=2, input_dim=16, width=64, depth=2),
    }


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update({"NEURON_SIM_STATE_DIR": str(tmp_path / "state"), "NEURON_SIM_CORES": "2"})
    env.update(extra)
    return env


@pytest.fixture
def served(start_runtime_server: Any, models: dict[str, Path], tmp_path: Path) -> Iterator[Any]:
    # a twice (a copy in each group), then b into group 0 again: b shares group 0 with a.
    # 0.03 MiB per core holds one model's weights at a time, so alternating a and b switches.
    env = _env(tmp_path, NEURONCORE_GROUP_SIZES="1,1", NEURON_SIM_CORE_MEMORY_MB="0.03")
    yield start_runtime_server([("a", models["a"]), ("a", models["a"]), ("b", models["b"])], env)


@pytest.fixture
def start_runtime_server(run_server: Any, serve_config: Any) -> Any:
    def start(entries: list[tuple[str, Path]], env: dict[str, str]) -> Any:
        config = serve_config([(n, str(p)) for n, p in entries])
        thread = run_server(server_for_runtime(config, env))
        thread.call(thread.server.wait_loaded(), timeout=120)
        return thread

    return start


def _post(port: int, model: str, x: np.ndarray[Any, Any]) -> dict[str, Any]:
    body = json.dumps(
        {"inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32",
                     "data": x.ravel().tolist()}]}
    )  # fmt: skip
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request("POST", f"/v2/models/{model}/infer", body=body)
        response = conn.getresponse()
        document: dict[str, Any] = json.loads(response.read())
        assert response.status == 200, document
        return document
    finally:
        conn.close()


def _metrics(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()
    conn.close()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_copies_agree_and_models_sharing_a_group_switch(served: Any) -> None:
    port = served.server.http_port
    x = np.linspace(-1, 1, 3 * 16, dtype=np.float32).reshape(3, 16)
    first = _post(port, "a", x)["outputs"][0]
    assert first["shape"] == [3, 10]
    for _ in range(3):  # copies in both groups give the same answer; b interleaves in group 0
        assert _post(port, "a", x)["outputs"][0]["data"] == first["data"]
        assert _post(port, "b", x)["outputs"][0]["data"] != first["data"]
    metrics = _metrics(port)

    def value(name: str, **labels: str) -> float:
        return metrics[(name, tuple(sorted(labels.items())))]

    a_groups = {
        group: value("neuron_serving_request_duration_seconds_count", model="a", group=group)
        for group in ("0", "1")
    }
    assert sum(a_groups.values()) == 4
    assert a_groups["1"] >= 1  # the second copy took requests
    assert value("neuron_serving_request_duration_seconds_count", model="b", group="0") == 3
    assert value("neuron_group_context_switches_total", group="0") >= 1
    assert value("neuron_group_context_switch_seconds_total", group="0") > 0
    assert (
        value("neuron_group_requests_total", group="0")
        + value("neuron_group_requests_total", group="1")
        == 7
    )
    assert value("neuron_core_busy_seconds_total", core="0") > 0
    assert 0 <= value("neuron_core_busy_fraction", core="0") <= 1
    resident = [k for k in metrics if k[0] == "neuron_group_resident_model"]
    assert {dict(labels)["group"] for _, labels in resident} == {"0", "1"}


def test_zero_batch_is_refused_by_the_runtime_as_bad_input(served: Any) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", served.server.http_port, timeout=30)
    body = json.dumps({"inputs": [{"name": "input", "shape": [0, 16], "datatype": "FP32",
                                   "data": []}]})  # fmt: skip
    conn.request("POST", "/v2/models/a/infer", body=body)
    response = conn.getresponse()
    assert response.status == 400
    assert "batch size >= 1" in json.loads(response.read())["error"]
    conn.close()


def test_a_model_that_fails_to_load_leaves_the_server_unready(
    run_server: Any, serve_config: Any, models: dict[str, Path], tmp_path: Path
) -> None:
    from neuron_runtime import ModelLoadError

    env = _env(tmp_path, NEURONCORE_GROUP_SIZES="1")
    config = serve_config([("a", str(models["a"])), ("ghost", str(tmp_path / "missing"))])
    thread = run_server(server_for_runtime(config, env))
    with pytest.raises(ModelLoadError, match="missing"):
        thread.call(thread.server.wait_loaded(), timeout=120)
    assert not thread.server.service.ready
    assert not thread.server.service.live


def _worker_pids() -> list[int]:
    """This process's runtime worker processes, found as an operator would find them."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        if parent == os.getpid() and b"neuron_runtime.worker" in cmdline:
            found.append(int(entry.name))
    return sorted(found)


def _get(port: int, path: str) -> tuple[int, dict[str, Any]]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


def _infer_status(port: int, model: str, x: np.ndarray[Any, Any]) -> tuple[int, dict[str, Any]]:
    body = json.dumps({"inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32",
                                   "data": x.ravel().tolist()}]})  # fmt: skip
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request("POST", f"/v2/models/{model}/infer", body=body)
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


def test_a_killed_worker_comes_back_and_the_server_stays_live(served: Any) -> None:
    port = served.server.http_port
    x = np.ones((2, 16), np.float32)
    expected = {m: _post(port, m, x)["outputs"][0]["data"] for m in ("a", "b")}
    workers = _worker_pids()
    assert len(workers) == 2  # one core in each of the two groups
    os.kill(workers[0], signal.SIGKILL)
    for model in ("a", "b", "a", "b"):  # b lives only in group 0; a in both
        for _ in range(200):
            status, document = _infer_status(port, model, x)
            if status == 200:
                break
            assert status == 503, document  # a request caught in the death: retry it
            assert "exited unexpectedly" in document["error"]
        assert document["outputs"][0]["data"] == expected[model]
    assert _get(port, "/v2/health/live") == (200, {"live": True})
    assert _get(port, "/v2/health/ready")[0] == 200
    assert workers[0] not in _worker_pids() and len(_worker_pids()) == 2
    restarts = {
        labels: value
        for (name, labels), value in _metrics(port).items()
        if name == "neuron_group_worker_restarts_total"
    }
    assert sorted(restarts.values()) == [0.0, 1.0]


def test_a_group_that_gives_up_fails_liveness(
    start_runtime_server: Any,
    models: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(neuron_runtime.group, "RESTART_LIMIT", 0)  # give up at the first death
    env = _env(tmp_path, NEURONCORE_GROUP_SIZES="1,1")
    thread = start_runtime_server([("a", models["a"]), ("b", models["b"])], env)
    port = thread.server.http_port
    x = np.ones((1, 16), np.float32)
    _post(port, "a", x)
    _post(port, "b", x)
    group_0 = _worker_pids()[0]  # a, in group 0, started its worker first
    os.kill(group_0, signal.SIGKILL)
    for _ in range(200):
        status, document = _get(port, "/v2/health/live")
        if status != 200:
            break
        time.sleep(0.05)
    assert status == 400
    assert document["live"] is False
    assert "NeuronCore Group 0" in document["error"]
    assert "stopped restarting" in document["error"]
    assert _get(port, "/v2/health/ready")[0] == 400
    status, document = _infer_status(port, "a", x)
    assert status == 503 and "stopped restarting" in document["error"]
    assert _infer_status(port, "b", x)[0] == 200  # group 1 still serves until the pod restarts
