from __future__ import annotations

import pytest

from neuron_device_plugin.ids import (
    CORE_ID_PREFIX,
    DEVICE_ID_PREFIX,
    MAX_ID_LENGTH,
    core_id,
    device_id,
    parse_id,
)


@pytest.mark.parametrize(
    ("index", "expected"),
    [(0, "neuroncore-0000"), (7, "neuroncore-0007"), (127, "neuroncore-0127")],
    ids=["zero", "seven", "trn2-last-logical"],
)
def test_core_ids_are_fixed_width(index: int, expected: str) -> None:
    assert core_id(index) == expected
    assert parse_id(expected, CORE_ID_PREFIX) == index


def test_ids_sort_as_strings_in_index_order_and_fit_the_limit() -> None:
    ids = [core_id(i) for i in range(200)]
    assert sorted(ids) == ids
    assert max(len(i) for i in ids) <= MAX_ID_LENGTH
    assert [device_id(i) for i in range(16)] == sorted(device_id(i) for i in range(16))


@pytest.mark.parametrize(
    ("value", "prefix"),
    [
        ("neuron-0001", CORE_ID_PREFIX),
        ("neuroncore-1", CORE_ID_PREFIX),
        ("neuroncore-00a1", CORE_ID_PREFIX),
        ("neuroncore-0001", DEVICE_ID_PREFIX),
        ("", CORE_ID_PREFIX),
    ],
    ids=["device-id-as-core", "unpadded", "not-digits", "core-id-as-device", "empty"],
)
def test_foreign_ids_do_not_parse(value: str, prefix: str) -> None:
    assert parse_id(value, prefix) is None


@pytest.mark.parametrize("index", [-1, 10_000], ids=["negative", "too-large"])
def test_out_of_range_index_is_refused(index: int) -> None:
    with pytest.raises(ValueError, match=str(index)):
        core_id(index)
