"""Tensors on the wire: Open Inference Protocol datatypes, decoding, validation and encoding.

Both front ends speak the same tensor model (a datatype name such as ``FP32``, a shape, and
row-major data, either as JSON numbers, as typed protobuf fields or as raw little-endian bytes),
so the conversions to and from numpy live here once, free of I/O.  Every check names the model,
the tensor and the bad value, and says what would have been accepted: a client reading a 400
should be able to fix the request without reading our source.

Decoding is strict about types (an ``INT32`` tensor does not silently accept ``1.5`` or ``300`` for
``INT8``) because silently truncated inputs give wrong answers that look right.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from itertools import chain
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from neuron_runtime.serving.errors import bad_request

DATATYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "BYTES": np.dtype(np.object_),
}
# Part of the protocol, but numpy has no bfloat16: named in errors rather than called unknown.
UNSUPPORTED_DATATYPES = frozenset({"BF16"})
ACCEPTED_DATATYPES = ", ".join(DATATYPES)

_BYTES_LENGTH = struct.Struct("<I")


class TensorSpecLike(Protocol):
    """What the serving layer needs of the runtime's ``TensorSpec``."""

    @property
    def name(self) -> str: ...

    @property
    def shape(self) -> tuple[int, ...]: ...

    @property
    def dtype(self) -> str: ...


@dataclass(frozen=True)
class TensorMeta:
    """A tensor as the protocol describes it: ``{"name", "datatype", "shape"}``."""

    name: str
    datatype: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class ModelSignature:
    name: str
    inputs: tuple[TensorMeta, ...]
    outputs: tuple[TensorMeta, ...]

    def input(self, name: str) -> TensorMeta:
        for meta in self.inputs:
            if meta.name == name:
                return meta
        known = ", ".join(m.name for m in self.inputs)
        raise bad_request(f"model '{self.name}' has no input '{name}'; its inputs are: {known}")

    def output(self, name: str) -> TensorMeta:
        for meta in self.outputs:
            if meta.name == name:
                return meta
        known = ", ".join(m.name for m in self.outputs)
        raise bad_request(f"model '{self.name}' has no output '{name}'; its outputs are: {known}")


def datatype_of(dtype: np.dtype[Any] | str) -> str:
    """The protocol datatype of a numpy dtype (or dtype name, as the runtime's TensorSpec has)."""
    resolved = np.dtype(dtype)
    if resolved.kind in "OSU":
        return "BYTES"
    for name, candidate in DATATYPES.items():
        if candidate == resolved:
            return name
    raise ValueError(f"numpy dtype {resolved} has no Open Inference Protocol datatype")


def signature_of(
    name: str, inputs: Mapping[str, TensorSpecLike], outputs: Mapping[str, TensorSpecLike]
) -> ModelSignature:
    def metas(specs: Mapping[str, TensorSpecLike]) -> tuple[TensorMeta, ...]:
        return tuple(
            TensorMeta(key, datatype_of(spec.dtype), tuple(spec.shape))
            for key, spec in specs.items()
        )

    return ModelSignature(name, metas(inputs), metas(outputs))


def dtype_for(datatype: object, tensor: str) -> np.dtype[Any]:
    if not isinstance(datatype, str):
        raise bad_request(
            f"tensor '{tensor}': datatype must be a string such as \"FP32\", got {datatype!r}"
        )
    found = DATATYPES.get(datatype)
    if found is not None:
        return found
    if datatype in UNSUPPORTED_DATATYPES:
        raise bad_request(f"tensor '{tensor}': datatype {datatype} is not supported; send FP32")
    raise bad_request(
        f"tensor '{tensor}': unknown datatype {datatype!r}; accepted: {ACCEPTED_DATATYPES}"
    )


def parse_shape(shape: object, tensor: str) -> tuple[int, ...]:
    if not isinstance(shape, list | tuple) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
    ):
        raise bad_request(
            f"tensor '{tensor}': shape must be a list of non-negative integers, got {shape!r}"
        )
    return tuple(shape)


def element_count(shape: Sequence[int]) -> int:
    return math.prod(shape)


def check_against_model(
    model: ModelSignature, name: str, datatype: str, shape: Sequence[int]
) -> None:
    """Refuse an input whose declared datatype or shape the model cannot take."""
    meta = model.input(name)
    if datatype != meta.datatype:
        raise bad_request(
            f"input '{name}' of model '{model.name}' has datatype {meta.datatype}; "
            f"the request says {datatype}"
        )
    expected = meta.shape
    matches = len(shape) == len(expected) and all(
        want in (-1, got) for want, got in zip(expected, shape, strict=True)
    )
    if not matches:
        raise bad_request(
            f"input '{name}' of model '{model.name}' has shape {list(shape)}; the model takes "
            f"{list(expected)} (-1 = any size)"
        )


