"""Which NeuronCore blocks a node publishes, in which order, packed into ResourceSlices.

Pure: no API calls.  The output is the JSON body of every ResourceSlice of the node's pool.

* Devices.  Every contiguous run of cores ``[first, first + size)`` is one device, so a claim for
  ``size`` cores can be placed wherever ``size`` free consecutive cores exist (the operator's
  planner produces pods of any size from 1 to a node's cores).  A node of N cores has
  N(N+1)/2 blocks: 136 for 16 cores, 2,080 for 64.
* Counters.  Each core is one shared counter of value 1, and a block consumes 1 from each core it
  covers: two blocks that overlap cannot both be allocated.  Counter sets hold at most 32
  counters, so cores are grouped 0-31, 32-63; a block consumes from at most 2 sets, which caps a
  node at 64 cores (trn2.48xlarge and inf1.24xlarge, the largest, have 64).
* Order.  kube-scheduler's allocator takes the first device that fits, walking a pool's slices
  by name and each slice's devices in order, so the published order is the placement policy.
  Blocks come smallest size first (a claim asking for "at least k cores" gets the smallest
  block that fits), and within one size by the two-ends rule of :func:`size_order`.
* Health.  A block that covers an unhealthy core carries a ``NoSchedule`` device taint; the
  scheduler does not allocate it until the taint is gone.

The API's limits (``k8s.io/api/resource/v1``) are checked by :func:`check_slices` before anything
is sent, so a layout the API server would refuse is refused here with the reason.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from neuron_cores import contiguous_runs
from neuron_device_plugin.topology import Topology

DRIVER_NAME = "neuroncores.neurongroups.dev"
DRIVER_VERSION = "0.1.0"
API_VERSION = "resource.k8s.io/v1"
UNHEALTHY_TAINT_KEY = f"{DRIVER_NAME}/unhealthy"
TAINT_EFFECT = "NoSchedule"

# The API's limits, from k8s.io/api/resource/v1/types.go (v0.36.1).
MAX_DEVICES_PER_SLICE = 64  # 128, but 64 once devices consume counters or carry taints
MAX_COUNTER_SETS_PER_SLICE = 8
MAX_COUNTERS_PER_SET = 32
MAX_COUNTER_SETS_PER_DEVICE = 2
MAX_ATTRIBUTES_PER_DEVICE = 32  # attributes and capacities together
MAX_TAINTS_PER_DEVICE = 16
MAX_NAME_LENGTH = 253  # a ResourceSlice's name and a pool's name (DNS subdomain)
MAX_LABEL_LENGTH = 63  # a device's name, a counter's and a counter set's (DNS label)
MAX_TAINT_VALUE_LENGTH = 63

MAX_CORES = MAX_COUNTERS_PER_SET * MAX_COUNTER_SETS_PER_DEVICE
COUNTER_SLICE_SUFFIX = "counters"
SLICE_INFIX = "neuroncores"


class LayoutError(ValueError):
    """A node shape this driver cannot publish, or slices that break the API's limits."""


@dataclass(frozen=True)
class NodeShape:
    """What a node has: its instance type and its Neuron devices of equal core counts."""

    instance_type: str
    devices: int
    cores_per_device: int

    def __post_init__(self) -> None:
        if self.devices <= 0 or self.cores_per_device <= 0:
            raise LayoutError(
                f"a node needs at least one Neuron device and one core per device, got "
                f"devices={self.devices} cores-per-device={self.cores_per_device}"
            )
        if self.cores > MAX_CORES:
            raise LayoutError(
                f"{self.instance_type or 'this node'} has {self.cores} NeuronCores; the DRA "
                f"driver publishes at most {MAX_CORES} (a block consumes per-core counters from "
                f"at most {MAX_COUNTER_SETS_PER_DEVICE} counter sets of {MAX_COUNTERS_PER_SET}). "
                "Use the device plugin for this node"
            )

    @property
    def cores(self) -> int:
        return self.devices * self.cores_per_device

    def device_of(self, core: int) -> int:
        return core // self.cores_per_device


