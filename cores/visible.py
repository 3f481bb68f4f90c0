"""Core and device index lists: ``NEURON_RT_VISIBLE_CORES`` and ``AWS_NEURON_VISIBLE_DEVICES``.

Accepted forms are one index (``3``), an inclusive range (``4-7``), a comma list (``2,3,8``) and
any mixture of those (``0-3,8``).  The order given is kept, because the order of visible cores
is the order in which groups are carved out of them.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

VISIBLE_CORES_ENV = "NEURON_RT_VISIBLE_CORES"
VISIBLE_DEVICES_ENV = "AWS_NEURON_VISIBLE_DEVICES"

ACCEPTED_CORE_LIST_FORMS = (
    "one index '3', an inclusive range '4-7', a comma list '2,3,8', or a mixture '0-3,8'"
)


class CoreListError(ValueError):
    """A core or device list that cannot be read; the message quotes it and the accepted forms."""

    def __init__(self, value: str, problem: str, *, what: str = VISIBLE_CORES_ENV) -> None:
        self.value = value
        self.problem = problem
        super().__init__(
            f"{what}={value!r} is not valid: {problem}. "
            f"Accepted forms: {ACCEPTED_CORE_LIST_FORMS}. Fix the value or unset it."
        )


def _parse_index(text: str, value: str, what: str) -> int:
    if not text.isdigit():
        raise CoreListError(value, f"{text!r} is not a non-negative integer", what=what)
    return int(text)


def parse_core_list(value: str, *, what: str = VISIBLE_CORES_ENV) -> tuple[int, ...]:
    """Read ``3``, ``4-7``, ``2,3,8`` or a mixture into a tuple of indexes, in the given order."""
    text = value.strip()
    if not text:
        raise CoreListError(value, "it is empty", what=what)
    cores: list[int] = []
    for raw in text.split(","):
        part = raw.strip()
        if not part:
            raise CoreListError(value, "it has an empty entry between commas", what=what)
        if "-" in part:
            low_text, _, high_text = part.partition("-")
            low = _parse_index(low_text.strip(), value, what)
            high = _parse_index(high_text.strip(), value, what)
            if high < low:
                raise CoreListError(value, f"range {part!r} runs backwards", what=what)
            cores.extend(range(low, high + 1))
        else:
            cores.append(_parse_index(part, value, what))
    seen: set[int] = set()
    for core in cores:
        if core in seen:
            raise CoreListError(value, f"index {core} appears more than once", what=what)
        seen.add(core)
    return tuple(cores)


def contiguous_runs(indexes: Iterable[int]) -> list[tuple[int, int]]:
    """Sorted maximal runs of consecutive indexes as inclusive ``(first, last)`` pairs."""
    runs: list[tuple[int, int]] = []
    for index in sorted(set(indexes)):
        if runs and runs[-1][1] + 1 == index:
            runs[-1] = (runs[-1][0], index)
        else:
            runs.append((index, index))
    return runs


def is_contiguous(indexes: Sequence[int]) -> bool:
    """True when the indexes form one run of consecutive integers (in any order)."""
    return (
        len(indexes) > 0
        and len(contiguous_runs(indexes)) == 1
        and len(set(indexes)) == len(indexes)
    )


def format_core_list(indexes: Sequence[int]) -> str:
    """The range form ``4-7`` for one contiguous run (``3`` for one core), else a comma list."""
    if not indexes:
        raise ValueError("cannot format an empty core list")
    ordered = sorted(indexes)
    if is_contiguous(ordered):
        first, last = ordered[0], ordered[-1]
        return str(first) if first == last else f"{first}-{last}"
    return ",".join(str(i) for i in ordered)
