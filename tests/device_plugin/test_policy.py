from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from neuron_cores import contiguous_runs, is_contiguous
from neuron_device_plugin.policy import (
    POLICIES,
    AllocationRequestError,
    best_fit,
    first_fit,
    lookup_policy,
)

# (available, must_include, size, best-fit answer, first-fit answer)
CASES = [
    (range(16), [], 4, (0, 1, 2, 3), (0, 1, 2, 3)),
    # Free runs 0-1 (2), 4-9 (6), 12-14 (3): best-fit keeps the 6-run whole for a 3.
    ([0, 1, 4, 5, 6, 7, 8, 9, 12, 13, 14], [], 3, (12, 13, 14), (4, 5, 6)),
    ([0, 1, 4, 5, 6, 7, 8, 9, 12, 13, 14], [], 2, (0, 1), (0, 1)),
    ([0, 1, 4, 5, 6, 7, 8, 9, 12, 13, 14], [], 5, (4, 5, 6, 7, 8), (4, 5, 6, 7, 8)),
    # Must-include 7 inside run 4-9: flush with an end of the run, so one piece is left.
    ([0, 1, 4, 5, 6, 7, 8, 9], [7], 3, (7, 8, 9), (5, 6, 7)),
    ([0, 1, 4, 5, 6, 7, 8, 9], [5], 2, (4, 5), (4, 5)),
    # Must-include pinning the window in the middle: keep the longer leftover whole.
    (range(10), [2, 3], 2, (2, 3), (2, 3)),
    (range(10), [6], 1, (6,), (6,)),
    # No run long enough: the 3-run whole, then the remainder best-fit (the 1-run, not the 2-run).
    ([0, 2, 3, 5, 6, 7], [], 4, (0, 5, 6, 7), (0, 5, 6, 7)),
    ([0, 2, 3, 5, 6, 7], [0], 4, (0, 5, 6, 7), (0, 5, 6, 7)),
    # Must-include in two different runs: no contiguous answer exists.
    ([0, 1, 3, 4], [1, 3], 3, (0, 1, 3), (0, 1, 3)),
    # Single device indexes of a ring of 16: contiguous device run.
    ([2, 3, 4, 9, 10], [], 2, (9, 10), (2, 3)),
]
CASE_IDS = [
    "empty-node",
    "keeps-long-run-whole",
    "exact-fit",
    "only-long-run-fits",
    "must-include-flush-right",
    "must-include-flush-left",
    "must-include-exact",
    "single-core-must",
    "fallback-fewest-pieces",
    "fallback-with-must",
    "must-in-two-runs",
    "devices",
]


@pytest.mark.parametrize(("available", "must", "size", "best", "first"), CASES, ids=CASE_IDS)
def test_policies(
    available: range | list[int],
    must: list[int],
    size: int,
    best: tuple[int, ...],
    first: tuple[int, ...],
) -> None:
    assert best_fit(list(available), must, size) == best
    assert first_fit(list(available), must, size) == first


@pytest.mark.parametrize(
    ("available", "must", "size", "message"),
    [
        ([0, 1], [5], 1, "must-include indexes \\[5\\]"),
        ([0, 1], list(range(5, 10_005)), 1, r"indexes \[5, 6, 7, 8, 9 and 9,995 more\] are not"),
        ([0, 1, 2], [0, 1], 1, "smaller than the 2 must-include"),
        ([0, 1], [], 3, "between 1 and the 2 available"),
        ([0, 1], [], 0, "between 1 and the 2 available"),
    ],
    ids=[
        "must-not-available",
        "many-must-not-available-counted",
        "size-below-must",
        "size-above-available",
        "size-zero",
    ],
)
@pytest.mark.parametrize("policy", sorted(POLICIES), ids=sorted(POLICIES))
def test_bad_requests_name_the_problem(
    policy: str, available: list[int], must: list[int], size: int, message: str
) -> None:
    with pytest.raises(AllocationRequestError, match=message):
        POLICIES[policy](available, must, size)


def test_unknown_policy_lists_the_known_ones() -> None:
    with pytest.raises(ValueError, match="best-fit, first-fit"):
        lookup_policy("round-robin")


@st.composite
def requests(draw: st.DrawFn) -> tuple[list[int], list[int], int]:
    available = sorted(draw(st.sets(st.integers(0, 40), min_size=1, max_size=30)))
    must = draw(st.lists(st.sampled_from(available), unique=True, max_size=3))
    size = draw(st.integers(max(1, len(must)), len(available)))
    return available, must, size


@given(requests())
@pytest.mark.parametrize("policy", sorted(POLICIES), ids=sorted(POLICIES))
def test_policy_invariants(policy: str, request: tuple[list[int], list[int], int]) -> None:
    available, must, size = request
    chosen = POLICIES[policy](available, must, size)
    assert len(chosen) == size
    assert len(set(chosen)) == size
    assert set(must) <= set(chosen) <= set(available)
    assert list(chosen) == sorted(chosen)
    # Whenever one free run can hold the request with its must-include cores, the answer is one run.
    feasible = any(
        last - first + 1 >= size
        and all(first <= m <= last for m in must)
        and (not must or max(must) - min(must) < size)
        for first, last in contiguous_runs(available)
    )
    if feasible:
        assert is_contiguous(chosen)


@given(requests())
def test_best_fit_never_uses_a_longer_run_than_needed(
    request: tuple[list[int], list[int], int],
) -> None:
    available, _, size = request
    chosen = best_fit(available, [], size)
    fitting = [
        last - first + 1 for first, last in contiguous_runs(available) if last - first + 1 >= size
    ]
    if fitting:
        run = next(r for r in contiguous_runs(available) if r[0] <= chosen[0] <= r[1])
        assert run[1] - run[0] + 1 == min(fitting)
