"""Triton's model configuration extension: what is true of a served model, as Triton spells it.

Load tools (``perf_analyzer``) read the configuration before they send anything: the datatypes,
the dimensions, and whether the first dimension is a batch dimension (``max_batch_size > 0``).
A model here batches along its first dimension when every input and output starts with ``-1``
(the runtime's variable batch dimension).  Its largest batch is the most rows whose raw input
bytes fit in one request (``--max-body-bytes``): a larger batch cannot arrive, whatever the
encoding.  Such a model also shows ``dynamic_batching`` with no queue delay: requests that wait
for a busy group are merged into one run (``batching``), but none is held back on purpose.
Copies show as one instance group of kind ``KIND_MODEL`` (devices the model manages: NeuronCore
Groups), with the groups' indexes in the ``neuroncore_groups`` parameter.  Sequence batching and
ensembles are absent: this server has neither.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from neuron_runtime.serving.tensors import ModelSignature, TensorMeta, dtype_for

# The protocol's datatype -> Triton's DataType enum name.  BYTES is Triton's TYPE_STRING.
TRITON_TYPES = {
    "BOOL": "TYPE_BOOL",
    "UINT8": "TYPE_UINT8",
    "UINT16": "TYPE_UINT16",
    "UINT32": "TYPE_UINT32",
    "UINT64": "TYPE_UINT64",
    "INT8": "TYPE_INT8",
    "INT16": "TYPE_INT16",
    "INT32": "TYPE_INT32",
    "INT64": "TYPE_INT64",
    "FP16": "TYPE_FP16",
    "FP32": "TYPE_FP32",
    "FP64": "TYPE_FP64",
    "BYTES": "TYPE_STRING",
}
# max_batch_size is an int32 on the wire.
INT32_MAX = 2**31 - 1
# A BYTES element costs at least its 4-byte length prefix.
_BYTES_ELEMENT_MIN = 4


def _row_bytes(meta: TensorMeta) -> int:
    """The fewest bytes one batch row of ``meta`` takes (a variable dimension counts as 1)."""
    per_row = math.prod(max(d, 1) for d in meta.shape[1:])
    dtype = dtype_for(meta.datatype, meta.name)
    size = _BYTES_ELEMENT_MIN if dtype == np.dtype(object) else dtype.itemsize
    return per_row * size


def max_batch_size(signature: ModelSignature, max_message_bytes: int) -> int:
    """0 when the model has no batch dimension, else the largest batch a request can carry."""
    tensors = signature.inputs + signature.outputs
    if not tensors or not all(t.shape and t.shape[0] == -1 for t in tensors):
        return 0
    row = max(sum(_row_bytes(t) for t in signature.inputs), 1)
    return max(1, min(max_message_bytes // row, INT32_MAX))


def model_config(
    signature: ModelSignature,
    *,
    platform: str,
    groups: Sequence[int],
    max_message_bytes: int,
) -> dict[str, Any]:
    """The configuration as REST answers it; the gRPC message is parsed from the same dict."""
    batch = max_batch_size(signature, max_message_bytes)

    def dims(meta: TensorMeta) -> list[int]:
        return list(meta.shape[1:] if batch > 0 else meta.shape)

    config: dict[str, Any] = {
        "name": signature.name,
        "platform": platform,
        "backend": platform,
        "max_batch_size": batch,
        "input": [
            {
                "name": m.name,
                "data_type": TRITON_TYPES[m.datatype],
                "format": "FORMAT_NONE",
                "dims": dims(m),
            }
            for m in signature.inputs
        ],
        "output": [
            {"name": m.name, "data_type": TRITON_TYPES[m.datatype], "dims": dims(m)}
            for m in signature.outputs
        ],
        "instance_group": [
            {"name": signature.name, "kind": "KIND_MODEL", "count": len(groups)},
        ],
        "parameters": {
            "neuroncore_groups": {"string_value": ",".join(str(g) for g in groups)},
        },
    }
    if batch > 0:
        config["dynamic_batching"] = {"max_queue_delay_microseconds": 0}
    return config
