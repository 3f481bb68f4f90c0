"""Start and stop on a cluster of its own: `down` leaves nothing, even after an agent was killed."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

import pytest

from neuron_localcluster import LocalCluster
from neuron_localcluster.node_files import plugin_dir_for

pytestmark = pytest.mark.cluster


def _processes_mentioning(text: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if text in cmdline and state != "Z":
            found.append(int(entry.name))
    return found


def _netns() -> str:
    listing = subprocess.run(["ip", "netns", "list"], check=True, capture_output=True, text=True)
    return listing.stdout


def test_down_after_a_killed_node_agent_leaves_no_process_namespace_or_socket() -> None:
    state = Path(tempfile.mkdtemp(prefix="ngl-"))
    try:
        cluster = LocalCluster.up(state, kwok_nodes="", emulated_nodes="inf1.6xlarge")
        node_dir = cluster.layout.node_dir(cluster.emulated_node)
        record = json.loads(
            (cluster.layout.pids / f"node-agent-{cluster.emulated_node}.pid").read_text()
        )
        netns = (node_dir / "netns").read_text().split()[0]
        assert netns in _netns()
        assert _processes_mentioning(str(state))
        os.kill(int(record["pid"]), signal.SIGKILL)  # no chance to clean up
        stopped = cluster.down()
        assert stopped[-1] == "etcd"
        assert _processes_mentioning(str(state)) == []
        assert netns not in _netns()
        assert not plugin_dir_for(node_dir).exists()
    finally:
        if (state / "state.json").exists():
            LocalCluster.attach(state).down()
        shutil.rmtree(state, ignore_errors=True)
