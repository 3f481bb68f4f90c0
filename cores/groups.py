"""``NEURONCORE_GROUP_SIZES``: how a process splits its visible cores into NeuronCore Groups.

Forms accepted, as seen in Neuron 1.x and TensorFlow-Neuron: ``2,4,6,4``, ``[1,2,1]`` and
``AxB`` (A groups of B cores, such as ``16x1``), also inside a list (``[2x1,4]``).  Groups are
consecutive runs of the visible cores, created in order.
"""

from __future__ import annotations

from collections.abc import Sequence

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
            f"{GROUP_SIZES_ENV}={value!r} is not valid: {problem}. "
            f"Accepted forms: {ACCEPTED_GROUP_SIZE_FORMS}."
        )


def _positive(text: str, value: str) -> int:
    if not text.isdigit() or int(text) == 0:
        raise GroupSizesError(value, f"{text!r} is not a positive integer")
    return int(text)


def parse_group_sizes(value: str) -> tuple[int, ...]:
    """Read a ``NEURONCORE_GROUP_SIZES`` value into a tuple of group sizes, in order."""
    text = value.strip()
    if text.startswith("[") != text.endswith("]"):
        raise GroupSizesError(value, "its brackets are unbalanced")
    if text.startswith("["):
        text = text[1:-1].strip()
    if not text:
        raise GroupSizesError(value, "it lists no group")
    sizes: list[int] = []
    for raw in text.split(","):
        part = raw.strip().lower()
        if not part:
            raise GroupSizesError(value, "it has an empty entry between commas")
        if "x" in part:
            count_text, _, size_text = part.partition("x")
            count = _positive(count_text.strip(), value)
            size = _positive(size_text.strip(), value)
            sizes.extend([size] * count)
        else:
            sizes.append(_positive(part, value))
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
