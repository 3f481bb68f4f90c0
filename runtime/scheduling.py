"""Which model a NeuronCore Group serves next: the scheduling policies, pure and unit-tested.

A group runs one model at a time.  Serving a model whose weights are not resident costs a
context switch (weights swapped in, pipeline drained), so serving requests strictly in arrival
order wastes most of the group's time on switches when two models' requests interleave.

``SwitchAwarePolicy`` keeps serving the model that is running while it has queued requests, so a
switch is paid once per run of requests rather than once per request, and bounds that run
(``max_streak`` dispatches) so a model that keeps receiving requests cannot starve the others:
once the bound is reached and another model waits, the model whose oldest request is oldest is
served next.  When the oldest waiting request belongs to a model that is already resident, the
switch costs nothing, and plain arrival order is kept.

``FifoPolicy`` is the naive peer: arrival order, a switch whenever consecutive requests differ.
The policies see only ``Waiting`` summaries and never touch queues, processes or clocks.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class Waiting:
    """One model's queue as a policy sees it."""

    model: str
    oldest: int  # arrival sequence number of its oldest queued request (lower = earlier)
    count: int


class SchedulingPolicy(Protocol):
    name: str

    def choose(
        self, waiting: Sequence[Waiting], current: str | None, resident: Collection[str]
    ) -> str | None:
        """The model to dispatch next, or None when nothing waits."""
        ...

    def dispatched(self, model: str) -> None:
        """Told after each dispatch, so the policy can count streaks."""
        ...


def _oldest(waiting: Sequence[Waiting]) -> Waiting:
    return min(waiting, key=lambda w: (w.oldest, w.model))


class FifoPolicy:
    """Strict arrival order across models."""

    name = "fifo"

    def choose(
        self, waiting: Sequence[Waiting], current: str | None, resident: Collection[str]
    ) -> str | None:
        live = [w for w in waiting if w.count > 0]
        return _oldest(live).model if live else None

    def dispatched(self, model: str) -> None:
        return None


class SwitchAwarePolicy:
    """Serve the running model's queue first, at most ``max_streak`` in a row while others wait."""

    name = "switch-aware"

    def __init__(self, max_streak: int = 32) -> None:
        if max_streak < 1:
            raise ValueError(f"max_streak must be at least 1, got {max_streak}")
        self.max_streak = max_streak
        self.streak_model: str | None = None
        self.streak = 0

    def choose(
        self, waiting: Sequence[Waiting], current: str | None, resident: Collection[str]
    ) -> str | None:
        live = [w for w in waiting if w.count > 0]
        if not live:
            return None
        oldest = _oldest(live)
        if oldest.model in resident:
            return oldest.model  # no switch either way: keep arrival order
        others = [w for w in live if w.model != current]
        running = any(w.model == current for w in live)
        streak = self.streak if self.streak_model == current else 0
        if running and (not others or streak < self.max_streak):
            return current
        return _oldest(others).model

    def dispatched(self, model: str) -> None:
        if model == self.streak_model:
            self.streak += 1
        else:
            self.streak_model, self.streak = model, 1


def make_policy(name: str, max_streak: int) -> SchedulingPolicy:
    if name == "fifo":
        return FifoPolicy()
    if name == "switch-aware":
        return SwitchAwarePolicy(max_streak)
    raise ValueError(f"unknown scheduler {name!r}; known: switch-aware, fifo")
