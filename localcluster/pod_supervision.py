"""The emulated node's process supervision: each container of a pod is a local process.

What a container runtime and the kubelet's pod workers do for a real node, in small: start each
container's process (its log in the pod's folder), notice when it exits, start it again as the
pod's ``restartPolicy`` says with a capped exponential back-off (CrashLoopBackOff meanwhile),
probe its HTTP readiness, and stop it (SIGTERM, then SIGKILL after the grace period) when the
pod goes.  :class:`RunningPod` and :class:`RunningContainer` are the state the node's other parts
(admission, status reporting) read; the decisions (:func:`restart_delay`, :func:`should_start`)
are pure.
"""

from __future__ import annotations

import logging
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from neuron_localcluster import pods
from neuron_localcluster.dra_kubelet import ClaimHandle
from neuron_localcluster.pod_resources_server import ContainerHolding

log = logging.getLogger(__name__)

MAX_BACKOFF_S = 30.0
POD_GRACE_S = 10.0


@dataclass
class RunningContainer:
    container: dict[str, Any]
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    check: pods.ReadinessCheck
    process: subprocess.Popen[bytes] | None = None
    started_at: str | None = None
    restarts: int = 0
    ready: bool = False
    last_exit: int | None = None
    next_start: float = 0.0
    next_probe: float = 0.0
    restart_pending: bool = False


@dataclass
class RunningPod:
    host_network: bool
    uid: str
    namespace: str
    name: str
    pod_ip: str
    started_at: str
    restart_policy: str
    containers: list[RunningContainer] = field(default_factory=list)
    devices: dict[str, list[str]] = field(default_factory=dict)
    holdings: list[ContainerHolding] = field(default_factory=list)
    claims: list[ClaimHandle] = field(default_factory=list)
    cdi: dict[str, dict[str, list[str]]] = field(default_factory=dict)
    last_status: dict[str, Any] | None = None
    failed: str | None = None


def restart_delay(restarts: int) -> float:
    """Seconds before the ``restarts``-th start: doubling, capped at :data:`MAX_BACKOFF_S`."""
    return min(MAX_BACKOFF_S, 2.0**restarts)


def should_start(rc: RunningContainer, now: float) -> bool:
    """No process, its back-off over, and either never run or due for a restart."""
    return (
        rc.process is None and now >= rc.next_start and (rc.last_exit is None or rc.restart_pending)
    )


def probe_http(ip: str, check: pods.ReadinessCheck) -> bool:
    """The readiness probe: an HTTP GET answered 2xx or 3xx within a second (no port: ready)."""
    if check.port is None:
        return True
    url = f"http://{ip}:{check.port}{check.path}"
    try:
        with urllib.request.urlopen(url, timeout=1.0) as resp:
            return 200 <= int(resp.status) < 400
    except (urllib.error.URLError, OSError, ValueError):
        return False


def supervise(
    pod: RunningPod,
    now: float,
    probe: Callable[[str, pods.ReadinessCheck], bool] = probe_http,
) -> None:
    """One pass over a pod that was admitted: notice exits, (re)start, probe."""
    if pod.failed is not None:
        return
    for rc in pod.containers:
        supervise_container(pod, rc, now, probe)


def supervise_container(
    pod: RunningPod,
    rc: RunningContainer,
    now: float,
    probe: Callable[[str, pods.ReadinessCheck], bool] = probe_http,
) -> None:
    if rc.process is not None and rc.process.poll() is not None:
        rc.last_exit = rc.process.returncode
        log.warning(
            "container %s of %s/%s exited %s (log %s)",
            rc.container["name"],
            pod.namespace,
            pod.name,
            rc.last_exit,
            rc.log_path,
        )
        rc.process = None
        rc.started_at = None
        rc.ready = False
        rc.restart_pending = pods.should_restart(pod.restart_policy, rc.last_exit)
        if rc.restart_pending:
            rc.restarts += 1
            rc.next_start = now + restart_delay(rc.restarts)
    if should_start(rc, now):
        rc.restart_pending = False
        with rc.log_path.open("ab") as out:
            rc.process = subprocess.Popen(
                rc.argv,
                env=rc.env,
                cwd=rc.log_path.parent,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        rc.started_at = pods.now_rfc3339()
        log.info(
            "started %s for %s/%s (pid %s)",
            " ".join(rc.argv),
            pod.namespace,
            pod.name,
            rc.process.pid,
        )
    if rc.process is not None and now >= rc.next_probe:
        rc.next_probe = now + rc.check.period_s
        rc.ready = probe(pod.pod_ip, rc.check)


def stop_pods(
    stopping: Sequence[RunningPod],
    *,
    grace: float = POD_GRACE_S,
    stopped: Callable[[RunningPod], None] = lambda pod: None,
) -> None:
    """SIGTERM every container of ``stopping`` at once, then SIGKILL what outlives ``grace``;
    ``stopped`` is called with each pod once its processes are gone."""
    for pod in stopping:
        for rc in pod.containers:
            if rc.process is not None and rc.process.poll() is None:
                rc.process.terminate()
    deadline = time.monotonic() + grace
    for pod in stopping:
        for rc in pod.containers:
            if rc.process is None:
                continue
            try:
                rc.process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                rc.process.kill()
                rc.process.wait()
            rc.process = None
        stopped(pod)
