"""Device IDs the plugin advertises, and the constants of the kubelet's side of the API.

IDs are a fixed prefix plus a zero-padded index: ``neuroncore-0007`` is NeuronCore 7 and
``neuron-0003`` is Neuron device 3.  They are deterministic (the same node always advertises the
same IDs, so the kubelet's checkpoint of who holds what stays valid across plugin restarts), far
below the API's 63-character limit, and sort as strings in index order, so the kubelet's sorted
lists read naturally.  Four digits cover 10,000 cores; the largest instance has 128 logical cores.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

KUBELET_SOCKET_NAME = "kubelet.sock"
DEFAULT_PLUGIN_DIR = "/var/lib/kubelet/device-plugins"
HEALTHY = "Healthy"
UNHEALTHY = "Unhealthy"
MAX_ID_LENGTH = 63
# The resource names themselves (aws.amazon.com/neuroncore and aws.amazon.com/neuron) are
# neuron_cores.CORE_RESOURCE and DEVICE_RESOURCE: the operator, the DRA driver and the local
# cluster rely on them too.

CORE_ID_PREFIX = "neuroncore-"
DEVICE_ID_PREFIX = "neuron-"
ID_DIGITS = 4


# Refusals travel back as gRPC status messages, which ride in HTTP/2 trailers: a client refuses
# metadata over its limit (8 KiB by default) with RESOURCE_EXHAUSTED and never sees the reason.  So
# a message names the first few bad values, counts the rest, and is cut at MAX_ERROR_MESSAGE.
MAX_LISTED_VALUES = 5
MAX_SHOWN_VALUE_CHARS = MAX_ID_LENGTH + 2
MAX_ERROR_MESSAGE = 1024


def shown_value(value: object) -> str:
    """``repr(value)``, cut to a bounded length with the full length said."""
    text = repr(value)
    if len(text) <= MAX_SHOWN_VALUE_CHARS:
        return text
    return f"{text[:MAX_SHOWN_VALUE_CHARS]}... ({len(text):,} characters)"


def describe_values(values: Sequence[object], limit: int = MAX_LISTED_VALUES) -> str:
    """The first ``limit`` values and how many more: ``'a', 'b' and 9,998 more``."""
    shown = ", ".join(shown_value(v) for v in values[:limit])
    rest = len(values) - limit
    return f"{shown} and {rest:,} more" if rest > 0 else shown


def bounded_message(text: str, limit: int = MAX_ERROR_MESSAGE) -> str:
    """``text`` cut to ``limit`` characters (saying so): the last guard before a gRPC status."""
    if len(text) <= limit:
        return text
    tail = f"... ({len(text):,} characters in all)"
    return text[: limit - len(tail)] + tail


class DeviceIDError(ValueError):
    """A request's device IDs that cannot be served; names the first few and counts them all."""

    def __init__(self, ids: Iterable[str], problem: str) -> None:
        self.ids = tuple(ids)
        self.problem = problem
        super().__init__(f"{problem}: {describe_values(self.ids)}" if self.ids else problem)


class UnknownDeviceIDError(DeviceIDError):
    """Device IDs that this plugin never advertised (or that are unhealthy)."""


class DuplicateDeviceIDError(DeviceIDError):
    """Device IDs that a request lists more than once."""


class DeviceInUseError(DeviceIDError):
    """Device IDs whose silicon the other resource of this node has handed out."""


def duplicates(ids: Iterable[str]) -> list[str]:
    """IDs that occur more than once, each named once, in order of first repeat."""
    seen: set[str] = set()
    repeated: dict[str, None] = {}
    for i in ids:
        if i in seen:
            repeated[i] = None
        seen.add(i)
    return list(repeated)


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
    # isdigit() alone admits other scripts' digits (Arabic-Indic 0001 would be core 1 under a
    # second spelling, slipping past duplicate checks): only the ASCII form is an ID.
    if len(digits) != ID_DIGITS or not (digits.isascii() and digits.isdigit()):
        return None
    return int(digits)
