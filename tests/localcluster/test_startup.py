"""``ensure_up``: the running cluster is reused only when it is the one asked for."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from neuron_localcluster import startup
from neuron_localcluster.cluster import LocalCluster
from neuron_localcluster.layout import Ports


@pytest.mark.parametrize(
    ("running", "asked", "reused"),
    [("dra", "dra", True), ("device-plugin", "dra", False), ("dra", "device-plugin", False)],
    ids=["same-path-reused", "other-path-restarted", "back-to-the-plugin-restarted"],
)
def test_ensure_up_reuses_a_running_cluster_only_on_the_same_path(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, running: str, asked: str, reused: bool
) -> None:
    current = LocalCluster(tmp_path, "https://127.0.0.1:1", Ports(1, 2, 3, 4, 5, 6), [], [])
    current.allocation = running
    started: list[dict[str, Any]] = []

    def fake_up(state_dir: Path, **kwargs: Any) -> LocalCluster:
        started.append(kwargs)
        return current

    monkeypatch.setattr(LocalCluster, "attach", classmethod(lambda cls, folder: current))
    monkeypatch.setattr(LocalCluster, "running", lambda self: True)
    monkeypatch.setattr(LocalCluster, "up", staticmethod(fake_up))
    startup.ensure_up(tmp_path, "", "", allocation=asked)
    assert (started == []) is reused
    if not reused:
        assert started[0]["allocation"] == asked
