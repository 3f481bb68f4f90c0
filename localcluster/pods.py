"""What the emulated kubelet does with a pod, as pure functions of the pod (a dict).

Why pure: the node agent (:mod:`neuron_localcluster.node_agent`) is a loop of API calls and
process starts; every decision inside it (how many devices a container asks for, which command
runs, which environment it gets, what status goes back to the API) is made here and tested as
data, without a cluster.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from neuron_cores import (
    CORE_RESOURCE,
    DEVICE_RESOURCE,
    MODELS_ENV,
    ModelEntry,
    ModelListError,
    decode_models,
    encode_models,
    is_ascii_digits,
)
from neuron_localcluster.env_expansion import expand, expand_all

NEURON_RESOURCES = (CORE_RESOURCE, DEVICE_RESOURCE)
SERVE_HOST_ENV = "NEURON_SERVE_HOST"


class PodSpecError(ValueError):
    """The pod asks for something the emulated node cannot run; the message names it."""


@dataclass(frozen=True)
class ReadinessCheck:
    """An HTTP GET readiness probe resolved to a port and path (``None`` port: process alive)."""

    port: int | None
    path: str = "/"
    period_s: float = 1.0


def now_rfc3339() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def neuron_requests(container: Mapping[str, Any]) -> dict[str, int]:
    """Neuron resources the container asks for (limits; requests must equal them)."""
    resources = container.get("resources") or {}
    limits = resources.get("limits") or {}
    requests = resources.get("requests") or {}
    out: dict[str, int] = {}
    for name in NEURON_RESOURCES:
        raw = limits.get(name, requests.get(name))
        if raw is None:
            continue
        try:
            count = int(str(raw))
        except ValueError:
            raise PodSpecError(
                f"container {container.get('name')!r} asks for {name}={raw!r}; extended "
                "resources take whole numbers"
            ) from None
        if count > 0:
            out[name] = count
    return out


def resolve_command(
    container: Mapping[str, Any],
    search_dirs: Sequence[Path],
    path_env: str | None,
    env: Mapping[str, str] | None = None,
) -> list[str]:
    """The container's ``command + args``, its program found in ``search_dirs`` then PATH.

    ``$(NAME)`` references are expanded against ``env`` first, as the kubelet does (see
    :mod:`neuron_localcluster.env_expansion`); without ``env`` they stay as written.
    """
    argv = expand_all(
        [*(container.get("command") or []), *(container.get("args") or [])], env or {}
    )
    if not argv:
        raise PodSpecError(
            f"container {container.get('name')!r} has no command: the emulated node runs the "
            "container's command as a local process (an image's entrypoint cannot be read here); "
            "set command, e.g. ['neuron-runtime', 'serve']"
        )
    program = argv[0]
    if os.sep not in program:
        for folder in search_dirs:
            candidate = folder / program
            if os.access(candidate, os.X_OK):
                return [str(candidate), *argv[1:]]
        found = shutil.which(program, path=path_env)
        if found is None:
            dirs = ", ".join(str(d) for d in search_dirs)
            raise PodSpecError(
                f"container {container.get('name')!r}: program {program!r} is not in {dirs} or "
                "on PATH; install the project into .venv (make setup) or give a full path"
            )
        program = found
    return [program, *argv[1:]]


def volume_paths(pod: Mapping[str, Any], pod_dir: Path) -> dict[str, str]:
    """volume name -> local folder: hostPath as given, emptyDir under the pod's folder."""
    out: dict[str, str] = {}
    for vol in (pod.get("spec") or {}).get("volumes") or []:
        name = vol.get("name", "")
        if vol.get("hostPath"):
            out[name] = str(vol["hostPath"].get("path", ""))
        elif "emptyDir" in vol:
            out[name] = str(pod_dir / "volumes" / name)
    return out


def mount_map(container: Mapping[str, Any], volumes: Mapping[str, str]) -> list[tuple[str, str]]:
    """(mountPath, local folder) for each mount of a volume we can provide, longest path first."""
    pairs = [
        (str(m["mountPath"]).rstrip("/") or "/", volumes[m["name"]])
        for m in container.get("volumeMounts") or []
        if m.get("name") in volumes and m.get("mountPath")
    ]
    return sorted(pairs, key=lambda p: -len(p[0]))


def _local_path(path: str, mounts: Sequence[tuple[str, str]]) -> str:
    for mount_path, local in mounts:
        if path == mount_path or path.startswith(mount_path + "/"):
            return local + path[len(mount_path) :]
    return path


def translate_path(value: str, mounts: Sequence[tuple[str, str]]) -> str:
    """Rewrite in-container paths in ``value`` (``name=/models/a,b=/x``) to the local folders."""
    parts = []
    for token in value.split(","):
        key, eq, rest = token.rpartition("=")
        parts.append(f"{key}{eq}{_local_path(rest, mounts)}")
    return ",".join(parts)


def translate_models(value: str, mounts: Sequence[tuple[str, str]]) -> str:
    """``NEURON_MODELS`` with each model's path rewritten to its local folder, read and written
    with the runtime's own codec (a path may hold commas); a value the runtime would refuse is
    rewritten like any other variable, and the runtime then says what is wrong with it."""
    try:
        entries = decode_models(value)
    except ModelListError:
        return translate_path(value, mounts)
    return encode_models(ModelEntry(e.name, _local_path(e.path, mounts)) for e in entries)


