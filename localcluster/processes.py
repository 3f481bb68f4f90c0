"""Start background processes in their own sessions, record them, and stop every one of them.

Why sessions and pid files: ``make cluster-up`` returns while the control plane keeps running, and
``make cluster-down`` runs in another process that must find and end all of it, including the
children the emulated node's agent spawned (the device plugin, the pods' runtime processes).  Each
component starts as a session leader (its process group id is its pid), so signalling the group
reaches its children too.  A pid file records the pid and the process's start time from
``/proc/<pid>/stat``: a recycled pid never gets signalled by mistake.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)


# Popen objects of the processes this interpreter started, kept so they are not garbage-collected
# while running (which warns) and so stop() can reap them.
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


@dataclass(frozen=True)
class Recorded:
    name: str
    pid: int
    start_ticks: int | None


def start_ticks(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (field 22 of /proc/<pid>/stat)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may hold spaces: split after it.
    fields = stat.rsplit(")", 1)[1].split()
    return int(fields[19])


def alive(rec: Recorded) -> bool:
    ticks = start_ticks(rec.pid)
    if ticks is None:
        return False
    if rec.start_ticks is not None and ticks != rec.start_ticks:
        return False
    try:
        state = Path(f"/proc/{rec.pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def spawn(
    name: str,
    argv: Sequence[str],
    *,
    pid_dir: Path,
    log_file: Path,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> subprocess.Popen[bytes]:
    """Start ``argv`` as a session leader with output to ``log_file`` and record it."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    pid_dir.mkdir(parents=True, exist_ok=True)
    with log_file.open("ab") as out:
        proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            start_new_session=True,
        )
    _CHILDREN[proc.pid] = proc
    rec = Recorded(name, proc.pid, start_ticks(proc.pid))
    (pid_dir / f"{name}.pid").write_text(json.dumps(rec.__dict__))
    log.info("started %s (pid %s), log %s", name, proc.pid, log_file)
    return proc


def recorded(pid_dir: Path) -> list[Recorded]:
    out: list[Recorded] = []
    for path in sorted(pid_dir.glob("*.pid")):
        try:
            data = json.loads(path.read_text())
            out.append(Recorded(str(data["name"]), int(data["pid"]), data.get("start_ticks")))
        except (OSError, ValueError, KeyError, TypeError):
            log.warning("ignoring unreadable pid file %s", path)
    return out


def _signal_group(rec: Recorded, sig: signal.Signals) -> None:
    try:
        os.killpg(rec.pid, sig)
    except ProcessLookupError:
        return
    except PermissionError:
        os.kill(rec.pid, sig)


def _group_members(pgid: int) -> list[int]:
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(entry.name))
    return members


def stop(rec: Recorded, *, grace: float = 10.0) -> None:
    """SIGTERM the process group, wait ``grace`` seconds, then SIGKILL whatever is left of it."""
    if alive(rec):
        log.info("stopping %s (pid %s)", rec.name, rec.pid)
        _signal_group(rec, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and (alive(rec) or _group_members(rec.pid)):
            _reap(rec.pid)
            time.sleep(0.1)
    if alive(rec) or _group_members(rec.pid):
        log.warning("%s (pid %s) outlived SIGTERM; killing its group", rec.name, rec.pid)
        _signal_group(rec, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and _group_members(rec.pid):
            _reap(rec.pid)
            time.sleep(0.05)
    _reap(rec.pid, block=True)


def _reap(pid: int, *, block: bool = False) -> None:
    """Collect the exit status if the process is our own child (avoids a zombie in tests).

    ``block``: wait (briefly) for it.  A multi-threaded program's leader shows as a zombie while
    its other threads still exit, and cannot be reaped until they have.
    """
    proc = _CHILDREN.get(pid)
    if proc is not None:
        if block:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(5)
        if proc.poll() is not None:
            del _CHILDREN[pid]
        return
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def stop_all(pid_dir: Path, order: Sequence[str] = ()) -> list[str]:
    """Stop every recorded process: others first, then ``order`` backwards (etcd last)."""
    recs = recorded(pid_dir)
    rank = {name: i for i, name in enumerate(order)}
    recs.sort(key=lambda r: -rank.get(r.name, len(order)))
    stopped = []
    for rec in recs:
        stop(rec)
        (pid_dir / f"{rec.name}.pid").unlink(missing_ok=True)
        stopped.append(rec.name)
    return stopped
