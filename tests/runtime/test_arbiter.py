"""The node-local arbiter: placement (pure), claims, holders, kill -9, and racing claimers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from neuron_runtime import EXHAUSTED_PREFIX, NeuronRuntime, ResourceExhaustedError
from neuron_runtime.arbiter import CoreArbiter, place_groups


@pytest.mark.parametrize(
    ("free", "sizes", "expected"),
    [
        ([0, 1, 2, 3], [1], [(0,)]),
        ([0, 1, 2, 3], [2, 1, 1], [(0, 1), (2,), (3,)]),
        ([1, 2, 3], [2], [(1, 2)]),
        ([0, 2, 3], [2], [(2, 3)]),
        ([0, 2, 3, 5], [1, 2], [(0,), (2, 3)]),
        ([0, 2, 4, 6], [2], None),
        ([0, 1], [3], None),
        ([0, 3, 4, 7], [1, 1, 1, 1], [(0,), (3,), (4,), (7,)]),
    ],
    ids=[
        "first-core", "whole-window", "skip-held", "first-contiguous-pair", "groups-first-fit",
        "no-contiguous-pair", "too-few", "singles-anywhere",
    ],
)  # fmt: skip
def test_place_groups(
    free: list[int], sizes: list[int], expected: list[tuple[int, ...]] | None
) -> None:
    assert place_groups(free, sizes) == expected


def test_claims_are_exclusive_even_within_one_process(tmp_path: Path) -> None:
    arbiter = CoreArbiter(tmp_path, 4)
    with arbiter.claim([1, 2], group_sizes="2"):
        with pytest.raises(ResourceExhaustedError) as info:
            arbiter.claim([2, 3], group_sizes="2")
        message = str(info.value)
        assert message.startswith(EXHAUSTED_PREFIX)
        assert "cores 2,3" in message and "free cores: 0,3" in message
        assert f"core 1 by pid {os.getpid()}" in message
        assert "NEURONCORE_GROUP_SIZES=2" in message
        # all-or-nothing: core 3 was not kept by the failed claim
        with arbiter.claim([3], group_sizes="1"):
            pass
    assert all(state.holder is None for state in arbiter.snapshot())


def test_snapshot_names_holder_pid_and_command(tmp_path: Path) -> None:
    arbiter = CoreArbiter(tmp_path, 3)
    with arbiter.claim([1], group_sizes="1"):
        states = arbiter.snapshot()
    assert [s.holder is None for s in states] == [True, False, True]
    holder = states[1].holder
    assert holder is not None and holder.pid == os.getpid()
    assert "python" in holder.command or "pytest" in holder.command


def test_layout_larger_than_visible_cores(node_env: dict[str, str]) -> None:
    with pytest.raises(ResourceExhaustedError) as info:
        NeuronRuntime.from_env(
            {**node_env, "NEURON_RT_VISIBLE_CORES": "0-1", "NEURONCORE_GROUP_SIZES": "2,1"}
        )
    message = str(info.value)
    assert message.startswith(EXHAUSTED_PREFIX)
    assert "needs 3 cores" in message and "only 2 visible" in message
    assert "NEURONCORE_GROUP_SIZES=2,1" in message


def test_layout_larger_than_node(node_env: dict[str, str]) -> None:
    with pytest.raises(ResourceExhaustedError, match=r"node has 4 cores.*Asked for 5 cores"):
        NeuronRuntime.from_env({**node_env, "NEURONCORE_GROUP_SIZES": "4,1"})


def test_second_runtime_gets_the_remaining_cores(node_env: dict[str, str]) -> None:
    env = {**node_env, "NEURONCORE_GROUP_SIZES": "1,1"}
    with NeuronRuntime.from_env(env) as first, NeuronRuntime.from_env(env) as second:
        assert [g.cores for g in first.groups] == [(0,), (1,)]
        assert [g.cores for g in second.groups] == [(2,), (3,)]
        with pytest.raises(ResourceExhaustedError) as info:
            NeuronRuntime.from_env({**node_env, "NEURONCORE_GROUP_SIZES": "1"})
        assert "free cores: none" in str(info.value)
    # closing released everything
    with NeuronRuntime.from_env({**node_env, "NEURONCORE_GROUP_SIZES": "4"}) as whole:
        assert whole.groups[0].cores == (0, 1, 2, 3)


def test_visible_cores_are_locked_so_overlap_is_detected(node_env: dict[str, str]) -> None:
    with NeuronRuntime.from_env({**node_env, "NEURON_RT_VISIBLE_CORES": "1-2"}) as first:
        assert first.groups[0].cores == (1, 2)
        with pytest.raises(ResourceExhaustedError, match="core 2 is held"):
            NeuronRuntime.from_env({**node_env, "NEURON_RT_VISIBLE_CORES": "2-3"})
        with NeuronRuntime.from_env({**node_env, "NEURONCORE_GROUP_SIZES": "1,1"}) as second:
            assert [g.cores for g in second.groups] == [(0,), (3,)]


HOLDER = textwrap.dedent(
    """
    import json, os, sys, time
    from pathlib import Path
    from neuron_runtime import NeuronRuntime, ResourceExhaustedError
    go, release = Path(sys.argv[1]), Path(sys.argv[2])
    while not go.exists():
        time.sleep(0.001)
    try:
        runtime = NeuronRuntime.from_env()
    except ResourceExhaustedError as exc:
        print(json.dumps({"won": False, "error": str(exc)}), flush=True)
        sys.exit(0)
    print(json.dumps({"won": True, "cores": [g.cores for g in runtime.groups]}), flush=True)
    while not release.exists():
        time.sleep(0.005)
    """
)


@pytest.fixture
def children() -> Iterator[list[subprocess.Popen[str]]]:
    procs: list[subprocess.Popen[str]] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


def _start(env: dict[str, str], go: Path, release: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-P", "-c", HOLDER, str(go), str(release)],
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        text=True,
    )


def _report(proc: subprocess.Popen[str]) -> dict[str, object]:
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line, f"child {proc.pid} printed nothing (exit code {proc.poll()})"
    result: dict[str, object] = json.loads(line)
    return result


def test_kill_9_leaves_no_stale_claim(
    tmp_path: Path, node_env: dict[str, str], children: list[subprocess.Popen[str]]
) -> None:
    go, release = tmp_path / "go", tmp_path / "release"
    go.touch()
    holder = _start({**node_env, "NEURONCORE_GROUP_SIZES": "4"}, go, release)
    children.append(holder)
    assert _report(holder) == {"won": True, "cores": [[0, 1, 2, 3]]}
    with pytest.raises(ResourceExhaustedError) as info:
        NeuronRuntime.from_env({**node_env, "NEURONCORE_GROUP_SIZES": "1"})
    assert f"pid {holder.pid}" in str(info.value)
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    with NeuronRuntime.from_env({**node_env, "NEURONCORE_GROUP_SIZES": "4"}) as runtime:
        assert runtime.groups[0].cores == (0, 1, 2, 3)


@pytest.mark.parametrize("round_", range(3), ids=["round1", "round2", "round3"])
def test_processes_racing_for_the_last_core_cannot_both_win(
    tmp_path: Path, node_env: dict[str, str], children: list[subprocess.Popen[str]], round_: int
) -> None:
    env = {**node_env, "NEURON_RT_VISIBLE_CORES": "0-2"}
    go, release = tmp_path / "go", tmp_path / "release"
    with NeuronRuntime.from_env(env):  # cores 0-2 held: only core 3 is left
        racers = [
            _start({**node_env, "NEURONCORE_GROUP_SIZES": "1"}, go, release) for _ in range(4)
        ]
        children.extend(racers)
        time.sleep(0.3)  # let every racer start and spin on the go file (not an assertion)
        go.touch()
        reports = [_report(proc) for proc in racers]
    release.touch()
    winners = [r for r in reports if r["won"]]
    assert len(winners) == 1, reports
    assert winners[0]["cores"] == [[3]]
    for loser in (r for r in reports if not r["won"]):
        assert str(loser["error"]).startswith(EXHAUSTED_PREFIX)
