from __future__ import annotations

import tracemalloc
from collections.abc import Callable
from pathlib import Path

import pytest

from neuron_device_plugin.simulated_backend import MAX_HEALTH_FILE_BYTES, SimulatedBackend
from neuron_device_plugin.sysfs_backend import CounterHealth, SysfsBackend
from neuron_device_plugin.topology import DiscoveryError

FakeSysfs = Callable[[int, int], tuple[Path, Path]]


@pytest.mark.parametrize(
    ("instance_type", "devices", "cores_per_device"),
    [("inf1.6xlarge", 4, 4), ("inf2.48xlarge", 12, 2), ("trn1.32xlarge", 16, 2)],
    ids=["inf1.6xlarge", "inf2.48xlarge", "trn1.32xlarge"],
)
def test_simulated_topology_from_instance_type(
    instance_type: str, devices: int, cores_per_device: int
) -> None:
    backend = SimulatedBackend.from_flags(
        instance_type=instance_type, devices=None, cores_per_device=None
    )
    topology = backend.discover()
    assert len(topology.devices) == devices
    assert topology.cores == tuple(range(devices * cores_per_device))
    last = topology.devices[-1]
    assert last.host_path == f"/dev/neuron{devices - 1}"
    assert last.cores[0] == (devices - 1) * cores_per_device
    # Deterministic: a second discovery gives the same node.
    assert backend.discover() == topology


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"instance_type": "inf9.huge", "devices": None, "cores_per_device": None}, "inf9.huge"),
        ({"instance_type": None, "devices": 4, "cores_per_device": None}, "--cores-per-device"),
        ({"instance_type": "inf1.xlarge", "devices": 2, "cores_per_device": None}, "not both"),
    ],
    ids=["unknown-instance-type", "devices-without-cores", "both-forms"],
)
def test_simulated_misconfiguration_says_what_to_do(
    kwargs: dict[str, object], message: str
) -> None:
    with pytest.raises(DiscoveryError, match=message):
        SimulatedBackend.from_flags(**kwargs)  # type: ignore[arg-type]


def test_simulated_zero_devices_is_refused_at_discovery() -> None:
    with pytest.raises(DiscoveryError, match="devices=0"):
        SimulatedBackend(0, 4).discover()


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (None, frozenset()),
        ("", frozenset()),
        ("3\n", frozenset({3})),
        ("# maintenance\n4-7\n9\n", frozenset({4, 5, 6, 7, 9})),
        ("2,99", frozenset({2})),
    ],
    ids=["no-file", "empty", "one-core", "range-and-comment", "unknown-core-ignored"],
)
def test_simulated_health_file(
    tmp_path: Path, content: str | None, expected: frozenset[int]
) -> None:
    health = tmp_path / "health"
    if content is not None:
        health.write_text(content)
    backend = SimulatedBackend(4, 4, health_file=health)
    assert backend.unhealthy_cores(backend.discover()) == expected


