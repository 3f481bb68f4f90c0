"""Background processes: started as session leaders, recorded, and stopped with their children."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from neuron_localcluster import processes

# A parent that starts a child in its own process group and waits: stop() must end both.
PARENT_WITH_CHILD = (
    "import subprocess, sys, time; "
    "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
    "print(child.pid, flush=True); time.sleep(60)"
)
IGNORES_TERM = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)"


def _running(pid: int) -> bool:
    """Alive and not a zombie (an orphaned child may wait a moment for init to reap it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _wait_for_line(path: Path) -> str:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        text = path.read_text().strip()
        if text:
            return text
        time.sleep(0.05)
    raise AssertionError(f"{path} stayed empty")


def test_stop_all_ends_the_whole_group(tmp_path: Path) -> None:
    log = tmp_path / "logs" / "parent.log"
    proc = processes.spawn(
        "parent", [sys.executable, "-c", PARENT_WITH_CHILD], pid_dir=tmp_path / "pids", log_file=log
    )
    child = int(_wait_for_line(log))
    [rec] = processes.recorded(tmp_path / "pids")
    assert (rec.name, rec.pid) == ("parent", proc.pid)
    assert processes.alive(rec)
    assert processes.stop_all(tmp_path / "pids") == ["parent"]
    assert not processes.alive(rec)
    assert not _running(child)
    assert not list((tmp_path / "pids").glob("*.pid"))


def test_a_process_ignoring_sigterm_is_killed(tmp_path: Path) -> None:
    processes.spawn(
        "stubborn", [sys.executable, "-c", IGNORES_TERM], pid_dir=tmp_path, log_file=tmp_path / "l"
    )
    time.sleep(0.3)  # let it install the handler
    [rec] = processes.recorded(tmp_path)
    started = time.monotonic()
    processes.stop(rec, grace=0.5)
    assert not processes.alive(rec)
    assert time.monotonic() - started < 10


def test_recycled_pid_is_not_signalled() -> None:
    me = processes.Recorded("me", pid=__import__("os").getpid(), start_ticks=1)
    assert not processes.alive(me)  # same pid, other start time: not ours


@pytest.mark.parametrize(
    ("names", "expected"),
    [
        (["etcd", "kube-apiserver", "node-agent-x"], ["node-agent-x", "kube-apiserver", "etcd"]),
        (["kwok", "etcd"], ["kwok", "etcd"]),
    ],
    ids=["agents-first-etcd-last", "kwok-before-etcd"],
)
def test_stop_order(tmp_path: Path, names: list[str], expected: list[str]) -> None:
    for name in names:
        (tmp_path / f"{name}.pid").write_text(
            f'{{"name": "{name}", "pid": 999999999, "start_ticks": 1}}'
        )
    assert (
        processes.stop_all(
            tmp_path,
            ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok"),
        )
        == expected
    )
