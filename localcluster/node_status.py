"""The emulated node's status reporting: the Node's status, each pod's, and the core record.

What a kubelet's status manager and node status loop do, in small.  The statuses are pure
functions of the node's state (:func:`node_status`, :func:`running_pod_status`,
:func:`waiting_pod_status`, :func:`allocations_file`, :func:`allocation_record`); the
:class:`StatusReporter` writes them, skipping a pod patch that would change nothing but
timestamps and a Node annotation that did not change.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from kubernetes import client as k8s

from neuron_cores import (
    ALLOCATIONS_ANNOTATION,
    VISIBLE_CORES_ENV,
    format_record,
    lookup_instance_type,
    parse_core_list,
)
from neuron_device_plugin.ids import CORE_ID_PREFIX, parse_id
from neuron_localcluster import nodes, pods
from neuron_localcluster.kube import ApiException, body
from neuron_localcluster.kubelet_emulator import DeviceInfo
from neuron_localcluster.pod_supervision import RunningPod

log = logging.getLogger(__name__)

NODE_STATUS_EVERY_S = 30.0
NEURON_ENV_PREFIXES = ("NEURON", "AWS_NEURON")


def resource_counts(
    devices: Mapping[str, Sequence[DeviceInfo]], *, dra: bool
) -> tuple[dict[str, str], dict[str, str]]:
    """Capacity (every device) and allocatable (healthy ones) of each Neuron resource.

    A DRA node lists no Neuron extended resources at all: a node that lists one (even as 0) is
    served by a device plugin as far as the scheduler's DRA extended-resource support goes.
    """
    capacity: dict[str, str] = {}
    allocatable: dict[str, str] = {}
    if dra:
        return capacity, allocatable
    for resource in pods.NEURON_RESOURCES:
        listed = devices.get(resource, ())
        capacity[resource] = str(len(listed))
        allocatable[resource] = str(sum(1 for d in listed if d.healthy))
    return capacity, allocatable


def node_status(
    spec: nodes.NodeSpec,
    *,
    capacity: Mapping[str, str],
    allocatable: Mapping[str, str],
    stamp: str,
    kernel: str,
) -> dict[str, Any]:
    """The Node's status as a kubelet posts it: Ready, its addresses and what it runs."""
    base = nodes.node_manifest(spec, capacity=dict(capacity), allocatable=dict(allocatable))
    return {
        **base["status"],
        "conditions": [
            {
                "type": "Ready",
                "status": "True",
                "reason": "KubeletReady",
                "message": "neuron-groups node agent is posting ready status",
                "lastHeartbeatTime": stamp,
                "lastTransitionTime": stamp,
            }
        ],
        "addresses": [
            {"type": "InternalIP", "address": "127.0.0.1"},
            {"type": "Hostname", "address": spec.name},
        ],
        "nodeInfo": {
            "architecture": "amd64",
            "operatingSystem": "linux",
            "kubeletVersion": "neuron-groups-node-agent",
            "containerRuntimeVersion": "local-process://1",
            "kernelVersion": kernel,
            "kubeProxyVersion": "",
            "osImage": "emulated Neuron node",
            "machineID": "",
            "systemUUID": "",
            "bootID": "",
        },
    }


def running_pod_status(pod: RunningPod) -> dict[str, Any]:
    """The status of an admitted pod, from its processes (or why it could not run)."""
    if pod.failed is not None:
        return pods.pod_status(
            phase="Failed",
            pod_ip=None,
            ready=False,
            started_at=pod.started_at,
            containers=[],
            message=pod.failed,
            reason="UnexpectedAdmissionError",
        )
    statuses = [
        pods.container_status(
            rc.container,
            running_since=rc.started_at,
            ready=rc.ready,
            restarts=rc.restarts,
            pid=rc.process.pid if rc.process else None,
            exit_code=rc.last_exit,
            waiting_reason="CrashLoopBackOff"
            if rc.process is None and rc.restart_pending
            else None,
        )
        for rc in pod.containers
    ]
    all_ready = all(rc.ready for rc in pod.containers) and bool(pod.containers)
    done = all(rc.process is None and not rc.restart_pending for rc in pod.containers)
    exits = [rc.last_exit for rc in pod.containers]
    phase = "Running"
    if done and all(code is not None for code in exits):
        phase = "Succeeded" if all(code == 0 for code in exits) else "Failed"
    return pods.pod_status(
        phase=phase,
        pod_ip=pod.pod_ip,
        ready=all_ready,
        started_at=pod.started_at,
        containers=statuses,
    )


def waiting_pod_status(pod: Mapping[str, Any], why: str) -> dict[str, Any]:
    """Pending, containers ContainerCreating, and why in the pod's message (a kubelet says
    it in a FailedPrepareDynamicResources event)."""
    containers = [
        pods.container_status(
            c,
            running_since=None,
            ready=False,
            restarts=0,
            pid=None,
            waiting_reason="ContainerCreating",
        )
        for c in (pod.get("spec") or {}).get("containers") or []
    ]
    return pods.pod_status(
        phase="Pending",
        pod_ip=None,
        ready=False,
        started_at=pods.now_rfc3339(),
        containers=containers,
        message=f"waiting for its ResourceClaims to be prepared: {why}",
    )


