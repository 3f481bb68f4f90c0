"""Prometheus metrics of the server: what it was asked, and what the NeuronCore Groups did with it.

Two sources.  Request counters and latency histograms are updated by the server as requests pass.
Group and core figures (queue depth, context switches and their time, the resident model, core
busy time) belong to the runtime, so they are read from ``NeuronRuntime.stats()`` at scrape time by
a custom collector instead of being copied into gauges on a timer: a scrape always sees the
runtime's current numbers and an idle server does no work.

Each server gets its own ``CollectorRegistry`` so that several servers (tests, the local-cluster
emulator) can live in one process.  Model labels only ever carry names of loaded models; requests
for unknown names are counted under ``(unknown)`` so clients cannot grow the label set.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from neuron_runtime.api import GroupStats, RuntimeStats

UNKNOWN_MODEL = "(unknown)"
LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip


def busy_fractions(
    previous: Mapping[int, float], current: Mapping[int, float], elapsed_s: float
) -> dict[int, float]:
    """Share of ``elapsed_s`` each core spent busy, between two readings of its busy seconds."""
    if elapsed_s <= 0:
        return dict.fromkeys(current, 0.0)
    return {
        core: min(1.0, max(0.0, (busy - previous.get(core, 0.0)) / elapsed_s))
        for core, busy in current.items()
    }


class RuntimeCollector(Collector):
    """Reads the runtime's statistics on every scrape."""

    def __init__(self, read: Callable[[], RuntimeStats | None]) -> None:
        self._read = read
        self._last_time = time.monotonic()
        self._last_busy: Mapping[int, float] = {}

    def collect(self) -> Iterator[Metric]:
        snapshot = self._read()
        if snapshot is None:
            return
        yield from self._group_metrics(snapshot.groups)
        now = time.monotonic()
        fractions = busy_fractions(
            self._last_busy, snapshot.core_busy_seconds, now - self._last_time
        )
        self._last_time, self._last_busy = now, dict(snapshot.core_busy_seconds)
        busy = CounterMetricFamily(
            "neuron_core_busy_seconds",
            "Seconds each NeuronCore spent running models",
            labels=["core"],
        )
        fraction = GaugeMetricFamily(
            "neuron_core_busy_fraction",
            "Share of the time since the previous scrape each NeuronCore spent busy",
            labels=["core"],
        )
        for core, seconds in sorted(snapshot.core_busy_seconds.items()):
            busy.add_metric([str(core)], seconds)
            fraction.add_metric([str(core)], fractions[core])
        yield busy
        yield fraction

    @staticmethod
    def _group_metrics(groups: Sequence[GroupStats]) -> Iterator[Metric]:
        depth = GaugeMetricFamily(
            "neuron_group_queue_depth",
            "Requests waiting in the group's scheduler",
            labels=["group"],
        )
        switches = CounterMetricFamily(
            "neuron_group_context_switches", "Model context switches in the group", labels=["group"]
        )
        switch_time = CounterMetricFamily(
            "neuron_group_context_switch_seconds",
            "Time the group spent switching models",
            labels=["group"],
        )
        requests = CounterMetricFamily(
            "neuron_group_requests", "Requests the group has run", labels=["group"]
        )
        restarts = CounterMetricFamily(
            "neuron_group_worker_restarts",
            "Times the group replaced its worker processes after one died",
            labels=["group"],
        )
        resident = GaugeMetricFamily(
            "neuron_group_resident_model",
            "1 for the model currently resident in the group",
            labels=["group", "model", "cores"],
        )
        for group in groups:
            label = [str(group.index)]
            depth.add_metric(label, group.queue_depth)
            switches.add_metric(label, group.switches)
            switch_time.add_metric(label, group.switch_seconds)
            requests.add_metric(label, group.requests)
            restarts.add_metric(label, group.restarts)
            if group.resident_model is not None:
                cores = ",".join(str(c) for c in group.cores)
                resident.add_metric([*label, group.resident_model, cores], 1)
        yield from (depth, switches, switch_time, requests, restarts, resident)


class ServingMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.requests = Counter(
            "neuron_serving_requests",
            "Inference requests received",
            ["model", "protocol"],
            registry=registry,
        )
        self.failures = Counter(
            "neuron_serving_request_failures",
            "Inference requests that failed, by reason",
            ["model", "protocol", "reason"],
            registry=registry,
        )
        self.latency = Histogram(
            "neuron_serving_request_duration_seconds",
            "Time from a decoded request to its outputs, per model and NeuronCore Group",
            ["model", "group"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.in_flight = Gauge(
            "neuron_serving_in_flight",
            "Requests the server has handed to each group and not yet answered",
            ["group"],
            registry=registry,
        )
        self.ready = Gauge(
            "neuron_serving_ready",
            "1 when every model is loaded and the server is not draining",
            registry=registry,
        )
        # Labelled children, looked up once: ``labels()`` validates and locks on every call, a
        # cost each request paid four times.  Label values are bounded (served names, protocols,
        # groups), so these stay small.
        self._requests: dict[tuple[str, str], Counter] = {}
        self._latency: dict[tuple[str, int], Histogram] = {}
        self._in_flight: dict[int, Gauge] = {}

    def requests_of(self, model: str, protocol: str) -> Counter:
        child = self._requests.get((model, protocol))
        if child is None:
            child = self._requests[(model, protocol)] = self.requests.labels(model, protocol)
        return child

    def latency_of(self, model: str, group: int) -> Histogram:
        child = self._latency.get((model, group))
        if child is None:
            child = self._latency[(model, group)] = self.latency.labels(model, str(group))
        return child

    def in_flight_of(self, group: int) -> Gauge:
        child = self._in_flight.get(group)
        if child is None:
            child = self._in_flight[group] = self.in_flight.labels(str(group))
        return child
