"""Datatypes, decoding and validation of tensors, shared by the REST and gRPC front ends."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from neuron_runtime.serving.errors import ErrorKind, InferenceError
from neuron_runtime.serving.tensors import (
    DATATYPES,
    ModelSignature,
    TensorMeta,
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

MODEL = ModelSignature(
    "m",
    inputs=(TensorMeta("x", "FP32", (-1, 4)), TensorMeta("k", "INT64", (1,))),
    outputs=(TensorMeta("y", "FP32", (-1, 2)),),
)


@pytest.mark.parametrize("datatype", sorted(DATATYPES), ids=str)
def test_every_datatype_round_trips_through_its_dtype(datatype: str) -> None:
    assert datatype_of(dtype_for(datatype, "t")) == datatype


@pytest.mark.parametrize(
    ("dtype", "datatype"),
    [("float32", "FP32"), ("int8", "INT8"), ("bool", "BOOL"), ("<U3", "BYTES"), ("S2", "BYTES")],
    ids=["float32", "int8", "bool", "unicode", "bytes"],
)
def test_datatype_of_numpy_names(dtype: str, datatype: str) -> None:
    assert datatype_of(dtype) == datatype


@pytest.mark.parametrize(
    ("datatype", "words"),
    [("BF16", "not supported"), ("FLOAT", "accepted: BOOL"), (7, "must be a string")],
    ids=["bf16", "unknown", "not-a-string"],
)
def test_bad_datatypes_are_named(datatype: object, words: str) -> None:
    with pytest.raises(InferenceError, match=words) as info:
        dtype_for(datatype, "t")
    assert info.value.kind is ErrorKind.BAD_REQUEST


@pytest.mark.parametrize(
    "shape", [[-1, 4], [1.5], "2,4", None, [True]], ids=["negative", "float", "str", "none", "bool"]
)
def test_bad_shapes(shape: object) -> None:
    with pytest.raises(InferenceError, match="non-negative integers"):
        parse_shape(shape, "x")


@pytest.mark.parametrize(
    ("name", "datatype", "shape", "words"),
    [
        ("x", "FP32", (2, 4), None),
        ("x", "FP32", (0, 4), None),
        ("x", "FP64", (2, 4), "has datatype FP32; the request says FP64"),
        ("x", "FP32", (2, 3), r"takes \[-1, 4\]"),
        ("x", "FP32", (8,), r"takes \[-1, 4\]"),
        ("z", "FP32", (2, 4), "has no input 'z'; its inputs are: x, k"),
    ],
    ids=["ok", "empty-batch", "datatype", "fixed-dim", "rank", "unknown"],
)
def test_check_against_model(
    name: str, datatype: str, shape: tuple[int, ...], words: str | None
) -> None:
    if words is None:
        check_against_model(MODEL, name, datatype, shape)
        return
    with pytest.raises(InferenceError, match=words):
        check_against_model(MODEL, name, datatype, shape)


def test_missing_input_is_described() -> None:
    with pytest.raises(InferenceError, match=r"needs input 'k' \(INT64 \[1\]\)"):
        check_complete(MODEL, ["x"])


@pytest.mark.parametrize(
    ("datatype", "shape", "data", "expected"),
    [
        ("FP32", (2, 2), [[1, 2], [3, 4]], np.array([[1, 2], [3, 4]], np.float32)),
        ("FP32", (2, 2), [1, 2, 3, 4.5], np.array([[1, 2], [3, 4.5]], np.float32)),
        ("INT8", (3,), [-128, 0, 127], np.array([-128, 0, 127], np.int8)),
        ("UINT64", (1,), [2**64 - 1], np.array([2**64 - 1], np.uint64)),
        ("BOOL", (2,), [True, False], np.array([True, False])),
        ("FP16", (1,), [0.5], np.array([0.5], np.float16)),
        ("FP32", (0, 4), [], np.zeros((0, 4), np.float32)),
    ],
    ids=["nested", "flat", "int8-range", "uint64-max", "bool", "fp16", "empty"],
)
def test_decode_json_data(
    datatype: str, shape: tuple[int, ...], data: object, expected: np.ndarray[Any, Any]
) -> None:
    array = decode_json_data("t", dtype_for(datatype, "t"), shape, data)
    assert array.dtype == expected.dtype
    np.testing.assert_array_equal(array, expected)


def test_decode_json_bytes() -> None:
    array = decode_json_data("t", dtype_for("BYTES", "t"), (2, 1), [["ab"], ["c"]])
    assert array.reshape(-1).tolist() == [b"ab", b"c"]


@pytest.mark.parametrize(
    ("datatype", "shape", "data", "words"),
    [
        ("FP32", (2, 2), [1, 2, 3], "needs 4 elements, the data has 3"),
        ("FP32", (2, 2), [[1, 2], [3]], "not a regular array"),
        ("FP32", (1,), ["1.0"], "must be numbers"),
        ("FP32", (1,), [True], "must be numbers"),
        ("INT32", (1,), [1.5], "must be integers"),
        ("INT8", (1,), [300], "300 is out of range for INT8"),
        ("UINT8", (1,), [-1], "-1 is out of range for UINT8"),
        ("INT64", (1,), [2**70], "must be integers"),
        ("BOOL", (1,), [1], "true/false"),
        ("FP16", (1,), [1e10], "out of range for FP16"),
        ("FP32", (1,), [None], "must be numbers"),
        ("FP32", (1,), {"a": 1}, "must be numbers"),
        ("BYTES", (1,), [1], "BYTES data must be strings"),
        ("BYTES", (2,), ["a"], "needs 2 elements"),
    ],
    ids=[
        "count",
        "ragged",
        "string",
        "bool-for-float",
        "float-for-int",
        "int8-overflow",
        "uint-negative",
        "huge-int",
        "int-for-bool",
        "fp16-overflow",
        "null",
        "object",
        "bytes-number",
        "bytes-count",
    ],
)
def test_decode_json_refuses(
    datatype: str, shape: tuple[int, ...], data: object, words: str
) -> None:
    with pytest.raises(InferenceError, match=words) as info:
        decode_json_data("t", dtype_for(datatype, "t"), shape, data)
    assert "'t'" in info.value.message


# One valid element per datatype, and every JSON value kind; each datatype must refuse the kinds
# it does not take, wherever in the data they sit (numpy alone would promote [1.5, true]).
_GOOD_ELEMENT = {
    "BOOL": True,
    **dict.fromkeys(["UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64"], 1),
    **dict.fromkeys(["FP16", "FP32", "FP64"], 0.5),
    "BYTES": "a",
}
_VALUE_KINDS: dict[str, tuple[object, set[str]]] = {
    # kind: (value, datatypes that take it)
    "true": (True, {"BOOL"}),
    "false": (False, {"BOOL"}),
    "integer": (1, {d for d in DATATYPES if d not in ("BOOL", "BYTES")}),
    "fraction": (1.5, {"FP16", "FP32", "FP64"}),
    "string": ("1", {"BYTES"}),
    "null": (None, set()),
    "object": ({"a": 1}, set()),
}
_FOREIGN = [
    (datatype, kind, value)
    for datatype in sorted(DATATYPES)
    for kind, (value, takers) in _VALUE_KINDS.items()
    if datatype not in takers
]


@pytest.mark.parametrize(
    ("datatype", "value"),
    [(d, v) for d, _, v in _FOREIGN],
    ids=[f"{d}-{k}" for d, k, _ in _FOREIGN],
)
@pytest.mark.parametrize("where", ["first", "last", "nested"])
def test_every_datatype_refuses_foreign_elements(datatype: str, value: object, where: str) -> None:
    good = _GOOD_ELEMENT[datatype]
    data: object = {
        "first": [value, good, good, good],
        "last": [good, good, good, value],
        "nested": [[good, good], [good, value]],
    }[where]
    shape = (2, 2) if where == "nested" else (4,)
    with pytest.raises(InferenceError) as info:
        decode_json_data("t", dtype_for(datatype, "t"), shape, data)
    assert info.value.kind is ErrorKind.BAD_REQUEST
    assert f"tensor 't': {datatype} data must be" in info.value.message
    assert "got " in info.value.message


@pytest.mark.parametrize("datatype", sorted(DATATYPES), ids=str)
def test_every_datatype_takes_its_own_elements(datatype: str) -> None:
    good = _GOOD_ELEMENT[datatype]
    array = decode_json_data("t", dtype_for(datatype, "t"), (2, 2), [[good, good], [good, good]])
    assert array.shape == (2, 2)


def test_integers_are_numbers_for_float_tensors() -> None:
    array = decode_json_data("t", dtype_for("FP32", "t"), (3,), [1, 2.5, 0])
    assert array.tolist() == [1.0, 2.5, 0.0]


@pytest.mark.parametrize(
    "array",
    [
        np.arange(6, dtype=np.float32).reshape(2, 3),
        np.array([[1, -2]], dtype=np.int16),
        np.array([True, False, True]),
        np.array([1.5, 2.5], dtype=np.float16),
        np.array([b"hello", b"", b"\x00\xff"], dtype=object),
    ],
    ids=["fp32", "int16", "bool", "fp16", "bytes"],
)
def test_raw_round_trip(array: np.ndarray[Any, Any]) -> None:
    raw = encode_raw(array)
    decoded = decode_raw_data("t", dtype_for(datatype_of(array.dtype), "t"), array.shape, raw)
    assert decoded.shape == array.shape
    assert decoded.tolist() == array.tolist()


@pytest.mark.parametrize(
    ("datatype", "shape", "raw", "words"),
    [
        ("FP32", (2,), b"\x00" * 7, "needs 8 bytes, got 7"),
        ("BYTES", (1,), b"\x05\x00\x00\x00ab", "runs past the end"),
        ("BYTES", (1,), b"\x01\x00", "inside a length prefix"),
        ("BYTES", (2,), b"\x01\x00\x00\x00a", "needs 2 elements"),
        ("BOOL", (3,), b"\x00\x01\x02", "got byte 2 at element 2"),
        ("BOOL", (1,), b"\xff", "bytes 0 \\(false\\) or 1 \\(true\\)"),
    ],
    ids=["short", "bytes-overrun", "bytes-prefix", "bytes-count", "bool-two", "bool-ff"],
)
def test_decode_raw_refuses(datatype: str, shape: tuple[int, ...], raw: bytes, words: str) -> None:
    with pytest.raises(InferenceError, match=words):
        decode_raw_data("t", dtype_for(datatype, "t"), shape, raw)


def test_raw_is_little_endian() -> None:
    assert encode_raw(np.array([1], dtype=np.int32)) == b"\x01\x00\x00\x00"
    big = np.array([1], dtype=">i4")
    assert encode_raw(big) == b"\x01\x00\x00\x00"


def test_json_data_is_flat_row_major() -> None:
    assert list(json_data(np.array([[1, 2], [3, 4]], dtype=np.int32))) == [1, 2, 3, 4]
    assert json_data(np.array([b"a", b"\xff"], dtype=object)) == ["a", "\ufffd"]


@pytest.mark.parametrize("size", [1, 499, 500, 501, 1500, 16 * 1024 + 1], ids=str)
def test_sliced_cast_equals_astype(size: int) -> None:
    from neuron_runtime.serving.tensors import _cast

    raw = np.linspace(-3, 3, size)
    cast = _cast(raw, np.dtype(np.float32))
    assert cast.dtype == np.float32
    np.testing.assert_array_equal(cast, raw.astype(np.float32))
