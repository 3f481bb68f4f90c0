"""Triton's model configuration and statistics extensions, over REST and gRPC alike."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import grpc
import numpy as np
import pytest
from google.protobuf import json_format
from google.protobuf.message import Message

from neuron_runtime.serving import inference_pb2 as pb
from neuron_runtime.serving.grpc_frontend import SERVICE_NAME
from neuron_runtime.serving.model_config import INT32_MAX

from .test_http import infer_body, request


class Grpc:
    def __init__(self, target: str) -> None:
        self.channel = grpc.insecure_channel(target)

    def call(self, method: str, message: Message, reply: type[Message]) -> Any:
        stub = self.channel.unary_unary(
            f"/{SERVICE_NAME}/{method}",
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=reply.FromString,
        )
        return stub(message, timeout=30)


@pytest.fixture
def served(start_server: Any, make_runtime: Any) -> Iterator[tuple[int, Grpc]]:
    # Two copies of mlp (groups 0 and 1) and one of other, with a 1 MiB message limit.
    runtime = make_runtime()
    server = start_server(
        runtime,
        [("mlp", "/m/mlp"), ("mlp", "/m/mlp"), ("other", "/m/other")],
        max_body_bytes=1 << 20,
    )
    client = Grpc(server.grpc_target)
    yield server.server.http_port, client
    client.channel.close()


def _get(port: int, path: str) -> tuple[int, Any]:
    status, _, body = request(port, "GET", path)
    return status, json.loads(body)


def _grpc_infer(client: Grpc, rows: int) -> None:
    message = pb.ModelInferRequest(model_name="mlp")
    message.inputs.add(name="input", datatype="FP32", shape=[rows, 4])
    message.raw_input_contents.append(np.ones((rows, 4), np.float32).tobytes())
    client.call("ModelInfer", message, pb.ModelInferResponse)


@pytest.mark.parametrize(
    "path", ["/v2/models/mlp/config", "/v2/models/mlp/versions/1/config"], ids=["plain", "v1"]
)
def test_config_over_rest_and_grpc(served: tuple[int, Grpc], path: str) -> None:
    port, client = served
    status, config = _get(port, path)
    assert status == 200
    # The fake's input is (-1, 4) FP32; 16 bytes a row fit 65536 times in 1 MiB.
    assert config["max_batch_size"] == (1 << 20) // 16 < INT32_MAX
    assert config["input"] == [
        {"name": "input", "data_type": "TYPE_FP32", "format": "FORMAT_NONE", "dims": [4]}
    ]
    assert config["output"] == [
        {"name": "output", "data_type": "TYPE_FP32", "dims": [2]},
        {"name": "label", "data_type": "TYPE_INT64", "dims": []},
    ]
    assert config["instance_group"][0]["count"] == 2
    assert config["parameters"]["neuroncore_groups"]["string_value"] == "0,1"
    reply = client.call("ModelConfig", pb.ModelConfigRequest(name="mlp"), pb.ModelConfigResponse)
    # perf_analyzer prints the message as JSON with the proto's field names and reads the same
    # keys as from REST.
    as_json = json_format.MessageToDict(reply.config, preserving_proto_field_name=True)
    assert as_json["max_batch_size"] == config["max_batch_size"]
    assert as_json["input"][0]["data_type"] == "TYPE_FP32"
    assert [int(d) for d in as_json["input"][0]["dims"]] == [4]
    assert as_json["instance_group"][0]["kind"] == "KIND_MODEL"


def test_statistics_count_requests_of_both_protocols(served: tuple[int, Grpc]) -> None:
    port, client = served
    for rows in (2, 3):
        status, _, _ = request(port, "POST", "/v2/models/mlp/infer", infer_body(rows))
        assert status == 200
    _grpc_infer(client, 5)
    status, _, _ = request(port, "POST", "/v2/models/mlp/infer", b"{not json")
    assert status == 400
    status, document = _get(port, "/v2/models/mlp/stats")
    assert status == 200
    (entry,) = document["model_stats"]
    assert (entry["name"], entry["version"]) == ("mlp", "1")
    assert entry["inference_count"] == 10
    assert entry["execution_count"] == 3
    assert entry["inference_stats"]["success"]["count"] == 3
    assert entry["inference_stats"]["fail"]["count"] == 1
    assert entry["inference_stats"]["compute_infer"]["ns"] > 0
    reply = client.call(
        "ModelStatistics", pb.ModelStatisticsRequest(name="mlp"), pb.ModelStatisticsResponse
    )
    (stats,) = reply.model_stats
    assert (stats.inference_count, stats.execution_count) == (10, 3)
    assert stats.inference_stats.queue.count == 3
    every = client.call("ModelStatistics", pb.ModelStatisticsRequest(), pb.ModelStatisticsResponse)
    assert [s.name for s in every.model_stats] == ["mlp", "other"]
    status, document = _get(port, "/v2/models/stats")
    assert [s["name"] for s in document["model_stats"]] == ["mlp", "other"]


@pytest.mark.parametrize(
    ("path", "status", "words"),
    [
        ("/v2/models/nope/config", 404, "unknown model 'nope'"),
        ("/v2/models/mlp/versions/2/config", 404, "no version '2'"),
        ("/v2/models/nope/stats", 404, "unknown model 'nope'"),
        ("/v2/models/mlp/versions/2/stats", 404, "no version '2'"),
    ],
    ids=["config-unknown", "config-version", "stats-unknown", "stats-version"],
)
def test_rest_refusals(served: tuple[int, Grpc], path: str, status: int, words: str) -> None:
    port, _ = served
    got, document = _get(port, path)
    assert got == status
    assert words in document["error"]


@pytest.mark.parametrize(
    ("method", "message", "reply", "expected"),
    [
        (
            "ModelConfig",
            pb.ModelConfigRequest(name="nope"),
            pb.ModelConfigResponse,
            (grpc.StatusCode.NOT_FOUND, "unknown model 'nope'"),
        ),
        (
            "ModelConfig",
            pb.ModelConfigRequest(name="mlp", version="7"),
            pb.ModelConfigResponse,
            (grpc.StatusCode.NOT_FOUND, "no version '7'"),
        ),
        (
            "ModelStatistics",
            pb.ModelStatisticsRequest(name="nope"),
            pb.ModelStatisticsResponse,
            (grpc.StatusCode.NOT_FOUND, "unknown model 'nope'"),
        ),
        (
            "ModelStatistics",
            pb.ModelStatisticsRequest(version="1"),
            pb.ModelStatisticsResponse,
            (grpc.StatusCode.INVALID_ARGUMENT, "without a model name"),
        ),
    ],
    ids=["config-unknown", "config-version", "stats-unknown", "stats-version-without-name"],
)
def test_grpc_refusals(
    served: tuple[int, Grpc],
    method: str,
    message: Message,
    reply: type[Message],
    expected: tuple[grpc.StatusCode, str],
) -> None:
    _, client = served
    code, words = expected
    with pytest.raises(grpc.RpcError) as caught:
        client.call(method, message, reply)
    assert caught.value.code() == code
    assert words in (caught.value.details() or "")
