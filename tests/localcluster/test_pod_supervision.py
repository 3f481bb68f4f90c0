"""The emulated node's processes: back-off, when a container starts, exits, restarts, stops."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from neuron_localcluster import pods
from neuron_localcluster.pod_supervision import (
    MAX_BACKOFF_S,
    RunningContainer,
    RunningPod,
    restart_delay,
    should_start,
    stop_pods,
    supervise,
)


@pytest.mark.parametrize(
    ("restarts", "delay"),
    [(1, 2.0), (2, 4.0), (4, 16.0), (5, MAX_BACKOFF_S), (40, MAX_BACKOFF_S)],
    ids=["first", "second", "fourth", "capped", "far-past-the-cap"],
)
def test_restart_delay_doubles_up_to_the_cap(restarts: int, delay: float) -> None:
    assert restart_delay(restarts) == delay


def _container(tmp_path: Path, argv: list[str], **state: object) -> RunningContainer:
    rc = RunningContainer(
        container={"name": "c"},
        argv=argv,
        env={},
        log_path=tmp_path / "c.log",
        check=pods.ReadinessCheck(None),
    )
    for key, value in state.items():
        setattr(rc, key, value)
    return rc


@pytest.mark.parametrize(
    ("state", "now", "expected"),
    [
        ({}, 0.0, True),
        ({"last_exit": 0}, 100.0, False),
        ({"last_exit": 1, "restart_pending": True, "next_start": 5.0}, 4.0, False),
        ({"last_exit": 1, "restart_pending": True, "next_start": 5.0}, 5.0, True),
    ],
    ids=["never-run", "exited-for-good", "in-back-off", "back-off-over"],
)
def test_should_start(tmp_path: Path, state: dict[str, object], now: float, expected: bool) -> None:
    assert should_start(_container(tmp_path, ["true"], **state), now) is expected


def _pod(policy: str, *containers: RunningContainer) -> RunningPod:
    return RunningPod(
        host_network=True,
        uid="u1",
        namespace="ns",
        name="p",
        pod_ip="127.0.0.1",
        started_at="2026-01-01T00:00:00Z",
        restart_policy=policy,
        containers=list(containers),
    )


def _wait_exit(rc: RunningContainer) -> None:
    assert rc.process is not None
    rc.process.wait(10)


@pytest.mark.parametrize(
    ("policy", "code", "pending", "restarts"),
    [
        ("Always", 0, True, 1),
        ("OnFailure", 3, True, 1),
        ("OnFailure", 0, False, 0),
        ("Never", 3, False, 0),
    ],
    ids=["always", "on-failure-failed", "on-failure-succeeded", "never"],
)
def test_an_exit_is_restarted_as_the_policy_says_after_a_back_off(
    tmp_path: Path, policy: str, code: int, pending: bool, restarts: int
) -> None:
    rc = _container(tmp_path, [sys.executable, "-c", f"raise SystemExit({code})"])
    pod = _pod(policy, rc)
    supervise(pod, 0.0, probe=lambda ip, check: True)
    assert rc.process is not None and rc.started_at is not None and rc.ready
    _wait_exit(rc)
    supervise(pod, 1.0, probe=lambda ip, check: True)
    assert rc.process is None
    assert (rc.last_exit, rc.ready) == (code, False)
    assert (rc.restart_pending, rc.restarts) == (pending, restarts)
    if pending:
        assert rc.next_start == 1.0 + restart_delay(1)
        supervise(pod, rc.next_start, probe=lambda ip, check: True)
        assert rc.process is not None
        _wait_exit(rc)


def test_a_pod_that_failed_admission_runs_nothing(tmp_path: Path) -> None:
    rc = _container(tmp_path, ["true"])
    pod = _pod("Always", rc)
    pod.failed = "no device plugin registered aws.amazon.com/neuron on this node"
    supervise(pod, 0.0)
    assert rc.process is None


def test_stop_pods_terminates_then_reports_each_pod(tmp_path: Path) -> None:
    sleeper = _container(tmp_path, [sys.executable, "-c", "import time; time.sleep(60)"])
    stubborn = _container(
        tmp_path,
        [
            sys.executable,
            "-c",
            "import signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
            "sys.stdout.write('ready\\n'); sys.stdout.flush(); time.sleep(60)",
        ],
    )
    first, second = _pod("Always", sleeper), _pod("Always", stubborn)
    supervise(first, 0.0, probe=lambda ip, check: True)
    supervise(second, 0.0, probe=lambda ip, check: True)
    deadline = time.monotonic() + 10
    while "ready" not in stubborn.log_path.read_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    processes = [rc.process for rc in (sleeper, stubborn)]
    stopped: list[str] = []
    started = time.monotonic()
    stop_pods([first, second], grace=0.5, stopped=lambda pod: stopped.append(pod.name))
    assert time.monotonic() - started < 5
    assert stopped == ["p", "p"]
    assert (sleeper.process, stubborn.process) == (None, None)
    codes = [p.returncode for p in processes if isinstance(p, subprocess.Popen)]
    assert codes == [-15, -9]  # SIGTERM for the one that obeys, SIGKILL after the grace
