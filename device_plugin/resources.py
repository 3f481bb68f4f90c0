"""The resource manager: the devices one plugin advertises, their health, and what Allocate returns.

The gRPC servicer is deliberately thin; everything it answers comes from here, as plain data, so
the rules (ID scheme, health roll-up, env var forms, device nodes to mount) are tested without a
socket.  One manager serves one extended resource: ``core`` (one ID per NeuronCore) or ``device``
(one ID per Neuron device, carrying all of its cores).

Both resources describe the same silicon, so when a node offers both (``--resources both``) a
:class:`SiliconLedger` keeps them exclusive: the cores one resource has handed out are reported
``Unhealthy`` on the other (a core resource loses the cores of a device handed out whole; the
device resource loses every device with a core handed out), and Allocate refuses them.  The API has
no "deallocate", so holds end only when a PodResources listing (the kubelet's record of what running
containers hold) no longer shows them; without one they last until the plugin restarts.
"""

from __future__ import annotations

import enum
import threading
import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from neuron_cores import VISIBLE_CORES_ENV, VISIBLE_DEVICES_ENV, format_core_list, is_contiguous
from neuron_device_plugin.ids import (
    CORE_ID_PREFIX,
    DEVICE_ID_PREFIX,
    HEALTHY,
    UNHEALTHY,
    DeviceInUseError,
    DuplicateDeviceIDError,
    UnknownDeviceIDError,
    core_id,
    describe_values,
    device_id,
    duplicates,
    parse_id,
)
from neuron_device_plugin.policy import AllocationRequestError, Policy
from neuron_device_plugin.topology import NeuronDevice, Topology

DEVICE_PERMISSIONS = "rw"


# How long an allocation this plugin made counts as held although no PodResources listing shows
# it: the kubelet records an allocation right after Allocate answers, so a listing taken later
# than this and still without it means the container is gone (or was never admitted).
RELEASE_GRACE_S = 30.0


class ResourceKind(enum.Enum):
    CORE = "core"
    DEVICE = "device"

    @property
    def other(self) -> ResourceKind:
        return ResourceKind.DEVICE if self is ResourceKind.CORE else ResourceKind.CORE


class ResourcesMode(enum.Enum):
    """Which resources a node offers (``--resources``)."""

    BOTH = "both"
    CORE = "neuroncore"
    DEVICE = "neuron"

    @property
    def kinds(self) -> tuple[ResourceKind, ...]:
        if self is ResourcesMode.CORE:
            return (ResourceKind.CORE,)
        if self is ResourcesMode.DEVICE:
            return (ResourceKind.DEVICE,)
        return (ResourceKind.CORE, ResourceKind.DEVICE)


def parse_resources_mode(value: str) -> ResourcesMode:
    try:
        return ResourcesMode(value)
    except ValueError:
        known = ", ".join(m.value for m in ResourcesMode)
        raise ValueError(
            f"--resources {value!r} is not known; choose one of: {known} (both: the two "
            "resources, kept exclusive; neuroncore or neuron: that resource only)"
        ) from None


def cores_of_ids(kind: ResourceKind, ids: Iterable[str], topology: Topology) -> frozenset[int]:
    """The cores behind IDs of ``kind`` on this node; IDs that are not such IDs are skipped."""
    known_cores = frozenset(topology.cores)
    known_devices = {d.index: d for d in topology.devices}
    cores: set[int] = set()
    for value in ids:
        if kind is ResourceKind.CORE:
            index = parse_id(value, CORE_ID_PREFIX)
            if index is not None and index in known_cores:
                cores.add(index)
        else:
            index = parse_id(value, DEVICE_ID_PREFIX)
            if index is not None and index in known_devices:
                cores.update(known_devices[index].cores)
    return frozenset(cores)


