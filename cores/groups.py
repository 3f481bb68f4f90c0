"""``NEURONCORE_GROUP_SIZES``: how a process splits its visible cores into NeuronCore Groups.

Forms accepted, as seen in Neuron 1.x and TensorFlow-Neuron: ``2,4,6,4``, ``[1,2,1]`` and
``AxB`` (A groups of B cores, such as ``16x1``), also inside a list (``[2x1,4]``).  Groups are
consecutive runs of the visible cores, created in order.  Counts are ASCII digits, and the total
is bounded before ``AxB`` is expanded (see ``numbers``).
"""

from __future__ import annotations

from collections.abc import Sequence

from neuron_cores.numbers import MAX_NODE_CORES, quote, read_natural

GROUP_SIZES_ENV = "NEURONCORE_GROUP_SIZES"

ACCEPTED_GROUP_SIZE_FORMS = (
    "a comma list of positive core counts '2,4,6,4', the same in brackets '[1,2,1]', "
    "or 'AxB' for A groups of B cores '16x1', also inside a list '[2x1,4]'"
)


class GroupSizesError(ValueError):
    """A ``NEURONCORE_GROUP_SIZES`` value that cannot be read."""

    def __init__(self, value: str, problem: str) -> None:
        self.value = value
        self.problem = problem
        super().__init__(
            f"{GROUP_SIZES_ENV}={quote(value)} is not valid: {problem}. "
            f"Accepted forms: {ACCEPTED_GROUP_SIZE_FORMS}."
        )


def _positive(text: str, value: str) -> int:
    number = read_natural(text)
    if number is None or number == 0:
        raise GroupSizesError(value, f"{quote(text)} is not a positive integer (digits 0-9)")
    return number


def _too_many(value: str, max_cores: int) -> GroupSizesError:
    node = "any Neuron node" if max_cores == MAX_NODE_CORES else "the node"
    return GroupSizesError(
        value, f"its groups need more than {max_cores} cores, the most {node} has"
    )


def parse_group_sizes(value: str, *, max_cores: int = MAX_NODE_CORES) -> tuple[int, ...]:
    """Read a ``NEURONCORE_GROUP_SIZES`` value into a tuple of group sizes, in order.

    The groups together may not need more than ``max_cores`` cores (by default the most any
    Neuron node has); that is checked before ``AxB`` is expanded, so ``99999999x1`` is refused
    without building a hundred million entries.  Whether the node itself has enough cores is the
    caller's question (the runtime answers it with ``ResourceExhaustedError``).
    """
    text = value.strip()
    if text.startswith("[") != text.endswith("]"):
        raise GroupSizesError(value, "its brackets are unbalanced")
    if text.startswith("["):
        text = text[1:-1].strip()
    if not text:
        raise GroupSizesError(value, "it lists no group")
    sizes: list[int] = []
    total = 0
    for raw in text.split(","):
        part = raw.strip().lower()
        if not part:
            raise GroupSizesError(value, "it has an empty entry between commas")
        if "x" in part:
            count_text, _, size_text = part.partition("x")
            count = _positive(count_text.strip(), value)
            size = _positive(size_text.strip(), value)
        else:
            count, size = 1, _positive(part, value)
        total += count * size
        if total > max_cores:
            raise _too_many(value, max_cores)
        sizes.extend([size] * count)
    return tuple(sizes)


def format_group_sizes(sizes: Sequence[int]) -> str:
    """The plain comma form, ``2,4,6,4``: the one every Neuron release reads."""
    if not sizes or any(s <= 0 for s in sizes):
        raise ValueError(f"group sizes must be a non-empty list of positive counts, got {sizes!r}")
    return ",".join(str(s) for s in sizes)


def split_into_groups(visible: Sequence[int], sizes: Sequence[int]) -> list[tuple[int, ...]]:
    """Carve consecutive runs of ``visible`` (in its order) into groups of ``sizes``.

    Raises ``ValueError`` when the sizes need more cores than are visible; callers turn that into
    their own richer error (the runtime's ResourceExhaustedError, the operator's status).
    """
    needed = sum(sizes)
    if needed > len(visible):
        raise ValueError(
            f"group sizes {format_group_sizes(sizes)} need {needed} cores, "
            f"but only {len(visible)} are visible"
        )
    groups: list[tuple[int, ...]] = []
    start = 0
    for size in sizes:
        groups.append(tuple(visible[start : start + size]))
        start += size
    return groups
