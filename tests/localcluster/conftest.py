"""Karpenter for the autoscaling cluster tests: built once after collection, outside any test.

Why here: the first build of Karpenter's kwok provider takes minutes (a Go toolchain download and
a large module), longer than a test's timeout, so, like the control plane in tests/conftest.py, it
runs once when a selected test is marked ``autoscaling``.  A failed build fails those tests (with
the reason), never skips them.
"""

from __future__ import annotations

import time

import pytest

from neuron_localcluster.binaries import BinaryError
from neuron_localcluster.karpenter import ensure_karpenter

BUILD_ERROR: list[str] = []


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "autoscaling: runs Karpenter's kwok provider on the local cluster (built from "
        "hack/karpenter; deselect with -m 'not autoscaling')",
    )


def pytest_collection_finish(session: pytest.Session) -> None:
    if not any(item.get_closest_marker("autoscaling") for item in session.items):
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    started = time.monotonic()
    if reporter is not None:
        reporter.write_line("karpenter: building or reusing the kwok provider")
    try:
        assets = ensure_karpenter()
    except BinaryError as exc:
        BUILD_ERROR.append(str(exc))
        return
    if reporter is not None:
        took = time.monotonic() - started
        reporter.write_line(f"karpenter: {assets.version} ready in {took:.0f}s")
