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

import itertools
import logging
import random
import shutil
import statistics
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import grpc
import pytest

from neuron_device_plugin.api import deviceplugin_pb2 as pb
from neuron_device_plugin.api.services import add_registration_servicer
from neuron_device_plugin.plugin import PluginConfig, PluginManager, socket_name
from neuron_device_plugin.simulated_backend import SimulatedBackend
from neuron_localcluster.kubelet_emulator import DeviceInfo, KubeletEmulator

CORES = "aws.amazon.com/neuroncore"
DEVICES = "aws.amazon.com/neuron"
EXPECTED = {CORES: 16, DEVICES: 4}
ROUNDS = 100
RECOVERY_BOUND_S = 2.0
# How long a round waits before calling it lost: past the bound, so a slow plugin is measured.
GIVE_UP_S = 12.0
MODES = ("settled", "after-start", "in-register")


def _has_devices(count: int, devices: list[DeviceInfo]) -> bool:
    return len(devices) == count


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
                client.wait_for_devices(partial(_has_devices, count), timeout=left)
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
    landed_mid_registration = dict.fromkeys(MODES, 0)
    for round_no in range(ROUNDS):
        mode = MODES[round_no % len(MODES)] if round_no < len(MODES) else rng.choice(MODES)
        downtime = rng.choice((0.0, rng.uniform(0.0, 0.05), rng.uniform(interval, 2 * interval)))
        if mode == "settled":
            time.sleep(rng.uniform(0.0, 1.5 * interval))
        elif mode == "after-start":
            node.restart(rng.uniform(0.0, 0.05))
            time.sleep(rng.uniform(0.0, 1.5 * interval))
        else:
            node.restart(rng.uniform(0.0, 0.05))
            assert node.register_seen.wait(RECOVERY_BOUND_S), (
                f"round {round_no}: the plugin did not call Register after a restart"
            )
            time.sleep(rng.uniform(0.0, 0.003))
        landed_mid_registration[mode] += node.mid_registration()
        started = node.restart(downtime)
        took = node.recovery_s(started)
        assert not node.manager.wait(timeout=0), f"round {round_no} ({mode}): plugin gave up"
        assert took < RECOVERY_BOUND_S, (
            f"round {round_no} ({mode}, kubelet down {downtime:.3f}s): both resources back "
            f"after {took:.2f}s, bound {RECOVERY_BOUND_S}s; earlier rounds: "
            f"median {statistics.median(recoveries or [0.0]):.3f}s"
        )
        recoveries.append(took)
    mid = sum(landed_mid_registration.values())
    print(
        f"\n{ROUNDS} kubelet restarts, {mid} of them mid-registration {landed_mid_registration}: "
        f"recovery median {statistics.median(recoveries):.3f}s, max {max(recoveries):.3f}s"
    )
    assert mid >= ROUNDS // 4, f"too few restarts landed mid-registration: {mid}"


class ScriptedKubelet:
    """A Registration server that fails each resource's first ``failures`` calls with ``code``."""

    def __init__(self, plugin_dir: Path, code: grpc.StatusCode, failures: int) -> None:
        self.code = code
        self.failures = failures
        self.calls: dict[str, list[float]] = {}
        self._lock = threading.Lock()
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        add_registration_servicer(self.server, self)
        self.server.add_insecure_port(f"unix://{plugin_dir / 'kubelet.sock'}")
        self.server.start()

    def register(self, request: pb.RegisterRequest, context: grpc.ServicerContext) -> pb.Empty:
        with self._lock:
            calls = self.calls.setdefault(request.resource_name, [])
            calls.append(time.monotonic())
            attempt = len(calls)
        if attempt <= self.failures:
            context.abort(self.code, f"scripted failure {attempt} of {request.resource_name}")
        return pb.Empty()


@pytest.mark.parametrize(
    "code",
    [
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.UNAVAILABLE,
    ],
    ids=lambda code: code.name.lower(),
)
def test_any_register_failure_is_retried_with_backoff_and_logged_once_per_reason(
    sock_dir: Path, code: grpc.StatusCode, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="neuron_device_plugin.plugin")
    kubelet = ScriptedKubelet(sock_dir, code, failures=4)
    interval = 0.05
    manager = PluginManager(
        SimulatedBackend(1, 2), PluginConfig(plugin_dir=sock_dir, watch_interval_s=interval)
    )
    manager.start()
    try:
        deadline = time.monotonic() + 5.0
        while not manager.readiness()[0]:
            assert time.monotonic() < deadline, manager.readiness()
            assert not manager.wait(timeout=0), "the plugin ended"
            time.sleep(0.02)
    finally:
        manager.stop()
        kubelet.server.stop(None)
    for resource in EXPECTED:
        calls = kubelet.calls[resource]
        assert len(calls) == 5, f"{resource}: one call per failure, then one that succeeded"
        gaps = [later - earlier for earlier, later in itertools.pairwise(calls)]
        # Backoff doubles from the watch interval: at least 0.05, 0.1, 0.2, 0.4 s apart.
        for i, gap in enumerate(gaps):
            assert gap >= interval * 2**i * 0.9, f"{resource}: retries {gaps} do not back off"
        failures = [
            r
            for r in caplog.records
            if r.levelno == logging.WARNING and "Register of " + resource + " " in r.getMessage()
        ]
        # Each attempt fails with its own message here ("failure 1 of ..."), so each is logged
        # once: one line per distinct reason, with the status name and no traceback.
        assert len(failures) == 4, [r.getMessage() for r in failures]
        assert all(f"{code.name}: scripted failure" in r.getMessage() for r in failures)
        assert all(r.exc_info is None for r in failures)