def test_simulated_bad_health_file_keeps_the_last_state(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    health = tmp_path / "health"
    backend = SimulatedBackend(4, 4, health_file=health)
    topology = backend.discover()
    health.write_text("5")
    assert backend.unhealthy_cores(topology) == {5}
    health.write_text("five")
    assert backend.unhealthy_cores(topology) == {5}
    assert "'five'" in caplog.text
    health.write_bytes(b"\xff\xfe")
    assert backend.unhealthy_cores(topology) == {5}
    assert f"cannot read health file {health}" in caplog.text
    health.write_text("")
    assert backend.unhealthy_cores(topology) == frozenset()


@pytest.mark.parametrize(
    ("devices", "cores_per_device"),
    [(4, 4), (12, 2)],
    ids=["inf1.6xlarge-4x4", "inf2.48xlarge-12x2"],
)
def test_sysfs_discovers_the_fake_tree(
    fake_sysfs: FakeSysfs, devices: int, cores_per_device: int
) -> None:
    sysfs, dev = fake_sysfs(devices, cores_per_device)
    topology = SysfsBackend(sysfs_root=sysfs, dev_root=dev).discover()
    assert [d.index for d in topology.devices] == list(range(devices))
    assert topology.cores == tuple(range(devices * cores_per_device))
    assert topology.devices[1].cores == tuple(range(cores_per_device, 2 * cores_per_device))
    assert topology.devices[-1].host_path == str(dev / f"neuron{devices - 1}")
    assert topology.devices[-1].numa_node == 1
    # Order is by device number, not by directory listing (neuron10 after neuron9).
    assert topology.devices[-1].index == devices - 1


def test_sysfs_finds_nothing_and_says_where_it_looked(tmp_path: Path) -> None:
    empty = tmp_path / "neuron_device"
    empty.mkdir()
    with pytest.raises(DiscoveryError) as err:
        SysfsBackend(sysfs_root=empty, dev_root=tmp_path / "dev").discover()
    assert str(empty) in str(err.value)
    assert "core_count" in str(err.value)
    assert "--backend simulated" in str(err.value)


def test_sysfs_missing_root_names_it(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(DiscoveryError, match="is not a directory"):
        SysfsBackend(sysfs_root=missing, dev_root=tmp_path).discover()


@pytest.mark.parametrize(
    ("content", "message"),
    [("four", "holds 'four'"), ("0", "expected a count >= 1"), (None, "cannot read")],
    ids=["not-a-number", "zero", "missing"],
)
def test_sysfs_bad_core_count(fake_sysfs: FakeSysfs, content: str | None, message: str) -> None:
    sysfs, dev = fake_sysfs(2, 2)
    core_count = sysfs / "neuron1" / "core_count"
    if content is None:
        core_count.unlink()
    else:
        core_count.write_text(content)
    with pytest.raises(DiscoveryError, match=message):
        SysfsBackend(sysfs_root=sysfs, dev_root=dev).discover()


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_sysfs_health_device_node_gone_and_back(fake_sysfs: FakeSysfs) -> None:
    sysfs, dev = fake_sysfs(4, 4)
    backend = SysfsBackend(sysfs_root=sysfs, dev_root=dev)
    topology = backend.discover()
    assert backend.unhealthy_cores(topology) == frozenset()
    (dev / "neuron2").unlink()
    assert backend.unhealthy_cores(topology) == {8, 9, 10, 11}
    (dev / "neuron2").write_text("")
    assert backend.unhealthy_cores(topology) == frozenset()


def test_sysfs_health_error_counter_rise_then_recovery(fake_sysfs: FakeSysfs) -> None:
    sysfs, dev = fake_sysfs(12, 2)
    clock = FakeClock()
    backend = SysfsBackend(sysfs_root=sysfs, dev_root=dev, recovery_s=30, clock=clock)
    topology = backend.discover()
    counter = sysfs / "neuron5" / "neuron_core1" / "stats" / "status" / "hw_error" / "total"
    assert backend.unhealthy_cores(topology) == frozenset()
    counter.write_text("3\n")
    clock.now += 5
    assert backend.unhealthy_cores(topology) == {11}
    clock.now += 20
    assert backend.unhealthy_cores(topology) == {11}, "still inside the quiet period"
    clock.now += 11
    assert backend.unhealthy_cores(topology) == frozenset(), "recovered after 30 s of quiet"


@pytest.mark.parametrize(
    ("readings", "healthy"),
    [
        ([(0, 0)], [True]),
        ([(0, 0), (1, 2)], [True, False]),
        ([(0, 5), (1, 5), (2, 5)], [True, True, True]),
        ([(0, 5), (1, 0)], [True, True]),
        ([(0, 0), (1, 1), (5, 1), (12, 1)], [True, False, False, True]),
    ],
    ids=["baseline", "rise", "flat", "reset-is-not-a-rise", "recovers-after-quiet"],
)
def test_counter_health(readings: list[tuple[float, int]], healthy: list[bool]) -> None:
    tracker = CounterHealth(recovery_s=10)
    got = [tracker.observe(0, {"hw_error": total}, now) for now, total in readings]
    assert got == healthy


def test_sysfs_reports_host_paths_but_checks_health_where_it_sees_the_nodes(
    fake_sysfs: FakeSysfs, tmp_path: Path
) -> None:
    # In the chart the host's /dev is mounted at /host/dev: health is read there, while the
    # DeviceSpecs handed to the kubelet must name the host's own /dev/neuronN.
    sysfs, dev = fake_sysfs(2, 2)
    backend = SysfsBackend(sysfs_root=sysfs, dev_root=dev, host_dev_root=Path("/dev"))
    topology = backend.discover()
    assert [d.host_path for d in topology.devices] == ["/dev/neuron0", "/dev/neuron1"]
    assert backend.unhealthy_cores(topology) == frozenset()
    (dev / "neuron1").unlink()
    assert backend.unhealthy_cores(topology) == frozenset({2, 3})


def _peak_bytes(call: Callable[[], object]) -> int:
    tracemalloc.start()
    try:
        call()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize(
    ("fill", "size"),
    [(b"\0", 64 * 1024 * 1024), (b"3\n", 8 * 1024 * 1024)],
    ids=["64MB-of-nothing", "8MB-of-valid-lines"],
)
def test_simulated_huge_health_file_is_refused_without_being_read(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, fill: bytes, size: int
) -> None:
    health = tmp_path / "health"
    backend = SimulatedBackend(4, 4, health_file=health)
    topology = backend.discover()
    health.write_text("5")
    assert backend.unhealthy_cores(topology) == {5}
    with health.open("wb") as out:
        if fill == b"\0":
            out.truncate(size)  # sparse: costs no disk, but read_text() would hold it all
        else:
            out.write(fill * (size // len(fill)))
    peak = _peak_bytes(lambda: backend.unhealthy_cores(topology))
    assert peak < 1024 * 1024, f"reading the health file peaked at {peak:,} bytes"
    assert backend.unhealthy_cores(topology) == {5}, "the last health is kept"
    assert f"larger than the {MAX_HEALTH_FILE_BYTES:,} bytes" in caplog.text


def test_sysfs_oversized_attribute_is_refused(fake_sysfs: FakeSysfs) -> None:
    sysfs, dev = fake_sysfs(1, 2)
    with (sysfs / "neuron0" / "core_count").open("wb") as out:
        out.truncate(64 * 1024 * 1024)
    with pytest.raises(DiscoveryError, match="larger than the 4,096 bytes"):
        SysfsBackend(sysfs_root=sysfs, dev_root=dev).discover()
