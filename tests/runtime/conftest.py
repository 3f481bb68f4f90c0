"""Fixtures for the runtime's tests: an isolated node (its own arbiter state directory) and tiny
compiled models that run in well under a millisecond on one CPU core."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from neuron_runtime import NeuronRuntime, compile_model

TINY_RESNET: dict[str, Any] = {"image_size": 32, "width": 4, "blocks": (1, 1, 1, 1), "classes": 10}
TINY_MLP: dict[str, Any] = {"input_dim": 16, "width": 32, "depth": 3, "classes": 5}


@pytest.fixture
def node_env(tmp_path: Path) -> dict[str, str]:
    """Environment of a 4-core simulated node whose lock files live in this test's tmp dir."""
    return {"NEURON_SIM_STATE_DIR": str(tmp_path / "node"), "NEURON_SIM_CORES": "4"}


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """compile(arch, cores, seed=0, **size) -> directory, cached for the session."""
    root = tmp_path_factory.mktemp("models")
    cache: dict[str, Path] = {}

    def compile_cached(arch: str, cores: int, seed: int = 0, **size: Any) -> Path:
        key = f"{arch}-{cores}-{seed}-" + "-".join(f"{k}{v}" for k, v in sorted(size.items()))
        if key not in cache:
            knobs: dict[str, Any] = size or (TINY_MLP if arch == "mlp" else TINY_RESNET)
            cache[key] = compile_model(arch, cores, root / key, seed=seed, **knobs)
        return cache[key]

    return compile_cached


@pytest.fixture
def runtime_factory(node_env: dict[str, str]) -> Iterator[Callable[..., NeuronRuntime]]:
    """Make runtimes on the test's node (extra env on top); all are closed at the end."""
    made: list[NeuronRuntime] = []

    def make(**extra: str) -> NeuronRuntime:
        runtime = NeuronRuntime.from_env({**node_env, **extra})
        made.append(runtime)
        return runtime

    yield make
    for runtime in made:
        runtime.close()
