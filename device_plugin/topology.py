"""What a node has: Neuron devices, their NeuronCores, and the backend interface that finds them.

The hardware boundary is one small interface, :class:`Backend`, so that the plugin's logic never
touches sysfs directly: the ``sysfs`` backend reads the Neuron driver's tree, the ``simulated`` one
invents a node from an instance type, and tests drive either with files in a temp dir.  Core
indexes are node-global (device ``d`` of an inf1 node holds cores ``4d .. 4d+3``), the numbering
``NEURON_RT_VISIBLE_CORES`` uses.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol


class FileTooLargeError(OSError):
    """A file the plugin polls is larger than it would ever need to be."""


def read_small_file(path: Path, limit: int) -> str:
    """The text of ``path``, read at most ``limit`` bytes deep; FileTooLargeError beyond that.

    Health and sysfs files are read on every poll, so a file grown by mistake (or on purpose)
    must not grow the plugin with it: only ``limit`` + 1 bytes are ever read.
    """
    with path.open("rb") as handle:
        data = handle.read(limit + 1)
    if len(data) > limit:
        raise FileTooLargeError(
            f"{path} is larger than the {limit:,} bytes read from it; it was not read"
        )
    return data.decode()


class DiscoveryError(RuntimeError):
    """The backend found no devices or is misconfigured; the message says what it looked for."""


@dataclass(frozen=True)
class NeuronDevice:
    index: int
    cores: tuple[int, ...]
    host_path: str
    numa_node: int | None = None


@dataclass(frozen=True)
class Topology:
    devices: tuple[NeuronDevice, ...]

    def __post_init__(self) -> None:
        if not self.devices:
            raise DiscoveryError("a topology needs at least one Neuron device")
        seen: set[int] = set()
        for device in self.devices:
            overlap = seen.intersection(device.cores)
            if overlap:
                raise DiscoveryError(f"cores {sorted(overlap)} belong to more than one device")
            seen.update(device.cores)

    @property
    def cores(self) -> tuple[int, ...]:
        return tuple(sorted(core for device in self.devices for core in device.cores))

    def device_of_core(self, core: int) -> NeuronDevice:
        for device in self.devices:
            if core in device.cores:
                return device
        raise KeyError(f"core {core} is on no device of this node")

    def device(self, index: int) -> NeuronDevice:
        for device in self.devices:
            if device.index == index:
                return device
        raise KeyError(f"device {index} is not on this node")

    def describe(self) -> str:
        counts = sorted({len(d.cores) for d in self.devices})
        per = "/".join(str(c) for c in counts)
        return f"{len(self.devices)} devices x {per} cores = {len(self.cores)} NeuronCores"


def contiguous_topology(devices: int, cores_per_device: int, dev_root: str = "/dev") -> Topology:
    """The regular layout every Neuron instance type has: device d holds the next C cores."""
    if devices <= 0 or cores_per_device <= 0:
        raise DiscoveryError(
            f"a node needs at least one device and one core per device, "
            f"got devices={devices} cores-per-device={cores_per_device}"
        )
    return Topology(
        tuple(
            NeuronDevice(
                index=d,
                cores=tuple(range(d * cores_per_device, (d + 1) * cores_per_device)),
                host_path=f"{dev_root.rstrip('/')}/neuron{d}",
            )
            for d in range(devices)
        )
    )


class Backend(Protocol):
    """The hardware boundary: find the devices once, then report unhealthy cores when polled."""

    name: str

    def discover(self) -> Topology: ...

    def unhealthy_cores(self, topology: Topology) -> frozenset[int]: ...
