"""Allocation policies: which free indexes to hand a container, as pure functions.

Every Neuron group must be a contiguous run of cores (and multi-device requests need contiguous
device indexes, because devices form a ring), or the runtime fails with "MLA logical Ids must be
contiguous".  The kubelet asks the plugin for a preference through GetPreferredAllocation; these
functions answer it.  Each takes the free indexes, the indexes the kubelet insists on, and a size,
and returns the indexes to use, sorted.

``best-fit`` takes the window from the *smallest* free run that can hold the request, flush against
one end of it, so long free runs stay whole for the multi-core groups that need them.  ``first-fit``
takes the lowest window that fits, the plain policy most allocators use, kept as the baseline the
benchmark compares against.  When no single run is long enough, both fall back to few pieces: whole
runs, longest first, until the remainder fits one run, taken best-fit.
"""

from __future__ import annotations

from collections.abc import Callable, Collection

from neuron_cores import contiguous_runs
from neuron_device_plugin.ids import describe_values

Policy = Callable[[Collection[int], Collection[int], int], tuple[int, ...]]


class AllocationRequestError(ValueError):
    """A request that no policy can answer: wrong size, or must-include outside available."""


def _check(available: Collection[int], must_include: Collection[int], size: int) -> None:
    if size <= 0 or size > len(set(available)):
        raise AllocationRequestError(
            f"allocation size {size} must be between 1 and the {len(set(available))} available"
        )
    missing = sorted(set(must_include) - set(available))
    if missing:
        raise AllocationRequestError(
            f"must-include indexes [{describe_values(missing)}] are not among the available ones"
        )
    if size < len(set(must_include)):
        raise AllocationRequestError(
            f"allocation size {size} is smaller than the {len(set(must_include))} "
            "must-include indexes"
        )


def _window_starts(run: tuple[int, int], must_include: Collection[int], size: int) -> range:
    """Every start of a ``size`` window inside ``run`` that covers ``must_include`` (maybe none)."""
    first, last = run
    low, high = first, last - size + 1
    if must_include:
        low = max(low, max(must_include) - size + 1)
        high = min(high, *must_include)
    return range(low, high + 1)


def _leftover_key(run: tuple[int, int], start: int, size: int) -> tuple[int, int, int]:
    """Order windows by what they leave: fewer pieces, then the longest piece, then start."""
    first, last = run
    pieces = [start - first, last - (start + size - 1)]
    return (sum(1 for p in pieces if p > 0), -max(pieces), start)


def _fewest_pieces(
    available: Collection[int], must_include: Collection[int], size: int
) -> tuple[int, ...]:
    """No single run fits: take whole runs, longest first, until the rest fits one run best."""
    chosen = set(must_include)
    free = sorted(set(available) - chosen)
    while len(chosen) < size:
        need = size - len(chosen)
        runs = contiguous_runs(free)
        fitting = [r for r in runs if r[1] - r[0] + 1 >= need]
        if fitting:
            first = min(fitting, key=lambda r: (r[1] - r[0], r[0]))[0]
            chosen.update(range(first, first + need))
            break
        first, last = max(runs, key=lambda r: (r[1] - r[0], -r[0]))
        chosen.update(range(first, last + 1))
        free = [i for i in free if not first <= i <= last]
    return tuple(sorted(chosen))


def best_fit(
    available: Collection[int], must_include: Collection[int], size: int
) -> tuple[int, ...]:
    _check(available, must_include, size)
    runs = sorted(contiguous_runs(available), key=lambda r: (r[1] - r[0], r[0]))
    for run in runs:
        starts = _window_starts(run, must_include, size)
        if starts:
            start = min(starts, key=lambda s: _leftover_key(run, s, size))
            return tuple(range(start, start + size))
    return _fewest_pieces(available, must_include, size)


def first_fit(
    available: Collection[int], must_include: Collection[int], size: int
) -> tuple[int, ...]:
    _check(available, must_include, size)
    for run in contiguous_runs(available):
        starts = _window_starts(run, must_include, size)
        if starts:
            return tuple(range(starts[0], starts[0] + size))
    return _fewest_pieces(available, must_include, size)


POLICIES: dict[str, Policy] = {"best-fit": best_fit, "first-fit": first_fit}
DEFAULT_POLICY = "best-fit"


def lookup_policy(name: str) -> Policy:
    try:
        return POLICIES[name]
    except KeyError:
        known = ", ".join(sorted(POLICIES))
        raise ValueError(
            f"allocation policy {name!r} is not known; choose one of: {known}"
        ) from None
