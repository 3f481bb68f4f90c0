"""The load-order rule: the k-th model loaded goes to group k mod n, forwards and backwards."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from neuron_cores import LoadOrderError, can_load, load_group, load_order, loads_per_group

LOAD_GROUPS = [
    ("first-fills-group-0", 0, 3, 0),
    ("in-order", 2, 3, 2),
    ("wraps-around", 3, 3, 0),
    ("second-round", 5, 3, 2),
    ("one-group", 7, 1, 0),
]


@pytest.mark.parametrize(
    ("k", "groups", "expected"), [c[1:] for c in LOAD_GROUPS], ids=[c[0] for c in LOAD_GROUPS]
)
def test_load_group(k: int, groups: int, expected: int) -> None:
    assert load_group(k, groups) == expected


@pytest.mark.parametrize(("k", "groups"), [(0, 0), (-1, 2)], ids=["no-groups", "negative-k"])
def test_load_group_refuses_impossible_loads(k: int, groups: int) -> None:
    with pytest.raises(ValueError, match=f"k={k}, groups={groups}"):
        load_group(k, groups)


COUNTS = [
    ("none", 0, 3, (0, 0, 0)),
    ("one-each", 3, 3, (1, 1, 1)),
    ("first-groups-one-more", 5, 3, (2, 2, 1)),
    ("no-groups", 0, 0, ()),
]


@pytest.mark.parametrize(
    ("loads", "groups", "expected"), [c[1:] for c in COUNTS], ids=[c[0] for c in COUNTS]
)
def test_loads_per_group(loads: int, groups: int, expected: tuple[int, ...]) -> None:
    assert loads_per_group(loads, groups) == expected


CAN_LOAD = [
    ("even", [2, 2], True),
    ("one-more-first", [3, 2, 2], True),
    ("empty", [], True),
    ("one-more-last", [2, 3], False),
    ("two-more", [3, 1], False),
    ("gap-in-the-middle", [2, 1, 2], False),
]


@pytest.mark.parametrize(
    ("counts", "expected"), [c[1:] for c in CAN_LOAD], ids=[c[0] for c in CAN_LOAD]
)
def test_can_load(counts: list[int], expected: bool) -> None:
    assert can_load(counts) is expected


ORDERS = [
    ("one-per-group", [["a"], ["b"], ["c"]], ["a", "b", "c"]),
    ("second-round", [["a", "x"], ["b", "y"]], ["a", "b", "x", "y"]),
    ("one-more-first", [["a", "x"], ["b"]], ["a", "b", "x"]),
    ("nothing", [], []),
]


@pytest.mark.parametrize(
    ("members", "expected"), [c[1:] for c in ORDERS], ids=[c[0] for c in ORDERS]
)
def test_load_order(members: list[list[str]], expected: list[str]) -> None:
    assert load_order(members) == expected


def test_load_order_refusal_names_the_counts_the_rule_and_what_would_work() -> None:
    with pytest.raises(LoadOrderError) as caught:
        load_order([["a"], ["b", "y", "z"]])
    message = str(caught.value)
    assert "groups holding [1, 3] models" in message
    assert "k mod n" in message
    assert re.search(r"for 4 models in 2 groups: \[2, 2\]", message)
    assert "split them into processes" in message


@given(st.integers(0, 40), st.integers(1, 8))
def test_loading_in_the_order_rebuilds_the_groups(loads: int, groups: int) -> None:
    members = [
        [f"g{g}m{i}" for i in range(count)]
        for g, count in enumerate(loads_per_group(loads, groups))
    ]
    rebuilt: list[list[str]] = [[] for _ in members]
    for k, model in enumerate(load_order(members)):
        rebuilt[load_group(k, groups)].append(model)
    assert rebuilt == members
