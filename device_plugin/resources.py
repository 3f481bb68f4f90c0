"""The resource manager: the devices one plugin advertises, their health, and what Allocate returns.

The gRPC servicer is deliberately thin; everything it answers comes from here, as plain data, so
the rules (ID scheme, health roll-up, env var forms, device nodes to mount) are tested without a
socket.  One manager serves one extended resource: ``core`` (one ID per NeuronCore) or ``device``
(one ID per Neuron device, carrying all of its cores).
"""

from __future__ import annotations

import enum
import threading
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field

from neuron_cores import VISIBLE_CORES_ENV, VISIBLE_DEVICES_ENV, format_core_list, is_contiguous
from neuron_device_plugin.ids import (
    CORE_ID_PREFIX,
    DEVICE_ID_PREFIX,
    HEALTHY,
    UNHEALTHY,
    UnknownDeviceIDError,
    core_id,
    device_id,
    parse_id,
)
from neuron_device_plugin.policy import AllocationRequestError, Policy
from neuron_device_plugin.topology import NeuronDevice, Topology

DEVICE_PERMISSIONS = "rw"


class ResourceKind(enum.Enum):
    CORE = "core"
    DEVICE = "device"


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
        self, resource_name: str, kind: ResourceKind, topology: Topology, policy: Policy
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

    # --- IDs ------------------------------------------------------------------------------------

    def _device_for(self, index: int) -> NeuronDevice:
        if self.kind is ResourceKind.CORE:
            return self.topology.device_of_core(index)
        return self.topology.device(index)

    def ids(self) -> list[str]:
        return [self._make_id(i) for i in sorted(self._indexes)]

    def _indexes_of(self, ids: Iterable[str]) -> list[int]:
        """Indexes of known IDs; UnknownDeviceIDError naming every ID that is not ours."""
        ids = list(ids)
        parsed = [parse_id(i, self._prefix) for i in ids]
        unknown = [
            i for i, p in zip(ids, parsed, strict=True) if p is None or p not in self._indexes
        ]
        if unknown:
            raise UnknownDeviceIDError(
                unknown,
                f"{self.resource_name} has no such device IDs (it advertises "
                f"{self._describe_ids()})",
            )
        return [p for p in parsed if p is not None]

    def _describe_ids(self) -> str:
        ids = self.ids()
        return f"{ids[0]} .. {ids[-1]}" if len(ids) > 2 else ", ".join(ids)

    # --- health ---------------------------------------------------------------------------------

    def set_unhealthy_cores(self, cores: Collection[int]) -> bool:
        """Apply the backend's unhealthy cores; True (and watchers woken) when anything changed."""
        cores = frozenset(cores)
        if self.kind is ResourceKind.CORE:
            unhealthy = frozenset(c for c in cores if c in self._indexes)
        else:
            unhealthy = frozenset(
                d.index for d in self.topology.devices if cores.intersection(d.cores)
            )
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
        with self._changed:
            unhealthy = self._unhealthy
        return [
            AdvertisedDevice(
                id=self._make_id(i),
                health=UNHEALTHY if i in unhealthy else HEALTHY,
                numa_node=self._device_for(i).numa_node,
            )
            for i in sorted(self._indexes)
        ]

    def health_counts(self) -> dict[str, int]:
        with self._changed:
            bad = len(self._unhealthy)
        return {HEALTHY: len(self._indexes) - bad, UNHEALTHY: bad}

    # --- allocation -----------------------------------------------------------------------------

    def preferred(
        self, available: Sequence[str], must_include: Sequence[str], size: int
    ) -> list[str]:
        """GetPreferredAllocation for one container, by the configured policy."""
        free = self._indexes_of(available)
        must = self._indexes_of(must_include)
        try:
            chosen = self.policy(free, must, size)
        except AllocationRequestError as err:
            raise AllocationRequestError(f"{self.resource_name}: {err}") from None
        return [self._make_id(i) for i in chosen]

    def allocate(self, ids: Sequence[str]) -> ContainerAllocation:
        """Allocate for one container: env vars and the device nodes that hold its indexes."""
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