def shape_from_topology(topology: Topology, instance_type: str) -> NodeShape:
    """The shape of a discovered node; refuses gaps in the core numbering and uneven devices."""
    cores = topology.cores
    per_device = {len(d.cores) for d in topology.devices}
    if cores != tuple(range(len(cores))) or len(per_device) != 1:
        raise LayoutError(
            f"the node's cores are not numbered 0-{len(cores) - 1} across devices of equal size "
            f"({topology.describe()}, cores {list(cores)}); the DRA driver publishes blocks of "
            "consecutive core indexes only"
        )
    for device in topology.devices:
        if any(core // len(device.cores) != device.index for core in device.cores):
            raise LayoutError(
                f"device {device.index} holds cores {list(device.cores)}, not the consecutive "
                "run its index implies; the DRA driver needs the regular layout"
            )
    return NodeShape(instance_type, len(topology.devices), per_device.pop())


@dataclass(frozen=True, order=True)
class Block:
    """``size`` consecutive cores starting at ``first``."""

    first: int
    size: int

    @property
    def last(self) -> int:
        return self.first + self.size - 1

    @property
    def cores(self) -> range:
        return range(self.first, self.first + self.size)

    @property
    def name(self) -> str:
        """The device name: ``cores-4-7`` for cores 4 to 7, ``core-3`` for core 3."""
        return f"core-{self.first}" if self.size == 1 else f"cores-{self.first}-{self.last}"


def _is_small(size: int, shape: NodeShape) -> bool:
    """Sizes that pack down from the last core (see :func:`size_order`)."""
    if size < shape.cores_per_device:
        return True
    return 4 * size <= shape.cores and size % shape.cores_per_device != 0


def size_order(size: int, shape: NodeShape) -> list[Block]:
    """Every block of ``size`` cores on the node, in the order the scheduler should try them.

    The two-ends rule: blocks smaller than a Neuron device, and other small blocks (at most a
    quarter of the node) that are not whole devices, are tried from the last core downwards;
    whole-device multiples and large blocks from core 0 upwards.  Small odd blocks come and go
    at one end, so they do not cut the long runs that large blocks need at the other end.
    Whole-device multiples try the blocks that start on a device boundary first (a 4-core block
    on inf1 fills one device rather than straddling two), then the others.
    ``bench/bench_dra_layout.py`` compares this with plain first-fit and with power-of-two
    alignment on random claim churn.
    """
    if not 1 <= size <= shape.cores:
        raise LayoutError(f"block size {size} is outside 1-{shape.cores} for this node")
    starts = list(range(shape.cores - size + 1))
    if _is_small(size, shape):
        starts.reverse()
    elif size % shape.cores_per_device == 0:
        per = shape.cores_per_device
        starts.sort(key=lambda first: (first % per != 0, first))
    return [Block(first, size) for first in starts]


def placement_order(shape: NodeShape) -> list[Block]:
    """Every contiguous block of the node: by size ascending, each size in :func:`size_order`."""
    return [block for size in range(1, shape.cores + 1) for block in size_order(size, shape)]


def first_fit(order: Iterable[Block], free: Collection[int], size: int) -> Block | None:
    """The block the scheduler allocates for a ``size``-core claim: the first all-free one."""
    for block in order:
        if block.size == size and all(core in free for core in block.cores):
            return block
    return None


def counter_set_name(index: int) -> str:
    first = index * MAX_COUNTERS_PER_SET
    return f"cores-{first}-{first + MAX_COUNTERS_PER_SET - 1}"


def counter_name(core: int) -> str:
    return f"core-{core}"


def counter_sets(shape: NodeShape) -> list[dict[str, Any]]:
    """One counter per core, value 1, in sets of :data:`MAX_COUNTERS_PER_SET`."""
    sets: list[dict[str, Any]] = []
    for index in range(0, shape.cores, MAX_COUNTERS_PER_SET):
        cores = range(index, min(index + MAX_COUNTERS_PER_SET, shape.cores))
        sets.append(
            {
                "name": counter_set_name(index // MAX_COUNTERS_PER_SET),
                "counters": {counter_name(c): {"value": "1"} for c in cores},
            }
        )
    return sets


def consumes_counters(block: Block) -> list[dict[str, Any]]:
    by_set: dict[int, list[int]] = {}
    for core in block.cores:
        by_set.setdefault(core // MAX_COUNTERS_PER_SET, []).append(core)
    return [
        {
            "counterSet": counter_set_name(index),
            "counters": {counter_name(c): {"value": "1"} for c in cores},
        }
        for index, cores in sorted(by_set.items())
    ]


def taint_value(bad: Sequence[int]) -> str:
    """The unhealthy cores of a block as a taint value: ``cores-3``, ``cores-3-4_7``."""
    text = "cores-" + "_".join(str(a) if a == b else f"{a}-{b}" for a, b in contiguous_runs(bad))
    if len(text) <= MAX_TAINT_VALUE_LENGTH:
        return text
    return f"{len(bad)}-cores-from-{min(bad)}"


def block_taints(block: Block, unhealthy: Collection[int]) -> list[dict[str, str]]:
    """The block's taint if it covers an unhealthy core.

    ``unhealthy`` may map each core to the RFC 3339 time it became unhealthy: the taint's
    ``timeAdded`` is then the earliest of its cores' (otherwise the API server sets it to the time
    of each write, so a rewrite for another core would move it).
    """
    bad = [core for core in block.cores if core in unhealthy]
    if not bad:
        return []
    taint = {"key": UNHEALTHY_TAINT_KEY, "value": taint_value(bad), "effect": TAINT_EFFECT}
    if isinstance(unhealthy, Mapping):
        taint["timeAdded"] = min(str(unhealthy[core]) for core in bad)
    return [taint]


def device_body(
    block: Block, shape: NodeShape, unhealthy: Collection[int], driver_version: str
) -> dict[str, Any]:
    first_device = shape.device_of(block.first)
    device: dict[str, Any] = {
        "name": block.name,
        "attributes": {
            "cores": {"int": block.size},
            "firstCore": {"int": block.first},
            "lastCore": {"int": block.last},
            "neuronDevice": {"int": first_device},
            "neuronDevices": {"int": shape.device_of(block.last) - first_device + 1},
            "instanceType": {"string": shape.instance_type},
            "driverVersion": {"version": driver_version},
        },
        "consumesCounters": consumes_counters(block),
    }
    taints = block_taints(block, unhealthy)
    if taints:
        device["taints"] = taints
    return device


def slice_names(node: str, device_slices: int) -> tuple[list[str], str]:
    """Names that sort in publishing order (the allocator walks a pool's slices by name)."""
    width = max(2, len(str(device_slices - 1)))
    longest = max(width, len(COUNTER_SLICE_SUFFIX))
    prefix = f"{node}-{SLICE_INFIX}"
    if len(prefix) + 1 + longest > MAX_NAME_LENGTH:
        digest = hashlib.sha256(node.encode()).hexdigest()[:10]
        keep = MAX_NAME_LENGTH - len(SLICE_INFIX) - len(digest) - longest - 3
        prefix = f"{node[:keep].rstrip('-.')}-{digest}-{SLICE_INFIX}"
    devices = [f"{prefix}-{i:0{width}d}" for i in range(device_slices)]
    return devices, f"{prefix}-{COUNTER_SLICE_SUFFIX}"


def pool_slices(
    node: str,
    shape: NodeShape,
    *,
    generation: int,
    unhealthy: Collection[int] = frozenset(),
    driver_version: str = DRIVER_VERSION,
    owner: Mapping[str, str] | None = None,
) -> list[dict[str, Any]]:
    """Every ResourceSlice of ``node``'s pool: device slices in order, then the counter slice.

    ``owner`` (``{"name": node, "uid": ...}``) makes the Node their owner, so deleting the node
    deletes its slices.
    """
    if not node:
        raise LayoutError("the node name is empty; give the node the slices are published for")
    if generation < 0:
        raise LayoutError(f"pool generation {generation} is negative")
    outside = sorted(c for c in unhealthy if not 0 <= c < shape.cores)
    if outside:
        raise LayoutError(f"unhealthy cores {outside} are outside this node's 0-{shape.cores - 1}")
    order = placement_order(shape)
    chunks = [
        order[i : i + MAX_DEVICES_PER_SLICE] for i in range(0, len(order), MAX_DEVICES_PER_SLICE)
    ]
    device_names, counter_slice = slice_names(node, len(chunks))
    pool = {"name": node, "generation": generation, "resourceSliceCount": len(chunks) + 1}

    def body(name: str, spec: dict[str, Any]) -> dict[str, Any]:
        metadata: dict[str, Any] = {"name": name}
        if owner is not None:
            metadata["ownerReferences"] = [
                {"apiVersion": "v1", "kind": "Node", "name": owner["name"], "uid": owner["uid"]}
            ]
        full = {"driver": DRIVER_NAME, "nodeName": node, "pool": dict(pool), **spec}
        return {
            "apiVersion": API_VERSION,
            "kind": "ResourceSlice",
            "metadata": metadata,
            "spec": full,
        }

    slices = [
        body(name, {"devices": [device_body(b, shape, unhealthy, driver_version) for b in chunk]})
        for name, chunk in zip(device_names, chunks, strict=True)
    ]
    slices.append(body(counter_slice, {"sharedCounters": counter_sets(shape)}))
    check_slices(slices)
    return slices


def _check_label(what: str, name: str) -> None:
    if not name or len(name) > MAX_LABEL_LENGTH:
        raise LayoutError(f"{what} {name!r} is not a DNS label of 1-{MAX_LABEL_LENGTH} characters")


def check_slices(slices: Sequence[Mapping[str, Any]]) -> None:
    """Refuse slices that break the API's limits on one pool, naming the limit and the slice."""
    if not slices:
        raise LayoutError("a pool needs at least one ResourceSlice")
    pools = {(s["spec"]["pool"]["name"], s["spec"]["pool"]["generation"]) for s in slices}
    if len(pools) != 1:
        raise LayoutError(f"slices of one publication disagree on pool and generation: {pools}")
    declared = {s["spec"]["pool"]["resourceSliceCount"] for s in slices}
    if declared != {len(slices)}:
        raise LayoutError(f"resourceSliceCount {sorted(declared)} but {len(slices)} slices")
    available: dict[str, set[str]] = {}
    device_names: set[str] = set()
    consumers: list[tuple[str, Mapping[str, Any]]] = []
    for item in slices:
        name = item["metadata"]["name"]
        if len(name) > MAX_NAME_LENGTH:
            raise LayoutError(f"slice name {name!r} is longer than {MAX_NAME_LENGTH} characters")
        spec = item["spec"]
        devices = spec.get("devices", [])
        sets = spec.get("sharedCounters", [])
        if devices and sets:
            raise LayoutError(f"slice {name} has both devices and counter sets; split them")
        if len(devices) > MAX_DEVICES_PER_SLICE:
            raise LayoutError(
                f"slice {name} has {len(devices)} devices; at most {MAX_DEVICES_PER_SLICE} "
                "when devices consume counters or carry taints"
            )
        if len(sets) > MAX_COUNTER_SETS_PER_SLICE:
            raise LayoutError(f"slice {name} has {len(sets)} counter sets, over the 8 allowed")
        for counter_set in sets:
            _check_label("counter set", counter_set["name"])
            if counter_set["name"] in available:
                raise LayoutError(f"counter set {counter_set['name']} is defined twice")
            if len(counter_set["counters"]) > MAX_COUNTERS_PER_SET:
                raise LayoutError(
                    f"counter set {counter_set['name']} has {len(counter_set['counters'])} "
                    f"counters, over the {MAX_COUNTERS_PER_SET} allowed"
                )
            for counter in counter_set["counters"]:
                _check_label("counter", counter)
            available[counter_set["name"]] = set(counter_set["counters"])
        for device in devices:
            _check_label("device", device["name"])
            if device["name"] in device_names:
                raise LayoutError(f"device {device['name']} is published twice in the pool")
            device_names.add(device["name"])
            fields = len(device.get("attributes", {})) + len(device.get("capacity", {}))
            if fields > MAX_ATTRIBUTES_PER_DEVICE:
                raise LayoutError(
                    f"device {device['name']} has {fields} attributes and capacities, over "
                    f"the {MAX_ATTRIBUTES_PER_DEVICE} allowed"
                )
            if len(device.get("taints", [])) > MAX_TAINTS_PER_DEVICE:
                raise LayoutError(f"device {device['name']} has more than 16 taints")
            consumers.append((name, device))
    for name, device in consumers:
        uses = device.get("consumesCounters", [])
        if len(uses) > MAX_COUNTER_SETS_PER_DEVICE:
            raise LayoutError(
                f"device {device['name']} in slice {name} consumes from {len(uses)} counter "
                f"sets, over the {MAX_COUNTER_SETS_PER_DEVICE} allowed"
            )
        for use in uses:
            known = available.get(use["counterSet"])
            if known is None:
                raise LayoutError(
                    f"device {device['name']} consumes from counter set {use['counterSet']}, "
                    "which no other slice of the pool defines"
                )
            if len(use["counters"]) > MAX_COUNTERS_PER_SET:
                raise LayoutError(f"device {device['name']} consumes over 32 counters of a set")
            missing = sorted(set(use["counters"]) - known)
            if missing:
                raise LayoutError(
                    f"device {device['name']} consumes counters {missing} that set "
                    f"{use['counterSet']} does not have"
                )
