"""The pure layout: which blocks every instance type publishes, their order, and the API limits."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from neuron_cores import INSTANCE_TYPES, contiguous_runs
from neuron_device_plugin.topology import NeuronDevice, Topology, contiguous_topology
from neuron_dra_driver.layout import (
    DRIVER_NAME,
    MAX_COUNTERS_PER_SET,
    MAX_DEVICES_PER_SLICE,
    MAX_NAME_LENGTH,
    UNHEALTHY_TAINT_KEY,
    Block,
    LayoutError,
    NodeShape,
    check_slices,
    first_fit,
    placement_order,
    pool_slices,
    shape_from_topology,
    size_order,
    slice_names,
    taint_value,
)

SHAPES = {
    name: NodeShape(name, t.devices, t.cores_per_device) for name, t in INSTANCE_TYPES.items()
}
INF1_6XL = SHAPES["inf1.6xlarge"]


def _devices(slices: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [d for s in slices for d in s["spec"].get("devices", [])]


def _block_of(device: dict[str, Any]) -> Block:
    attrs = device["attributes"]
    return Block(attrs["firstCore"]["int"], attrs["cores"]["int"])


@pytest.mark.parametrize("name", sorted(SHAPES), ids=sorted(SHAPES))
def test_every_instance_type_publishes_every_contiguous_block_within_limits(name: str) -> None:
    shape = SHAPES[name]
    slices = pool_slices("node-a", shape, generation=3)
    n = shape.cores
    devices = _devices(slices)
    blocks = [_block_of(d) for d in devices]
    assert sorted(blocks) == sorted(Block(f, k) for k in range(1, n + 1) for f in range(n - k + 1))
    assert len(devices) == n * (n + 1) // 2
    device_slices = -(-len(devices) // MAX_DEVICES_PER_SLICE)
    assert len(slices) == device_slices + 1
    for item in slices:
        assert item["apiVersion"] == "resource.k8s.io/v1"
        assert item["spec"]["driver"] == DRIVER_NAME
        assert item["spec"]["nodeName"] == "node-a"
        assert item["spec"]["pool"] == {
            "name": "node-a",
            "generation": 3,
            "resourceSliceCount": len(slices),
        }
    counter_sets = slices[-1]["spec"]["sharedCounters"]
    assert "devices" not in slices[-1]["spec"]
    assert sum(len(s["counters"]) for s in counter_sets) == n
    assert all(len(s["counters"]) <= MAX_COUNTERS_PER_SET for s in counter_sets)
    check_slices(slices)  # the same limits the API server applies


@pytest.mark.parametrize("name", sorted(SHAPES), ids=sorted(SHAPES))
def test_each_block_consumes_exactly_its_cores_and_says_so(name: str) -> None:
    shape = SHAPES[name]
    for device in _devices(pool_slices("n", shape, generation=0)):
        block = _block_of(device)
        consumed = [c for use in device["consumesCounters"] for c in use["counters"]]
        assert consumed == [f"core-{c}" for c in block.cores]
        assert 1 <= len(device["consumesCounters"]) <= 2
        attrs = device["attributes"]
        assert attrs["lastCore"] == {"int": block.last}
        assert attrs["neuronDevice"] == {"int": block.first // shape.cores_per_device}
        spanned = block.last // shape.cores_per_device - block.first // shape.cores_per_device + 1
        assert attrs["neuronDevices"] == {"int": spanned}
        assert attrs["instanceType"] == {"string": name}
        assert attrs["driverVersion"] == {"version": "0.1.0"}
        assert device["name"] == block.name


def test_published_order_is_size_ascending_then_the_two_ends_rule() -> None:
    names = [d["name"] for d in _devices(pool_slices("n", INF1_6XL, generation=0))]
    # 1-3 core blocks (smaller than a device) from the last core down...
    assert names[:17] == [f"core-{c}" for c in range(15, -1, -1)] + ["cores-14-15"]
    # ...whole devices from core 0 up, device-aligned first...
    fours = [
        n for n in names if n.count("-") == 2 and int(n.split("-")[2]) - int(n.split("-")[1]) == 3
    ]
    assert fours[:5] == ["cores-0-3", "cores-4-7", "cores-8-11", "cores-12-15", "cores-1-4"]
    # ...and large odd blocks (over a quarter of the node) from core 0 up.
    assert [b.first for b in size_order(6, INF1_6XL)] == list(range(11))


@pytest.mark.parametrize(
    ("shape", "claims", "expected"),
    [
        (INF1_6XL, [6, 4, 2, 2, 1, 1], [(0, 5), (8, 11), (14, 15), (12, 13), (7, 7), (6, 6)]),
        (INF1_6XL, [4, 4, 4, 4], [(0, 3), (4, 7), (8, 11), (12, 15)]),
        (INF1_6XL, [1, 4, 3], [(15, 15), (0, 3), (12, 14)]),
        (SHAPES["inf2.48xlarge"], [12, 12, 1], [(0, 11), (12, 23), None]),
        (
            SHAPES["trn2.48xlarge"],
            [33, 16, 8, 4, 2, 1],
            [(0, 32), (36, 51), (52, 59), (60, 63), (34, 35), (33, 33)],
        ),
    ],
    ids=["seed-6-4-2-2-1-1", "four-whole-devices", "small-then-device", "inf2-full", "trn2-64"],
)
def test_first_fit_over_the_published_order_places_claims_as_designed(
    shape: NodeShape, claims: list[int], expected: list[tuple[int, int] | None]
) -> None:
    order = placement_order(shape)
    free = set(range(shape.cores))
    got: list[tuple[int, int] | None] = []
    for size in claims:
        block = first_fit(order, free, size)
        got.append(None if block is None else (block.first, block.last))
        if block is not None:
            free -= set(block.cores)
    assert got == expected


@settings(max_examples=60, deadline=None)
@given(
    name=st.sampled_from(sorted(SHAPES)),
    data=st.data(),
)
def test_any_size_fits_wherever_a_free_run_of_that_size_exists(
    name: str, data: st.DataObject
) -> None:
    shape = SHAPES[name]
    free = data.draw(st.frozensets(st.integers(0, shape.cores - 1)), label="free cores")
    order = placement_order(shape)
    longest = max((b - a + 1 for a, b in contiguous_runs(free)), default=0)
    for size in range(1, shape.cores + 1):
        block = first_fit(order, free, size)
        if size <= longest:
            assert block is not None and block.size == size and set(block.cores) <= free
        else:
            assert block is None


@settings(max_examples=40, deadline=None)
@given(name=st.sampled_from(sorted(SHAPES)), data=st.data())
def test_allocations_in_published_order_stay_disjoint_through_churn(
    name: str, data: st.DataObject
) -> None:
    shape = SHAPES[name]
    order = placement_order(shape)
    free = set(range(shape.cores))
    live: list[Block] = []
    for _ in range(data.draw(st.integers(1, 30), label="steps")):
        release: bool = data.draw(st.booleans(), label="release")
        if live and release:
            gone = live.pop(data.draw(st.integers(0, len(live) - 1), label="which"))
            free |= set(gone.cores)
            continue
        size = data.draw(st.integers(1, shape.cores), label="size")
        block = first_fit(order, free, size)
        if block is None:
            continue
        assert set(block.cores) <= free
        free -= set(block.cores)
        live.append(block)
    taken = [c for b in live for c in b.cores]
    assert len(taken) == len(set(taken)) == shape.cores - len(free)


@pytest.mark.parametrize(
    ("unhealthy", "core"),
    [({3}, 3), ({0}, 0), ({15}, 15), ({5, 6}, 5)],
    ids=["core-3", "first-core", "last-core", "two-cores"],
)
def test_an_unhealthy_core_taints_every_block_covering_it_and_only_those(
    unhealthy: set[int], core: int
) -> None:
    devices = _devices(pool_slices("n", INF1_6XL, generation=1, unhealthy=unhealthy))
    for device in devices:
        block = _block_of(device)
        covers = bool(unhealthy & set(block.cores))
        assert ("taints" in device) == covers, device["name"]
        if covers:
            (taint,) = device["taints"]
            assert taint["key"] == UNHEALTHY_TAINT_KEY
            assert taint["effect"] == "NoSchedule"
    tainted = sum("taints" in d for d in devices)
    if len(unhealthy) == 1:
        assert tainted == (core + 1) * (INF1_6XL.cores - core)


@pytest.mark.parametrize(
    ("bad", "value"),
    [
        ([3], "cores-3"),
        ([3, 4], "cores-3-4"),
        ([3, 4, 7], "cores-3-4_7"),
        (list(range(0, 64, 2)), "32-cores-from-0"),
    ],
    ids=["one", "run", "run-and-one", "too-long-for-a-label"],
)
def test_taint_value_is_a_valid_label_value(bad: list[int], value: str) -> None:
    assert taint_value(bad) == value
    assert len(value) <= 63


def test_slice_names_sort_in_publishing_order_and_fit_the_name_limit() -> None:
    devices, counters = slice_names("ip-10-0-0-1.ec2.internal", 33)
    assert devices == sorted(devices) and len(set(devices)) == 33
    assert devices[0] == "ip-10-0-0-1.ec2.internal-neuroncores-00"
    assert counters == "ip-10-0-0-1.ec2.internal-neuroncores-counters"
    long_node = "a" * 250
    devices, counters = slice_names(long_node, 33)
    assert all(len(n) <= MAX_NAME_LENGTH for n in [*devices, counters])
    assert devices == sorted(devices) and len({*devices, counters}) == 34
    slices = pool_slices(long_node, SHAPES["trn2.48xlarge"], generation=0)
    assert slices[0]["spec"]["pool"]["name"] == long_node


def test_owner_reference_makes_the_node_own_every_slice() -> None:
    slices = pool_slices("n", INF1_6XL, generation=0, owner={"name": "n", "uid": "u-1"})
    for item in slices:
        assert item["metadata"]["ownerReferences"] == [
            {"apiVersion": "v1", "kind": "Node", "name": "n", "uid": "u-1"}
        ]


def _mutate(slices: list[dict[str, Any]], how: str) -> None:
    devices = slices[0]["spec"]["devices"]
    if how == "too-many-devices":
        devices.extend(copy.deepcopy(slices[1]["spec"]["devices"]))
    elif how == "unknown-counter-set":
        devices[0]["consumesCounters"][0]["counterSet"] = "nowhere"
    elif how == "unknown-counter":
        devices[0]["consumesCounters"][0]["counters"]["core-99"] = {"value": "1"}
    elif how == "three-counter-sets":
        devices[0]["consumesCounters"] *= 3
    elif how == "devices-and-counters":
        slices[0]["spec"]["sharedCounters"] = [{"name": "x", "counters": {}}]
    elif how == "wrong-slice-count":
        for item in slices:
            item["spec"]["pool"]["resourceSliceCount"] = 9
    elif how == "duplicate-device":
        devices[1]["name"] = devices[0]["name"]
    elif how == "mixed-generations":
        slices[0]["spec"]["pool"]["generation"] = 7
    elif how == "too-many-attributes":
        devices[0]["attributes"].update({f"a{i}": {"int": i} for i in range(40)})
    elif how == "over-32-counters":
        slices[-1]["spec"]["sharedCounters"][0]["counters"].update(
            {f"extra-{i}": {"value": "1"} for i in range(40)}
        )


MUTATIONS = {
    "too-many-devices": "devices; at most 64",
    "unknown-counter-set": "which no other slice of the pool defines",
    "unknown-counter": "does not have",
    "three-counter-sets": "over the 2 allowed",
    "devices-and-counters": "both devices and counter sets",
    "wrong-slice-count": "resourceSliceCount",
    "duplicate-device": "published twice",
    "mixed-generations": "disagree on pool and generation",
    "too-many-attributes": "attributes and capacities",
    "over-32-counters": "counters, over the 32 allowed",
}


@pytest.mark.parametrize("how", sorted(MUTATIONS), ids=sorted(MUTATIONS))
def test_check_slices_refuses_what_the_api_server_would(how: str) -> None:
    slices = json.loads(json.dumps(pool_slices("n", INF1_6XL, generation=0)))
    check_slices(slices)
    _mutate(slices, how)
    with pytest.raises(LayoutError, match=MUTATIONS[how]):
        check_slices(slices)


@pytest.mark.parametrize(
    ("devices", "per", "message"),
    [(17, 4, "68 NeuronCores; the DRA driver publishes at most 64"), (0, 4, "at least one")],
    ids=["over-64-cores", "no-devices"],
)
def test_node_shape_refuses_what_cannot_be_published(devices: int, per: int, message: str) -> None:
    with pytest.raises(LayoutError, match=message):
        NodeShape("x", devices, per)


def test_pool_slices_refuse_bad_input_with_the_value() -> None:
    with pytest.raises(LayoutError, match=r"unhealthy cores \[16\] are outside"):
        pool_slices("n", INF1_6XL, generation=0, unhealthy={16})
    with pytest.raises(LayoutError, match="node name is empty"):
        pool_slices("", INF1_6XL, generation=0)
    with pytest.raises(LayoutError, match="generation -1"):
        pool_slices("n", INF1_6XL, generation=-1)


def test_shape_from_topology_takes_the_regular_layout_and_refuses_gaps() -> None:
    assert shape_from_topology(contiguous_topology(4, 4), "inf1.6xlarge") == INF1_6XL
    gappy = Topology(
        (NeuronDevice(0, (0, 1), "/dev/neuron0"), NeuronDevice(1, (4, 5), "/dev/neuron1"))
    )
    with pytest.raises(LayoutError, match="not numbered 0-3"):
        shape_from_topology(gappy, "x")
    swapped = Topology(
        (NeuronDevice(0, (2, 3), "/dev/neuron0"), NeuronDevice(1, (0, 1), "/dev/neuron1"))
    )
    with pytest.raises(LayoutError, match="device 0 holds cores"):
        shape_from_topology(swapped, "x")


def test_a_mapping_of_unhealthy_cores_sets_each_taints_time_added_to_the_earliest() -> None:
    since = {3: "2026-01-01T00:05:00Z", 4: "2026-01-01T00:01:00Z"}
    devices = {
        d["name"]: d for d in _devices(pool_slices("n", INF1_6XL, generation=1, unhealthy=since))
    }
    assert devices["core-3"]["taints"][0]["timeAdded"] == "2026-01-01T00:05:00Z"
    assert devices["cores-3-4"]["taints"][0]["timeAdded"] == "2026-01-01T00:01:00Z"
    plain = _devices(pool_slices("n", INF1_6XL, generation=1, unhealthy={3}))
    assert all("timeAdded" not in t for d in plain for t in d.get("taints", []))
