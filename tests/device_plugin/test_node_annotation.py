"""The device plugin publishes its node's core-allocation record: which pod holds which core
(from the PodResources listing), the unhealthy cores, only when the record changed, and failures
kept for the next poll."""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from neuron_cores import ALLOCATIONS_ANNOTATION, CORE_RESOURCE, DEVICE_RESOURCE, parse_record
from neuron_device_plugin.ids import core_id, device_id
from neuron_device_plugin.nodeannotation import (
    AllocationPublisher,
    PatchError,
    merge_patch,
    node_record,
    pod_cores,
)
from neuron_device_plugin.plugin import PluginConfig, PluginManager
from neuron_device_plugin.podresources import PodHolding, PodResourcesClient
from neuron_device_plugin.resources import ResourceKind
from neuron_device_plugin.simulated_backend import SimulatedBackend
from neuron_device_plugin.topology import contiguous_topology
from neuron_localcluster.pod_resources_server import ContainerHolding, PodResourcesServer

TOPOLOGY = contiguous_topology(4, 4)
NAMES = {ResourceKind.CORE: CORE_RESOURCE, ResourceKind.DEVICE: DEVICE_RESOURCE}


def holding(pod: str, resource: str, *ids: str, namespace: str = "demo") -> PodHolding:
    return PodHolding(namespace, pod, resource, ids)


CORE_CASES = [
    ("cores", [holding("a", CORE_RESOURCE, core_id(4), core_id(5))], {"demo/a": (4, 5)}),
    (
        "a-device-is-its-cores",
        [holding("d", DEVICE_RESOURCE, device_id(2))],
        {"demo/d": (8, 9, 10, 11)},
    ),
    (
        "two-containers-one-pod",
        [holding("a", CORE_RESOURCE, core_id(3)), holding("a", CORE_RESOURCE, core_id(1))],
        {"demo/a": (1, 3)},
    ),
    (
        "namespaces-apart",
        [
            holding("a", CORE_RESOURCE, core_id(0)),
            holding("a", CORE_RESOURCE, core_id(1), namespace="x"),
        ],
        {"demo/a": (0,), "x/a": (1,)},
    ),
    (
        "other-resources-and-ids-skipped",
        [
            holding("gpu", "nvidia.com/gpu", "GPU-0"),
            holding("odd", CORE_RESOURCE, "neuroncore-9999", "bogus"),
        ],
        {},
    ),
]


@pytest.mark.parametrize(
    ("holdings", "expected"), [c[1:] for c in CORE_CASES], ids=[c[0] for c in CORE_CASES]
)
def test_pod_cores(holdings: list[PodHolding], expected: dict[str, tuple[int, ...]]) -> None:
    assert pod_cores(holdings, NAMES, TOPOLOGY) == expected


def test_the_record_is_the_shared_format_with_unhealthy_cores() -> None:
    text = node_record(
        [holding("a", CORE_RESOURCE, core_id(0), core_id(2))], NAMES, TOPOLOGY, {9, 7}
    )
    record = parse_record(text)
    assert (record.cores, dict(record.pods), record.unhealthy) == (16, {"demo/a": (0, 2)}, (7, 9))
    assert merge_patch(text) == {"metadata": {"annotations": {ALLOCATIONS_ANNOTATION: text}}}


class Script:
    """A lister and a patch answering from a script."""

    def __init__(self) -> None:
        self.listing: list[PodHolding] = []
        self.list_error: BaseException | None = None
        self.patch_error: BaseException | None = None
        self.patched: list[str] = []

    def lister(self) -> list[PodHolding]:
        if self.list_error is not None:
            raise self.list_error
        return list(self.listing)

    def patch(self, record: str) -> None:
        if self.patch_error is not None:
            raise self.patch_error
        self.patched.append(record)


def test_the_publisher_writes_only_changes_and_retries_failures(
    caplog: pytest.LogCaptureFixture,
) -> None:
    script = Script()
    publisher = AllocationPublisher("node-a", script.patch, script.lister, NAMES)
    assert publisher.publish(TOPOLOGY, set())  # the empty record is published too
    assert not publisher.publish(TOPOLOGY, set())  # unchanged: no write
    script.listing = [holding("a", CORE_RESOURCE, core_id(1))]
    script.patch_error = PatchError("HTTP 403 Forbidden: not your node")
    with caplog.at_level(logging.WARNING):
        assert not publisher.publish(TOPOLOGY, set())
        assert not publisher.publish(TOPOLOGY, set())
    assert caplog.text.count("cannot publish the neurongroups.dev/core-allocations") == 1
    assert "patching node node-a failed (HTTP 403 Forbidden: not your node)" in caplog.text
    script.patch_error = None
    assert publisher.publish(TOPOLOGY, set())  # the failed write is tried again
    script.list_error = OSError("socket gone")
    assert not publisher.publish(TOPOLOGY, {3})  # a failed listing changes nothing
    assert [json.loads(p)["pods"] for p in script.patched] == [{}, {"demo/a": "1"}]


@pytest.mark.parametrize(
    ("socket", "node", "fragment"),
    [
        (None, "n", "needs the kubelet's PodResources socket"),
        (Path("/s"), " ", "needs --node-name"),
    ],
    ids=["no-socket", "no-node"],
)
def test_publishing_needs_the_socket_and_the_node(
    socket: Path | None, node: str, fragment: str
) -> None:
    with pytest.raises(ValueError, match=fragment):
        PluginConfig(pod_resources_socket=socket, publish_node=node)


@pytest.fixture
def pod_resources() -> Iterator[PodResourcesServer]:
    folder = Path(tempfile.mkdtemp(prefix="pr-", dir="/tmp"))
    with PodResourcesServer(folder / "kubelet.sock") as server:
        yield server
    shutil.rmtree(folder, ignore_errors=True)


def test_the_plugin_publishes_what_the_kubelet_lists(
    tmp_path: Path, pod_resources: PodResourcesServer
) -> None:
    """A running plugin, a real PodResources socket: each health poll publishes the record."""
    pod_resources.set(
        [
            ContainerHolding("demo", "web-0", "main", CORE_RESOURCE, (core_id(4), core_id(6))),
            ContainerHolding("demo", "whole", "main", DEVICE_RESOURCE, (device_id(0),)),
        ]
    )
    patched: list[str] = []
    config = PluginConfig(
        plugin_dir=tmp_path,
        pod_resources_socket=pod_resources.socket_path,
        publish_node="node-a",
        health_interval_s=60,
    )
    with PluginManager(SimulatedBackend(4, 4), config, node_patch=patched.append) as manager:
        record = parse_record(patched[-1])
        assert dict(record.pods) == {"demo/web-0": (4, 6), "demo/whole": (0, 1, 2, 3)}
        pod_resources.set([])
        manager.poll_health_now()
        assert dict(parse_record(patched[-1]).pods) == {}
        manager.poll_health_now()
        assert len(patched) == 2


def test_the_client_lists_pods_with_their_devices(pod_resources: PodResourcesServer) -> None:
    pod_resources.set([ContainerHolding("ns", "p", "c", CORE_RESOURCE, (core_id(1),))])
    assert PodResourcesClient(pod_resources.socket_path).list_holdings() == [
        PodHolding("ns", "p", CORE_RESOURCE, (core_id(1),))
    ]
    with pytest.raises(grpc.RpcError):
        PodResourcesClient(
            pod_resources.socket_path.with_name("absent"), timeout=0.5
        ).list_holdings()
