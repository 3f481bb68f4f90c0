"""REST request and response bodies, including the binary-tensor extension, and a fuzz pass."""

from __future__ import annotations

import json
import struct
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from neuron_runtime.serving import rest_codec
from neuron_runtime.serving.errors import InferenceError
from neuron_runtime.serving.rest_codec import (
    RequestedOutput,
    encode_infer_response,
    parse_header_length,
    parse_infer_request,
    select_outputs,
)
from neuron_runtime.serving.tensors import ModelSignature, TensorMeta

MODEL = ModelSignature(
    "m",
    inputs=(TensorMeta("x", "FP32", (-1, 2)), TensorMeta("s", "BYTES", (-1,))),
    outputs=(TensorMeta("y", "FP32", (-1,)), TensorMeta("n", "INT32", (-1,))),
)


def _body(document: dict[str, Any], tail: bytes = b"") -> tuple[bytes, int | None]:
    header = json.dumps(document).encode()
    return header + tail, (len(header) if tail else None)


def _inputs(**extra: Any) -> list[dict[str, Any]]:
    return [
        {"name": "x", "datatype": "FP32", "shape": [1, 2], "data": [1, 2], **extra},
        {"name": "s", "datatype": "BYTES", "shape": [1], "data": ["hi"]},
    ]


def test_json_request() -> None:
    body, length = _body({"id": "r1", "inputs": _inputs()})
    decoded = parse_infer_request(body, length, MODEL)
    assert decoded.request_id == "r1"
    np.testing.assert_array_equal(decoded.inputs["x"], np.array([[1, 2]], np.float32))
    assert decoded.inputs["s"].tolist() == [b"hi"]
    assert decoded.outputs is None
    assert not decoded.binary_default


def test_binary_request_takes_tensors_from_the_tail_in_order() -> None:
    x = np.array([[1.5, -2]], np.float32).tobytes()
    s = struct.pack("<I", 3) + b"abc"
    body, length = _body(
        {
            "inputs": [
                {
                    "name": "x",
                    "datatype": "FP32",
                    "shape": [1, 2],
                    "parameters": {"binary_data_size": len(x)},
                },
                {
                    "name": "s",
                    "datatype": "BYTES",
                    "shape": [1],
                    "parameters": {"binary_data_size": len(s)},
                },
            ],
            "outputs": [{"name": "n", "parameters": {"binary_data": True}}, {"name": "y"}],
            "parameters": {"binary_data_output": True},
        },
        x + s,
    )
    decoded = parse_infer_request(body, length, MODEL)
    np.testing.assert_array_equal(decoded.inputs["x"], [[1.5, -2]])
    assert decoded.inputs["s"].tolist() == [b"abc"]
    assert decoded.outputs == (RequestedOutput("n", True), RequestedOutput("y", False))
    assert decoded.binary_default


@pytest.mark.parametrize(
    ("document", "tail", "header", "words"),
    [
        ({"inputs": []}, b"", None, "non-empty list"),
        ({"inputs": "x"}, b"", None, "non-empty list"),
        ({"inputs": _inputs(), "id": 5}, b"", None, "'id' must be a string"),
        ({"inputs": [*_inputs(), _inputs()[0]]}, b"", None, "appears twice"),
        ({"inputs": [_inputs()[0]]}, b"", None, "needs input 's'"),
        ({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 2]}, _inputs()[1]]}, b"",
         None, "neither"),
        ({"inputs": _inputs(parameters={"binary_data_size": 9})}, b"", None, "runs past the end"),
        ({"inputs": _inputs(parameters={"binary_data_size": -1})}, b"", None, "non-negative"),
        ({"inputs": _inputs(parameters=[1])}, b"", None, "parameters must be a JSON object"),
        ({"inputs": _inputs()}, b"\x00\x00", "len", "2 bytes of binary data follow"),
        ({"inputs": _inputs(), "outputs": [{"name": "zz"}]}, b"", None, "no output 'zz'"),
        ({"inputs": _inputs(), "outputs": {"name": "y"}}, b"", None, '"outputs" must be a list'),
        ({"inputs": _inputs(), "outputs": [{"name": "y", "parameters": {"binary_data": 1}}]},
         b"", None, "must be true or false"),
        ({"inputs": [5]}, b"", None, r"inputs\[0\] must be a JSON object"),
        ({"inputs": [{"name": 3}]}, b"", None, r"inputs\[0\].name must be a string"),
    ],
    ids=[
        "no-inputs", "inputs-not-list", "id-type", "duplicate", "missing", "no-data",
        "binary-overrun", "binary-negative", "params-type", "trailing-bytes", "unknown-output",
        "outputs-type", "binary-flag-type", "input-not-object", "name-type",
    ],
)  # fmt: skip
def test_bad_requests_are_named(
    document: dict[str, Any], tail: bytes, header: str | None, words: str
) -> None:
    body, length = _body(document, tail)
    if header == "len":
        length = len(body) - len(tail)
    with pytest.raises(InferenceError, match=words):
        parse_infer_request(body, length, MODEL)


