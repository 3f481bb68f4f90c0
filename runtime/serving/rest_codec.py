"""REST bodies of the Open Inference Protocol, with the binary-tensor extension, as pure functions.

A request body is JSON, optionally followed by raw tensor bytes: the header
``Inference-Header-Content-Length`` then says where the JSON ends, and each input whose
``parameters.binary_data_size`` is set takes its bytes from the tail, in order.  Responses
mirror that: an output is sent as raw bytes when the request asked for it
(``outputs[].parameters.binary_data``, or ``parameters.binary_data_output`` for every output,
which tritonclient sends by default).

Keeping this free of aiohttp lets the fuzz tests hammer it directly and keeps the HTTP handler a
thin adapter.  JSON goes through orjson: parsing and printing numbers is most of a small
request's cost, and orjson writes numpy arrays directly (float32 as its shortest exact form).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson

from neuron_cores.numbers import quote, read_natural
from neuron_runtime.serving.errors import bad_request
from neuron_runtime.serving.tensors import (
    ModelSignature,
    check_against_model,
    check_complete,
    datatype_of,
    decode_json_data,
    decode_raw_data,
    dtype_for,
    encode_raw,
    json_data,
    parse_shape,
)

HEADER_LENGTH = "Inference-Header-Content-Length"
JSON_CONTENT_TYPE = "application/json"
BINARY_CONTENT_TYPE = "application/octet-stream"


@dataclass(frozen=True)
class RequestedOutput:
    name: str
    binary: bool


@dataclass(frozen=True)
class DecodedRequest:
    request_id: str | None
    inputs: dict[str, npt.NDArray[Any]]
    # None: every output the model has, each binary when ``binary_default`` says so.
    outputs: tuple[RequestedOutput, ...] | None
    binary_default: bool


def parse_header_length(value: str | None, body_length: int) -> int | None:
    if value is None:
        return None
    length = read_natural(value.strip())  # ASCII digits: int() takes '+5', Arabic-Indic five
    if length is None or not 0 <= length <= body_length:
        raise bad_request(
            f"header {HEADER_LENGTH}: {quote(value)} must be an integer between 0 and the body "
            f"length ({body_length}), in digits 0-9"
        )
    return length


def load_json(data: bytes | memoryview) -> object:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        # Also raised for invalid UTF-8, nesting deeper than 1024 and integers beyond 64 bits.
        raise bad_request(f"request body is not valid JSON: {exc}") from exc


def _object(value: object, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise bad_request(f"{what} must be a JSON object, got {type(value).__name__}")
    return value


def _parameters(holder: Mapping[str, Any], what: str) -> dict[str, Any]:
    params = holder.get("parameters", {})
    if params is None:
        return {}
    return _object(params, f"{what}.parameters")


def _binary_size(params: Mapping[str, Any], tensor: str) -> int | None:
    size = params.get("binary_data_size")
    if size is None:
        return None
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise bad_request(
            f"tensor '{tensor}': parameters.binary_data_size must be a non-negative integer, "
            f"got {size!r}"
        )
    return size


def _flag(params: Mapping[str, Any], key: str, what: str) -> bool:
    value = params.get(key, False)
    if not isinstance(value, bool):
        raise bad_request(f"{what}.parameters.{key} must be true or false, got {value!r}")
    return value


def parse_infer_request(
    body: bytes, header_length: int | None, model: ModelSignature
) -> DecodedRequest:
    """Decode and validate one ``/infer`` body against the model's signature."""
    view = memoryview(body)
    json_end = len(view) if header_length is None else header_length
    document = _object(load_json(view[:json_end]), "request body")
    request_id = document.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise bad_request(f"request 'id' must be a string, got {request_id!r}")
    params = _parameters(document, "request")
    raw_inputs = document.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise bad_request('request needs "inputs": a non-empty list of tensors')

    offset = json_end
    inputs: dict[str, npt.NDArray[Any]] = {}
    for index, raw in enumerate(raw_inputs):
        tensor = _object(raw, f"inputs[{index}]")
        name = tensor.get("name")
        if not isinstance(name, str):
            raise bad_request(f"inputs[{index}].name must be a string, got {name!r}")
        if name in inputs:
            raise bad_request(f"input '{name}' appears twice in the request")
        dtype = dtype_for(tensor.get("datatype"), name)
        shape = parse_shape(tensor.get("shape"), name)
        check_against_model(model, name, str(tensor["datatype"]), shape)
        size = _binary_size(_parameters(tensor, f"inputs[{index}]"), name)
        if size is not None:
            if offset + size > len(view):
                raise bad_request(
                    f"tensor '{name}': binary_data_size {size} runs past the end of the body"
                )
            inputs[name] = decode_raw_data(name, dtype, shape, view[offset : offset + size])
            offset += size
        elif "data" in tensor:
            inputs[name] = decode_json_data(name, dtype, shape, tensor["data"])
        else:
            raise bad_request(f"tensor '{name}' has neither \"data\" nor binary_data_size")
    if offset != len(view):
        raise bad_request(
            f"{len(view) - offset} bytes of binary data follow the tensors the JSON header "
            f"describes; check binary_data_size and {HEADER_LENGTH}"
        )
    check_complete(model, inputs)
    return DecodedRequest(
        request_id=request_id,
        inputs=inputs,
        outputs=_requested_outputs(document.get("outputs"), model),
        binary_default=_flag(params, "binary_data_output", "request"),
    )


