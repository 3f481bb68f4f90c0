from __future__ import annotations

import pytest

from neuron_device_plugin.ids import (
    HEALTHY,
    UNHEALTHY,
    DuplicateDeviceIDError,
    UnknownDeviceIDError,
)
from neuron_device_plugin.policy import AllocationRequestError, best_fit
from neuron_device_plugin.resources import DeviceSpecInfo, ResourceKind, ResourceManager
from neuron_device_plugin.topology import contiguous_topology


def cores_manager(devices: int = 4, per: int = 4) -> ResourceManager:
    topology = contiguous_topology(devices, per)
    return ResourceManager("aws.amazon.com/neuroncore", ResourceKind.CORE, topology, best_fit)


def devices_manager(devices: int = 4, per: int = 4) -> ResourceManager:
    topology = contiguous_topology(devices, per)
    return ResourceManager("aws.amazon.com/neuron", ResourceKind.DEVICE, topology, best_fit)


def spec(index: int) -> DeviceSpecInfo:
    return DeviceSpecInfo(f"/dev/neuron{index}", f"/dev/neuron{index}", "rw")


@pytest.mark.parametrize(
    ("cores", "env", "device_nodes"),
    [
        ([4, 5, 6, 7], "4-7", [1]),
        ([3], "3", [0]),
        ([2, 3], "2-3", [0]),
        ([3, 4, 5], "3-5", [0, 1]),
        ([2, 9], "2,9", [0, 2]),
        ([9, 2, 3], "2,3,9", [0, 2]),
    ],
    ids=["one-device-range", "single", "pair", "across-devices", "comma-list", "unsorted-input"],
)
def test_core_allocation_env_and_device_nodes(
    cores: list[int], env: str, device_nodes: list[int]
) -> None:
    manager = cores_manager()
    allocation = manager.allocate([f"neuroncore-{c:04d}" for c in cores])
    assert allocation.envs == {"NEURON_RT_VISIBLE_CORES": env}
    assert allocation.devices == tuple(spec(d) for d in device_nodes)


@pytest.mark.parametrize(
    ("devices", "env"),
    [([2, 3], "2,3"), ([0], "0"), ([5, 1], "1,5")],
    ids=["pair", "one", "unsorted"],
)
def test_device_allocation_env(devices: list[int], env: str) -> None:
    manager = devices_manager(8, 2)
    allocation = manager.allocate([f"neuron-{d:04d}" for d in devices])
    assert allocation.envs == {"AWS_NEURON_VISIBLE_DEVICES": env}
    assert allocation.devices == tuple(spec(d) for d in sorted(devices))


@pytest.mark.parametrize(
    ("ids", "named", "not_named"),
    [
        (["neuroncore-0016"], ["'neuroncore-0016'"], []),
        (["neuron-0001", "neuroncore-0001", "bogus"], ["'neuron-0001'", "'bogus'"], ["0001'"]),
        ([], ["lists no device IDs"], []),
    ],
    ids=["beyond-the-node", "foreign-ids", "empty"],
)
def test_unknown_ids_are_named(ids: list[str], named: list[str], not_named: list[str]) -> None:
    with pytest.raises(UnknownDeviceIDError) as err:
        cores_manager().allocate(ids)
    for text in named:
        assert text in str(err.value)
    listed = str(err.value).rsplit(": ", 1)[-1]
    for text in not_named:
        assert f"'neuroncore-{text}" not in listed


def test_unhealthy_ids_are_refused_and_recover() -> None:
    manager = cores_manager()
    assert manager.set_unhealthy_cores({5})
    with pytest.raises(UnknownDeviceIDError, match=r"unhealthy.*'neuroncore-0005'"):
        manager.allocate(["neuroncore-0004", "neuroncore-0005"])
    assert manager.set_unhealthy_cores(set())
    assert manager.allocate(["neuroncore-0004", "neuroncore-0005"]).envs == {
        "NEURON_RT_VISIBLE_CORES": "4-5"
    }


def test_health_changes_bump_the_generation_only_on_change() -> None:
    manager = cores_manager()
    start = manager.generation
    assert manager.set_unhealthy_cores({1, 2})
    assert not manager.set_unhealthy_cores({2, 1})
    assert manager.generation == start + 1
    assert manager.wait_for_change(start, timeout=0) == start + 1
    health = {d.id: d.health for d in manager.devices()}
    assert health["neuroncore-0001"] == UNHEALTHY
    assert health["neuroncore-0000"] == HEALTHY
    assert manager.health_counts() == {HEALTHY: 14, UNHEALTHY: 2}


