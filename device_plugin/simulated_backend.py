"""The ``simulated`` backend: a node invented from an instance type, with health set by a file.

Used by the local cluster, the demo and most tests.  The same flags always give the same devices
and IDs.  Health control is a plain file (``--health-file``): it holds the unhealthy cores in the
``NEURON_RT_VISIBLE_CORES`` forms (``3``, ``4-7``, ``0,5``); empty or missing means all healthy.
Lines starting with ``#`` are comments.  The file is read only up to 64 KiB: a larger one is
refused (logged, last health kept) without being read.  Writing the file marks cores unhealthy on
the next poll; emptying it lets them recover.  A device is unhealthy while any of its cores is.
"""

from __future__ import annotations

import logging
from pathlib import Path

from neuron_cores import CoreListError, lookup_instance_type, parse_core_list
from neuron_device_plugin.topology import (
    DiscoveryError,
    Topology,
    contiguous_topology,
    read_small_file,
)

log = logging.getLogger(__name__)

HEALTH_FILE_WHAT = "the simulated backend's health file"
# Every core of the largest node, one per line with a comment each, fits many times over.
MAX_HEALTH_FILE_BYTES = 64 * 1024


class SimulatedBackend:
    name = "simulated"

    def __init__(
        self,
        devices: int,
        cores_per_device: int,
        *,
        health_file: Path | None = None,
        dev_root: str = "/dev",
    ) -> None:
        self.devices = devices
        self.cores_per_device = cores_per_device
        self.health_file = health_file
        self.dev_root = dev_root
        self._last_unhealthy: frozenset[int] = frozenset()

    @classmethod
    def from_flags(
        cls,
        *,
        instance_type: str | None,
        devices: int | None,
        cores_per_device: int | None,
        health_file: Path | None = None,
    ) -> SimulatedBackend:
        """Build from ``--instance-type`` or ``--devices`` with ``--cores-per-device``."""
        if instance_type and (devices is not None or cores_per_device is not None):
            raise DiscoveryError(
                "the simulated backend takes either --instance-type or --devices with "
                "--cores-per-device, not both; drop one"
            )
        if instance_type:
            try:
                spec = lookup_instance_type(instance_type)
            except ValueError as err:
                raise DiscoveryError(str(err)) from None
            return cls(spec.devices, spec.cores_per_device, health_file=health_file)
        if devices is None or cores_per_device is None:
            raise DiscoveryError(
                "the simulated backend needs --instance-type (such as inf1.6xlarge) or both "
                "--devices and --cores-per-device (such as --devices 4 --cores-per-device 4)"
            )
        return cls(devices, cores_per_device, health_file=health_file)

    def discover(self) -> Topology:
        return contiguous_topology(self.devices, self.cores_per_device, self.dev_root)

    def unhealthy_cores(self, topology: Topology) -> frozenset[int]:
        text = self._read_health_file()
        if text is None:
            return self._last_unhealthy
        lines = [ln.strip() for ln in text.splitlines() if not ln.strip().startswith("#")]
        value = ",".join(ln for ln in lines if ln)
        if not value:
            self._last_unhealthy = frozenset()
            return self._last_unhealthy
        try:
            cores = frozenset(parse_core_list(value, what=HEALTH_FILE_WHAT))
        except CoreListError as err:
            log.error("ignoring health file %s, keeping the last health: %s", self.health_file, err)
            return self._last_unhealthy
        unknown = sorted(cores - set(topology.cores))
        if unknown:
            log.warning(
                "health file %s names cores %s that this node does not have (it has %s); "
                "ignoring those",
                self.health_file,
                unknown,
                topology.describe(),
            )
        self._last_unhealthy = cores & frozenset(topology.cores)
        return self._last_unhealthy

    def _read_health_file(self) -> str | None:
        """The file's text; '' when there is no file; None when it exists but cannot be read."""
        if self.health_file is None:
            return ""
        try:
            return read_small_file(self.health_file, MAX_HEALTH_FILE_BYTES)
        except FileNotFoundError:
            return ""
        except (OSError, UnicodeDecodeError) as err:  # a binary file would end the health loop
            log.error(
                "cannot read health file %s, keeping the last health: %s", self.health_file, err
            )
            return None
