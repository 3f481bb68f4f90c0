"""Fixtures of the local-cluster tests: a fresh namespace per test, and Karpenter for the
autoscaling cluster tests, built once after collection, outside any test.

Why here: the first build of Karpenter's kwok provider takes minutes (a Go toolchain download and
a large module), longer than a test's timeout, so, like the control plane in tests/conftest.py, it
runs once when a selected test is marked ``autoscaling``.  A failed build fails those tests (with
the reason), never skips them.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest
from kubernetes import client as k8s

from neuron_localcluster import LocalCluster
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


def fresh_namespace(cluster: LocalCluster) -> Iterator[str]:
    """A new namespace with its default ServiceAccount in place; deleted afterwards."""
    name = f"t-{uuid.uuid4().hex[:8]}"
    core = k8s.CoreV1Api(cluster.api_client())
    core.create_namespace(k8s.V1Namespace(metadata=k8s.V1ObjectMeta(name=name)))
    cluster.wait_for(
        lambda: core.read_namespaced_service_account("default", name),
        60,
        f"the default service account in {name}",
    )
    yield name
    core.delete_namespace(name)


@pytest.fixture
def namespace(local_cluster: LocalCluster) -> Iterator[str]:
    yield from fresh_namespace(local_cluster)
