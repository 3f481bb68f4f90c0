"""The load-order rule: the k-th model a process loads goes to NeuronCore Group k mod n.

The runtime applies the rule as it loads (counting from 0, the first n models fill the groups in
order and later ones wrap around into the same groups again, the seed's rule).  The operator
applies it backwards: it has planned which copies each group holds and must write them into
``NEURON_MODELS`` in the order that makes the runtime put them there, and it must know which
plans no order can produce.  Both sides use ``load_group``, so the two cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

T = TypeVar("T")

RULE = "the k-th model loaded goes to group k mod n"


class LoadOrderError(ValueError):
    """Groups whose model counts no load order can produce under the rule."""


def load_group(k: int, groups: int) -> int:
    """The group (0-based) that the ``k``-th model loaded (0-based) goes to."""
    if groups < 1 or k < 0:
        raise ValueError(f"need k >= 0 and at least one group, got k={k}, groups={groups}")
    return k % groups


def loads_per_group(loads: int, groups: int) -> tuple[int, ...]:
    """How many models each of ``groups`` groups holds after ``loads`` loads."""
    counts = [0] * groups
    for k in range(loads):
        counts[load_group(k, groups)] += 1
    return tuple(counts)


def can_load(counts: Sequence[int]) -> bool:
    """Whether groups holding ``counts[g]`` models each can be filled by the rule."""
    return tuple(counts) == loads_per_group(sum(counts), len(counts))


def load_order(members: Sequence[Sequence[T]]) -> list[T]:
    """The order to load models so that group g ends up holding ``members[g]``, in that order.

    Raises ``LoadOrderError`` when the rule cannot produce these groups: their counts must not
    grow from one group to the next and may differ by at most one.
    """
    counts = [len(m) for m in members]
    if not can_load(counts):
        possible = list(loads_per_group(sum(counts), len(counts)))
        raise LoadOrderError(
            f"groups holding {counts} models cannot be loaded in any order, because {RULE}: "
            f"the counts must not grow from group to group and may differ by one at most "
            f"(for {sum(counts)} models in {len(counts)} groups: {possible}); order the groups "
            f"by model count or split them into processes of equal counts"
        )
    taken = [0] * len(members)
    order: list[T] = []
    for k in range(sum(counts)):
        group = load_group(k, len(members))
        order.append(members[group][taken[group]])
        taken[group] += 1
    return order