def test_a_device_is_unhealthy_while_any_of_its_cores_is() -> None:
    manager = devices_manager()
    assert manager.set_unhealthy_cores({6})
    assert [d.id for d in manager.devices() if d.health == UNHEALTHY] == ["neuron-0001"]
    # A core change inside the same unhealthy device changes nothing the kubelet sees.
    assert not manager.set_unhealthy_cores({5, 6})
    assert manager.set_unhealthy_cores(set())


@pytest.mark.parametrize(
    ("available", "must", "size", "expected"),
    [
        (range(16), [], 4, [0, 1, 2, 3]),
        ([0, 1, 4, 5, 6, 7, 8, 9, 12, 13, 14], [], 3, [12, 13, 14]),
        (range(8), [5], 2, [5, 6]),
    ],
    # must-include: 5-6 leaves 0-4 whole (the longer leftover), 4-5 would leave only 0-3.
    ids=["fresh-node", "best-fit-run", "must-include"],
)
def test_preferred_allocation_uses_ids(
    available: range | list[int], must: list[int], size: int, expected: list[int]
) -> None:
    manager = cores_manager()
    chosen = manager.preferred(
        [f"neuroncore-{i:04d}" for i in available], [f"neuroncore-{i:04d}" for i in must], size
    )
    assert chosen == [f"neuroncore-{i:04d}" for i in expected]
    assert manager.is_contiguous(chosen)


def core_ids(indexes: range | list[int]) -> list[str]:
    return [f"neuroncore-{i:04d}" for i in indexes]


@pytest.mark.parametrize(
    ("requests", "error", "message"),
    [
        ([["neuroncore-0001", "neuroncore-0001"]], DuplicateDeviceIDError, "'neuroncore-0001'"),
        ([["neuroncore-0001"] * 10_000], DuplicateDeviceIDError, "1 are repeated"),
        (
            [["neuroncore-0001", "neuroncore-\u0660\u0660\u0660\u0661"]],
            UnknownDeviceIDError,
            "has no such device IDs",
        ),
        ([["neuroncore-0002"], ["neuroncore-0002"]], DuplicateDeviceIDError, "more than one"),
    ],
    ids=["issue-13-pair", "ten-thousand-copies", "other-script-digits", "shared-by-containers"],
)
def test_repeated_ids_are_refused(
    requests: list[list[str]], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message) as err:
        cores_manager().allocate_containers(requests)
    assert len(str(err.value)) < 1024


@pytest.mark.parametrize(
    ("ids", "ends"),
    [
        (core_ids(range(10_000)), "'neuroncore-0020' and 9,979 more"),
        (["x" * 1_000_000], "... (1,000,002 characters)"),
    ],
    ids=["ten-thousand-ids", "one-megabyte-id"],
)
def test_refusals_name_the_first_ids_and_count_the_rest(ids: list[str], ends: str) -> None:
    with pytest.raises(UnknownDeviceIDError) as err:
        cores_manager().allocate(ids)
    assert str(err.value).endswith(ends)
    assert len(str(err.value)) < 1024


@pytest.mark.parametrize(
    ("available", "must", "size", "error", "message"),
    [
        (["neuroncore-0001", "neuroncore-0001"], [], 1, DuplicateDeviceIDError, "available"),
        (
            core_ids(range(4)),
            ["neuroncore-0002", "neuroncore-0002"],
            2,
            DuplicateDeviceIDError,
            "must-include device IDs must each be listed once",
        ),
        (
            core_ids(range(4)),
            ["neuroncore-0009"],
            1,
            UnknownDeviceIDError,
            "must also be available",
        ),
        (core_ids(range(10_000)), [], 1, UnknownDeviceIDError, "9,984 are not among the 16"),
        (core_ids(range(4)), [], 10_000, AllocationRequestError, "between 1 and the 4"),
        (core_ids(range(4)), [], -1, AllocationRequestError, "between 1 and the 4"),
    ],
    ids=[
        "repeated-available",
        "repeated-must-include",
        "must-include-not-available",
        "ten-thousand-available",
        "size-above-available",
        "negative-size",
    ],
)
def test_preferred_allocation_refuses_bad_requests(
    available: list[str], must: list[str], size: int, error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message) as err:
        cores_manager().preferred(available, must, size)
    assert len(str(err.value)) < 1024
