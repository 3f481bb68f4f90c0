"""The REST front end over a real socket: routes, errors, binary tensors, readiness, metrics."""

from __future__ import annotations

import asyncio
import http.client
import json
import re
import struct
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from neuron_runtime.serving.rest_codec import HEADER_LENGTH

Reply = tuple[int, dict[str, str], bytes]


def request(
    port: int,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> Reply:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


def infer_body(rows: int = 2, **extra: Any) -> bytes:
    data = np.arange(rows * 4, dtype=np.float32).reshape(rows, 4).tolist()
    document = {"inputs": [{"name": "input", "shape": [rows, 4], "datatype": "FP32", "data": data}]}
    document.update(extra)
    return json.dumps(document).encode()


def expected_output(rows: int = 2) -> list[float]:
    x = np.arange(rows * 4, dtype=np.float32).reshape(rows, 4)
    out: list[float] = (x @ np.ones((4, 2), np.float32)).ravel().tolist()
    return out


@pytest.mark.parametrize(
    ("path", "status", "expected"),
    [
        ("/v2/health/live", 200, {"live": True}),
        ("/v2/health/ready", 200, {"ready": True}),
        (
            "/v2",
            200,
            {
                "name": "neuron-runtime",
                "extensions": ["binary_tensor_data", "model_configuration", "statistics"],
            },
        ),
        ("/v2/models/mlp/ready", 200, {"name": "mlp", "ready": True}),
        ("/v2/models/mlp/versions/1/ready", 200, {"ready": True}),
        (
            "/v2/models/mlp",
            200,
            {
                "name": "mlp",
                "versions": ["1"],
                "platform": "neuron_runtime",
                "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 4]}],
                "outputs": [
                    {"name": "output", "datatype": "FP32", "shape": [-1, 2]},
                    {"name": "label", "datatype": "INT64", "shape": [-1]},
                ],
            },
        ),
        ("/v2/models/nope", 404, {"error": "unknown model 'nope'; this server serves: mlp"}),
        ("/v2/models/nope/ready", 404, {}),
        ("/v2/models/mlp/versions/7", 404, {}),
        ("/v3", 404, {"error": "no route GET /v3"}),
    ],
    ids=[
        "live", "ready", "server-metadata", "model-ready", "versioned-ready", "model-metadata",
        "unknown-model", "unknown-model-ready", "unknown-version", "unknown-route",
    ],
)  # fmt: skip
def test_get_routes(
    start_server: Any, fake_runtime: Any, path: str, status: int, expected: dict[str, Any]
) -> None:
    server = start_server(fake_runtime)
    got_status, headers, body = request(server.server.http_port, "GET", path)
    assert got_status == status
    assert headers["Content-Type"].startswith("application/json")
    document = json.loads(body)
    assert expected.items() <= document.items()
    if status >= 400:
        assert isinstance(document["error"], str) and document["error"]


@pytest.mark.parametrize(
    "path", ["/v2/models/mlp/infer", "/v2/models/mlp/versions/1/infer"], ids=["plain", "versioned"]
)
def test_json_inference(start_server: Any, fake_runtime: Any, path: str) -> None:
    server = start_server(fake_runtime)
    status, _, body = request(server.server.http_port, "POST", path, infer_body(id="req-7"))
    assert status == 200
    document = json.loads(body)
    assert document["model_name"] == "mlp"
    assert document["id"] == "req-7"
    outputs = {o["name"]: o for o in document["outputs"]}
    assert outputs["output"]["shape"] == [2, 2]
    assert outputs["output"]["datatype"] == "FP32"
    assert outputs["output"]["data"] == expected_output()
    assert outputs["label"] == {"name": "label", "datatype": "INT64", "shape": [2], "data": [3, 3]}


def test_requested_outputs_only(start_server: Any, fake_runtime: Any) -> None:
    server = start_server(fake_runtime)
    body = infer_body(outputs=[{"name": "label"}])
    status, _, reply = request(server.server.http_port, "POST", "/v2/models/mlp/infer", body)
    assert status == 200
    assert [o["name"] for o in json.loads(reply)["outputs"]] == ["label"]


def test_binary_tensors_both_ways(start_server: Any, fake_runtime: Any) -> None:
    server = start_server(fake_runtime)
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    header = json.dumps(
        {
            "inputs": [
                {"name": "input", "shape": [3, 4], "datatype": "FP32",
                 "parameters": {"binary_data_size": x.nbytes}}
            ],
            "outputs": [{"name": "output", "parameters": {"binary_data": True}}, {"name": "label"}],
        }
    ).encode()  # fmt: skip
    status, headers, reply = request(
        server.server.http_port,
        "POST",
        "/v2/models/mlp/infer",
        header + x.tobytes(),
        {HEADER_LENGTH: str(len(header)), "Content-Type": "application/octet-stream"},
    )
    assert status == 200
    length = int(headers[HEADER_LENGTH])
    document = json.loads(reply[:length])
    output, label = document["outputs"]
    assert output["parameters"]["binary_data_size"] == 3 * 2 * 4
    values = np.frombuffer(reply[length:], dtype="<f4").reshape(3, 2)
    np.testing.assert_array_equal(values, x @ np.ones((4, 2), np.float32))
    assert label["data"] == [3, 3, 3]


def test_binary_output_for_every_output_by_request_parameter(
    start_server: Any, fake_runtime: Any
) -> None:
    server = start_server(fake_runtime)
    body = infer_body(rows=1, parameters={"binary_data_output": True})
    status, headers, reply = request(server.server.http_port, "POST", "/v2/models/mlp/infer", body)
    assert status == 200
    length = int(headers[HEADER_LENGTH])
    sizes = [o["parameters"]["binary_data_size"] for o in json.loads(reply[:length])["outputs"]]
    assert sizes == [8, 8]
    assert struct.unpack("<q", reply[length + 8 :]) == (3,)


def _bad(document: dict[str, Any]) -> bytes:
    return json.dumps(document).encode()


GOOD_INPUT = {"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}


@pytest.mark.parametrize(
    ("path", "body", "headers", "status", "words"),
    [
        ("/v2/models/nope/infer", infer_body(), {}, 404, "unknown model 'nope'"),
        ("/v2/models/mlp/versions/3/infer", infer_body(), {}, 404, "no version '3'"),
        ("/v2/models/mlp/infer", b"{nope", {}, 400, "not valid JSON"),
        ("/v2/models/mlp/infer", b"", {}, 400, "not valid JSON"),
        ("/v2/models/mlp/infer", _bad({"inputs": [{**GOOD_INPUT, "name": "x"}]}), {}, 400,
         "has no input 'x'; its inputs are: input"),
        ("/v2/models/mlp/infer", _bad({"inputs": [{**GOOD_INPUT, "shape": [1, 5]}]}), {}, 400,
         r"takes \[-1, 4\]"),
        ("/v2/models/mlp/infer", _bad({"inputs": [{**GOOD_INPUT, "datatype": "INT32"}]}), {},
         400, "has datatype FP32; the request says INT32"),
        ("/v2/models/mlp/infer", _bad({"inputs": [{**GOOD_INPUT, "data": [1]}]}), {}, 400,
         "needs 4 elements"),
        ("/v2/models/mlp/infer", _bad({"inputs": [{**GOOD_INPUT, "data": [1.5, True, 3, 4]}]}),
         {}, 400, r"FP32 data must be numbers, got true/false \(True\)"),
        ("/v2/models/mlp/infer", _bad({"inputs": [{**GOOD_INPUT, "data": [[1, 2], [3, False]]}]}),
         {}, 400, "FP32 data must be numbers, got true/false"),
        ("/v2/models/mlp/infer", _bad({"inputs": [{**GOOD_INPUT, "data": [1, 2, "3", 4]}]}),
         {}, 400, "FP32 data must be numbers, got a string"),
        ("/v2/models/mlp/infer", infer_body(), {HEADER_LENGTH: "x"}, 400, HEADER_LENGTH),
        ("/v2/models/mlp/infer", b"x" * 5000, {}, 413, "larger than the server's limit of 4096"),
        ("/v2/models/mlp/predict", infer_body(), {}, 404, "no route POST"),
    ],
    ids=[
        "unknown-model", "unknown-version", "bad-json", "empty-body", "unknown-input",
        "wrong-shape", "wrong-datatype", "wrong-count", "bool-in-fp32", "nested-bool-in-fp32",
        "string-in-fp32", "bad-header", "too-large", "unknown-route",
    ],
)  # fmt: skip
def test_bad_requests_get_json_4xx(
    *,
    start_server: Any,
    fake_runtime: Any,
    path: str,
    body: bytes,
    headers: dict[str, str],
    status: int,
    words: str,
) -> None:
    server = start_server(fake_runtime, max_body_bytes=4096)
    port = server.server.http_port
    got, reply_headers, reply = request(port, "POST", path, body, headers)
    assert got == status
    assert reply_headers["Content-Type"].startswith("application/json")
    assert re.search(words, json.loads(reply)["error"])
    assert request(port, "POST", "/v2/models/mlp/infer", infer_body())[0] == 200


def test_too_large_chunked_body(start_server: Any, fake_runtime: Any) -> None:
    server = start_server(fake_runtime, max_body_bytes=4096)
    conn = http.client.HTTPConnection("127.0.0.1", server.server.http_port, timeout=30)

    def chunks() -> Iterator[bytes]:
        for _ in range(10):
            yield b"x" * 1000

    conn.request("POST", "/v2/models/mlp/infer", body=chunks(), encode_chunked=True)
    response = conn.getresponse()
    assert response.status == 413
    assert "limit of 4096" in json.loads(response.read())["error"]
    conn.close()


def test_wrong_method_is_json_405(start_server: Any, fake_runtime: Any) -> None:
    server = start_server(fake_runtime)
    status, _, body = request(server.server.http_port, "DELETE", "/v2/models/mlp/infer")
    assert status == 405
    assert "error" in json.loads(body)


def test_readiness_waits_for_every_model(start_server: Any, make_runtime: Any) -> None:
    gate = threading.Event()
    runtime = make_runtime(load_gate=gate)
    server = start_server(runtime, models=[("a", "/a"), ("b", "/b")], wait_loaded=False)
    port = server.server.http_port
    assert request(port, "GET", "/v2/health/live")[0] == 200
    assert request(port, "GET", "/v2/health/ready")[0] == 400
    assert request(port, "GET", "/v2/models/a/ready")[0] == 400
    status, _, body = request(port, "POST", "/v2/models/a/infer", infer_body())
    assert status == 503
    assert "still loading" in json.loads(body)["error"]
    gate.set()
    server.call(server.server.wait_loaded())
    assert request(port, "GET", "/v2/health/ready")[0] == 200
    assert request(port, "GET", "/v2/models/b/ready")[0] == 200


def test_a_failed_load_is_reported(start_server: Any, make_runtime: Any) -> None:
    runtime = make_runtime(fail_load="b")
    server = start_server(runtime, models=[("a", "/a"), ("b", "/m/b")], wait_loaded=False)
    with pytest.raises(ValueError, match="cannot load /m/b"):
        server.call(server.server.wait_loaded())
    port = server.server.http_port
    assert request(port, "GET", "/v2/health/live")[0] == 400
    assert request(port, "GET", "/v2/health/ready")[0] == 400
    status, _, body = request(port, "POST", "/v2/models/a/infer", infer_body())
    assert status == 503
    assert "loading the models failed: ValueError: cannot load /m/b" in json.loads(body)["error"]


def test_copies_spread_over_their_groups(start_server: Any, make_runtime: Any) -> None:
    gate = threading.Event()
    runtime = make_runtime(group_count=2, gate=gate)
    server = start_server(runtime, models=[("mlp", "/m"), ("mlp", "/m")])
    port = server.server.http_port
    with ThreadPoolExecutor(4) as pool:
        futures = [
            pool.submit(request, port, "POST", "/v2/models/mlp/infer", infer_body())
            for _ in range(4)
        ]
        for predictor in runtime.predictors:  # both copies are entered before any returns
            for _ in range(2):
                assert predictor.entered.acquire(timeout=10)
        gate.set()
        assert [f.result()[0] for f in futures] == [200] * 4
    assert sorted(p.group for p in runtime.predictors) == [0, 1]
    assert [p.calls for p in runtime.predictors] == [2, 2]


@pytest.mark.parametrize(
    ("failure", "status", "words"),
    [
        ("exhausted", 503, "cores gone"),
        ("runtime-bug", 500, "internal error while running model 'mlp'"),
    ],
    ids=["resource-exhausted", "unexpected"],
)
def test_runtime_failures(
    *,
    start_server: Any,
    fake_runtime: Any,
    exhausted_error: type[Exception],
    failure: str,
    status: int,
    words: str,
) -> None:
    server = start_server(fake_runtime)
    error: Exception = exhausted_error("cores gone") if failure == "exhausted" else KeyError("bug")
    fake_runtime.predictors[0].fail_with = error
    port = server.server.http_port
    got, _, body = request(port, "POST", "/v2/models/mlp/infer", infer_body())
    assert got == status
    assert words in json.loads(body)["error"]
    fake_runtime.predictors[0].fail_with = None
    assert request(port, "POST", "/v2/models/mlp/infer", infer_body())[0] == 200


def test_metrics(start_server: Any, fake_runtime: Any) -> None:
    server = start_server(fake_runtime)
    port = server.server.http_port
    for _ in range(3):
        request(port, "POST", "/v2/models/mlp/infer", infer_body())
    request(port, "POST", "/v2/models/mlp/infer", b"{")
    request(port, "POST", "/v2/models/ghost/infer", b"{}")
    status, headers, body = request(port, "GET", "/metrics")
    assert status == 200
    assert headers["Content-Type"].startswith("text/plain")
    text = body.decode()
    lines = dict(line.rsplit(" ", 1) for line in text.splitlines() if not line.startswith("#"))
    assert float(lines['neuron_serving_requests_total{model="mlp",protocol="rest"}']) == 4
    failures = (
        'neuron_serving_request_failures_total{model="mlp",protocol="rest",reason="bad_request"}'
    )
    assert float(lines[failures]) == 1
    unknown = (
        "neuron_serving_request_failures_total"
        '{model="(unknown)",protocol="rest",reason="not_found"}'
    )
    assert float(lines[unknown]) == 1
    count = 'neuron_serving_request_duration_seconds_count{group="0",model="mlp"}'
    assert float(lines[count]) == 3
    assert float(lines["neuron_serving_ready"]) == 1
    assert float(lines['neuron_group_requests_total{group="0"}']) == 3
    assert float(lines['neuron_group_context_switches_total{group="1"}']) == 3
    assert float(lines['neuron_group_resident_model{cores="0",group="0",model="mlp"}']) == 1
    assert 'neuron_core_busy_fraction{core="1"}' in lines
    assert float(lines['neuron_serving_in_flight{group="0"}']) == 0


def test_shutdown_finishes_in_flight_requests_and_turns_readiness_off(
    start_server: Any, make_runtime: Any
) -> None:
    gate = threading.Event()
    runtime = make_runtime(group_count=1, gate=gate)
    server = start_server(runtime, drain_delay_s=0.5)
    port = server.server.http_port
    with ThreadPoolExecutor(3) as pool:
        futures = [
            pool.submit(request, port, "POST", "/v2/models/mlp/infer", infer_body())
            for _ in range(3)
        ]
        for _ in range(3):
            assert runtime.predictors[0].entered.acquire(timeout=10)
        stopping = asyncio_future(server, server.server.shutdown())
        assert request(port, "GET", "/v2/health/ready")[0] == 400  # during the drain delay
        gate.set()
        assert [f.result()[0] for f in futures] == [200] * 3
        stopping.result(timeout=30)
    assert runtime.closed


def asyncio_future(server: Any, coro: Any) -> Any:
    return asyncio.run_coroutine_threadsafe(coro, server.loop)


# Bodies a confused or hostile client might send.
_json_leaf = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=4)
_json = st.recursive(
    _json_leaf,
    lambda kids: (
        st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=6), kids, max_size=3)
    ),
    max_leaves=12,
)
_tensor = st.fixed_dictionaries(
    {},
    optional={
        "name": st.sampled_from(["input", "output", ""]) | _json,
        "datatype": st.sampled_from(["FP32", "INT64", "BYTES", "BF16"]) | _json,
        "shape": st.lists(st.integers(-1, 5), max_size=3) | _json,
        "data": st.lists(st.floats(width=32) | st.integers(), max_size=8) | _json,
        "parameters": st.fixed_dictionaries({}, optional={"binary_data_size": _json}) | _json,
    },
)
_bodies = st.fixed_dictionaries(
    {},
    optional={
        "inputs": st.lists(_tensor, max_size=2) | _json,
        "outputs": _json,
        "parameters": _json,
        "id": _json,
    },
).map(lambda d: json.dumps(d).encode()) | st.binary(max_size=64)
_paths = st.sampled_from(
    ["/v2/models/mlp/infer", "/v2/models/mlp/versions/1/infer", "/v2/models/x/infer"]
)
_header_values = st.one_of(
    st.none(), st.integers(-5, 300).map(str), st.text(st.characters(codec="ascii"), max_size=4)
)


def test_fuzz_malformed_requests_never_get_5xx(start_server: Any, fake_runtime: Any) -> None:
    server = start_server(fake_runtime, max_body_bytes=8192)
    port = server.server.http_port

    @settings(max_examples=250, deadline=None, suppress_health_check=list(HealthCheck))
    @given(path=_paths, body=_bodies, header=_header_values)
    def one(path: str, body: bytes, header: str | None) -> None:
        headers = {}
        if header is not None and header.isprintable() and header.strip() == header:
            headers[HEADER_LENGTH] = header
        status, _, reply = request(port, "POST", path, body, headers)
        assert status < 500, reply
        if status >= 400:
            assert isinstance(json.loads(reply)["error"], str)

    one()
    assert request(port, "POST", "/v2/models/mlp/infer", infer_body())[0] == 200