def test_a_repeated_failure_is_logged_once(
    sock_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    with KubeletEmulator(sock_dir, refuse="not today") as kubelet:
        manager = PluginManager(
            SimulatedBackend(1, 2), PluginConfig(plugin_dir=sock_dir, watch_interval_s=0.02)
        )
        manager.start()
        try:
            # attempts at 0.02, 0.04, 0.08, 0.16, 0.32, 0.64 s ...: wait for several per resource
            # (bounded: a busy machine only makes them later)
            deadline = time.monotonic() + 20.0
            while time.monotonic() < deadline:
                said = [r for r in caplog.records if "not today" in r.getMessage()]
                by_kubelet = [r for r in said if r.name.endswith("kubelet_emulator")]
                if len(by_kubelet) >= 8:
                    break
                time.sleep(0.05)
            by_plugin = [r for r in said if r.name.endswith(".plugin")]
            assert len(by_kubelet) >= 8, "several attempts per resource"
            assert len(by_plugin) == 2, "one line per resource, not one per attempt"
            kubelet.refuse = None
            kubelet.wait_for_registration(CORES, timeout=3.0)
            # the plugin logs the answer when its watcher next looks at the call, a step later
            deadline = time.monotonic() + 10.0
            while time.monotonic() < deadline and not _recovered(caplog):
                time.sleep(0.02)
        finally:
            manager.stop()
    assert _recovered(caplog), "the registration that got through says what it got past"


def _recovered(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if "after: UNKNOWN: not today" in r.getMessage()]


def test_a_register_hanging_in_the_kubelet_does_not_stop_the_watcher(sock_dir: Path) -> None:
    entered = threading.Event()
    release = threading.Event()

    def hang_first_register(request: pb.RegisterRequest) -> None:
        if request.resource_name == CORES and not entered.is_set():
            entered.set()
            release.wait(10.0)

    kubelet = KubeletEmulator(sock_dir, on_register=hang_first_register).start()
    manager = PluginManager(SimulatedBackend(4, 4), PluginConfig(plugin_dir=sock_dir))
    manager.start()
    try:
        assert entered.wait(2.0), "the plugin never called Register"
        # While that Register hangs, our other resource registers and a lost socket comes back.
        kubelet.wait_for_registration(DEVICES, timeout=2.0)
        core_socket = sock_dir / socket_name(CORES)
        core_socket.unlink()
        deadline = time.monotonic() + 1.0
        while not core_socket.is_socket():
            assert time.monotonic() < deadline, "socket not served again while Register hangs"
            time.sleep(0.01)
        # The hanging call named the old socket; the plugin gave it up and registered anew.
        kubelet.wait_for_registration(CORES, timeout=2.0)
    finally:
        release.set()
        manager.stop()
        kubelet.stop()


def test_the_watcher_outlives_a_vanished_directory(
    sock_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="neuron_device_plugin.plugin")
    plugin_dir = sock_dir / "device-plugins"
    kubelet = KubeletEmulator(plugin_dir).start()
    manager = PluginManager(
        SimulatedBackend(1, 2), PluginConfig(plugin_dir=plugin_dir, watch_interval_s=0.02)
    )
    manager.start()
    try:
        kubelet.wait_for_registration(CORES, timeout=2.0)
        kubelet.stop(delete_sockets=True)
        # serving again fails at every step until it is back (rmtree: the watcher may have
        # served a fresh socket there before the directory went)
        shutil.rmtree(plugin_dir)
        time.sleep(0.5)
        failed = [r for r in caplog.records if "watcher step failed" in r.getMessage()]
        assert len(failed) == 1, [r.getMessage() for r in failed]
        assert f"FileNotFoundError: device-plugin directory {plugin_dir} is gone" in (
            failed[0].getMessage()
        )
        assert not failed[0].exc_info, "one line, no traceback"
        kubelet = KubeletEmulator(plugin_dir).start()  # creates the directory again
        for resource in EXPECTED:
            kubelet.wait_for_registration(resource, timeout=2.0)
        assert not manager.wait(timeout=0), "the plugin ended"
    finally:
        manager.stop()
        kubelet.stop()
