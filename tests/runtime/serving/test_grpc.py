"""The gRPC front end, called through a real channel with our own generated messages."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import grpc
import numpy as np
import pytest
from google.protobuf.message import Message
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from neuron_runtime.serving import inference_pb2 as pb
from neuron_runtime.serving.grpc_frontend import SERVICE_NAME


class Client:
    def __init__(self, target: str) -> None:
        self.channel = grpc.insecure_channel(target)

    def call(self, method: str, request: Message, reply: type[Message]) -> Any:
        stub = self.channel.unary_unary(
            f"/{SERVICE_NAME}/{method}",
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=reply.FromString,
        )
        return stub(request, timeout=30)

    def infer(self, request: pb.ModelInferRequest) -> pb.ModelInferResponse:
        reply: pb.ModelInferResponse = self.call("ModelInfer", request, pb.ModelInferResponse)
        return reply


@pytest.fixture
def client(start_server: Any, fake_runtime: Any) -> Iterator[Client]:
    server = start_server(fake_runtime, max_body_bytes=64 * 1024)
    client = Client(server.grpc_target)
    yield client
    client.channel.close()


def raw_request(rows: int = 2, **fields: Any) -> pb.ModelInferRequest:
    x = np.arange(rows * 4, dtype=np.float32).reshape(rows, 4)
    request = pb.ModelInferRequest(model_name="mlp", id="g1", **fields)
    request.inputs.add(name="input", datatype="FP32", shape=[rows, 4])
    request.raw_input_contents.append(x.tobytes())
    return request


def test_health_and_metadata(client: Client) -> None:
    assert client.call("ServerLive", pb.ServerLiveRequest(), pb.ServerLiveResponse).live
    assert client.call("ServerReady", pb.ServerReadyRequest(), pb.ServerReadyResponse).ready
    ready = client.call("ModelReady", pb.ModelReadyRequest(name="mlp"), pb.ModelReadyResponse)
    assert ready.ready
    meta = client.call("ServerMetadata", pb.ServerMetadataRequest(), pb.ServerMetadataResponse)
    assert (meta.name, list(meta.extensions)) == (
        "neuron-runtime",
        ["binary_tensor_data", "model_configuration", "statistics"],
    )
    model = client.call(
        "ModelMetadata", pb.ModelMetadataRequest(name="mlp"), pb.ModelMetadataResponse
    )
    assert (model.name, list(model.versions), model.platform) == ("mlp", ["1"], "neuron_runtime")
    assert [(t.name, t.datatype, list(t.shape)) for t in model.inputs] == [
        ("input", "FP32", [-1, 4])
    ]
    assert [t.name for t in model.outputs] == ["output", "label"]


def test_infer_with_raw_contents(client: Client) -> None:
    reply = client.infer(raw_request())
    assert (reply.model_name, reply.id) == ("mlp", "g1")
    assert [(o.name, o.datatype, list(o.shape)) for o in reply.outputs] == [
        ("output", "FP32", [2, 2]),
        ("label", "INT64", [2]),
    ]
    output = np.frombuffer(reply.raw_output_contents[0], "<f4").reshape(2, 2)
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    np.testing.assert_array_equal(output, x @ np.ones((4, 2), np.float32))
    assert np.frombuffer(reply.raw_output_contents[1], "<i8").tolist() == [3, 3]


def test_infer_with_typed_contents_and_requested_outputs(client: Client) -> None:
    request = pb.ModelInferRequest(model_name="mlp", model_version="1")
    tensor = request.inputs.add(name="input", datatype="FP32", shape=[1, 4])
    tensor.contents.fp32_contents.extend([4, 3, 2, 1])
    request.outputs.add(name="label")
    reply = client.infer(request)
    assert [o.name for o in reply.outputs] == ["label"]
    assert np.frombuffer(reply.raw_output_contents[0], "<i8").tolist() == [0]


def _with_typed(datatype: str, shape: list[int], **contents: Any) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="mlp")
    tensor = request.inputs.add(name="input", datatype=datatype, shape=shape)
    for field, values in contents.items():
        getattr(tensor.contents, field).extend(values)
    return request


@pytest.mark.parametrize(
    ("request_", "code", "words"),
    [
        (pb.ModelInferRequest(model_name="nope"), grpc.StatusCode.NOT_FOUND, "unknown model"),
        (raw_request(model_version="9"), grpc.StatusCode.NOT_FOUND, "no version '9'"),
        (pb.ModelInferRequest(model_name="mlp"), grpc.StatusCode.INVALID_ARGUMENT, "no inputs"),
        (_with_typed("FP32", [1, 3], fp32_contents=[1, 2, 3]),
         grpc.StatusCode.INVALID_ARGUMENT, r"takes \[-1, 4\]"),
        (_with_typed("INT32", [1, 4], int_contents=[1, 2, 3, 4]),
         grpc.StatusCode.INVALID_ARGUMENT, "has datatype FP32"),
        (_with_typed("FP32", [1, 4], fp32_contents=[1]),
         grpc.StatusCode.INVALID_ARGUMENT, "needs 4 elements"),
        (_with_typed("FP32", [-1, 4]), grpc.StatusCode.INVALID_ARGUMENT, "non-negative"),
        (_with_typed("FP16", [1, 4]), grpc.StatusCode.INVALID_ARGUMENT, "FP32"),
        (_with_typed("FP32", [1, 4], fp32_contents=[1, 2, 3], bool_contents=[True]),
         grpc.StatusCode.INVALID_ARGUMENT, "fills contents.bool_contents"),
        (_with_typed("FP32", [1, 4], bool_contents=[True, False, True, True]),
         grpc.StatusCode.INVALID_ARGUMENT,
         "FP32 data travels in contents.fp32_contents, but the request fills "
         "contents.bool_contents"),
        (_with_typed("FP32", [1, 4], fp32_contents=[1, 2, 3, 4], bytes_contents=[b"x"]),
         grpc.StatusCode.INVALID_ARGUMENT, "fills contents.bytes_contents"),
        (raw_request(outputs=[pb.ModelInferRequest.InferRequestedOutputTensor(name="zz")]),
         grpc.StatusCode.INVALID_ARGUMENT, "no output 'zz'"),
    ],
    ids=["unknown-model", "unknown-version", "no-inputs", "shape", "datatype", "count",
         "negative-dim", "fp16-for-fp32", "bool-beside-fp32", "bool-for-fp32",
         "bytes-beside-fp32", "unknown-output"],
)  # fmt: skip
def test_errors_have_precise_codes(
    client: Client, request_: pb.ModelInferRequest, code: grpc.StatusCode, words: str
) -> None:
    with pytest.raises(grpc.RpcError) as info:
        client.infer(request_)
    assert info.value.code() == code
    assert re.search(words, info.value.details() or "")
    assert client.infer(raw_request()).outputs  # still serving


def test_raw_contents_must_match_inputs(client: Client) -> None:
    request = raw_request()
    request.raw_input_contents.append(b"")
    with pytest.raises(grpc.RpcError) as info:
        client.infer(request)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "2 entries for 1 inputs" in (info.value.details() or "")


def test_typed_contents_and_raw_contents_together_are_refused(client: Client) -> None:
    request = raw_request(rows=1)
    request.inputs[0].contents.fp32_contents.extend([9, 9, 9, 9])
    with pytest.raises(grpc.RpcError) as info:
        client.infer(request)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "both typed contents and raw_input_contents" in (info.value.details() or "")


def test_oversized_message_is_resource_exhausted(client: Client) -> None:
    with pytest.raises(grpc.RpcError) as info:
        client.infer(raw_request(rows=5000))
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_model_ready_for_unknown_model_is_not_found(client: Client) -> None:
    with pytest.raises(grpc.RpcError) as info:
        client.call("ModelReady", pb.ModelReadyRequest(name="ghost"), pb.ModelReadyResponse)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


_names = st.sampled_from(["input", "label", "", "x"])
_datatypes = st.sampled_from(["FP32", "FP16", "INT32", "INT64", "BYTES", "BOOL", "BF16", "f"])


@st.composite
def _requests(draw: st.DrawFn) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(
        model_name=draw(st.sampled_from(["mlp", "nope", ""])),
        model_version=draw(st.sampled_from(["", "1", "2"])),
    )
    for _ in range(draw(st.integers(0, 2))):
        tensor = request.inputs.add(
            name=draw(_names),
            datatype=draw(_datatypes),
            shape=draw(st.lists(st.integers(-2, 6), max_size=3)),
        )
        tensor.contents.fp32_contents.extend(draw(st.lists(st.floats(width=32), max_size=8)))
        tensor.contents.int_contents.extend(
            draw(st.lists(st.integers(-(2**31), 2**31 - 1), max_size=4))
        )
        tensor.contents.bytes_contents.extend(draw(st.lists(st.binary(max_size=4), max_size=3)))
    for raw in draw(st.lists(st.binary(max_size=40), max_size=3)):
        request.raw_input_contents.append(raw)
    for name in draw(st.lists(_names, max_size=2)):
        request.outputs.add(name=name)
    return request


def test_fuzz_malformed_requests_get_client_codes(client: Client) -> None:
    allowed = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND}

    @settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
    @given(request=_requests())
    def one(request: pb.ModelInferRequest) -> None:
        try:
            client.infer(request)
        except grpc.RpcError as exc:
            assert exc.code() in allowed, exc.details()

    one()
