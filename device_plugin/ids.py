"""Device IDs the plugin advertises, and the constants of the kubelet's side of the API.

IDs are a fixed prefix plus a zero-padded index: ``neuroncore-0007`` is NeuronCore 7 and
``neuron-0003`` is Neuron device 3.  They are deterministic (the same node always advertises the
same IDs, so the kubelet's checkpoint of who holds what stays valid across plugin restarts), far
below the API's 63-character limit, and sort as strings in index order, so the kubelet's sorted
lists read naturally.  Four digits cover 10,000 cores; the largest instance has 128 logical cores.
"""

from __future__ import annotations

from collections.abc import Iterable

KUBELET_SOCKET_NAME = "kubelet.sock"
DEFAULT_PLUGIN_DIR = "/var/lib/kubelet/device-plugins"
HEALTHY = "Healthy"
UNHEALTHY = "Unhealthy"
MAX_ID_LENGTH = 63

CORE_RESOURCE = "aws.amazon.com/neuroncore"
DEVICE_RESOURCE = "aws.amazon.com/neuron"

CORE_ID_PREFIX = "neuroncore-"
DEVICE_ID_PREFIX = "neuron-"
ID_DIGITS = 4


class UnknownDeviceIDError(ValueError):
    """Device IDs that this plugin never advertised (or that are unhealthy); names them all."""

    def __init__(self, ids: Iterable[str], problem: str) -> None:
        self.ids = tuple(ids)
        listed = ", ".join(repr(i) for i in self.ids)
        super().__init__(f"{problem}: {listed}")


def core_id(index: int) -> str:
    return _make_id(CORE_ID_PREFIX, index)


def device_id(index: int) -> str:
    return _make_id(DEVICE_ID_PREFIX, index)


def _make_id(prefix: str, index: int) -> str:
    if index < 0 or index >= 10**ID_DIGITS:
        raise ValueError(f"index {index} is outside 0-{10**ID_DIGITS - 1}, the ID scheme's range")
    return f"{prefix}{index:0{ID_DIGITS}d}"


def parse_id(value: str, prefix: str) -> int | None:
    """The index inside an ID of this prefix, or None when ``value`` is not such an ID."""
    if not value.startswith(prefix):
        return None
    digits = value[len(prefix) :]
    if len(digits) != ID_DIGITS or not digits.isdigit():
        return None
    return int(digits)
