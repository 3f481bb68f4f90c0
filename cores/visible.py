"""Core and device index lists: ``NEURON_RT_VISIBLE_CORES`` and ``AWS_NEURON_VISIBLE_DEVICES``.

Accepted forms are one index (``3``), an inclusive range (``4-7``), a comma list (``2,3,8``) and
any mixture of those (``0-3,8``).  The order given is kept, because the order of visible cores
is the order in which groups are carved out of them.  Indexes are ASCII digits, and are checked
against the node's size before a range is expanded (see ``numbers``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from neuron_cores.numbers import MAX_NODE_CORES, quote, read_natural

VISIBLE_CORES_ENV = "NEURON_RT_VISIBLE_CORES"
VISIBLE_DEVICES_ENV = "AWS_NEURON_VISIBLE_DEVICES"

ACCEPTED_CORE_LIST_FORMS = (
    "one index '3', an inclusive range '4-7', a comma list '2,3,8', or a mixture '0-3,8'"
)


class CoreListError(ValueError):
    """A core or device list that cannot be read; the message quotes it and the accepted forms."""

    def __init__(
        self, value: str, problem: str, *, what: str = VISIBLE_CORES_ENV, off_node: bool = False
    ) -> None:
        self.value = value
        self.problem = problem
        self.off_node = off_node  # an index past the node's (or every node's) last core
        super().__init__(
            f"{what}={quote(value)} is not valid: {problem}. "
            f"Accepted forms: {ACCEPTED_CORE_LIST_FORMS}. Fix the value or unset it."
        )


def _node_text(node_cores: int | None) -> str:
    if node_cores is None:
        return f"beyond every Neuron node (none has more than {MAX_NODE_CORES} cores)"
    return f"outside the node, which has {node_cores} cores (0-{node_cores - 1})"


class _Reader:
    """One value being read: the bound, the indexes so far, and errors that quote the value."""

    def __init__(self, value: str, what: str, node_cores: int | None) -> None:
        self.value = value
        self.what = what
        self.node_cores = node_cores
        self.limit = MAX_NODE_CORES if node_cores is None else node_cores
        self.cores: list[int] = []
        self.seen: set[int] = set()

    def error(self, problem: str, *, off_node: bool = False) -> CoreListError:
        return CoreListError(self.value, problem, what=self.what, off_node=off_node)

    def index(self, text: str) -> int:
        number = read_natural(text)
        if number is None:
            raise self.error(f"{quote(text)} is not a non-negative integer (digits 0-9)")
        if number >= self.limit:
            raise self.error(f"core {quote(text)} is {_node_text(self.node_cores)}", off_node=True)
        return number

    def add(self, first: int, last: int, part: str) -> None:
        """Append ``first..last``; both are already known to be on the node, so this is bounded."""
        if last < first:
            raise self.error(f"range {quote(part)} runs backwards")
        for core in range(first, last + 1):
            if core in self.seen:
                raise self.error(f"index {core} appears more than once")
            self.seen.add(core)
            self.cores.append(core)


def parse_core_list(
    value: str, *, what: str = VISIBLE_CORES_ENV, node_cores: int | None = None
) -> tuple[int, ...]:
    """Read ``3``, ``4-7``, ``2,3,8`` or a mixture into a tuple of indexes, in the given order.

    Every index must be below ``node_cores`` (or ``MAX_NODE_CORES`` when the node's size is not
    known) and appear once; both are checked before a range is expanded, so the result never
    holds more than that many indexes whatever the value says.
    """
    text = value.strip()
    if not text:
        raise CoreListError(value, "it is empty", what=what)
    if node_cores is not None and not 0 < node_cores <= MAX_NODE_CORES:
        raise ValueError(f"node_cores must be from 1 to {MAX_NODE_CORES}, got {node_cores}")
    reader = _Reader(value, what, node_cores)
    for raw in text.split(","):
        part = raw.strip()
        if not part:
            raise reader.error("it has an empty entry between commas")
        if "-" in part:
            low_text, _, high_text = part.partition("-")
            low = reader.index(low_text.strip())
            high = reader.index(high_text.strip())
            reader.add(low, high, part)
        else:
            core = reader.index(part)
            reader.add(core, core, part)
    return tuple(reader.cores)


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
