"""``neuron-localcluster demo --allocation dra``: the seed's three scenarios through DRA only.

Every node offers its cores through the DRA driver alone; the samples' ``allocation: Auto``
resolves to the operator's DRA mode (one block claim per pod from the workload's templates): on
kwok nodes the scheduler allocates them, on the emulated node the agent prepares them through the
driver's kubelet side and the serving processes answer inference.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from neuron_localcluster.cluster import stop_cluster

pytestmark = pytest.mark.cluster


def test_the_seeds_scenarios_run_and_serve_through_dra() -> None:
    state = Path(tempfile.mkdtemp(prefix="ngdd-"))
    env = {**os.environ, "PYTHONSAFEPATH": "1"}
    cmd = [sys.executable, "-m", "neuron_localcluster", "--state-dir", str(state), "demo"]
    try:
        proc = subprocess.run(
            [*cmd, "--allocation", "dra"],
            capture_output=True,
            text=True,
            env=env,
            timeout=480,
            check=False,
        )
    finally:
        stopped = stop_cluster(state)
        shutil.rmtree(state, ignore_errors=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    assert "every node's NeuronCores are published as DRA ResourceSlices" in out
    assert "all scenarios Ready" in out
    assert "==> inference: pod " in out
    # the core map (kubectl neuron cores): three full inf1.6xlarge nodes, every core held by a
    # demo pod, on kwok nodes too (from the pods' ResourceClaims)
    headers = [line for line in out.splitlines() if " NeuronCores: " in line]
    assert len(headers) == 3
    assert all("16 NeuronCores: 0 free" in line for line in headers), headers
    core_lines = [line for line in out.splitlines() if re.match(r"^ +\d+  demo/", line)]
    assert len(core_lines) == 48
    assert any(name.startswith("dra-driver-kwok-") for name in stopped)
    assert "operator" in stopped
