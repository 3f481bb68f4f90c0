"""Group-aware inference runtime: NeuronCore Groups simulated on CPU worker processes.

The public surface is this module: ``NeuronRuntime`` (one per process), ``Predictor`` (one
loaded model instance), ``load_model`` (the seed's ``from_saved_model`` on a lazily created
process-wide runtime), ``compile_model`` (the CLI's ``compile`` as a function) and the errors.
docs/runtime.md explains the design.
"""

from __future__ import annotations

import atexit
import threading
from pathlib import Path

from neuron_runtime.api import (
    GroupInfo,
    GroupStats,
    NeuronRuntime,
    Predictor,
    RuntimeStats,
)
from neuron_runtime.artifact import TensorSpec, compile_model
from neuron_runtime.errors import (
    EXHAUSTED_PREFIX,
    InvalidInputError,
    ModelDoesNotFitError,
    ModelLoadError,
    NeuronRuntimeError,
    ResourceExhaustedError,
    RuntimeClosedError,
    RuntimeConfigError,
    WorkerLostError,
)

__all__ = [
    "EXHAUSTED_PREFIX",
    "GroupInfo",
    "GroupStats",
    "InvalidInputError",
    "ModelDoesNotFitError",
    "ModelLoadError",
    "NeuronRuntime",
    "NeuronRuntimeError",
    "Predictor",
    "ResourceExhaustedError",
    "RuntimeClosedError",
    "RuntimeConfigError",
    "RuntimeStats",
    "TensorSpec",
    "WorkerLostError",
    "compile_model",
    "default_runtime",
    "load_model",
]

_default: NeuronRuntime | None = None
_default_lock = threading.Lock()


def default_runtime() -> NeuronRuntime:
    """The process-wide runtime, created from the environment on first use, closed at exit."""
    global _default  # noqa: PLW0603 - one runtime per process is the seed's model
    with _default_lock:
        if _default is None:
            _default = NeuronRuntime.from_env()
            atexit.register(_default.close)
        return _default


def load_model(path: str | Path, name: str | None = None) -> Predictor:
    """Load a compiled model into the next group of the process-wide runtime."""
    return default_runtime().load_model(path, name)
