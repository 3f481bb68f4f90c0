"""Prometheus metrics of the device plugin, on a registry of its own.

A registry per :class:`PluginMetrics` (not the process-global default) lets tests and the local
cluster run several plugins in one process without duplicate-metric errors.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    generate_latest,
)

log = logging.getLogger(__name__)


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


class _Handler(BaseHTTPRequestHandler):
    server: _MetricsHTTPServer

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            self._reply(200, CONTENT_TYPE_LATEST, generate_latest(self.server.registry))
        elif path in PROBES:
            ok, detail = PROBES[path](self.server)
            self._reply(200 if ok else 503, "text/plain; charset=utf-8", detail.encode() + b"\n")
        else:
            self._reply(404, "text/plain; charset=utf-8", b"try /metrics, /healthz or /readyz\n")

    def _reply(self, status: int, content_type: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        log.debug("metrics http: " + format, *args)


Probe = Callable[[], tuple[bool, str]]


class _MetricsHTTPServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(
        self, address: tuple[str, int], registry: CollectorRegistry, live: Probe, ready: Probe
    ) -> None:
        super().__init__(address, _Handler)
        self.registry = registry
        self.live = live
        self.ready = ready


PROBES: dict[str, Callable[[_MetricsHTTPServer], tuple[bool, str]]] = {
    "/healthz": lambda server: server.live(),
    "/readyz": lambda server: server.ready(),
}


def serve_metrics(
    registry: CollectorRegistry, address: str, port: int, *, live: Probe, ready: Probe
) -> ThreadingHTTPServer:
    """Serve /metrics, /healthz (alive) and /readyz (registered) on a daemon thread.

    The chart's liveness and readiness probes use the metrics port, so the probes live here too.
    Call ``shutdown()`` on the result to stop; ``server_address`` gives the bound port.
    """
    server = _MetricsHTTPServer((address, port), registry, live, ready)
    threading.Thread(target=server.serve_forever, name="neuron-dp-metrics", daemon=True).start()
    return server