class SiliconLedger:
    """Which cores each resource has handed out, so that the other resource stops offering them.

    A hold starts when Allocate succeeds (:meth:`claim`, which checks and records in one step, so
    two resources allocating at once cannot both win) and ends when a PodResources listing newer
    than the hold's grace period no longer shows it (:meth:`apply_listing`).  Listeners (the
    managers) are called with the kind whose holds changed, so the other kind resends its list.
    """

    def __init__(
        self, *, grace_s: float = RELEASE_GRACE_S, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.grace_s = grace_s
        self.clock = clock
        self._lock = threading.Lock()
        self._listed: dict[ResourceKind, frozenset[int]] = {k: frozenset() for k in ResourceKind}
        # Per core, when this plugin last handed it out: bounded by the node's cores, however
        # many allocations are made without a listing to end them.
        self._recent: dict[ResourceKind, dict[int, float]] = {k: {} for k in ResourceKind}
        self._listeners: list[Callable[[ResourceKind], None]] = []
        self.listings = 0

    def add_listener(self, listener: Callable[[ResourceKind], None]) -> None:
        self._listeners.append(listener)

    def _held_locked(self, kind: ResourceKind) -> frozenset[int]:
        return self._listed[kind].union(self._recent[kind])

    def held(self, kind: ResourceKind) -> frozenset[int]:
        """Cores that resource ``kind`` has handed out and not (as far as we know) got back."""
        with self._lock:
            return self._held_locked(kind)

    def blocked(self, kind: ResourceKind) -> frozenset[int]:
        """Cores resource ``kind`` must not offer: those the other resource holds."""
        return self.held(kind.other)

    def claim(self, kind: ResourceKind, cores: frozenset[int]) -> frozenset[int]:
        """Hold ``cores`` for ``kind`` unless the other resource holds any; return the conflicts."""
        with self._lock:
            conflicts = cores & self._held_locked(kind.other)
            if conflicts:
                return conflicts
            before = self._held_locked(kind)
            now = self.clock()
            self._recent[kind].update(dict.fromkeys(cores, now))
            changed = self._held_locked(kind) != before
        if changed:
            self._notify([kind])
        return frozenset()

    def apply_listing(self, held: Mapping[ResourceKind, frozenset[int]], listed_at: float) -> bool:
        """What running containers hold, listed at ``listed_at`` (clock time); True if changed.

        Holds made within the grace period before the listing stay: the kubelet may not have
        recorded them yet.
        """
        cutoff = listed_at - self.grace_s
        with self._lock:
            before = {k: self._held_locked(k) for k in ResourceKind}
            for kind in ResourceKind:
                self._listed[kind] = frozenset(held.get(kind, frozenset()))
                self._recent[kind] = {c: t for c, t in self._recent[kind].items() if t >= cutoff}
            changed = [k for k in ResourceKind if self._held_locked(k) != before[k]]
            self.listings += 1
        self._notify(changed)
        return bool(changed)

    def _notify(self, kinds: Iterable[ResourceKind]) -> None:
        for kind in kinds:
            for listener in self._listeners:
                listener(kind)


@dataclass(frozen=True)
class AdvertisedDevice:
    """One entry of the ListAndWatch list."""

    id: str
    health: str
    numa_node: int | None = None


@dataclass(frozen=True)
class DeviceSpecInfo:
    container_path: str
    host_path: str
    permissions: str


@dataclass(frozen=True)
class ContainerAllocation:
    """What Allocate answers for one container."""

    envs: dict[str, str]
    devices: tuple[DeviceSpecInfo, ...]
    mounts: tuple[tuple[str, str, bool], ...] = ()
    annotations: dict[str, str] = field(default_factory=dict)


class ResourceManager:
    """Devices, health and allocation for one resource; safe to call from many gRPC threads."""

    def __init__(
        self,
        resource_name: str,
        kind: ResourceKind,
        topology: Topology,
        policy: Policy,
        ledger: SiliconLedger | None = None,
    ) -> None:
        self.resource_name = resource_name
        self.kind = kind
        self.topology = topology
        self.policy = policy
        self._prefix = CORE_ID_PREFIX if kind is ResourceKind.CORE else DEVICE_ID_PREFIX
        indexes = (
            topology.cores
            if kind is ResourceKind.CORE
            else tuple(d.index for d in topology.devices)
        )
        self._make_id = core_id if kind is ResourceKind.CORE else device_id
        self._indexes = frozenset(indexes)
        self._unhealthy: frozenset[int] = frozenset()
        self._generation = 0
        self._changed = threading.Condition()
        self.ledger = ledger
        if ledger is not None:
            ledger.add_listener(self._holds_changed)

    # --- IDs ------------------------------------------------------------------------------------

    def _device_for(self, index: int) -> NeuronDevice:
        if self.kind is ResourceKind.CORE:
            return self.topology.device_of_core(index)
        return self.topology.device(index)

    def ids(self) -> list[str]:
        return [self._make_id(i) for i in sorted(self._indexes)]

    def _indexes_of(self, ids: Sequence[str], what: str = "device IDs") -> list[int]:
        """Indexes of known IDs, each once.

        UnknownDeviceIDError for IDs that are not ours, DuplicateDeviceIDError for IDs listed more
        than once (the kubelet never does; a repeat would hand a core out twice, as ``1,1``).
        """
        parsed = [parse_id(i, self._prefix) for i in ids]
        unknown = [
            i for i, p in zip(ids, parsed, strict=True) if p is None or p not in self._indexes
        ]
        if unknown:
            raise UnknownDeviceIDError(
                unknown,
                f"{self.resource_name} has no such {what} (of {len(ids):,} listed, "
                f"{len(unknown):,} are not among the {len(self._indexes)} it advertises, "
                f"{self._describe_ids()})",
            )
        repeated = duplicates(ids)
        if repeated:
            raise DuplicateDeviceIDError(
                repeated,
                f"{self.resource_name}: {what} must each be listed once; {len(repeated):,} "
                "are repeated",
            )
        return [p for p in parsed if p is not None]

    def _describe_ids(self) -> str:
        ids = self.ids()
        return f"{ids[0]} .. {ids[-1]}" if len(ids) > 2 else ", ".join(ids)

    # --- health ---------------------------------------------------------------------------------

    def _indexes_of_cores(self, cores: Collection[int]) -> frozenset[int]:
        """Our indexes that touch any of ``cores``."""
        if self.kind is ResourceKind.CORE:
            return frozenset(c for c in cores if c in self._indexes)
        wanted = frozenset(cores)
        return frozenset(d.index for d in self.topology.devices if not wanted.isdisjoint(d.cores))

    def _cores_of(self, indexes: Iterable[int]) -> frozenset[int]:
        if self.kind is ResourceKind.CORE:
            return frozenset(indexes)
        return frozenset(c for i in indexes for c in self._device_for(i).cores)

    def in_use_elsewhere(self) -> frozenset[int]:
        """Our indexes whose silicon the node's other resource has handed out."""
        if self.ledger is None:
            return frozenset()
        return self._indexes_of_cores(self.ledger.blocked(self.kind))

    def _unavailable(self) -> frozenset[int]:
        with self._changed:
            unhealthy = self._unhealthy
        return unhealthy | self.in_use_elsewhere()

    def _holds_changed(self, kind: ResourceKind) -> None:
        """The ledger's holds for ``kind`` changed: resend our list if that is the other kind."""
        if kind is not self.kind.other:
            return
        with self._changed:
            self._generation += 1
            self._changed.notify_all()

    def set_unhealthy_cores(self, cores: Collection[int]) -> bool:
        """Apply the backend's unhealthy cores; True (and watchers woken) when anything changed."""
        unhealthy = self._indexes_of_cores(frozenset(cores))
        with self._changed:
            if unhealthy == self._unhealthy:
                return False
            self._unhealthy = unhealthy
            self._generation += 1
            self._changed.notify_all()
        return True

    @property
    def generation(self) -> int:
        with self._changed:
            return self._generation

    def wait_for_change(self, seen_generation: int, timeout: float) -> int:
        """Block until the generation moves past ``seen_generation`` or ``timeout``; return it."""
        with self._changed:
            self._changed.wait_for(lambda: self._generation != seen_generation, timeout)
            return self._generation

    def wake_watchers(self) -> None:
        """Wake every ListAndWatch stream (used at shutdown so they notice and end)."""
        with self._changed:
            self._changed.notify_all()

    def devices(self) -> list[AdvertisedDevice]:
        """The ListAndWatch list: Unhealthy for bad hardware and for silicon in use elsewhere."""
        unhealthy = self._unavailable()
        return [
            AdvertisedDevice(
                id=self._make_id(i),
                health=UNHEALTHY if i in unhealthy else HEALTHY,
                numa_node=self._device_for(i).numa_node,
            )
            for i in sorted(self._indexes)
        ]

    def health_counts(self) -> dict[str, int]:
        bad = len(self._unavailable())
        return {HEALTHY: len(self._indexes) - bad, UNHEALTHY: bad}

    # --- allocation -----------------------------------------------------------------------------

    def preferred(
        self, available: Sequence[str], must_include: Sequence[str], size: int
    ) -> list[str]:
        """GetPreferredAllocation for one container, by the configured policy."""
        free = self._indexes_of(available, "available device IDs")
        must = self._indexes_of(must_include, "must-include device IDs")
        offered = set(available)
        outside = [i for i in must_include if i not in offered]
        if outside:
            raise UnknownDeviceIDError(
                outside,
                f"{self.resource_name}: must-include device IDs must also be available; "
                f"{len(outside):,} are not",
            )
        try:
            chosen = self.policy(free, must, size)
        except AllocationRequestError as err:
            raise AllocationRequestError(f"{self.resource_name}: {err}") from None
        return [self._make_id(i) for i in chosen]

    def allocate(self, ids: Sequence[str]) -> ContainerAllocation:
        """Allocate for one container: env vars and the device nodes that hold its indexes."""
        return self.allocate_containers([ids])[0]

    def allocate_containers(self, requests: Sequence[Sequence[str]]) -> list[ContainerAllocation]:
        """Allocate one request's containers: all checked first, then held as one claim.

        An ID in two containers is refused like an ID repeated within one: it would hand the same
        core to both.
        """
        per_container = [self._checked_indexes(ids) for ids in requests]
        everything = [i for ids in requests for i in ids]
        repeated = duplicates(everything)
        if repeated:
            raise DuplicateDeviceIDError(
                repeated,
                f"{self.resource_name}: an allocation's containers must not share device IDs; "
                f"{len(repeated):,} are listed for more than one",
            )
        if self.ledger is not None:
            indexes = [i for chosen in per_container for i in chosen]
            conflicts = self.ledger.claim(self.kind, self._cores_of(indexes))
            if conflicts:
                taken = sorted(self._indexes_of_cores(conflicts) & frozenset(indexes))
                raise DeviceInUseError(
                    [self._make_id(i) for i in taken],
                    f"{self.resource_name} cannot allocate device IDs whose NeuronCores "
                    f"(cores {describe_values(sorted(conflicts))}) the node's other Neuron "
                    "resource has handed out; the two resources share the silicon",
                )
        return [self._answer(indexes) for indexes in per_container]

    def _checked_indexes(self, ids: Sequence[str]) -> list[int]:
        if not ids:
            raise UnknownDeviceIDError(
                [], f"{self.resource_name}: an allocation lists no device IDs"
            )
        indexes = self._indexes_of(ids)
        with self._changed:
            sick = [self._make_id(i) for i in sorted(indexes) if i in self._unhealthy]
        if sick:
            raise UnknownDeviceIDError(
                sick, f"{self.resource_name} cannot allocate unhealthy device IDs"
            )
        return indexes

    def _answer(self, indexes: Sequence[int]) -> ContainerAllocation:
        devices = sorted({self._device_for(i).index: self._device_for(i) for i in indexes}.items())
        specs = tuple(
            DeviceSpecInfo(d.host_path, d.host_path, DEVICE_PERMISSIONS) for _, d in devices
        )
        if self.kind is ResourceKind.CORE:
            envs = {VISIBLE_CORES_ENV: format_core_list(indexes)}
        else:
            envs = {VISIBLE_DEVICES_ENV: ",".join(str(i) for i in sorted(indexes))}
        return ContainerAllocation(envs=envs, devices=specs)

    def is_contiguous(self, ids: Sequence[str]) -> bool:
        """Whether these IDs are one run of consecutive indexes (what a Neuron group needs)."""
        return is_contiguous(self._indexes_of(ids))


def build_managers(
    topology: Topology,
    policy: Policy,
    *,
    names: Mapping[ResourceKind, str],
    mode: ResourcesMode,
    ledger: SiliconLedger | None = None,
) -> list[ResourceManager]:
    """One manager per resource the node offers; in ``both`` mode they share ``ledger``."""
    if mode is ResourcesMode.BOTH and ledger is None:
        ledger = SiliconLedger()
    shared = ledger if mode is ResourcesMode.BOTH else None
    return [ResourceManager(names[k], k, topology, policy, shared) for k in mode.kinds]


def held_by_kind(
    listing: Iterable[tuple[str, Sequence[str]]],
    names: Mapping[ResourceKind, str],
    topology: Topology,
) -> dict[ResourceKind, frozenset[int]]:
    """From (resource name, device IDs) pairs of a PodResources listing: the cores each holds."""
    kinds = {name: kind for kind, name in names.items()}
    held: dict[ResourceKind, set[int]] = {k: set() for k in ResourceKind}
    for resource, ids in listing:
        kind = kinds.get(resource)
        if kind is not None:
            held[kind].update(cores_of_ids(kind, ids, topology))
    return {k: frozenset(v) for k, v in held.items()}
