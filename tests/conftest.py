"""Shared test fixtures: the session-scoped local Kubernetes cluster.

Why session-scoped: starting etcd, the apiserver, the controller-manager, the scheduler, kwok and
an emulated node takes tens of seconds; every ``@pytest.mark.cluster`` test shares one cluster and
keeps to its own namespace.  Nothing is skipped: if the binaries cannot be built or the cluster
cannot start, the cluster tests fail with the reason.

The first build of the binaries takes many minutes, longer than a test's timeout, so it runs once
after collection (only when a selected test is marked ``cluster``), outside any test.

``NEURON_GROUPS_TEST_CLUSTER_DIR``: when it names the state folder of a cluster that is running
(e.g. one started with ``make cluster-up``), the tests use that cluster and leave it running; a
quick loop while developing.  Otherwise a fresh cluster is started in a temporary folder and
stopped at the end of the session, leaving no process behind.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from neuron_localcluster import BinaryError, LocalCluster, ensure_binaries
from neuron_localcluster.cluster import ClusterError

REUSE_ENV = "NEURON_GROUPS_TEST_CLUSTER_DIR"
TEST_KWOK_NODES = "2xinf1.6xlarge"
TEST_EMULATED_NODES = "inf1.6xlarge"


_BUILD_ERROR: list[str] = []


def pytest_collection_finish(session: pytest.Session) -> None:
    if any(item.get_closest_marker("cluster") for item in session.items):
        started = time.monotonic()
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_line("local cluster: building or reusing control-plane binaries")
        try:
            ensure_binaries()
        except BinaryError as exc:
            # Only the cluster tests fail on this (through the fixture), with the reason.
            _BUILD_ERROR.append(str(exc))
            return
        if reporter is not None:
            took = time.monotonic() - started
            reporter.write_line(f"local cluster: binaries ready in {took:.0f}s")


def _reusable() -> LocalCluster | None:
    folder = os.environ.get(REUSE_ENV)
    if not folder:
        return None
    try:
        cluster = LocalCluster.attach(Path(folder))
    except ClusterError:
        return None
    return cluster if cluster.running() else None


@pytest.fixture(scope="session")
def local_cluster() -> Iterator[LocalCluster]:
    """A running local cluster: ``.kubeconfig``, ``.server``, ``.kubectl(...)``, ``.api_client()``,
    ``.impersonating_kubeconfig(ns, sa)``, ``.emulated_node``, ``.kwok_nodes``, ``.wait_for(...)``.
    """
    if _BUILD_ERROR:
        pytest.fail(f"control-plane binaries could not be built: {_BUILD_ERROR[0]}")
    reused = _reusable()
    if reused is not None:
        yield reused
        return
    state = Path(tempfile.mkdtemp(prefix="ngc-"))
    cluster = LocalCluster.up(state, kwok_nodes=TEST_KWOK_NODES, emulated_nodes=TEST_EMULATED_NODES)
    try:
        yield cluster
    finally:
        cluster.down()
        shutil.rmtree(state, ignore_errors=True)
