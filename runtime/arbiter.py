"""The node-local core arbiter: the job the old ``neuron-rtd`` daemon did, without a daemon.

Processes on one machine must get disjoint NeuronCores.  Instead of a daemon keeping a table
(which goes stale when a client is killed), each core is one lock file under the state
directory, and a process holds a core exactly as long as it holds an exclusive ``flock`` on that
file.  The kernel drops the lock when the process dies, however it dies (``kill -9`` included),
so there is never a stale claim to clean up, and two processes racing for the last core cannot
both win: ``flock(LOCK_EX | LOCK_NB)`` succeeds for one of them only.

``flock`` (not ``fcntl``/``lockf``) is used on purpose: its locks belong to the open file, so two
runtimes inside one process also conflict, and the runtime's worker processes (started with
``close_fds``) never inherit a claim that would outlive the runtime.

Who holds a core is read without touching the locks: ``/proc/locks`` names the pid holding each
inode, and the holder writes its pid and command line into the file for people to read.
Probing by trying the lock would make a concurrent claimer fail spuriously.

``place_groups`` (which free cores a new claim should take) is pure and tested on its own.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from neuron_cores import contiguous_runs, split_into_groups
from neuron_runtime.errors import CoreHolder, ResourceExhaustedError

log = logging.getLogger(__name__)

PROC_LOCKS = Path("/proc/locks")
CLAIM_ATTEMPTS = 5
COMMAND_WIDTH = 100


def place_groups(free: Sequence[int], sizes: Sequence[int]) -> list[tuple[int, ...]] | None:
    """Pick cores for groups of ``sizes`` among ``free`` cores, each group a contiguous run.

    Prefers one contiguous window for the whole layout (lowest first, like a device's cores),
    else places each group first-fit in the free runs; None when no placement exists.  The runs
    and the carving are the shared ``neuron_cores`` arithmetic.
    """
    total = sum(sizes)
    runs = contiguous_runs(free)
    for first, last in runs:
        if last - first + 1 >= total:
            return split_into_groups(range(first, first + total), sizes)
    groups: list[tuple[int, ...]] = []
    for size in sizes:
        for index, (first, last) in enumerate(runs):
            if last - first + 1 >= size:
                groups.append(tuple(range(first, first + size)))
                runs[index] = (first + size, last)
                break
        else:
            return None
    return groups


def _why_no_placement(node: int, free: int, total: int, sizes: Sequence[int]) -> str:
    if total > node:
        return f"the node has {node} cores"
    if free == 0:
        return f"all {node} cores of the node are held"
    if free < total:
        return f"only {free} of the node's {node} cores are free"
    return f"the free cores hold no contiguous runs for groups of {','.join(map(str, sizes))}"


@dataclass(frozen=True)
class CoreState:
    core: int
    holder: CoreHolder | None


def _process_command(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return ""
    return raw.replace(b"\0", b" ").decode(errors="replace").strip()


def _flock_holders() -> dict[int, int] | None:
    """inode -> pid for every exclusive flock on the machine; None without /proc/locks."""
    try:
        text = PROC_LOCKS.read_text()
    except OSError:
        return None
    holders: dict[int, int] = {}
    for line in text.splitlines():
        fields = line.split()
        # "1: FLOCK  ADVISORY  WRITE 11237 fe:00:9978690 0 EOF"; blocked waiters carry "->".
        if len(fields) < 6 or fields[1] == "->" or fields[1] != "FLOCK" or fields[3] != "WRITE":
            continue
        with contextlib.suppress(ValueError, IndexError):
            holders[int(fields[5].rsplit(":", 1)[1])] = int(fields[4])
    return holders


class CoreClaim:
    """Exclusive locks on some cores; released by ``release()``, ``with``, or process death."""

    def __init__(self, cores: tuple[int, ...], fds: list[int]) -> None:
        self.cores = cores
        self._fds = fds

    @property
    def active(self) -> bool:
        return bool(self._fds)

    def release(self) -> None:
        fds, self._fds = self._fds, []
        for fd in fds:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
                fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
        if fds:
            log.info("released cores %s", self.cores)

    def __enter__(self) -> CoreClaim:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


class _ContendedError(Exception):
    def __init__(self, core: int) -> None:
        self.core = core
        super().__init__(f"core {core} is held")


class CoreArbiter:
    """Claims cores on this node through one lock file per core under ``state_dir``."""

    def __init__(self, state_dir: Path, node_cores: int) -> None:
        self.state_dir = state_dir
        self.node_cores = node_cores

    def lock_path(self, core: int) -> Path:
        return self.state_dir / f"core-{core}.lock"

    def _open(self, core: int) -> int:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        return os.open(self.lock_path(core), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)

    def snapshot(self) -> list[CoreState]:
        """Every core of the node with its holder, or None when free."""
        holders = _flock_holders()
        states: list[CoreState] = []
        for core in range(self.node_cores):
            states.append(CoreState(core, self._holder(core, holders)))
        return states

    def _holder(self, core: int, holders: dict[int, int] | None) -> CoreHolder | None:
        path = self.lock_path(core)
        try:
            inode = path.stat().st_ino
        except FileNotFoundError:
            return None
        if holders is None:
            return self._probe(core)
        pid = holders.get(inode)
        if pid is None:
            return None
        return CoreHolder(core, pid, _process_command(pid) or self._recorded(core)[1])

    def _recorded(self, core: int) -> tuple[int, str]:
        try:
            data = json.loads(self.lock_path(core).read_text() or "{}")
            return int(data.get("pid", 0)), str(data.get("command", ""))
        except (OSError, ValueError, TypeError):
            return 0, ""

    def _probe(self, core: int) -> CoreHolder | None:
        """Fallback without /proc/locks: a shared non-blocking probe, released at once."""
        fd = self._open(core)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            pid, command = self._recorded(core)
            return CoreHolder(core, pid, command)
        finally:
            os.close(fd)
        return None

    def claim(self, cores: Sequence[int], *, group_sizes: str) -> CoreClaim:
        """Claim exactly ``cores`` (all or nothing)."""
        try:
            return self._lock_all(cores)
        except _ContendedError as exc:
            states = self.snapshot()
            raise ResourceExhaustedError(
                reason=f"core {exc.core} is held by another process",
                asked=tuple(cores),
                free=[s.core for s in states if s.holder is None],
                holders=[s.holder for s in states if s.holder is not None],
                group_sizes=group_sizes,
            ) from None

    def claim_groups(
        self, sizes: Sequence[int], *, group_sizes: str
    ) -> tuple[CoreClaim, list[tuple[int, ...]]]:
        """Let the arbiter pick free cores for ``sizes`` (each group contiguous) and claim them."""
        total = sum(sizes)
        for attempt in range(CLAIM_ATTEMPTS):
            states = self.snapshot()
            free = [s.core for s in states if s.holder is None]
            groups = place_groups(free, sizes)
            if groups is None:
                reason = _why_no_placement(self.node_cores, len(free), total, sizes)
                raise ResourceExhaustedError(
                    reason=reason,
                    asked=total,
                    free=free,
                    holders=[s.holder for s in states if s.holder is not None],
                    group_sizes=group_sizes,
                )
            try:
                claim = self._lock_all([c for g in groups for c in g])
            except _ContendedError as exc:
                log.info("core %s taken while claiming (attempt %s); retrying", exc.core, attempt)
                time.sleep(0.001 * (attempt + 1))
                continue
            return claim, groups
        states = self.snapshot()
        raise ResourceExhaustedError(
            reason="other processes kept taking the free cores while this one claimed",
            asked=total,
            free=[s.core for s in states if s.holder is None],
            holders=[s.holder for s in states if s.holder is not None],
            group_sizes=group_sizes,
        )

    def _lock_all(self, cores: Sequence[int]) -> CoreClaim:
        fds: list[int] = []
        try:
            for core in cores:
                fd = self._open(core)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError as exc:
                    os.close(fd)
                    if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                        raise
                    raise _ContendedError(core) from None
                fds.append(fd)
                record = json.dumps(
                    {"pid": os.getpid(), "command": " ".join(sys.argv), "claimed_at": time.time()}
                ).encode()
                os.ftruncate(fd, 0)
                os.pwrite(fd, record, 0)
        except BaseException:
            CoreClaim(tuple(cores), fds).release()
            raise
        log.info("claimed cores %s under %s", list(cores), self.state_dir)
        return CoreClaim(tuple(cores), fds)


def iter_states_text(states: Sequence[CoreState]) -> Iterator[str]:
    """Human lines for ``neuron-runtime cores``."""
    for state in states:
        if state.holder is None:
            yield f"core {state.core:>3}  free"
        else:
            command = state.holder.command or "(command unknown)"
            if len(command) > COMMAND_WIDTH:
                command = command[: COMMAND_WIDTH - 3] + "..."
            yield f"core {state.core:>3}  held by pid {state.holder.pid}  {command}"
