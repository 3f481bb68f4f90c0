import tracemalloc

import pytest

from neuron_cores import (
    MAX_NODE_CORES,
    GroupSizesError,
    format_group_sizes,
    parse_group_sizes,
    split_into_groups,
)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2,4,6,4", (2, 4, 6, 4)),
        ("[1,2,1]", (1, 2, 1)),
        ("16x1", (1,) * 16),
        ("[2x1,4]", (1, 1, 4)),
        (" 4 ", (4,)),
        ("[ 1 , 2 ]", (1, 2)),
        ("2X2", (2, 2)),
    ],
    ids=["plain", "brackets", "AxB", "AxB-in-list", "spaces", "spaced-brackets", "upper-X"],
)
def test_parse_group_sizes(value: str, expected: tuple[int, ...]) -> None:
    assert parse_group_sizes(value) == expected


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("", "lists no group"),
        ("[]", "lists no group"),
        ("1,,2", "empty entry"),
        ("0", "not a positive integer"),
        ("-1", "not a positive integer"),
        ("a,b", "not a positive integer"),
        ("[1,2", "unbalanced"),
        ("0x4", "not a positive integer"),
        ("2x", "not a positive integer"),
        ("\u0663", "digits 0-9"),
        ("2x\u00b3", "digits 0-9"),
        ("[\u0661,2]", "digits 0-9"),
        ("99999999x1", f"more than {MAX_NODE_CORES} cores, the most any Neuron node has"),
        (f"1,{MAX_NODE_CORES}", f"more than {MAX_NODE_CORES} cores"),
        ("1x" + "9" * 5000, f"more than {MAX_NODE_CORES} cores"),
    ],
    ids=[
        "empty",
        "empty-brackets",
        "double-comma",
        "zero",
        "negative",
        "words",
        "bracket",
        "zero-A",
        "no-B",
        "arabic-indic-digit",
        "superscript-B",
        "arabic-indic-in-list",
        "huge-A",
        "total-past-every-node",
        "thousands-of-digits",
    ],
)
def test_parse_group_sizes_errors_quote_value_and_forms(value: str, problem: str) -> None:
    with pytest.raises(GroupSizesError) as info:
        parse_group_sizes(value)
    message = str(info.value)
    assert problem in message
    assert repr(value) in message or "characters)" in message
    assert "Accepted forms" in message and "16x1" in message


def test_bound_is_the_callers_node() -> None:
    assert parse_group_sizes("4x4", max_cores=16) == (4,) * 4
    with pytest.raises(GroupSizesError, match="more than 16 cores, the most the node has"):
        parse_group_sizes("4x4,1", max_cores=16)
    assert len(parse_group_sizes(f"{MAX_NODE_CORES}x1")) == MAX_NODE_CORES


@pytest.mark.parametrize(
    "value",
    ["2000000x1", "1x2000000", ",".join(["1000x1"] * 2000)],
    ids=["many-groups", "big-group", "repeated"],
)
def test_refused_without_expanding(value: str) -> None:
    tracemalloc.start()
    try:
        with pytest.raises(GroupSizesError):
            parse_group_sizes(value)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1024 * 1024, f"peak {peak} bytes"


def test_format_round_trips() -> None:
    assert format_group_sizes((2, 4, 6, 4)) == "2,4,6,4"
    assert parse_group_sizes(format_group_sizes((1, 3))) == (1, 3)
    with pytest.raises(ValueError, match="positive"):
        format_group_sizes(())


def test_split_into_groups_uses_consecutive_runs_in_order() -> None:
    assert split_into_groups((4, 5, 6, 7, 8, 9), (2, 4)) == [(4, 5), (6, 7, 8, 9)]
    assert split_into_groups((3, 1, 2), (1, 1)) == [(3,), (1,)]


def test_split_into_groups_refuses_too_many() -> None:
    with pytest.raises(ValueError, match="need 5 cores, but only 4 are visible"):
        split_into_groups((0, 1, 2, 3), (2, 3))
