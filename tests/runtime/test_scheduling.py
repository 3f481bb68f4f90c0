import itertools
from collections import deque

import pytest

from neuron_runtime.scheduling import FifoPolicy, SwitchAwarePolicy, Waiting, make_policy


def W(model: str, oldest: int, count: int = 1) -> Waiting:  # noqa: N802 - table shorthand
    return Waiting(model, oldest, count)


@pytest.mark.parametrize(
    ("waiting", "current", "resident", "streak", "expected"),
    [
        ([], "a", {"a"}, 0, None),
        ([W("a", 5)], "a", {"a"}, 0, "a"),
        ([W("a", 5), W("b", 1)], "a", {"a"}, 0, "a"),
        ([W("a", 5), W("b", 1)], "a", {"a"}, 3, "b"),
        ([W("a", 5)], "a", {"a"}, 99, "a"),
        ([W("b", 4), W("c", 2)], "a", {"a"}, 0, "c"),
        ([W("a", 5), W("b", 1)], "a", {"a", "b"}, 0, "b"),
        ([W("a", 1), W("b", 5)], None, set(), 0, "a"),
        ([W("a", 5, 0), W("b", 7)], "a", {"a"}, 0, "b"),
    ],
    ids=[
        "nothing-waits", "only-running", "keep-running-model", "streak-bound-reached",
        "no-other-waits-no-bound", "pick-oldest-other", "both-resident-fifo", "cold-start",
        "empty-queue-ignored",
    ],
)  # fmt: skip
def test_switch_aware_choose(
    waiting: list[Waiting], current: str | None, resident: set[str], streak: int,
    expected: str | None,
) -> None:  # fmt: skip
    policy = SwitchAwarePolicy(max_streak=3)
    for _ in range(streak):
        policy.dispatched("a")
    assert policy.choose(waiting, current, resident) == expected


@pytest.mark.parametrize(
    ("waiting", "expected"),
    [([], None), ([W("a", 5), W("b", 1)], "b"), ([W("a", 2), W("b", 3)], "a")],
    ids=["nothing", "oldest-b", "oldest-a"],
)
def test_fifo_choose(waiting: list[Waiting], expected: str | None) -> None:
    assert FifoPolicy().choose(waiting, "a", {"a"}) == expected


def _simulate(policy_name: str, arrivals: list[str], max_streak: int = 4) -> list[str]:
    """Serve a queue where every request is already waiting; return the service order."""
    policy = make_policy(policy_name, max_streak)
    queues: dict[str, deque[int]] = {}
    for seq, model in enumerate(arrivals):
        queues.setdefault(model, deque()).append(seq)
    order: list[str] = []
    current: str | None = None
    while any(queues.values()):
        waiting = [Waiting(m, q[0], len(q)) for m, q in queues.items() if q]
        choice = policy.choose(waiting, current, {current} if current else set())
        assert choice is not None
        queues[choice].popleft()
        policy.dispatched(choice)
        order.append(choice)
        current = choice
    return order


def _switches(order: list[str]) -> int:
    return sum(1 for a, b in itertools.pairwise(order) if a != b)


@pytest.mark.parametrize(
    ("policy", "switches"),
    [("fifo", 39), ("switch-aware", 9)],
    ids=["fifo-switches-every-request", "switch-aware-amortises"],
)
def test_interleaved_burst_switch_counts(policy: str, switches: int) -> None:
    order = _simulate(policy, ["a", "b"] * 20, max_streak=4)
    assert len(order) == 40
    assert _switches(order) == switches


def test_no_model_starves_under_a_steady_stream() -> None:
    """Model a keeps receiving requests; b's single request is served within max_streak."""
    policy = SwitchAwarePolicy(max_streak=5)
    served_before_b = 0
    current = "a"
    for step in range(100):
        waiting = [W("a", 1000 + step, 10), W("b", 0)]
        choice = policy.choose(waiting, current, {current})
        policy.dispatched(str(choice))
        if choice == "b":
            break
        served_before_b += 1
    assert choice == "b"
    assert served_before_b <= 5


def test_policy_names_and_bad_values() -> None:
    assert make_policy("fifo", 1).name == "fifo"
    assert make_policy("switch-aware", 2).name == "switch-aware"
    with pytest.raises(ValueError, match="unknown scheduler 'x'"):
        make_policy("x", 1)
    with pytest.raises(ValueError, match="at least 1"):
        SwitchAwarePolicy(0)
