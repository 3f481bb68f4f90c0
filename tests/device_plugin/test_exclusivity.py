"""Issue 13, section 4: the two resources over the same silicon are exclusive in use.

A pod holding device 0 whole and a pod holding cores 0-3 must not run together: in ``both`` mode
the silicon one resource has handed out is Unhealthy on the other and refused by its Allocate;
holds end when the kubelet's PodResources listing no longer shows them, and a restarted plugin
learns them back from that listing.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from neuron_device_plugin.ids import UNHEALTHY, DeviceInUseError
from neuron_device_plugin.plugin import PluginConfig, PluginManager
from neuron_device_plugin.podresources import (
    HoldRefresher,
    PodResourcesClient,
)
from neuron_device_plugin.policy import best_fit
from neuron_device_plugin.resources import (
    ResourceKind,
    ResourceManager,
    ResourcesMode,
    SiliconLedger,
    build_managers,
    held_by_kind,
)
from neuron_device_plugin.simulated_backend import SimulatedBackend
from neuron_device_plugin.topology import contiguous_topology
from neuron_localcluster.kubelet_emulator import DeviceInfo, KubeletEmulator
from neuron_localcluster.pod_resources_server import ContainerHolding, PodResourcesServer

from .conftest import RunningNode

CORES = "aws.amazon.com/neuroncore"
DEVICES = "aws.amazon.com/neuron"
NAMES = {ResourceKind.CORE: CORES, ResourceKind.DEVICE: DEVICES}
TOPOLOGY = contiguous_topology(4, 4)


def core(i: int) -> str:
    return f"neuroncore-{i:04d}"


def device(i: int) -> str:
    return f"neuron-{i:04d}"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def pair(ledger: SiliconLedger | None = None) -> tuple[ResourceManager, ResourceManager]:
    cores, devices = build_managers(
        TOPOLOGY, best_fit, names=NAMES, mode=ResourcesMode.BOTH, ledger=ledger
    )
    return cores, devices


def unhealthy_ids(manager: ResourceManager) -> list[str]:
    return [d.id for d in manager.devices() if d.health == UNHEALTHY]


@pytest.mark.parametrize(
    ("mode", "resources"),
    [
        (ResourcesMode.BOTH, [CORES, DEVICES]),
        (ResourcesMode.CORE, [CORES]),
        (ResourcesMode.DEVICE, [DEVICES]),
    ],
    ids=["both", "neuroncore-only", "neuron-only"],
)
def test_modes_offer_their_resources(mode: ResourcesMode, resources: list[str]) -> None:
    managers = build_managers(TOPOLOGY, best_fit, names=NAMES, mode=mode)
    assert [m.resource_name for m in managers] == resources
    shared = {id(m.ledger) for m in managers}
    assert len(shared) == 1
    assert (managers[0].ledger is not None) is (mode is ResourcesMode.BOTH)


def test_a_device_handed_out_whole_takes_its_cores_off_the_core_resource() -> None:
    cores, devices = pair()
    seen = cores.generation
    devices.allocate([device(0)])
    assert cores.generation > seen, "the core resource's ListAndWatch streams are woken"
    assert unhealthy_ids(cores) == [core(i) for i in range(4)]
    assert cores.health_counts() == {"Healthy": 12, "Unhealthy": 4}
    with pytest.raises(DeviceInUseError, match=r"'neuroncore-0002', 'neuroncore-0003'") as err:
        cores.allocate([core(2), core(3)])
    assert "other Neuron resource" in str(err.value)
    assert cores.allocate([core(4)]).envs == {"NEURON_RT_VISIBLE_CORES": "4"}


def test_cores_handed_out_take_their_device_off_the_device_resource() -> None:
    cores, devices = pair()
    cores.allocate([core(5)])
    assert unhealthy_ids(devices) == [device(1)]
    with pytest.raises(DeviceInUseError, match="'neuron-0001'"):
        devices.allocate([device(1), device(2)])
    assert unhealthy_ids(cores) == [], "a refused allocation holds nothing"
    devices.allocate([device(2)])
    assert unhealthy_ids(cores) == [core(i) for i in range(8, 12)]


def test_a_resource_may_hand_its_own_ids_out_again() -> None:
    # The kubelet reuses IDs of pods that ended; only the other resource is kept off.
    cores, _ = pair()
    cores.allocate([core(0), core(1)])
    assert cores.allocate([core(0), core(1)]).envs == {"NEURON_RT_VISIBLE_CORES": "0-1"}


def _take(
    manager: ResourceManager, ids: list[str], barrier: threading.Barrier, won: list[str]
) -> None:
    barrier.wait()
    try:
        manager.allocate(ids)
        won.append(manager.resource_name)
    except DeviceInUseError:
        pass


def test_racing_allocations_of_the_same_silicon_never_both_win() -> None:
    for _ in range(20):
        cores, devices = pair()
        results: list[str] = []
        barrier = threading.Barrier(2)
        threads = [
            threading.Thread(target=_take, args=(cores, [core(0)], barrier, results)),
            threading.Thread(target=_take, args=(devices, [device(0)], barrier, results)),
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=5)
        assert len(results) == 1, results


def test_holds_end_when_a_later_listing_no_longer_shows_them() -> None:
    clock = FakeClock()
    ledger = SiliconLedger(grace_s=30.0, clock=clock)
    cores, devices = pair(ledger)
    devices.allocate([device(0)])
    # A listing taken right after Allocate may not show it yet: the hold stays.
    clock.now += 1
    assert not ledger.apply_listing({}, clock.now)
    assert unhealthy_ids(cores) == [core(i) for i in range(4)]
    # Once the grace has passed, what the kubelet lists is the truth.
    clock.now += 60
    listed = held_by_kind([(DEVICES, [device(0)])], NAMES, TOPOLOGY)
    assert not ledger.apply_listing(listed, clock.now)
    assert unhealthy_ids(cores) == [core(i) for i in range(4)]
    seen = cores.generation
    assert ledger.apply_listing({}, clock.now + 1)
    assert cores.generation > seen
    assert unhealthy_ids(cores) == []
    assert cores.allocate([core(0), core(1), core(2), core(3)]).envs == {
        "NEURON_RT_VISIBLE_CORES": "0-3"
    }


def test_a_restarted_plugin_learns_holds_from_the_listing() -> None:
    ledger = SiliconLedger()
    cores, devices = pair(ledger)
    listing = [(CORES, [core(5), core(6)]), ("example.com/gpu", ["gpu-0"]), (DEVICES, ["bogus"])]
    assert ledger.apply_listing(held_by_kind(listing, NAMES, TOPOLOGY), ledger.clock())
    assert unhealthy_ids(devices) == [device(1)]
    assert unhealthy_ids(cores) == []
    with pytest.raises(DeviceInUseError):
        devices.allocate([device(1)])


def test_a_failed_listing_keeps_every_hold(caplog: pytest.LogCaptureFixture) -> None:
    ledger = SiliconLedger(grace_s=0.0)
    cores, devices = pair(ledger)
    devices.allocate([device(3)])
    answers: list[object] = [OSError("connection refused"), OSError("again"), []]

    def lister() -> list[tuple[str, list[str]]]:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        assert isinstance(answer, list)
        return answer

    refresher = HoldRefresher(ledger, NAMES, TOPOLOGY, lister, source="fake")
    with caplog.at_level(logging.INFO):
        assert not refresher.refresh()
        assert not refresher.refresh()
        assert unhealthy_ids(cores) == [core(i) for i in range(12, 16)]
        assert caplog.text.count("cannot list pod resources from fake") == 1
        assert refresher.refresh()
    assert unhealthy_ids(cores) == []
    assert "fake answers again" in caplog.text


def held(pod: str, *entries: tuple[str, list[str]]) -> list[ContainerHolding]:
    return [ContainerHolding("default", pod, "main", r, tuple(ids)) for r, ids in entries]


@pytest.fixture
def pod_resources() -> Iterator[PodResourcesServer]:
    folder = Path(tempfile.mkdtemp(prefix="pr-", dir="/tmp"))
    with PodResourcesServer(folder / "kubelet.sock") as server:
        yield server
    shutil.rmtree(folder, ignore_errors=True)


def test_the_client_reads_a_listing_from_the_socket(pod_resources: PodResourcesServer) -> None:
    pod_resources.set(held("a", (CORES, [core(1), core(2)]), (DEVICES, [device(3)])))
    client = PodResourcesClient(pod_resources.socket_path)
    assert client.list_devices() == [(CORES, [core(1), core(2)]), (DEVICES, [device(3)])]
    missing = PodResourcesClient(pod_resources.socket_path.with_name("absent.sock"), timeout=0.5)
    with pytest.raises(grpc.RpcError):
        missing.list_devices()


def _unhealthy(devices: list[DeviceInfo]) -> set[str]:
    return {d.id for d in devices if not d.healthy}


def test_issue_13_device_and_cores_cannot_run_together_over_the_socket(node: RunningNode) -> None:
    cores = node.kubelet.wait_for_registration(CORES)
    devices = node.kubelet.wait_for_registration(DEVICES)
    assert devices.allocate([device(0)]).envs == {"AWS_NEURON_VISIBLE_DEVICES": "0"}
    cores.wait_for_devices(lambda ds: _unhealthy(ds) == {core(i) for i in range(4)})
    with pytest.raises(grpc.RpcError) as info:
        cores.allocate([core(0), core(1), core(2), core(3)])
    assert isinstance(info.value, grpc.Call)
    assert info.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert "'neuroncore-0000'" in (info.value.details() or "")
    cores.allocate([core(4)])
    devices.wait_for_devices(lambda ds: _unhealthy(ds) == {device(1)})


def test_restart_recovers_holds_and_release_follows_the_listing(
    sock_dir: Path, pod_resources: PodResourcesServer
) -> None:
    pod_resources.set(held("whole-device", (DEVICES, [device(0)])))
    with (
        KubeletEmulator(sock_dir) as kubelet,
        PluginManager(
            SimulatedBackend(4, 4),
            PluginConfig(
                plugin_dir=sock_dir,
                health_interval_s=0.1,
                watch_interval_s=0.05,
                pod_resources_socket=pod_resources.socket_path,
            ),
        ),
    ):
        cores = kubelet.wait_for_registration(CORES)
        # The very first list the kubelet gets already keeps the device's cores off.
        first = cores.wait_for_devices(bool, timeout=5)
        assert _unhealthy(first) == {core(i) for i in range(4)}
        with pytest.raises(grpc.RpcError) as info:
            cores.allocate([core(1)])
        assert isinstance(info.value, grpc.Call)
        assert info.value.code() is grpc.StatusCode.FAILED_PRECONDITION
        # The pod ends: the kubelet stops listing it, and the cores come back.
        pod_resources.set([])
        cores.wait_for_devices(lambda ds: not _unhealthy(ds), timeout=5)
        assert cores.allocate([core(1)]).envs == {"NEURON_RT_VISIBLE_CORES": "1"}


def test_the_ledger_stays_bounded_without_a_listing() -> None:
    ledger = SiliconLedger()
    cores, _ = pair(ledger)
    for _ in range(1000):
        cores.allocate([core(0), core(1)])
    assert ledger.held(ResourceKind.CORE) == {0, 1}
    assert sum(len(v) for v in ledger._recent.values()) == 2


def test_only_the_other_resource_resends_its_list() -> None:
    cores, devices = pair()
    seen = (cores.generation, devices.generation)
    cores.allocate([core(0)])
    assert (cores.generation, devices.generation) == (seen[0], seen[1] + 1)
    cores.allocate([core(0)])
    assert devices.generation == seen[1] + 1, "nothing changed, nothing resent"
