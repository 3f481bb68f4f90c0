"""Metric arithmetic and the runtime collector, read through a real registry."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from neuron_runtime.api import GroupStats, RuntimeStats
from neuron_runtime.serving.metrics import RuntimeCollector, ServingMetrics, busy_fractions


@pytest.mark.parametrize(
    ("previous", "current", "elapsed", "expected"),
    [
        ({0: 1.0}, {0: 1.5}, 1.0, {0: 0.5}),
        ({}, {0: 0.2, 1: 0.0}, 0.4, {0: 0.5, 1: 0.0}),
        ({0: 1.0}, {0: 9.0}, 1.0, {0: 1.0}),
        ({0: 5.0}, {0: 1.0}, 1.0, {0: 0.0}),
        ({0: 0.0}, {0: 1.0}, 0.0, {0: 0.0}),
    ],
    ids=["half", "first-reading", "clamped-high", "counter-reset", "no-time"],
)
def test_busy_fractions(
    previous: dict[int, float],
    current: dict[int, float],
    elapsed: float,
    expected: dict[int, float],
) -> None:
    assert busy_fractions(previous, current, elapsed) == pytest.approx(expected)


def test_collector_exports_group_and_core_figures() -> None:
    snapshot = RuntimeStats(
        groups=[
            GroupStats(0, (0, 1), "resnet", 4, 0.75, 2, 10),
            GroupStats(1, (2,), None, 0, 0.0, 0, 0),
        ],
        core_busy_seconds={0: 1.0, 1: 2.0, 2: 0.0},
    )
    registry = CollectorRegistry()
    registry.register(RuntimeCollector(lambda: snapshot))
    value = registry.get_sample_value
    assert value("neuron_group_queue_depth", {"group": "0"}) == 2
    assert value("neuron_group_context_switches_total", {"group": "0"}) == 4
    assert value("neuron_group_context_switch_seconds_total", {"group": "0"}) == 0.75
    assert value("neuron_group_requests_total", {"group": "0"}) == 10
    assert (
        value("neuron_group_resident_model", {"group": "0", "model": "resnet", "cores": "0,1"}) == 1
    )
    assert value("neuron_core_busy_seconds_total", {"core": "1"}) == 2.0
    fraction = value("neuron_core_busy_fraction", {"core": "2"})
    assert fraction == 0.0
    # An empty group has no resident-model sample.
    assert value("neuron_group_queue_depth", {"group": "1"}) == 0
    families = {m.name for m in registry.collect()}
    assert "neuron_group_resident_model" in families


def test_collector_without_a_runtime_exports_nothing() -> None:
    registry = CollectorRegistry()
    registry.register(RuntimeCollector(lambda: None))
    assert list(registry.collect()) == []


@pytest.mark.parametrize(
    ("read", "sample", "labels"),
    [
        (
            lambda m: m.requests_of("mlp", "grpc"),
            "neuron_serving_requests_total",
            {"model": "mlp", "protocol": "grpc"},
        ),
        (lambda m: m.in_flight_of(3), "neuron_serving_in_flight", {"group": "3"}),
    ],
    ids=["requests", "in-flight"],
)
def test_labelled_children_are_looked_up_once_and_still_count(
    read: Callable[[ServingMetrics], Any], sample: str, labels: dict[str, str]
) -> None:
    registry = CollectorRegistry()
    metrics = ServingMetrics(registry)
    assert read(metrics) is read(metrics)
    read(metrics).inc()
    read(metrics).inc()
    assert registry.get_sample_value(sample, labels) == 2


def test_latency_children_are_looked_up_once_and_still_observe() -> None:
    registry = CollectorRegistry()
    metrics = ServingMetrics(registry)
    assert metrics.latency_of("mlp", 1) is metrics.latency_of("mlp", 1)
    metrics.latency_of("mlp", 1).observe(0.002)
    count = "neuron_serving_request_duration_seconds_count"
    assert registry.get_sample_value(count, {"model": "mlp", "group": "1"}) == 1
