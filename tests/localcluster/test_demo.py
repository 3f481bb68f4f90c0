"""The demo: its pure helpers, and the whole `neuron-localcluster demo` on a cluster of its own."""

from __future__ import annotations

import os
import re
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
    # Printed by `kubectl neuron cores`: the emulated node's 16 cores, each held by a pod of the
    # demo, and on the two kwok nodes (no allocation record) each pod's count, 16 per node.
    rows = [line.split() for line in out.splitlines() if re.match(r"^ +\d+  ", line)]
    assert len(rows) == 16
    assert all(row[1].startswith("demo/") for row in rows)
    unplaced = re.findall(r"holds (\d+) NeuronCores, placement not reported", out)
    assert sum(int(n) for n in unplaced) == 32
    assert "operator" in stopped and "etcd" in stopped
