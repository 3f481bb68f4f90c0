"""Shared fixtures: short temp dirs for unix sockets, fake sysfs trees, a running plugin."""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from neuron_device_plugin.plugin import PluginConfig, PluginManager
from neuron_device_plugin.simulated_backend import SimulatedBackend
from neuron_localcluster.kubelet_emulator import KubeletEmulator

FakeSysfs = Callable[[int, int], tuple[Path, Path]]


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    """A short directory for sockets: pytest's tmp_path can exceed the 107-byte socket limit."""
    path = Path(tempfile.mkdtemp(prefix="dp-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def build_sysfs_tree(root: Path, devices: int, cores_per_device: int) -> tuple[Path, Path]:
    """The Neuron driver's layout under ``root``: returns (sysfs_root, dev_root)."""
    sysfs = root / "sys" / "devices" / "virtual" / "neuron_device"
    dev = root / "dev"
    dev.mkdir(parents=True, exist_ok=True)
    for d in range(devices):
        device_dir = sysfs / f"neuron{d}"
        device_dir.mkdir(parents=True)
        (device_dir / "core_count").write_text(f"{cores_per_device}\n")
        (device_dir / "numa_node").write_text(f"{d * 2 // devices}\n")
        for c in range(cores_per_device):
            counter = device_dir / f"neuron_core{c}" / "stats" / "status" / "hw_error"
            counter.mkdir(parents=True)
            (counter / "total").write_text("0\n")
        (dev / f"neuron{d}").write_text("")
    return sysfs, dev


@pytest.fixture
def fake_sysfs(tmp_path: Path) -> FakeSysfs:
    return lambda devices, cores: build_sysfs_tree(tmp_path, devices, cores)


class RunningNode:
    """A kubelet emulator and a plugin manager sharing one socket directory."""

    def __init__(self, plugin_dir: Path, health_file: Path) -> None:
        self.plugin_dir = plugin_dir
        self.health_file = health_file
        self.kubelet = KubeletEmulator(plugin_dir).start()
        self.manager = PluginManager(
            SimulatedBackend(4, 4, health_file=health_file),
            PluginConfig(plugin_dir=plugin_dir, health_interval_s=0.1, watch_interval_s=0.05),
        )
        self.manager.start()

    def wait_ready(self, timeout: float = 2.0) -> None:
        """Until the plugin has read the answers of its Register calls to the current kubelet.

        The kubelet dials the plugin inside Register, so it may stream devices a moment before.
        """
        deadline = time.monotonic() + timeout
        while not self.manager.readiness()[0]:
            assert time.monotonic() < deadline, self.manager.readiness()
            time.sleep(0.01)

    def stop(self) -> None:
        self.manager.stop()
        self.kubelet.stop()


@pytest.fixture
def node(sock_dir: Path) -> Iterator[RunningNode]:
    """A simulated inf1.6xlarge plugin registered with a kubelet emulator, in-process."""
    running = RunningNode(sock_dir, sock_dir / "unhealthy-cores")
    yield running
    running.stop()
