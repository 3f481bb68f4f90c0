"""Least-loaded routing over a model's copies, with load counted per NeuronCore Group."""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import dataclass

import pytest

from neuron_runtime.serving.router import GroupLoad, ModelRouter


@dataclass(frozen=True)
class Copy:
    name: str
    group: int


@pytest.mark.parametrize(
    ("groups", "busy", "final"),
    [
        ((0, 1, 2), {}, {0: 2, 1: 2, 2: 2}),
        ((0, 1), {0: 3}, {0: 4, 1: 5}),
        ((0, 1, 2), {1: 1}, {0: 2, 1: 2, 2: 3}),
        ((5,), {5: 9}, {5: 15}),
    ],
    ids=["idle-spreads-evenly", "busy-group-avoided", "one-busy-of-three", "single-copy"],
)
def test_each_request_goes_to_a_least_loaded_group(
    groups: tuple[int, ...], busy: dict[int, int], final: dict[int, int]
) -> None:
    load = GroupLoad()
    for group, count in busy.items():
        for _ in range(count):
            load.choose_and_acquire([Copy("other", group)], 0)
    router = ModelRouter([Copy("m", g) for g in groups], load)
    with ExitStack() as held:  # every request stays in flight until the end
        for _ in range(6):
            before = load.snapshot()
            chosen = held.enter_context(router.route()).group
            assert before.get(chosen, 0) == min(before.get(g, 0) for g in groups)
        assert load.snapshot() == final
    assert load.snapshot() == {g: busy.get(g, 0) for g in final}


def test_idle_copies_take_turns() -> None:
    router = ModelRouter([Copy("m", g) for g in (0, 1, 2)], GroupLoad())
    chosen = []
    for _ in range(6):
        with router.route() as copy:  # released at once: every group is idle each time
            chosen.append(copy.group)
    assert chosen == [0, 1, 2, 0, 1, 2]


def test_other_models_in_the_same_group_count() -> None:
    load = GroupLoad()
    a = ModelRouter([Copy("a", 0), Copy("a", 1)], load)
    b = ModelRouter([Copy("b", 0)], load)
    with b.route(), b.route(), a.route() as first:
        assert first.group == 1
        with a.route() as second:
            assert second.group == 1  # group 0 holds two of b's requests
    assert load.total() == 0


def test_release_happens_on_error() -> None:
    load = GroupLoad()
    router = ModelRouter([Copy("m", 3)], load)
    with pytest.raises(RuntimeError), router.route():
        raise RuntimeError("boom")
    assert load.in_flight(3) == 0


def test_router_needs_a_copy() -> None:
    with pytest.raises(ValueError, match="at least one copy"):
        ModelRouter([], GroupLoad())
