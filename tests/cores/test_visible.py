import tracemalloc

import pytest

from neuron_cores import (
    MAX_NODE_CORES,
    CoreListError,
    contiguous_runs,
    format_core_list,
    is_contiguous,
    parse_core_list,
)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("3", (3,)),
        ("4-7", (4, 5, 6, 7)),
        ("2,3,8", (2, 3, 8)),
        ("0-1,8,10-11", (0, 1, 8, 10, 11)),
        (" 5 - 6 ", (5, 6)),
        ("8,2", (8, 2)),
    ],
    ids=["one", "range", "comma", "mixture", "spaces", "order-kept"],
)
def test_parse_core_list(value: str, expected: tuple[int, ...]) -> None:
    assert parse_core_list(value) == expected


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("", "empty"),
        ("7-4", "runs backwards"),
        ("1,1", "more than once"),
        ("0-3,2", "more than once"),
        ("a", "not a non-negative integer"),
        ("-3", "not a non-negative integer"),
        ("1,,2", "empty entry"),
        ("\u0663", "digits 0-9"),
        ("1-\u0663", "digits 0-9"),
        ("\u00b3", "digits 0-9"),
        ("\uff13", "digits 0-9"),
        ("0-99999999", f"none has more than {MAX_NODE_CORES} cores"),
        (str(MAX_NODE_CORES), f"none has more than {MAX_NODE_CORES} cores"),
        ("9" * 5000, f"none has more than {MAX_NODE_CORES} cores"),
        ("+3", "not a non-negative integer"),
    ],
    ids=[
        "empty",
        "backwards",
        "duplicate",
        "overlap",
        "word",
        "negative",
        "double-comma",
        "arabic-indic-digit",
        "arabic-indic-in-range",
        "superscript",
        "fullwidth-digit",
        "huge-range",
        "index-past-every-node",
        "thousands-of-digits",
        "plus-sign",
    ],
)
def test_parse_core_list_errors(value: str, problem: str) -> None:
    with pytest.raises(CoreListError) as info:
        parse_core_list(value)
    assert problem in str(info.value)
    assert "NEURON_RT_VISIBLE_CORES" in str(info.value)
    assert "Accepted forms" in str(info.value)


@pytest.mark.parametrize(
    ("value", "node_cores", "problem"),
    [
        ("0-99999999", 4, "core '99999999' is outside the node, which has 4 cores (0-3)"),
        ("7", 4, "core '7' is outside the node, which has 4 cores (0-3)"),
        ("2,16", 16, "core '16' is outside the node, which has 16 cores (0-15)"),
    ],
    ids=["huge-range", "one-past", "last-past"],
)
def test_indexes_are_checked_against_the_node(value: str, node_cores: int, problem: str) -> None:
    with pytest.raises(CoreListError) as info:
        parse_core_list(value, node_cores=node_cores)
    assert problem in str(info.value)
    assert repr(value) in str(info.value) and "Accepted forms" in str(info.value)


def test_whole_node_is_accepted() -> None:
    assert parse_core_list("0-15", node_cores=16) == tuple(range(16))
    assert len(parse_core_list(f"0-{MAX_NODE_CORES - 1}")) == MAX_NODE_CORES


@pytest.mark.parametrize(
    "value",
    ["0-2000000", ",".join(["0-1023"] * 2000)],
    ids=["long-range", "repeated-ranges"],
)
def test_refused_without_expanding(value: str) -> None:
    """The bound and the duplicate check come before expansion: memory stays small."""
    tracemalloc.start()
    try:
        with pytest.raises(CoreListError):
            parse_core_list(value)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1024 * 1024, f"peak {peak} bytes"


def test_long_values_are_quoted_shortened() -> None:
    value = "1," * 50000 + "x"
    with pytest.raises(CoreListError) as info:
        parse_core_list(value)
    message = str(info.value)
    assert len(message) < 600
    assert "(100001 characters)" in message


@pytest.mark.parametrize(
    ("cores", "expected"),
    [((4, 5, 6, 7), "4-7"), ((3,), "3"), ((2, 3, 8), "2,3,8"), ((7, 5, 6), "5-7")],
    ids=["range", "single", "gap", "unsorted-contiguous"],
)
def test_format_core_list(cores: tuple[int, ...], expected: str) -> None:
    assert format_core_list(cores) == expected
    assert sorted(parse_core_list(expected)) == sorted(cores)


def test_contiguous_runs_and_is_contiguous() -> None:
    assert contiguous_runs([5, 0, 1, 2, 7, 6]) == [(0, 2), (5, 7)]
    assert is_contiguous([2, 3, 4])
    assert not is_contiguous([2, 4])
    assert not is_contiguous([])
    assert not is_contiguous([2, 2, 3])
