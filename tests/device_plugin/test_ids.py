from __future__ import annotations

import pytest

from neuron_device_plugin.ids import (
    CORE_ID_PREFIX,
    DEVICE_ID_PREFIX,
    MAX_ERROR_MESSAGE,
    MAX_ID_LENGTH,
    MAX_LISTED_VALUES,
    UnknownDeviceIDError,
    bounded_message,
    core_id,
    describe_values,
    device_id,
    duplicates,
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


@pytest.mark.parametrize(
    "value",
    [
        "neuroncore-\u0660\u0660\u0660\u0661",
        "neuroncore-\uff10\uff10\uff10\uff11",
        "neuroncore-000\u00b9",
    ],
    ids=["arabic-indic-digits", "fullwidth-digits", "superscript-one"],
)
def test_only_ascii_digits_make_an_id(value: str) -> None:
    # Another script's digits would be a second spelling of neuroncore-0001.
    assert parse_id(value, CORE_ID_PREFIX) is None


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([], ""),
        (["a"], "'a'"),
        (["a", "b", "c", "d", "e"], "'a', 'b', 'c', 'd', 'e'"),
        ([f"neuroncore-{i:04d}" for i in range(10_000)], "'neuroncore-0004' and 9,995 more"),
        (["x" * 100_000], "... (100,002 characters)"),
    ],
    ids=["none", "one", "five-all-named", "ten-thousand-counted", "huge-value-cut"],
)
def test_describe_values_names_few_and_counts_the_rest(values: list[str], expected: str) -> None:
    text = describe_values(values)
    assert text.endswith(expected)
    assert len(text) <= MAX_LISTED_VALUES * 100 + 40


@pytest.mark.parametrize(
    ("ids", "repeated"),
    [
        (["a", "b"], []),
        (["neuroncore-0001", "neuroncore-0001"], ["neuroncore-0001"]),
        (["b", "a", "b", "a", "b"], ["b", "a"]),
    ],
    ids=["distinct", "issue-13-pair", "each-named-once"],
)
def test_duplicates(ids: list[str], repeated: list[str]) -> None:
    assert duplicates(ids) == repeated


def test_errors_and_messages_are_bounded() -> None:
    err = UnknownDeviceIDError([f"bad-{i}" for i in range(10_000)], "no such IDs")
    assert str(err).startswith("no such IDs: 'bad-0', 'bad-1'")
    assert str(err).endswith("and 9,995 more")
    assert len(err.ids) == 10_000
    long = bounded_message("y" * 200_000)
    assert len(long) == MAX_ERROR_MESSAGE
    assert long.endswith("(200,000 characters in all)")
    assert bounded_message("short") == "short"