# The values each kind of tensor takes, as JSON (or protobuf's typed fields) delivers them.
# Compared with type(), never isinstance(): bool is a subclass of int, and ``true`` must not pass
# for 1 in a number tensor (numpy would quietly turn ``[1.5, true]`` into ``[1.5, 1.0]``).
_ELEMENT_TYPES: dict[str, tuple[frozenset[type], str]] = {
    "b": (frozenset({bool}), "true/false"),
    "i": (frozenset({int}), "integers"),
    "u": (frozenset({int}), "integers"),
    "f": (frozenset({int, float}), "numbers"),
    "O": (frozenset({str}), "strings"),
}
_JSON_NAMES: dict[type, str] = {
    bool: "true/false",
    int: "an integer",
    float: "a number with a fraction",
    str: "a string",
    type(None): "null",
    dict: "an object",
    bytes: "bytes",
}


def _leaf_types(data: object) -> set[type]:
    """The types of every value inside nested lists, one level at a time.

    ``set(map(type, ...))`` over a chained level runs in C: about 20 ns an element, a few
    microseconds for a typical request, a third of the cost of decoding it.
    """
    if type(data) is not list:
        return {type(data)}
    found: set[type] = set()
    level: list[list[object]] = [data]
    while level:
        kinds = set(map(type, chain.from_iterable(level)))
        if list in kinds:
            kinds.discard(list)
            level = [item for item in chain.from_iterable(level) if type(item) is list]
        else:
            level = []
        found |= kinds
    return found


def _leaves(data: object) -> Iterator[object]:
    stack: list[object] = [data]
    while stack:
        item = stack.pop()
        if type(item) is list:
            stack.extend(reversed(item))
        else:
            yield item


def check_element_types(tensor: str, dtype: np.dtype[Any], data: object) -> None:
    """Refuse data holding a value of the wrong kind for the datatype (``true`` in FP32, ...)."""
    allowed, wanted = _ELEMENT_TYPES[dtype.kind]
    if _leaf_types(data) <= allowed:
        return
    bad = next(item for item in _leaves(data) if type(item) not in allowed)
    shown = _JSON_NAMES.get(type(bad), type(bad).__name__)
    value = repr(bad) if len(repr(bad)) <= 40 else repr(bad)[:40] + "..."
    raise bad_request(
        f"tensor '{tensor}': {datatype_of(dtype)} data must be {wanted}, got {shown} ({value})"
    )


def _check_numbers(array: npt.NDArray[Any], dtype: np.dtype[Any], tensor: str) -> None:
    """After the element types: what numpy made of them, and the integer range."""
    kind = array.dtype.kind
    if array.size == 0:
        return
    if dtype.kind == "b":
        ok = kind == "b"
    elif dtype.kind in "iu":
        ok = kind in "iu"
    else:
        ok = kind in "iuf"
    if not ok:
        wanted = _ELEMENT_TYPES[dtype.kind][1]
        raise bad_request(f"tensor '{tensor}': data must be {wanted} for {datatype_of(dtype)}")
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        low, high = int(array.min()), int(array.max())
        if low < info.min or high > info.max:
            raise bad_request(
                f"tensor '{tensor}': value {low if low < info.min else high} is out of range for "
                f"{datatype_of(dtype)} [{info.min}, {info.max}]"
            )


def _flatten_strings(data: object) -> list[bytes]:
    """Nested lists of strings (checked by ``check_element_types``) as UTF-8, row-major."""
    return [str(item).encode() for item in _leaves(data)]


def decode_json_data(
    tensor: str, dtype: np.dtype[Any], shape: tuple[int, ...], data: object
) -> npt.NDArray[Any]:
    """JSON ``data`` (nested or flat, row-major) to an array of ``shape``."""
    count = element_count(shape)
    check_element_types(tensor, dtype, data)
    if dtype.kind == "O":
        return _bytes_array(tensor, shape, count, _flatten_strings(data))
    try:
        raw = np.asarray(data)
    except (ValueError, TypeError, OverflowError, RecursionError) as exc:
        raise bad_request(f"tensor '{tensor}': data is not a regular array of numbers") from exc
    _check_numbers(raw, dtype, tensor)
    if raw.size != count:
        raise _count_error(tensor, shape, count, raw.size)
    try:
        with np.errstate(over="raise", invalid="raise"):
            return _cast(raw, dtype).reshape(shape)
    except FloatingPointError as exc:
        raise bad_request(
            f"tensor '{tensor}': a value is out of range for {datatype_of(dtype)}"
        ) from exc


