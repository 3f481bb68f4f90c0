"""``NEURON_MODELS``: the models a serving process loads, in load order, and their copies' names.

The operator writes this variable into every pod it plans and ``neuron-runtime serve`` reads it,
so its encoding is one encoder and one decoder, both here.  Two spellings, one meaning:

* plain: comma-separated ``NAME=PATH`` pairs, ``resnet=/models/resnet50,bert=/models/bert``.
  Spaces around names, paths and pairs are ignored and empty pairs skipped.  This is the form
  every earlier release wrote and read, and the encoder still writes it whenever it can carry
  the paths, so a pod planned before keeps its exact value (no rollout on upgrade) and an older
  runtime image reads what a newer operator writes.
* separated: the first character is the separator of the pairs, taken exactly (no trimming),
  ``;resnet=/models/a,b;bert=/models/c``.  The encoder uses it when a path holds a comma or
  starts or ends with a space, picking a separator that no path contains.

The two cannot be confused: a plain value starts with a space, a comma or a name, and a name
starts with an ASCII letter or digit; no separator may be one of those (or ``=``, ``_``, ``.``,
``-``, which names may hold).  So every value the plain form accepted reads as before.  The
separated form costs no more characters than the plain one would (one separator per pair), so
the operator's bound on a pod's ``NEURON_MODELS`` size holds for both.

A serving process loads a model once per pair, so a name given k times is k copies.  The runtime
needs one name per loaded copy: copy 1 keeps the model's name and copy k is ``NAME#k``, which no
model name can be (``#`` is not allowed in names), so a copy never takes another model's name.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from neuron_cores.numbers import quote

MODELS_ENV = "NEURON_MODELS"

# Names travel in URLs (/v2/models/{name}) and metric labels: plain ASCII, at most 128 characters.
MODEL_NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
MODEL_NAME_FORM = "NAME: letters, digits, '_', '.', '-', starting with a letter or digit"
# Characters that can never separate pairs: they begin a plain value or may appear in a name.
_NOT_SEPARATORS = frozenset(",=_.-")
# The separators the encoder tries first, in order (readable, and rare in paths); '"' and
# backslash last, as JSON spends two bytes on each.
_PREFERRED_SEPARATORS = ";|:!@^~+*%&$?#'<>`[]{}()/\"\\"
COPY_MARK = "#"

ACCEPTED_MODELS_FORMS = (
    "comma-separated NAME=PATH pairs, such as resnet=/models/resnet50,bert=/models/bert; or, "
    "when a path holds a comma, the pairs joined by a separator that is also the first "
    "character, such as ;resnet=/models/a,b;bert=/models/c"
)


class ModelListError(ValueError):
    """A model list (``NEURON_MODELS`` or a ``--model`` pair) that cannot be read or written."""


@dataclass(frozen=True)
class ModelEntry:
    """One model to load: the name it is served under and its compiled directory."""

    name: str
    path: str


def is_model_name(name: str) -> bool:
    return MODEL_NAME_PATTERN.fullmatch(name) is not None


def _pair_error(text: str, source: str, *, in_list: bool) -> ModelListError:
    forms = f". {MODELS_ENV} takes {ACCEPTED_MODELS_FORMS}" if in_list else ""
    return ModelListError(
        f"{source}: {quote(text)} is not NAME=PATH ({MODEL_NAME_FORM}; "
        f"e.g. resnet=/models/resnet50); repeat the pair to load several copies{forms}"
    )


def _entry(text: str, source: str, *, trim: bool, in_list: bool) -> ModelEntry:
    name, sep, path = (text.strip() if trim else text).partition("=")
    if trim:
        name, path = name.strip(), path.strip()
    if not sep or not path or not is_model_name(name):
        raise _pair_error(text, source, in_list=in_list)
    return ModelEntry(name, path)


def parse_model_pair(text: str, source: str) -> ModelEntry:
    """One ``NAME=PATH`` pair as a ``--model`` flag gives it; spaces around either are ignored."""
    return _entry(text, source, trim=True, in_list=False)


def is_separator(char: str) -> bool:
    """Whether ``char`` may separate the pairs of the separated form."""
    plain_start = char.isspace() or (char.isascii() and char.isalnum())
    return not plain_start and char not in _NOT_SEPARATORS


def decode_models(value: str, source: str = MODELS_ENV) -> tuple[ModelEntry, ...]:
    """Read a ``NEURON_MODELS`` value into its pairs, in load order (see the module docstring)."""
    if not value or not is_separator(value[0]):
        items = [item for item in value.split(",") if item.strip()]
        return tuple(_entry(item, source, trim=True, in_list=True) for item in items)
    separator = value[0]
    where = f"{source} (pairs separated by {separator!r})"
    items = [item for item in value[1:].split(separator) if item]
    return tuple(_entry(item, where, trim=False, in_list=True) for item in items)


def _plain(path: str) -> bool:
    return "," not in path and path == path.strip()


def _separator_for(paths: set[str]) -> str:
    used = set().union(*paths)
    for char in _PREFERRED_SEPARATORS:
        if char not in used:
            return char
    # Every preferred one is in some path: the first character beyond ASCII that none holds.
    for point in range(0xA1, 0x110000):
        char = chr(point)
        if char not in used and is_separator(char) and not 0xD800 <= point <= 0xDFFF:
            return char
    raise AssertionError("unreachable: the paths cannot hold every character")


def encode_models(entries: Iterable[ModelEntry]) -> str:
    """The ``NEURON_MODELS`` value loading ``entries`` in order; plain whenever it can be.

    Raises ``ModelListError`` for a name the runtime would refuse, an empty path, or a path
    holding NUL (no environment variable can).
    """
    entries = tuple(entries)
    for entry in entries:
        if not is_model_name(entry.name) or not entry.path or "\0" in entry.path:
            raise ModelListError(
                f"cannot write {MODELS_ENV}: the pair {quote(entry.name)}={quote(entry.path)} "
                f"needs a non-empty path without NUL and a name of {MODEL_NAME_FORM}"
            )
    if all(_plain(e.path) for e in entries):
        return ",".join(f"{e.name}={e.path}" for e in entries)
    separator = _separator_for({e.path for e in entries})
    return "".join(f"{separator}{e.name}={e.path}" for e in entries)


def copy_name(name: str, ordinal: int) -> str:
    """The runtime's name for the ``ordinal``-th (1-based) loaded copy of model ``name``."""
    if ordinal < 1:
        raise ValueError(f"copy ordinals start at 1, got {ordinal}")
    return name if ordinal == 1 else f"{name}{COPY_MARK}{ordinal}"
