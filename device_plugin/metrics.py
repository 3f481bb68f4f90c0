"""Prometheus metrics of the device plugin, on a registry of its own.

A registry per :class:`PluginMetrics` (not the process-global default) lets tests and the local
cluster run several plugins in one process without duplicate-metric errors.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge


class PluginMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.devices = Gauge(
            "neuron_device_plugin_devices",
            "Device IDs advertised, by resource and health.",
            ["resource", "health"],
            registry=self.registry,
        )
        self.allocations = Counter(
            "neuron_device_plugin_allocations",
            "Containers allocated, by resource.",
            ["resource"],
            registry=self.registry,
        )
        self.allocation_errors = Counter(
            "neuron_device_plugin_allocation_errors",
            "Allocate or GetPreferredAllocation requests refused, by resource and call.",
            ["resource", "call"],
            registry=self.registry,
        )
        self.preferred = Counter(
            "neuron_device_plugin_preferred_allocations",
            "GetPreferredAllocation answers, by resource and whether the run is contiguous.",
            ["resource", "contiguous"],
            registry=self.registry,
        )
        self.registrations = Counter(
            "neuron_device_plugin_registrations",
            "Successful Register calls to the kubelet, by resource (first and repeated).",
            ["resource"],
            registry=self.registry,
        )
        self.reregistrations = Counter(
            "neuron_device_plugin_reregistrations",
            "Register calls after the first, made because the kubelet restarted.",
            ["resource"],
            registry=self.registry,
        )
        self.health_changes = Counter(
            "neuron_device_plugin_health_changes",
            "Times the advertised device list changed health, by resource.",
            ["resource"],
            registry=self.registry,
        )

    def set_devices(self, resource: str, counts: dict[str, int]) -> None:
        for health, count in counts.items():
            self.devices.labels(resource=resource, health=health).set(count)
