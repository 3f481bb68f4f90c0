"""Kubelet restarts at random moments, against an emulator that behaves like the real kubelet.

The emulated kubelet dies as ``kill -9`` would (a stale ``kubelet.sock`` stays), and its
successor removes every socket in the directory before it listens; its Register handler dials the
plugin's socket before answering and answers any failure as UNKNOWN.  Each round ends with a
restart at a random moment, chosen (seeded) among:

* ``settled``: the plugin is registered with the previous kubelet; the restart lands anywhere in
  the watcher's poll period;
* ``after-start``: the previous kubelet was itself restarted a moment ago, so the plugin is
  noticing, re-serving its sockets or registering when the next restart lands;
* ``in-register``: the restart lands while a Register call of the plugin is inside the kubelet.

The kubelet stays down for a random time first (sometimes long enough that the plugin retries
against the stale socket).  After every round both resources must be registered with the new
kubelet and streaming their devices in under 2 s, and the plugin must still be running.
"""

from __future__ import annotations

import random
import statistics
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from neuron_device_plugin.api import deviceplugin_pb2 as pb
from neuron_device_plugin.kubelet_emulator import KubeletEmulator
from neuron_device_plugin.plugin import PluginConfig, PluginManager
from neuron_device_plugin.simulated_backend import SimulatedBackend

CORES = "aws.amazon.com/neuroncore"
DEVICES = "aws.amazon.com/neuron"
EXPECTED = {CORES: 16, DEVICES: 4}
ROUNDS = 100
RECOVERY_BOUND_S = 2.0
# How long a round waits before calling it lost: past the bound, so a slow plugin is measured.
GIVE_UP_S = 12.0
MODES = ("settled", "after-start", "in-register")


@dataclass
class Node:
    """A plugin and the current kubelet; each restart replaces the kubelet."""

    plugin_dir: Path
    manager: PluginManager
    kubelet: KubeletEmulator | None = None
    register_seen: threading.Event = field(default_factory=threading.Event)

    def _on_register(self, request: pb.RegisterRequest) -> None:
        self.register_seen.set()

    def restart(self, downtime_s: float) -> float:
        """Crash the kubelet, wait, start a new one; the monotonic time it listens from."""
        if self.kubelet is not None:
            self.kubelet.crash()
        time.sleep(downtime_s)
        self.register_seen.clear()
        self.kubelet = KubeletEmulator(self.plugin_dir, on_register=self._on_register).start()
        return time.monotonic()

    def mid_registration(self) -> bool:
        """Whether the current kubelet is still missing one of the plugin's resources."""
        assert self.kubelet is not None
        return any(self.kubelet.client(r) is None for r in EXPECTED)

    def recovery_s(self, started: float) -> float:
        """Seconds from ``started`` until both resources stream their full device lists."""
        kubelet = self.kubelet
        assert kubelet is not None
        for resource, count in EXPECTED.items():
            left = max(0.0, started + GIVE_UP_S - time.monotonic())
            try:
                client = kubelet.wait_for_registration(resource, timeout=left)
                client.wait_for_devices(lambda ds, n=count: len(ds) == n, timeout=left)
            except TimeoutError:
                return float("inf")
        return time.monotonic() - started


@pytest.fixture
def fault_node(sock_dir: Path) -> Iterator[Node]:
    manager = PluginManager(SimulatedBackend(4, 4), PluginConfig(plugin_dir=sock_dir))
    node = Node(sock_dir, manager)
    node.restart(0.0)
    manager.start()
    try:
        yield node
    finally:
        manager.stop()
        if node.kubelet is not None:
            node.kubelet.stop()


def test_a_hundred_kubelet_restarts_at_random_moments_each_recover_within_two_seconds(
    fault_node: Node,
) -> None:
    node = fault_node
    rng = random.Random(13)
    assert node.recovery_s(time.monotonic()) < RECOVERY_BOUND_S, "first registration"
    interval = node.manager.config.watch_interval_s
    recoveries: list[float] = []
    landed_mid_registration = 0
    for round_no in range(ROUNDS):
        mode = MODES[round_no % len(MODES)] if round_no < len(MODES) else rng.choice(MODES)
        downtime = rng.choice((0.0, rng.uniform(0.0, 0.05), rng.uniform(0.2, 0.6)))
        if mode == "settled":
            time.sleep(rng.uniform(0.0, 1.5 * interval))
        elif mode == "after-start":
            node.restart(rng.uniform(0.0, 0.05))
            time.sleep(rng.uniform(0.0, 2.0 * interval))
        else:
            node.restart(rng.uniform(0.0, 0.05))
            assert node.register_seen.wait(RECOVERY_BOUND_S), (
                f"round {round_no}: the plugin did not call Register after a restart"
            )
            time.sleep(rng.uniform(0.0, 0.02))
        landed_mid_registration += node.mid_registration()
        started = node.restart(downtime)
        took = node.recovery_s(started)
        assert node.manager.failure is None, f"round {round_no} ({mode}): plugin gave up"
        assert took < RECOVERY_BOUND_S, (
            f"round {round_no} ({mode}, kubelet down {downtime:.3f}s): both resources back "
            f"after {took:.2f}s, bound {RECOVERY_BOUND_S}s; earlier rounds: "
            f"median {statistics.median(recoveries or [0.0]):.3f}s"
        )
        recoveries.append(took)
    print(
        f"\n{ROUNDS} kubelet restarts ({landed_mid_registration} mid-registration): recovery "
        f"median {statistics.median(recoveries):.3f}s, max {max(recoveries):.3f}s"
    )
    assert landed_mid_registration >= ROUNDS // 5, "too few restarts landed mid-registration"
