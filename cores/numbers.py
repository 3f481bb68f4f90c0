"""Whole numbers in Neuron's variables: ASCII digits only, bounded before anything is built.

``str.isdigit()`` and ``int()`` accept more than Neuron does: ``'٣'`` (Arabic-Indic three) passes
both and reads as 3, and ``'³'`` passes ``isdigit()`` and then makes ``int()`` raise.  Neuron's
own runtime reads these variables with C's ``strtol``, which takes ``0``-``9`` only, so a value
that the real runtime would refuse must not mean a core here.

Numbers are bounded because a count is about to become a list: ``0-99999999`` or
``99999999x1`` would otherwise be expanded into a hundred million entries before any check on
the node's size.  ``MAX_NODE_CORES`` is the ceiling when the caller does not know the node.
"""

from __future__ import annotations

# The largest Neuron instance today (trn2.48xlarge) has 128 physical NeuronCores; this leaves
# room for larger ones while keeping any expansion small.
MAX_NODE_CORES = 1024

# More significant digits than this is far beyond every bound used here; int() never reads them.
_MAX_DIGITS = 18
_TOO_LARGE: int = 10**_MAX_DIGITS


def is_ascii_digits(text: str) -> bool:
    """True for a non-empty string of the digits 0-9 and nothing else."""
    return text.isascii() and text.isdigit()


def read_natural(text: str) -> int | None:
    """The value of a string of ASCII digits, else None.

    Values longer than 18 significant digits come back as ``10**18``, which exceeds every
    bound a caller checks against, so a megabyte of digits costs nothing to refuse.
    """
    if not is_ascii_digits(text):
        return None
    significant = text.lstrip("0")
    if len(significant) > _MAX_DIGITS:
        return _TOO_LARGE
    return int(text)


# Error messages quote the bad value; a value of a megabyte must not make a megabyte of message.
QUOTE_LIMIT = 80


def quote(text: str, limit: int = QUOTE_LIMIT) -> str:
    """``repr(text)``, shortened in the middle to about ``limit`` characters when longer."""
    if len(text) <= limit:
        return repr(text)
    half = limit // 2
    return f"{text[:half]!r}...{text[-half:]!r} ({len(text)} characters)"
