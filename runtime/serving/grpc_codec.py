"""gRPC messages of the Open Inference Protocol to numpy and back, as pure functions.

An input tensor arrives either in ``raw_input_contents`` (one bytes entry per input, in order:
what tritonclient sends) or in the typed ``contents`` fields, where the narrow integer types share
the 32-bit fields (``int_contents`` carries INT8/16/32).  Outputs always leave as
``raw_output_contents``, which every client of the protocol reads and which skips a copy through
Python lists.  Validation is the same as over REST (``tensors``), so both protocols refuse the
same requests with the same words.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

from neuron_runtime.serving import inference_pb2 as pb
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
    parse_shape,
)

# Which typed field of InferTensorContents carries each datatype.
CONTENTS_FIELD = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}


def _typed_contents(
    tensor: pb.ModelInferRequest.InferInputTensor, dtype: np.dtype[Any], shape: tuple[int, ...]
) -> npt.NDArray[Any]:
    field = CONTENTS_FIELD.get(tensor.datatype)
    if field is None:
        raise bad_request(
            f"tensor '{tensor.name}': {tensor.datatype} travels only in raw_input_contents"
        )
    # The typed fields fix each value's type, so the type check is which field holds the data:
    # bools in bool_contents of an FP32 tensor are refused, not read as an empty tensor.
    foreign = [f.name for f, _ in tensor.contents.ListFields() if f.name != field]
    if foreign:
        raise bad_request(
            f"tensor '{tensor.name}': {tensor.datatype} data travels in contents.{field}, "
            f"but the request fills contents.{', contents.'.join(foreign)}"
        )
    values = list(getattr(tensor.contents, field))
    if dtype.kind == "O":
        array = np.empty(len(values), dtype=object)
        array[:] = values
        if array.size != int(np.prod(shape)):
            raise bad_request(
                f"tensor '{tensor.name}': shape {list(shape)} needs {int(np.prod(shape))} "
                f"elements, {field} has {array.size}"
            )
        return array.reshape(shape)
    return decode_json_data(tensor.name, dtype, shape, values)


def decode_infer_request(
    request: pb.ModelInferRequest, model: ModelSignature
) -> tuple[dict[str, npt.NDArray[Any]], tuple[str, ...] | None]:
    """The inputs as arrays, and the names of the outputs asked for (None: all of them)."""
    if not request.inputs:
        raise bad_request("request has no inputs")
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise bad_request(
            f"raw_input_contents has {len(raw)} entries for {len(request.inputs)} inputs; "
            "send one per input, in order, or none"
        )
    inputs: dict[str, npt.NDArray[Any]] = {}
    for index, tensor in enumerate(request.inputs):
        name = tensor.name
        if name in inputs:
            raise bad_request(f"input '{name}' appears twice in the request")
        dtype = dtype_for(tensor.datatype, name)
        shape = parse_shape(list(tensor.shape), name)
        check_against_model(model, name, tensor.datatype, shape)
        if raw:
            if tensor.contents.ListFields():
                raise bad_request(
                    f"tensor '{name}' has both typed contents and raw_input_contents; "
                    "send its data in one of them"
                )
            inputs[name] = decode_raw_data(name, dtype, shape, raw[index])
        else:
            inputs[name] = _typed_contents(tensor, dtype, shape)
    check_complete(model, inputs)
    wanted: tuple[str, ...] | None = None
    if request.outputs:
        wanted = tuple(out.name for out in request.outputs)
        for out_name in wanted:
            model.output(out_name)
    return inputs, wanted


def encode_infer_response(
    *,
    model_name: str,
    model_version: str,
    request_id: str,
    outputs: Mapping[str, npt.NDArray[Any]],
    names: tuple[str, ...],
) -> pb.ModelInferResponse:
    response = pb.ModelInferResponse(
        model_name=model_name, model_version=model_version, id=request_id
    )
    for name in names:
        array = np.asarray(outputs[name])
        response.outputs.add(name=name, datatype=datatype_of(array.dtype), shape=array.shape)
        response.raw_output_contents.append(encode_raw(array))
    return response
