"""Which copy of a model takes the next request: the one whose NeuronCore Group is least loaded.

A model listed several times is loaded several times, each copy landing in its own group (the
seed's load-order rule).  Load is counted per *group*, not per copy, because a group is shared by
every model loaded into it: a copy sitting in a group that is busy with another model's requests is
not a good choice even if that copy itself is idle.  Ties go round-robin so that an idle server
spreads its first requests instead of piling them onto group 0.

This module only counts; the runtime's own switch-aware scheduler still orders the requests that
meet inside one group.  No I/O and no asyncio here, so the policy is tested as plain data.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Generic, Protocol, TypeVar


class Grouped(Protocol):
    @property
    def group(self) -> int: ...


C = TypeVar("C", bound=Grouped)


class GroupLoad:
    """In-flight request counts per group, shared by every model's router."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._in_flight: dict[int, int] = {}

    def in_flight(self, group: int) -> int:
        return self._in_flight.get(group, 0)

    def total(self) -> int:
        with self._lock:
            return sum(self._in_flight.values())

    def snapshot(self) -> dict[int, int]:
        with self._lock:
            return dict(self._in_flight)

    def choose_and_acquire(self, copies: Sequence[C], start: int) -> C:
        """Atomically pick the least-loaded copy (ties: first from ``start`` on) and count it."""
        with self._lock:
            best = copies[start % len(copies)]
            best_load = self._in_flight.get(best.group, 0)
            for step in range(1, len(copies)):
                candidate = copies[(start + step) % len(copies)]
                load = self._in_flight.get(candidate.group, 0)
                if load < best_load:
                    best, best_load = candidate, load
            self._in_flight[best.group] = best_load + 1
            return best

    def release(self, group: int) -> None:
        with self._lock:
            self._in_flight[group] = self._in_flight.get(group, 0) - 1


class ModelRouter(Generic[C]):
    """The copies of one model and the shared group load they are chosen by."""

    def __init__(self, copies: Sequence[C], load: GroupLoad) -> None:
        if not copies:
            raise ValueError("a model router needs at least one copy")
        self.copies = tuple(copies)
        self._load = load
        self._next = 0

    @contextmanager
    def route(self) -> Iterator[C]:
        start = self._next
        self._next = (start + 1) % len(self.copies)
        chosen = self._load.choose_and_acquire(self.copies, start)
        try:
            yield chosen
        finally:
            self._load.release(chosen.group)
