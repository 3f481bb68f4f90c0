"""Every example in examples/ runs here, end to end, as a user would run it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _run(script: str, *args: str, state_dir: Path) -> str:
    env = {**os.environ, "NEURON_SIM_STATE_DIR": str(state_dir)}
    for name in ("NEURONCORE_GROUP_SIZES", "NEURON_RT_VISIBLE_CORES", "NEURON_SIM_CORES"):
        env.pop(name, None)
    done = subprocess.run(
        [sys.executable, "-P", str(EXAMPLES / script), *args],
        env=env, capture_output=True, text=True, timeout=240, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


@pytest.mark.slow
def test_scenario1_sixteen_copies_in_one_process(tmp_path: Path) -> None:
    out = _run("scenario1_one_process.py", state_dir=tmp_path)
    assert "group 15: core 15" in out
    assert "NEURONCORE_GROUP_SIZES=1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1" in out
    assert "all 100 results identical" in out


@pytest.mark.slow
def test_scenario2_sixteen_processes(tmp_path: Path) -> None:
    out = _run("scenario2_many_processes.py", state_dir=tmp_path)
    assert out.count("held by pid") == 16
    assert "a 17th process is refused: All machine learning accelerators" in out
    assert "16 processes on disjoint cores; all results identical" in out


@pytest.mark.slow
def test_scenario3_sixteen_processes_two_models_each(tmp_path: Path) -> None:
    out = _run("scenario3_context_switch.py", state_dir=tmp_path)
    assert out.count("100 requests") == 16
    assert "16 processes on disjoint cores; all results identical" in out
    switches = [int(line.split(", ")[-1].split()[0]) for line in out.splitlines()
                if "context switches" in line]  # fmt: skip
    assert len(switches) == 16
    assert all(1 <= s < 100 for s in switches)  # switching happened, amortised over requests