def _requested_outputs(value: object, model: ModelSignature) -> tuple[RequestedOutput, ...] | None:
    if value is None:
        return None
    if not isinstance(value, list):
        raise bad_request('"outputs" must be a list of {"name": ...} objects')
    requested: list[RequestedOutput] = []
    for index, raw in enumerate(value):
        entry = _object(raw, f"outputs[{index}]")
        name = entry.get("name")
        if not isinstance(name, str):
            raise bad_request(f"outputs[{index}].name must be a string, got {name!r}")
        model.output(name)
        params = _parameters(entry, f"outputs[{index}]")
        requested.append(RequestedOutput(name, _flag(params, "binary_data", f"outputs[{index}]")))
    return tuple(requested)


def select_outputs(request: DecodedRequest, model: ModelSignature) -> tuple[RequestedOutput, ...]:
    if request.outputs is not None and request.outputs:
        return request.outputs
    return tuple(RequestedOutput(m.name, request.binary_default) for m in model.outputs)


def encode_infer_response(
    *,
    model_name: str,
    model_version: str | None,
    request_id: str | None,
    outputs: Mapping[str, npt.NDArray[Any]],
    selected: tuple[RequestedOutput, ...],
) -> tuple[bytes, int | None]:
    """The response body, and the JSON header's length when binary outputs follow it."""
    described: list[dict[str, Any]] = []
    chunks: list[bytes] = []
    for wanted in selected:
        array = np.asarray(outputs[wanted.name])
        entry: dict[str, Any] = {
            "name": wanted.name,
            "datatype": datatype_of(array.dtype),
            "shape": list(array.shape),
        }
        if wanted.binary:
            chunk = encode_raw(array)
            entry["parameters"] = {"binary_data_size": len(chunk)}
            chunks.append(chunk)
        else:
            entry["data"] = json_data(array)
        described.append(entry)
    document: dict[str, Any] = {"model_name": model_name, "outputs": described}
    if model_version:
        document["model_version"] = model_version
    if request_id is not None:
        document["id"] = request_id
    header = orjson.dumps(document, option=orjson.OPT_SERIALIZE_NUMPY)
    if not chunks:
        return header, None
    return b"".join([header, *chunks]), len(header)


def error_body(message: str) -> bytes:
    return orjson.dumps({"error": message})
