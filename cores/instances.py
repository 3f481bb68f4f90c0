"""The instance types that carry Neuron devices, and how many cores each has."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class InstanceType:
    """One EC2 instance type: its Neuron devices and the NeuronCores on each."""

    name: str
    devices: int
    cores_per_device: int

    @property
    def cores(self) -> int:
        return self.devices * self.cores_per_device

    @property
    def family(self) -> str:
        return self.name.split(".", 1)[0]

    def device_of(self, core: int) -> int:
        """The Neuron device index that holds a core index."""
        if not 0 <= core < self.cores:
            raise ValueError(f"core {core} is outside {self.name}'s cores 0-{self.cores - 1}")
        return core // self.cores_per_device


def _table(*rows: tuple[str, int, int]) -> dict[str, InstanceType]:
    return {name: InstanceType(name, devices, per) for name, devices, per in rows}


# trn2 is listed at its default logical-core size (64 logical cores on 16 devices).
INSTANCE_TYPES: dict[str, InstanceType] = _table(
    ("inf1.xlarge", 1, 4),
    ("inf1.2xlarge", 1, 4),
    ("inf1.6xlarge", 4, 4),
    ("inf1.24xlarge", 16, 4),
    ("inf2.xlarge", 1, 2),
    ("inf2.8xlarge", 1, 2),
    ("inf2.24xlarge", 6, 2),
    ("inf2.48xlarge", 12, 2),
    ("trn1.2xlarge", 1, 2),
    ("trn1.32xlarge", 16, 2),
    ("trn1n.32xlarge", 16, 2),
    ("trn2.48xlarge", 16, 4),
)


class UnknownInstanceTypeError(ValueError):
    def __init__(self, name: str) -> None:
        self.name = name
        known = ", ".join(sorted(INSTANCE_TYPES))
        super().__init__(
            f"instance type {name!r} is not a known Neuron instance type. Known: {known}. "
            "Give the node's core count explicitly instead if yours is not listed."
        )


def lookup_instance_type(name: str) -> InstanceType:
    try:
        return INSTANCE_TYPES[name.strip()]
    except KeyError:
        raise UnknownInstanceTypeError(name) from None
