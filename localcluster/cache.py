"""The user cache that holds built and fetched binaries, and the lock that guards each entry.

Go-built control-plane binaries (``binaries``) and helm/kubectl fetched from PyPI (``clitools``)
share one root, ``${XDG_CACHE_HOME:-~/.cache}/neuron-groups/bin``, and the same rule: a process
fills an entry only while it holds that entry's lock file, so two test sessions or a test and
``make demo`` started side by side never build or extract into one folder at once.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

CACHE_ENV = "XDG_CACHE_HOME"


def cache_root(env: Mapping[str, str] | None = None) -> Path:
    """The folder holding one sub-folder per cached binary and version."""
    env = os.environ if env is None else env
    base = env.get(CACHE_ENV) or str(Path(env.get("HOME") or Path.home()) / ".cache")
    return Path(base) / "neuron-groups" / "bin"


@contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold an exclusive flock on ``path`` (created if missing) for the ``with`` block."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