# numpy lets go of the GIL for loops over more than 500 elements.  For a request-sized array that
# costs more than the copy: the event-loop thread then queues to get the GIL back behind the
# threads waiting on the runtime.  Small casts are done in slices that keep it.
_GIL_SLICE = 500
_SLICED_CAST_LIMIT = 16 * 1024


def _cast(raw: npt.NDArray[Any], dtype: np.dtype[Any]) -> npt.NDArray[Any]:
    if raw.dtype == dtype:
        return raw
    if raw.size > _SLICED_CAST_LIMIT:
        return raw.astype(dtype)
    source = raw.reshape(-1)
    out = np.empty(source.size, dtype=dtype)
    for start in range(0, source.size, _GIL_SLICE):
        out[start : start + _GIL_SLICE] = source[start : start + _GIL_SLICE]
    return out


def _bytes_array(
    tensor: str, shape: tuple[int, ...], count: int, items: list[bytes]
) -> npt.NDArray[Any]:
    """A BYTES tensor: an object array of ``shape`` holding exactly ``count`` items."""
    if len(items) != count:
        raise _count_error(tensor, shape, count, len(items))
    array = np.empty(count, dtype=object)
    array[:] = items
    return array.reshape(shape)


def _count_error(tensor: str, shape: Sequence[int], count: int, got: int) -> Exception:
    return bad_request(
        f"tensor '{tensor}': shape {list(shape)} needs {count} elements, the data has {got}"
    )


def decode_raw_data(
    tensor: str, dtype: np.dtype[Any], shape: tuple[int, ...], raw: bytes | memoryview
) -> npt.NDArray[Any]:
    """Row-major little-endian bytes (the binary extension and gRPC raw contents) to an array."""
    count = element_count(shape)
    if dtype.kind == "O":
        return _bytes_array(tensor, shape, count, _split_length_prefixed(raw, tensor))
    expected = count * dtype.itemsize
    if len(raw) != expected:
        raise bad_request(
            f"tensor '{tensor}': shape {list(shape)} of {datatype_of(dtype)} needs {expected} "
            f"bytes, got {len(raw)}"
        )
    if dtype.kind == "b":
        _check_bool_bytes(tensor, raw)
    return np.frombuffer(raw, dtype=dtype.newbyteorder("<")).reshape(shape)


def _check_bool_bytes(tensor: str, raw: bytes | memoryview) -> None:
    """A BOOL element is one byte, 0 or 1; numpy would keep any other byte as a third value."""
    octets = np.frombuffer(raw, dtype=np.uint8)
    if octets.size and int(octets.max()) > 1:
        position = int(np.argmax(octets > 1))
        raise bad_request(
            f"tensor '{tensor}': BOOL data must be bytes 0 (false) or 1 (true), got byte "
            f"{int(octets[position])} at element {position}"
        )


def _split_length_prefixed(raw: bytes | memoryview, tensor: str) -> list[bytes]:
    view = memoryview(raw)
    items: list[bytes] = []
    offset = 0
    while offset < len(view):
        if offset + 4 > len(view):
            raise bad_request(f"tensor '{tensor}': BYTES data ends inside a length prefix")
        (length,) = _BYTES_LENGTH.unpack_from(view, offset)
        offset += 4
        if offset + length > len(view):
            raise bad_request(
                f"tensor '{tensor}': BYTES element of {length} bytes runs past the end of the data"
            )
        items.append(bytes(view[offset : offset + length]))
        offset += length
    return items


def encode_raw(array: npt.NDArray[Any]) -> bytes:
    if array.dtype.kind in "OSU":
        parts: list[bytes] = []
        for item in array.ravel():
            data = item if isinstance(item, bytes) else str(item).encode()
            parts.append(_BYTES_LENGTH.pack(len(data)))
            parts.append(data)
        return b"".join(parts)
    return np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()


def json_data(array: npt.NDArray[Any]) -> list[Any] | npt.NDArray[Any]:
    """Flat row-major JSON data for an output tensor: strings, or a contiguous numeric array
    (which orjson writes directly)."""
    if array.dtype.kind in "OSU":
        return [
            item.decode(errors="replace") if isinstance(item, bytes) else str(item)
            for item in array.ravel()
        ]
    return np.ascontiguousarray(array.ravel(), dtype=array.dtype.newbyteorder("="))


def check_complete(model: ModelSignature, names: Iterable[str]) -> None:
    """Every input the model declares must be present (unknown ones are refused earlier)."""
    given = set(names)
    missing = [m for m in model.inputs if m.name not in given]
    if missing:
        described = ", ".join(f"'{m.name}' ({m.datatype} {list(m.shape)})" for m in missing)
        raise bad_request(f"model '{model.name}' needs input {described}")
