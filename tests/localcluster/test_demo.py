"""The demo: its pure helpers, and the whole `neuron-localcluster demo` on a cluster of its own."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest

from neuron_localcluster import demo
from neuron_localcluster.cluster import stop_cluster


def test_models_volume_replaces_any_models_mount(tmp_path: Path) -> None:
    workload: dict[str, Any] = {
        "metadata": {"name": "w"},
        "spec": {
            "volumes": [{"name": "models", "emptyDir": {}}, {"name": "keep", "emptyDir": {}}],
            "volumeMounts": [{"name": "models", "mountPath": "/models"}],
        },
    }
    out = demo.with_models_volume(workload, tmp_path)
    assert out["spec"]["volumes"] == [
        {"name": "keep", "emptyDir": {}},
        {"name": "models", "hostPath": {"path": str(tmp_path), "type": "Directory"}},
    ]
    assert out["spec"]["volumeMounts"] == [
        {"name": "models", "mountPath": "/models", "readOnly": True}
    ]
    assert workload["spec"]["volumes"][0] == {"name": "models", "emptyDir": {}}  # not mutated


@pytest.mark.parametrize(
    ("visible", "sizes", "expected"),
    [
        ([4, 5, 6, 7], "2,2", [(4, 5), (6, 7)]),
        ([0, 1, 2, 3], "4x1", [(0,), (1,), (2,), (3,)]),
        ([8, 9], None, [(8, 9)]),
    ],
    ids=["two-pairs", "AxB-form", "no-sizes-one-group"],
)
def test_groups_of(visible: list[int], sizes: str | None, expected: list[tuple[int, ...]]) -> None:
    assert demo.groups_of(visible, sizes) == expected


def test_core_map_lines_mark_simulated_holders() -> None:
    holders: dict[int, demo.Holder] = {}
    demo.assign(holders, "p1", [0, 1], "1,1", simulated=False)
    demo.assign(holders, "p2", [3], None, simulated=True)
    assert demo.core_map_lines("n", "kind", 4, holders) == [
        "n (kind, 4 NeuronCores)",
        "  core  0  p1  group 0",
        "  core  1  p1  group 1",
        "  core  2  free",
        "  core  3  p2  group 0 *",
    ]


def _wl(name: str, ready: int, status: str | None) -> dict[str, Any]:
    conds = [] if status is None else [{"type": "Ready", "status": status}]
    return {
        "metadata": {"name": name},
        "spec": {"replicas": 2},
        "status": {"readyReplicas": ready, "conditions": conds},
    }


@pytest.mark.parametrize(
    ("workloads", "ready"),
    [
        ([_wl("a", 2, "True"), _wl("b", 2, "True")], True),
        ([_wl("a", 2, "True"), _wl("b", 1, "False")], False),
        ([_wl("a", 0, None)], False),
        ([], False),
    ],
    ids=["all-ready", "one-not-ready", "no-condition-yet", "none"],
)
def test_all_ready(workloads: list[dict[str, Any]], ready: bool) -> None:
    assert demo.all_ready(workloads) is ready


def test_progress_line() -> None:
    assert demo.progress_line([_wl("a", 1, "False")]) == "a 1/2 ready"


@pytest.mark.cluster
def test_demo_runs_end_to_end_on_its_own_cluster() -> None:
    state = Path(tempfile.mkdtemp(prefix="ngd-"))
    env = {**os.environ, "PYTHONSAFEPATH": "1"}
    cmd = [sys.executable, "-m", "neuron_localcluster", "--state-dir", str(state), "demo"]
    try:
        proc = subprocess.run(
            cmd, capture_output=True, text=True, env=env, timeout=280, check=False
        )
    finally:
        stopped = stop_cluster(state)
        shutil.rmtree(state, ignore_errors=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    assert "all scenarios Ready" in out
    assert "==> inference: pod " in out
    assert "kubectl get nodes" in out and "cluster-down" in out
    core_lines = [line for line in out.splitlines() if line.startswith("  core ")]
    assert len(core_lines) == 48  # three inf1.6xlarge nodes
    assert not any(line.endswith("free") for line in core_lines)  # 16 + 16 + 16 cores planned
    assert "operator" in stopped and "etcd" in stopped
