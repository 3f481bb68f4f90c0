"""The plugin and the kubelet emulator over real gRPC on unix sockets, in one process."""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest

from neuron_device_plugin.api import deviceplugin_pb2 as pb
from neuron_device_plugin.api.services import DevicePluginStub
from neuron_device_plugin.metrics import PluginMetrics, serve_metrics
from neuron_device_plugin.plugin import PluginConfig, PluginManager, socket_name
from neuron_device_plugin.simulated_backend import SimulatedBackend
from neuron_device_plugin.sysfs_backend import SysfsBackend
from neuron_localcluster.kubelet_emulator import DeviceInfo, KubeletEmulator

from .conftest import RunningNode

CORES = "aws.amazon.com/neuroncore"
DEVICES = "aws.amazon.com/neuron"


def core(i: int) -> str:
    return f"neuroncore-{i:04d}"


def unhealthy(devices: list[DeviceInfo]) -> set[str]:
    return {d.id for d in devices if not d.healthy}


def test_both_resources_register_and_list_their_devices(node: RunningNode) -> None:
    cores = node.kubelet.wait_for_registration(CORES)
    devices = node.kubelet.wait_for_registration(DEVICES)
    for resource in (CORES, DEVICES):
        info = node.kubelet.registrations[resource]
        assert info.version == "v1beta1"
        assert info.endpoint == socket_name(resource)
        assert info.get_preferred_allocation_available
        assert not info.pre_start_required
    assert cores.options().get_preferred_allocation_available
    assert [d.id for d in cores.devices()] == [core(i) for i in range(16)]
    assert [d.id for d in devices.devices()] == [f"neuron-{i:04d}" for i in range(4)]
    assert all(d.healthy for d in cores.devices() + devices.devices())


def test_preferred_allocation_then_allocate_like_the_kubelet(node: RunningNode) -> None:
    cores = node.kubelet.wait_for_registration(CORES)
    # Cores 0-1 and 8-15 are taken: free runs are 2-7 (6 long) and nothing else.
    available = [core(i) for i in (2, 3, 4, 5, 6, 7)]
    chosen = cores.preferred_allocation(available, [], 4)
    assert chosen == [core(i) for i in (2, 3, 4, 5)]
    allocation = cores.allocate(chosen)
    assert allocation.envs == {"NEURON_RT_VISIBLE_CORES": "2-5"}
    assert allocation.devices == [
        ("/dev/neuron0", "/dev/neuron0", "rw"),
        ("/dev/neuron1", "/dev/neuron1", "rw"),
    ]


def test_best_fit_over_the_socket_keeps_long_runs_whole(node: RunningNode) -> None:
    cores = node.kubelet.wait_for_registration(CORES)
    free = [0, 1, 4, 5, 6, 7, 8, 9, 12, 13, 14]
    chosen = cores.preferred_allocation([core(i) for i in free], [], 3)
    assert chosen == [core(i) for i in (12, 13, 14)]
    chosen = cores.preferred_allocation([core(i) for i in free], [core(7)], 3)
    assert chosen == [core(i) for i in (7, 8, 9)]


def test_device_allocation(node: RunningNode) -> None:
    devices = node.kubelet.wait_for_registration(DEVICES)
    available = ["neuron-0000", "neuron-0002", "neuron-0003"]
    chosen = devices.preferred_allocation(available, [], 2)
    assert chosen == ["neuron-0002", "neuron-0003"]
    allocation = devices.allocate(chosen)
    assert allocation.envs == {"AWS_NEURON_VISIBLE_DEVICES": "2,3"}
    assert [d[1] for d in allocation.devices] == ["/dev/neuron2", "/dev/neuron3"]


