"""The runtime's exceptions, in one place so callers (the serving layer, the CLI) can catch them.

``ResourceExhaustedError`` keeps the first sentence TensorFlow-Neuron users already search for
("All machine learning accelerators are currently being consumed"), then says what the old
message never did: which cores were asked for, which are free, who holds the rest, and which
``NEURONCORE_GROUP_SIZES`` was in force.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from neuron_cores import GROUP_SIZES_ENV, VISIBLE_CORES_ENV

EXHAUSTED_PREFIX = "All machine learning accelerators are currently being consumed"


@dataclass(frozen=True)
class CoreHolder:
    """A process that holds a core claim on this node."""

    core: int
    pid: int
    command: str

    def describe(self) -> str:
        return f"core {self.core} by pid {self.pid} ({self.command or 'unknown command'})"


def _cores_text(cores: Sequence[int]) -> str:
    return ",".join(str(c) for c in cores) if cores else "none"


class NeuronRuntimeError(Exception):
    """Base class of every error the runtime raises on purpose."""


class RuntimeConfigError(NeuronRuntimeError, ValueError):
    """An environment value (or argument) the runtime cannot use; the message quotes it."""


class ResourceExhaustedError(NeuronRuntimeError):
    """The cores a process needs are not available: too few visible, or held by others."""

    def __init__(
        self,
        *,
        reason: str,
        asked: Sequence[int] | int,
        free: Sequence[int],
        holders: Sequence[CoreHolder],
        group_sizes: str,
    ) -> None:
        self.reason = reason
        self.asked = asked
        self.free = tuple(free)
        self.holders = tuple(holders)
        self.group_sizes = group_sizes
        if isinstance(asked, int):
            asked_text = f"{asked} core{'s' if asked != 1 else ''}"
        else:
            asked_text = f"cores {_cores_text(asked)}"
        held = "; ".join(h.describe() for h in holders) if holders else "none"
        super().__init__(
            f"{EXHAUSTED_PREFIX}: {reason}. Asked for {asked_text} "
            f"({GROUP_SIZES_ENV}={group_sizes}); free cores: {_cores_text(self.free)}; "
            f"held: {held}. Stop the holding processes (a claim ends with its process, "
            f"no reset needed), or lower {GROUP_SIZES_ENV} / pick other {VISIBLE_CORES_ENV}."
        )


class ModelLoadError(NeuronRuntimeError):
    """A model artifact that cannot be loaded: missing, corrupt, incomplete, or does not fit."""


class ModelDoesNotFitError(ModelLoadError):
    """A model compiled for more NeuronCores than the group it would be loaded into."""

    def __init__(self, *, model: str, model_cores: int, group: int, group_cores: int) -> None:
        self.model_cores = model_cores
        self.group_cores = group_cores
        super().__init__(
            f"model {model!r} was compiled for {model_cores} NeuronCores but NeuronCore Group "
            f"{group} has only {group_cores}. Recompile with --cores {group_cores} or fewer, "
            f"or set {GROUP_SIZES_ENV} so this model's group is large enough."
        )


class InvalidInputError(NeuronRuntimeError, ValueError):
    """Feeds that do not match a model's feed tensors (names, dtypes or shapes)."""


class RuntimeClosedError(NeuronRuntimeError):
    """A call on a runtime (or predictor) after close(), or after its workers died."""


class WorkerLostError(NeuronRuntimeError):
    """A request (or load) that was on a worker when it died; the group has restarted: retry."""
