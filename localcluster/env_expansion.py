"""Kubernetes' ``$(VAR)`` references in a container's ``command``, ``args`` and ``env`` values.

The kubelet expands them before it starts a container, so a pod written for a real node
(``args: ["--port=$(PORT)"]``) needs the same on the emulated one.  The rules, as the kubelet
applies them:

* ``$(NAME)`` becomes the value of ``NAME`` when it is defined, and stays as written when not;
* ``$$`` is an escaped ``$``: ``$$(NAME)`` becomes the literal ``$(NAME)``;
* any other ``$`` (``$NAME``, ``$`` at the end, an unclosed ``$(``) stays as written.

Which names are defined depends on what is expanded: an ``env`` value sees the entries listed
before it (:func:`neuron_localcluster.pods.container_env`); ``command`` and ``args`` see the
container's whole environment (:func:`neuron_localcluster.pods.resolve_command`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

DOLLAR = "$"
OPEN = "("
CLOSE = ")"


def expand(value: str, defined: Mapping[str, str]) -> str:
    """``value`` with each ``$(NAME)`` of ``defined`` replaced and ``$$`` made ``$``."""
    out: list[str] = []
    i = 0
    while i < len(value):
        char = value[i]
        if char != DOLLAR or i + 1 == len(value):
            out.append(char)
            i += 1
            continue
        after = value[i + 1]
        if after == DOLLAR:
            out.append(DOLLAR)
            i += 2
            continue
        if after == OPEN:
            end = value.find(CLOSE, i + 2)
            if end >= 0:
                name = value[i + 2 : end]
                out.append(defined[name] if name in defined else value[i : end + 1])
                i = end + 1
                continue
        # "$x", or "$(" never closed: the "$" and the next character as written
        out.append(value[i : i + 2])
        i += 2
    return "".join(out)


def expand_all(values: Iterable[object], defined: Mapping[str, str]) -> list[str]:
    """Every item of ``command`` or ``args`` expanded against the same environment."""
    return [expand(str(v), defined) for v in values]