@pytest.mark.parametrize(
    ("body", "words"),
    [(b"{", "not valid JSON"), (b"\xff\xfe", "not valid JSON"), (b"[1]", "must be a JSON object"),
     (b"[" * 100_000, "not valid JSON")],
    ids=["truncated", "not-utf8", "array", "deep-nesting"],
)  # fmt: skip
def test_bad_json(body: bytes, words: str) -> None:
    with pytest.raises(InferenceError, match=words):
        parse_infer_request(body, None, MODEL)


@pytest.mark.parametrize(
    ("value", "ok"),
    [(None, None), ("0", 0), ("10", 10), ("11", "err"), ("-1", "err"), ("x", "err"),
     ("+5", "err"), ("\u0665", "err"), ("5_0", "err"), (" 5 ", 5)],
    ids=["absent", "zero", "whole", "past-end", "negative", "text", "plus", "arabic-indic",
         "underscore", "spaces"],
)  # fmt: skip
def test_header_length(value: str | None, ok: int | str | None) -> None:
    if ok == "err":
        with pytest.raises(InferenceError, match=rest_codec.HEADER_LENGTH):
            parse_header_length(value, 10)
    else:
        assert parse_header_length(value, 10) == ok


def test_select_outputs_defaults_to_all_with_the_request_default() -> None:
    body, _ = _body({"inputs": _inputs(), "parameters": {"binary_data_output": True}})
    decoded = parse_infer_request(body, None, MODEL)
    assert select_outputs(decoded, MODEL) == (
        RequestedOutput("y", True),
        RequestedOutput("n", True),
    )


def test_json_response() -> None:
    payload, length = encode_infer_response(
        model_name="m", model_version="1", request_id="r",
        outputs={"y": np.array([1.5], np.float32), "n": np.array([2], np.int32)},
        selected=(RequestedOutput("y", False),),
    )  # fmt: skip
    assert length is None
    assert json.loads(payload) == {
        "model_name": "m", "model_version": "1", "id": "r",
        "outputs": [{"name": "y", "datatype": "FP32", "shape": [1], "data": [1.5]}],
    }  # fmt: skip


def test_binary_response_puts_raw_tensors_after_the_json_header() -> None:
    y = np.array([1.5, 2.0], np.float32)
    payload, length = encode_infer_response(
        model_name="m", model_version=None, request_id=None,
        outputs={"y": y, "n": np.array([7], np.int32)},
        selected=(RequestedOutput("n", False), RequestedOutput("y", True)),
    )  # fmt: skip
    assert length is not None
    header = json.loads(payload[:length])
    assert header["outputs"][0]["data"] == [7]
    assert header["outputs"][1]["parameters"] == {"binary_data_size": 8}
    assert payload[length:] == y.tobytes()


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)
tensorish = st.fixed_dictionaries(
    {},
    optional={
        "name": st.sampled_from(["x", "s", "zz", ""]) | json_values,
        "datatype": st.sampled_from(["FP32", "BYTES", "INT8", "BF16", "fp32"]) | json_values,
        "shape": st.lists(st.integers(-2, 3), max_size=3) | json_values,
        "data": json_values,
        "parameters": st.fixed_dictionaries(
            {}, optional={"binary_data_size": st.integers(-5, 50) | json_values}
        )
        | json_values,
    },
)
documents = st.fixed_dictionaries(
    {},
    optional={
        "id": json_values,
        "inputs": st.lists(tensorish, max_size=3) | json_values,
        "outputs": st.lists(st.fixed_dictionaries({"name": json_values}), max_size=2) | json_values,
        "parameters": json_values,
    },
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(document=documents, tail=st.binary(max_size=40), cut=st.integers(-3, 400))
def test_fuzz_only_inference_errors(document: dict[str, Any], tail: bytes, cut: int) -> None:
    """Whatever arrives, decoding either succeeds or raises a client error, never anything else."""
    header = json.dumps(document).encode()
    body = header + tail
    for length in (None, len(header), cut):
        try:
            checked = parse_header_length(None if length is None else str(length), len(body))
            parse_infer_request(body, checked, MODEL)
        except InferenceError as exc:
            assert exc.http_status == 400