def comparable(status: Mapping[str, Any] | None) -> Any:
    """A status without timestamps, to skip patches that would change nothing."""
    if status is None:
        return None
    out = dict(status)
    out["conditions"] = [
        {k: v for k, v in c.items() if k != "lastTransitionTime"} for c in status["conditions"]
    ]
    return out


def allocations_file(running: Iterable[RunningPod]) -> dict[str, Any]:
    """``allocations.json``: which devices, claims and Neuron envs each running pod holds."""
    return {
        pod.uid: {
            "namespace": pod.namespace,
            "name": pod.name,
            "podIP": pod.pod_ip,
            "devices": pod.devices,
            "claims": [f"{c.namespace}/{c.name}" for c in pod.claims],
            "cdi": pod.cdi,
            "envs": {
                k: v
                for rc in pod.containers
                for k, v in rc.env.items()
                if k.startswith(NEURON_ENV_PREFIXES)
            },
        }
        for pod in running
    }


def allocation_record(
    running: Iterable[RunningPod],
    core_devices: Sequence[DeviceInfo],
    *,
    capacity_cores: int,
    instance_type: str,
    dra: bool,
) -> str | None:
    """The Node annotation ``kubectl neuron cores`` reads; None when the node has no cores.

    The cores are each container's ``NEURON_RT_VISIBLE_CORES`` (what its processes got);
    unhealthy cores are the plugin's that no pod holds, as the kubelet would see them.
    """
    held = {
        f"{pod.namespace}/{pod.name}": sorted(
            core
            for rc in pod.containers
            if rc.env.get(VISIBLE_CORES_ENV)
            for core in parse_core_list(rc.env[VISIBLE_CORES_ENV])
        )
        for pod in running
    }
    taken = {core for cores in held.values() for core in cores}
    unhealthy = sorted(
        index
        for device in core_devices
        if not device.healthy
        and (index := parse_id(device.id, CORE_ID_PREFIX)) is not None
        and index not in taken
    )
    total = capacity_cores
    if total <= 0 and dra:
        # DRA nodes advertise no neuroncore capacity: the instance type says how many cores
        # (the CDI env of each claim still sets NEURON_RT_VISIBLE_CORES, read above)
        total = lookup_instance_type(instance_type).cores
    if total <= 0:
        return None
    return format_record(total, held, unhealthy)


class StatusReporter:
    """Writes the node's and its pods' statuses through the API server."""

    def __init__(
        self,
        core: k8s.CoreV1Api,
        spec: nodes.NodeSpec,
        *,
        kernel: str,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.core = core
        self.spec = spec
        self.kernel = kernel
        self.clock = clock
        self._last_capacity: dict[str, str] | None = None
        self._next_node_status = 0.0
        self._published: str | None = None

    def register_node(self, capacity: dict[str, str], allocatable: dict[str, str]) -> None:
        """Create the Node (one already there is fine), then post its status."""
        manifest = nodes.node_manifest(self.spec, capacity=capacity, allocatable=allocatable)
        try:
            self.core.create_node(body(manifest))
            log.info("registered node %s with %s", self.spec.name, capacity)
        except ApiException as exc:
            if exc.status != 409:
                raise
        self.update_node(capacity, allocatable, force=True)

    def update_node(
        self, capacity: dict[str, str], allocatable: dict[str, str], *, force: bool = False
    ) -> None:
        """Post the Node's status when its capacity changed, every 30 s, or when forced."""
        now = self.clock()
        if not force and capacity == self._last_capacity and now < self._next_node_status:
            return
        status = node_status(
            self.spec,
            capacity=capacity,
            allocatable=allocatable,
            stamp=pods.now_rfc3339(),
            kernel=self.kernel,
        )
        self.core.patch_node_status(self.spec.name, {"status": status})
        if capacity != self._last_capacity:
            log.info("node %s capacity %s allocatable %s", self.spec.name, capacity, allocatable)
        self._last_capacity = capacity
        self._next_node_status = now + NODE_STATUS_EVERY_S

    def report_pod(self, pod: RunningPod) -> None:
        status = running_pod_status(pod)
        if comparable(status) == comparable(pod.last_status):
            return
        try:
            self.core.patch_namespaced_pod_status(pod.name, pod.namespace, {"status": status})
            pod.last_status = status
        except ApiException as exc:
            if exc.status != 404:
                raise

    def report_waiting(self, pod: Mapping[str, Any], why: str) -> None:
        meta = pod["metadata"]
        try:
            self.core.patch_namespaced_pod_status(
                meta["name"], meta["namespace"], {"status": waiting_pod_status(pod, why)}
            )
        except ApiException as exc:
            if exc.status != 404:
                raise

    def publish_allocations(self, record: str | None) -> None:
        """Set the Node's allocations annotation to ``record`` unless it already says that."""
        if record is None or record == self._published:
            return
        meta = {"metadata": {"annotations": {ALLOCATIONS_ANNOTATION: record}}}
        try:
            self.core.patch_node(self.spec.name, meta)
            self._published = record
        except ApiException as exc:
            log.warning("cannot publish allocations on node %s: %s", self.spec.name, exc.reason)
