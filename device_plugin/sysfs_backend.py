"""The ``sysfs`` backend: devices and health from the Neuron driver's files.

Layout read (both roots configurable, so tests build a fake tree in a temp dir):

* ``<sysfs-root>/neuronN/core_count``: how many NeuronCores device N has;
* ``<sysfs-root>/neuronN/numa_node`` (optional): the device's NUMA node, sent as topology;
* ``<dev-root>/neuronN``: the device node handed to containers;
* ``<sysfs-root>/neuronN/neuron_coreM/stats/status/<counter>/total``: per-core status counters.

Health: a device whose node has vanished from ``<dev-root>`` is unhealthy (all its cores), and so
is a core whose error counters (``--error-counters``) rose since the last poll.  A device recovers
when its node is back; a core recovers once its counters have stayed flat for ``recovery_s``.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from neuron_device_plugin.topology import (
    DiscoveryError,
    NeuronDevice,
    Topology,
    read_small_file,
)

log = logging.getLogger(__name__)

DEFAULT_SYSFS_ROOT = "/sys/devices/virtual/neuron_device"
DEFAULT_DEV_ROOT = "/dev"
DEFAULT_ERROR_COUNTERS = ("hw_error",)
DEFAULT_RECOVERY_S = 60.0
_DEVICE_DIR = re.compile(r"^neuron(\d+)$")
# sysfs attributes are one number each; anything longer is not the driver's file.
MAX_ATTRIBUTE_BYTES = 4096


class CounterHealth:
    """Pure bookkeeping: a core is unhealthy from a counter rise until ``recovery_s`` of quiet."""

    def __init__(self, recovery_s: float) -> None:
        self.recovery_s = recovery_s
        self._last: dict[tuple[int, str], int] = {}
        self._last_rise: dict[int, float] = {}

    def observe(self, core: int, totals: Mapping[str, int], now: float) -> bool:
        """Record this poll's totals for ``core``; return whether the core is healthy."""
        for counter, total in totals.items():
            previous = self._last.get((core, counter))
            self._last[(core, counter)] = total
            # A first sighting sets the baseline; a drop means the driver was reloaded.
            if previous is not None and total > previous:
                self._last_rise[core] = now
        rise = self._last_rise.get(core)
        return rise is None or now - rise >= self.recovery_s


class SysfsBackend:
    name = "sysfs"

    def __init__(
        self,
        *,
        sysfs_root: Path = Path(DEFAULT_SYSFS_ROOT),
        dev_root: Path = Path(DEFAULT_DEV_ROOT),
        host_dev_root: Path | None = None,
        error_counters: Sequence[str] = DEFAULT_ERROR_COUNTERS,
        recovery_s: float = DEFAULT_RECOVERY_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.sysfs_root = sysfs_root
        self.dev_root = dev_root
        # Where the kubelet (the host) finds the same nodes: differs from dev_root when the
        # plugin runs in a container that mounts the host's /dev elsewhere, e.g. /host/dev.
        self.host_dev_root = dev_root if host_dev_root is None else host_dev_root
        self.error_counters = tuple(error_counters)
        self.clock = clock
        self._counters = CounterHealth(recovery_s)

    def _looked_for(self) -> str:
        return (
            f"looked for directories neuronN with a core_count file under {self.sysfs_root} "
            f"and device nodes neuronN under {self.dev_root}"
        )

    def discover(self) -> Topology:
        if not self.sysfs_root.is_dir():
            raise DiscoveryError(
                f"no Neuron devices: {self.sysfs_root} is not a directory ({self._looked_for()}). "
                "Is the Neuron driver loaded on this node? Set --sysfs-root/--dev-root if the "
                "tree is mounted elsewhere, or use --backend simulated."
            )
        found: list[tuple[int, Path]] = []
        for entry in self.sysfs_root.iterdir():
            match = _DEVICE_DIR.match(entry.name)
            if match and entry.is_dir():
                found.append((int(match.group(1)), entry))
        if not found:
            raise DiscoveryError(
                f"no Neuron devices: {self._looked_for()}, found none. Is the Neuron driver "
                "loaded? Use --backend simulated for a node without Neuron hardware."
            )
        devices: list[NeuronDevice] = []
        next_core = 0
        for index, path in sorted(found):
            count = self._read_int(path / "core_count", required=True)
            assert count is not None
            if count <= 0:
                raise DiscoveryError(f"{path / 'core_count'} says {count}; expected a count >= 1")
            devices.append(
                NeuronDevice(
                    index=index,
                    cores=tuple(range(next_core, next_core + count)),
                    host_path=str(self.host_dev_root / f"neuron{index}"),
                    numa_node=self._read_int(path / "numa_node", required=False),
                )
            )
            next_core += count
        return Topology(tuple(devices))

    def _read_int(self, path: Path, *, required: bool) -> int | None:
        try:
            text = read_small_file(path, MAX_ATTRIBUTE_BYTES).strip()
        except (OSError, UnicodeDecodeError) as err:
            if not required:
                return None
            reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
            raise DiscoveryError(f"cannot read {path} ({reason}); {self._looked_for()}") from None
        try:
            value = int(text)
        except ValueError:
            if not required:
                return None
            raise DiscoveryError(f"{path} holds {text!r}; expected an integer") from None
        # The kernel writes -1 for "no NUMA affinity".
        return None if value < 0 and not required else value

    def _core_totals(self, device_dir: Path, local_core: int) -> dict[str, int]:
        status = device_dir / f"neuron_core{local_core}" / "stats" / "status"
        totals: dict[str, int] = {}
        for counter in self.error_counters:
            value = self._read_int(status / counter / "total", required=False)
            if value is not None:
                totals[counter] = value
        return totals

    def unhealthy_cores(self, topology: Topology) -> frozenset[int]:
        now = self.clock()
        unhealthy: set[int] = set()
        for device in topology.devices:
            if not (self.dev_root / f"neuron{device.index}").exists():
                unhealthy.update(device.cores)
            device_dir = self.sysfs_root / f"neuron{device.index}"
            for local, core in enumerate(device.cores):
                totals = self._core_totals(device_dir, local)
                if not self._counters.observe(core, totals, now):
                    unhealthy.add(core)
        return frozenset(unhealthy)