def _rpc_error(call: Callable[[], object]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as err:
        call()
    return err.value


@pytest.mark.parametrize(
    ("ids", "named"),
    [
        (["neuroncore-0099"], "'neuroncore-0099'"),
        (["neuron-0001"], "'neuron-0001'"),
        (["neuroncore-0001", "gpu-0"], "'gpu-0'"),
    ],
    ids=["beyond-node", "device-id-to-core-plugin", "foreign"],
)
def test_allocate_refuses_unknown_ids(node: RunningNode, ids: list[str], named: str) -> None:
    cores = node.kubelet.wait_for_registration(CORES)
    err = _rpc_error(lambda: cores.allocate(ids))
    assert isinstance(err, grpc.Call)
    assert err.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert named in (err.details() or "")


def test_preferred_allocation_refuses_bad_requests(node: RunningNode) -> None:
    cores = node.kubelet.wait_for_registration(CORES)
    err = _rpc_error(lambda: cores.preferred_allocation([core(0)], [], 2))
    assert isinstance(err, grpc.Call)
    assert err.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "allocation size 2" in (err.details() or "")
    err = _rpc_error(lambda: cores.preferred_allocation(["bogus"], [], 1))
    assert isinstance(err, grpc.Call)
    assert "'bogus'" in (err.details() or "")


def test_health_flip_on_the_stream_then_recovery(node: RunningNode) -> None:
    cores = node.kubelet.wait_for_registration(CORES)
    devices = node.kubelet.wait_for_registration(DEVICES)
    first_updates = cores.updates
    node.health_file.write_text("5\n")
    seen = cores.wait_for_devices(lambda ds: unhealthy(ds) == {core(5)})
    assert len(seen) == 16, "the full list is sent, not a delta"
    devices.wait_for_devices(lambda ds: unhealthy(ds) == {"neuron-0001"})
    assert cores.updates > first_updates
    # Unhealthy cores are refused by Allocate.
    err = _rpc_error(lambda: cores.allocate([core(4), core(5)]))
    assert isinstance(err, grpc.Call)
    assert err.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "unhealthy" in (err.details() or "")
    assert "'neuroncore-0005'" in (err.details() or "")
    node.health_file.write_text("")
    cores.wait_for_devices(lambda ds: not unhealthy(ds))
    devices.wait_for_devices(lambda ds: not unhealthy(ds))
    assert cores.allocate([core(4), core(5)]).envs == {"NEURON_RT_VISIBLE_CORES": "4-5"}


def test_kubelet_restart_is_followed_by_registration_within_two_seconds(
    node: RunningNode,
) -> None:
    old = node.kubelet.wait_for_registration(CORES)
    node.kubelet.wait_for_registration(DEVICES)
    node.wait_ready()
    # A restarting kubelet deletes every socket in the directory, then serves again.
    node.kubelet.stop(delete_sockets=True)
    assert not any(p.is_socket() for p in node.plugin_dir.iterdir())
    node.kubelet = KubeletEmulator(node.plugin_dir).start()
    started = time.monotonic()
    for resource in (CORES, DEVICES):
        client = node.kubelet.wait_for_registration(resource, timeout=2.0)
        assert len(client.devices()) in (16, 4)
    assert time.monotonic() - started < 2.0
    assert old.stream_ended or old.updates >= 1
    cores = node.kubelet.wait_for_registration(CORES)
    assert cores.allocate([core(0)]).envs == {"NEURON_RT_VISIBLE_CORES": "0"}
    node.wait_ready(1.0)
    metrics = node.manager.metrics
    for resource in (CORES, DEVICES):
        assert metrics.registrations.labels(resource=resource)._value.get() == 2
        assert metrics.reregistrations.labels(resource=resource)._value.get() == 1


def test_deleted_plugin_socket_is_served_again_and_registered(node: RunningNode) -> None:
    node.kubelet.wait_for_registration(CORES)
    (node.plugin_dir / socket_name(CORES)).unlink()
    deadline = time.monotonic() + 2.0
    while node.kubelet.registrations[CORES].count < 2:
        assert time.monotonic() < deadline, "no re-registration within 2 s"
        time.sleep(0.02)
    cores = node.kubelet.wait_for_registration(CORES, timeout=2.0)
    assert cores.allocate([core(3)]).envs == {"NEURON_RT_VISIBLE_CORES": "3"}
    assert node.kubelet.registrations[DEVICES].count == 1, "the other plugin was left alone"


def test_plugin_waits_for_a_kubelet_that_starts_later(sock_dir: Path) -> None:
    manager = PluginManager(
        SimulatedBackend(1, 2), PluginConfig(plugin_dir=sock_dir, watch_interval_s=0.05)
    )
    manager.start()
    try:
        time.sleep(0.2)
        assert manager.readiness()[0] is False
        with KubeletEmulator(sock_dir) as kubelet:
            client = kubelet.wait_for_registration(CORES, timeout=2.0)
            assert [d.id for d in client.devices()] == [core(0), core(1)]
            deadline = time.monotonic() + 2.0
            while not manager.readiness()[0]:
                assert time.monotonic() < deadline
                time.sleep(0.02)
    finally:
        manager.stop()


def test_refused_registration_is_retried_not_fatal(sock_dir: Path) -> None:
    kubelet = KubeletEmulator(sock_dir, refuse="resource name is not allowed here").start()
    manager = PluginManager(
        SimulatedBackend(1, 4), PluginConfig(plugin_dir=sock_dir, watch_interval_s=0.05)
    )
    manager.start()
    try:
        deadline = time.monotonic() + 5.0
        while "resource name is not allowed here" not in manager.readiness()[1]:
            assert time.monotonic() < deadline, manager.readiness()
            time.sleep(0.02)
        ready, why = manager.readiness()
        assert not ready
        assert f"{CORES} (last Register: UNKNOWN: resource name is not allowed here)" in why
        assert not manager.wait(timeout=0.3), "a refusal must not end the plugin"
        assert not manager.wait(timeout=0), "the plugin ended"
        assert manager.liveness() == (True, "ok")
        # The kubelet changes its mind: the retries (backoff capped at 5 s) get through.
        kubelet.refuse = None
        for resource in (CORES, DEVICES):
            kubelet.wait_for_registration(resource, timeout=7.0)
    finally:
        manager.stop()
        kubelet.stop()
    assert not any(p.is_socket() for p in sock_dir.iterdir()), "sockets removed on stop"


@pytest.mark.parametrize(
    ("devices", "cores_per_device"),
    [(4, 4), (12, 2)],
    ids=["inf1.6xlarge", "inf2.48xlarge"],
)
def test_sysfs_tree_over_grpc(
    sock_dir: Path,
    fake_sysfs: Callable[[int, int], tuple[Path, Path]],
    devices: int,
    cores_per_device: int,
) -> None:
    sysfs, dev = fake_sysfs(devices, cores_per_device)
    backend = SysfsBackend(sysfs_root=sysfs, dev_root=dev)
    config = PluginConfig(plugin_dir=sock_dir, health_interval_s=0.05, watch_interval_s=0.05)
    with KubeletEmulator(sock_dir) as kubelet, PluginManager(backend, config):
        cores = kubelet.wait_for_registration(CORES)
        device_client = kubelet.wait_for_registration(DEVICES)
        total = devices * cores_per_device
        assert [d.id for d in cores.devices()] == [core(i) for i in range(total)]
        assert len(device_client.devices()) == devices
        assert {d.numa_nodes for d in cores.devices()} == {(0,), (1,)}
        last_device = devices - 1
        pair = [core(total - 2), core(total - 1)]
        allocation = cores.allocate(pair)
        assert allocation.envs == {"NEURON_RT_VISIBLE_CORES": f"{total - 2}-{total - 1}"}
        assert allocation.devices[-1][1] == str(dev / f"neuron{last_device}")
        # The driver's device node vanishing marks the device's cores unhealthy; back, healthy.
        (dev / f"neuron{last_device}").unlink()
        on_last = {core(i) for i in range(total - cores_per_device, total)}
        cores.wait_for_devices(lambda ds: unhealthy(ds) == on_last)
        (dev / f"neuron{last_device}").write_text("")
        cores.wait_for_devices(lambda ds: not unhealthy(ds))


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def test_metrics_and_probes_over_http(node: RunningNode) -> None:
    node.kubelet.wait_for_registration(CORES)
    node.kubelet.wait_for_registration(DEVICES)
    metrics: PluginMetrics = node.manager.metrics
    server = serve_metrics(
        metrics.registry,
        "127.0.0.1",
        0,
        live=node.manager.liveness,
        ready=node.manager.readiness,
    )
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        deadline = time.monotonic() + 2.0
        while _get(base + "/readyz")[0] != 200:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert _get(base + "/healthz") == (200, "ok\n")
        status, body = _get(base + "/metrics")
        assert status == 200
        assert (
            'neuron_device_plugin_devices{health="Healthy",resource="aws.amazon.com/neuroncore"}'
            " 16.0" in body
        )
        assert 'neuron_device_plugin_registrations_total{resource="aws.amazon.com/neuron"}' in body
        assert _get(base + "/nope")[0] == 404
    finally:
        server.shutdown()
        server.server_close()


def _stub(plugin_dir: Path, resource: str) -> tuple[grpc.Channel, DevicePluginStub]:
    channel = grpc.insecure_channel(f"unix://{plugin_dir / socket_name(resource)}")
    return channel, DevicePluginStub(channel)


def test_allocate_answers_every_container_of_a_pod(node: RunningNode) -> None:
    node.kubelet.wait_for_registration(CORES)
    channel, stub = _stub(node.plugin_dir, CORES)
    with channel:
        request = pb.AllocateRequest(
            container_requests=[
                pb.ContainerAllocateRequest(devices_ids=[core(0), core(1)]),
                pb.ContainerAllocateRequest(devices_ids=[core(8)]),
            ]
        )
        response = stub.allocate(request, timeout=5)
        envs = [dict(c.envs) for c in response.container_responses]
        assert envs == [{"NEURON_RT_VISIBLE_CORES": "0-1"}, {"NEURON_RT_VISIBLE_CORES": "8"}]
        assert [d.host_path for d in response.container_responses[1].devices] == ["/dev/neuron2"]
        # One bad container refuses the whole pod, and nothing is counted as allocated.
        before = node.manager.metrics.allocations.labels(resource=CORES)._value.get()
        bad = pb.AllocateRequest(
            container_requests=[
                pb.ContainerAllocateRequest(devices_ids=[core(2)]),
                pb.ContainerAllocateRequest(devices_ids=["neuroncore-0999"]),
            ]
        )
        err = _rpc_error(lambda: stub.allocate(bad, timeout=5))
        assert isinstance(err, grpc.Call)
        assert err.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert node.manager.metrics.allocations.labels(resource=CORES)._value.get() == before
        assert stub.pre_start_container(pb.PreStartContainerRequest(), timeout=5) == (
            pb.PreStartContainerResponse()
        )
