"""Triton's model configuration, derived from a model's signature: what is true of it."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from neuron_runtime.serving.model_config import INT32_MAX, max_batch_size, model_config
from neuron_runtime.serving.tensors import ModelSignature, TensorMeta


def signature(
    inputs: Sequence[tuple[str, tuple[int, ...]]], outputs: Sequence[tuple[str, tuple[int, ...]]]
) -> ModelSignature:
    return ModelSignature(
        "m",
        tuple(TensorMeta(n, "FP32", s) for n, s in inputs),
        tuple(TensorMeta(n, "INT64", s) for n, s in outputs),
    )


@pytest.mark.parametrize(
    ("inputs", "outputs", "limit", "expected"),
    [
        # 64 FP32 features = 256 bytes a row: 1 MiB carries 4096 rows.
        ([("x", (-1, 64))], [("y", (-1, 10))], 1 << 20, 4096),
        ([("x", (-1, 64)), ("z", (-1, 64))], [("y", (-1,))], 1 << 20, 2048),
        # A variable inner dimension counts as 1 element: still an upper bound.
        ([("x", (-1, -1))], [("y", (-1,))], 400, 100),
        ([("x", (8, 64))], [("y", (8, 10))], 1 << 20, 0),
        ([("x", (-1, 64))], [("y", (10,))], 1 << 20, 0),
        ([("x", ())], [("y", (-1,))], 1 << 20, 0),
        # A limit below one row still says the model batches.
        ([("x", (-1, 64))], [("y", (-1,))], 10, 1),
        ([("x", (-1,))], [("y", (-1,))], 1 << 40, INT32_MAX),
    ],
    ids=[
        "one-input",
        "two-inputs",
        "variable-inner",
        "fixed-batch",
        "output-without-batch",
        "scalar-input",
        "tiny-limit",
        "int32-cap",
    ],
)
def test_max_batch_size(
    inputs: list[tuple[str, tuple[int, ...]]],
    outputs: list[tuple[str, tuple[int, ...]]],
    limit: int,
    expected: int,
) -> None:
    assert max_batch_size(signature(inputs, outputs), limit) == expected


@pytest.mark.parametrize(
    ("inputs", "batch", "input_dims"),
    [
        ([("x", (-1, 64))], 4096, [64]),
        ([("x", (8, 64))], 0, [8, 64]),
    ],
    ids=["batching-drops-the-batch-dimension", "no-batching-keeps-every-dimension"],
)
def test_config_spells_what_triton_reads(
    inputs: list[tuple[str, tuple[int, ...]]], batch: int, input_dims: list[int]
) -> None:
    outputs = [("y", (-1, 10))] if batch else [("y", (8, 10))]
    config = model_config(
        signature(inputs, outputs),
        platform="neuron_runtime",
        groups=(0, 2),
        max_message_bytes=1 << 20,
    )
    assert config["max_batch_size"] == batch
    assert config["input"] == [
        {"name": "x", "data_type": "TYPE_FP32", "format": "FORMAT_NONE", "dims": input_dims}
    ]
    assert config["output"] == [
        {"name": "y", "data_type": "TYPE_INT64", "dims": [10] if batch else [8, 10]}
    ]
    assert config["instance_group"] == [{"name": "m", "kind": "KIND_MODEL", "count": 2}]
    assert config["parameters"] == {"neuroncore_groups": {"string_value": "0,2"}}
    # Waiting requests of a batching model are merged, never held back; no sequences, no
    # ensembles (perf_analyzer would send sequences to a sequence-batching model).
    assert config.get("dynamic_batching") == (
        {"max_queue_delay_microseconds": 0} if batch else None
    )
    assert not {"sequence_batching", "ensemble_scheduling"} & config.keys()