def _field_ref(pod: Mapping[str, Any], path: str, pod_ip: str, node: str) -> str:
    meta = pod.get("metadata") or {}
    values = {
        "metadata.name": meta.get("name", ""),
        "metadata.namespace": meta.get("namespace", ""),
        "metadata.uid": meta.get("uid", ""),
        "spec.nodeName": node,
        "spec.serviceAccountName": (pod.get("spec") or {}).get("serviceAccountName", ""),
        "status.podIP": pod_ip,
        "status.hostIP": "127.0.0.1",
    }
    if path in values:
        return str(values[path])
    for prefix, source in (("metadata.labels", "labels"), ("metadata.annotations", "annotations")):
        if path.startswith(prefix + "['") and path.endswith("']"):
            return str((meta.get(source) or {}).get(path[len(prefix) + 2 : -2], ""))
    raise PodSpecError(f"env fieldRef {path!r} is not supported by the emulated node")


def container_env(
    pod: Mapping[str, Any],
    container: Mapping[str, Any],
    *,
    allocated: Mapping[str, str],
    pod_ip: str,
    node: str,
    base: Mapping[str, str],
    mounts: Sequence[tuple[str, str]] = (),
) -> dict[str, str]:
    """The process environment: base (PATH, HOME...), the container's env, Allocate's envs.

    Each ``value`` has its ``$(NAME)`` references expanded against the entries listed before it,
    as the container sees them (in-container paths), and then its mount paths rewritten to the
    local folders.
    """
    env = dict(base)
    seen: dict[str, str] = {}  # the container's env so far, as the container sees it
    for item in container.get("env") or []:
        name = item["name"]
        if "value" in item:
            seen[name] = expand(str(item.get("value") or ""), seen)
            translate = translate_models if name == MODELS_ENV else translate_path
            env[name] = translate(seen[name], mounts)
        elif (item.get("valueFrom") or {}).get("fieldRef"):
            seen[name] = _field_ref(pod, item["valueFrom"]["fieldRef"]["fieldPath"], pod_ip, node)
            env[name] = seen[name]
        else:
            raise PodSpecError(
                f"env {name!r} of container {container.get('name')!r} uses a valueFrom the "
                "emulated node does not support (only value and fieldRef)"
            )
    env.update(allocated)
    env[SERVE_HOST_ENV] = pod_ip
    return env


def readiness_check(container: Mapping[str, Any]) -> ReadinessCheck:
    probe = container.get("readinessProbe") or {}
    http = probe.get("httpGet")
    if not http:
        return ReadinessCheck(None)
    port = http.get("port")
    if isinstance(port, str) and not is_ascii_digits(port):
        named = {p.get("name"): p.get("containerPort") for p in container.get("ports") or []}
        if port not in named:
            raise PodSpecError(
                f"readinessProbe port {port!r} names no port of container {container.get('name')!r}"
            )
        port = named[port]
    return ReadinessCheck(
        int(port), str(http.get("path") or "/"), float(probe.get("periodSeconds", 1))
    )


def should_restart(policy: str, exit_code: int) -> bool:
    """Whether a container that exited is started again, by the pod's ``restartPolicy``."""
    if policy == "Always":
        return True
    if policy == "OnFailure":
        return exit_code != 0
    return False


def container_status(
    container: Mapping[str, Any],
    *,
    running_since: str | None,
    ready: bool,
    restarts: int,
    pid: int | None,
    exit_code: int | None = None,
    waiting_reason: str | None = None,
) -> dict[str, Any]:
    state: dict[str, Any]
    if running_since is not None:
        state = {"running": {"startedAt": running_since}}
    elif waiting_reason is not None:
        state = {"waiting": {"reason": waiting_reason}}
    else:
        state = {
            "terminated": {
                "exitCode": exit_code if exit_code is not None else 0,
                "reason": "Completed" if exit_code == 0 else "Error",
                "finishedAt": now_rfc3339(),
            }
        }
    status: dict[str, Any] = {
        "name": container.get("name"),
        "image": container.get("image") or "local",
        "imageID": "",
        "ready": ready,
        "started": running_since is not None,
        "restartCount": restarts,
        "state": state,
    }
    if pid is not None:
        status["containerID"] = f"local://{pid}"
    return status


def pod_status(
    *,
    phase: str,
    pod_ip: str | None,
    ready: bool,
    started_at: str,
    containers: list[dict[str, Any]],
    message: str | None = None,
    reason: str | None = None,
) -> dict[str, Any]:
    flag = "True" if ready else "False"
    now = now_rfc3339()
    status: dict[str, Any] = {
        "phase": phase,
        "hostIP": "127.0.0.1",
        "hostIPs": [{"ip": "127.0.0.1"}],
        "startTime": started_at,
        "conditions": [
            {"type": "PodScheduled", "status": "True", "lastTransitionTime": started_at},
            {"type": "Initialized", "status": "True", "lastTransitionTime": started_at},
            {"type": "ContainersReady", "status": flag, "lastTransitionTime": now},
            {"type": "Ready", "status": flag, "lastTransitionTime": now},
        ],
        "containerStatuses": containers,
    }
    if pod_ip:
        status["podIP"] = pod_ip
        status["podIPs"] = [{"ip": pod_ip}]
    if message:
        status["message"] = message
    if reason:
        status["reason"] = reason
    return status


class LoopbackPool:
    """Hands out 127.0.0.N addresses so pods on one machine do not clash on their ports."""

    def __init__(self, first: int = 10, last: int = 250, prefix: str = "127.0.0.") -> None:
        self._free = [f"{prefix}{n}" for n in range(first, last + 1)]
        self._used: set[str] = set()

    def take(self) -> str:
        if not self._free:
            raise PodSpecError("no loopback address left for another pod on the emulated node")
        ip = self._free.pop(0)
        self._used.add(ip)
        return ip

    def give_back(self, ip: str) -> None:
        if ip in self._used:
            self._used.discard(ip)
            self._free.append(ip)
