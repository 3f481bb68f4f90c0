"""The emulated Neuron node: a small kubelet stand-in that really runs the pods bound to it.

Why it exists: kwok fakes nodes at scale but runs nothing.  To show inference end to end on
cores the project's own device plugin chose, one node is driven by this agent instead:

* it starts the kubelet emulator (:class:`neuron_localcluster.kubelet_emulator.KubeletEmulator`)
  and the real device plugin (``neuron-device-plugin --backend simulated``) against it, and sets
  the Node's capacity/allocatable from what the plugin advertises, as the kubelet would;
* for each pod bound to the node it asks the plugin GetPreferredAllocation then Allocate, and runs
  each container's command as a local process with the pod's env plus Allocate's envs, on its own
  loopback address 127.0.0.N (``NEURON_SERVE_HOST``) so pods do not clash on ports;
* it reports the pod's status and readiness (its HTTP readiness probe, really probed), renews the
  node's Lease so the node lifecycle controller keeps it Ready, and stops processes when pods go.

With ``--allocation dra`` the node offers its NeuronCores through DRA only: no device plugin
runs and the Node carries no ``aws.amazon.com/neuroncore`` capacity; instead the agent starts the
project's DRA driver (``neuron-dra-driver --kubelet-plugin``) for this node and does what a
kubelet does for DRA (:mod:`neuron_localcluster.dra_kubelet`): registers the driver from its
plugins registry folder, prepares a pod's claims before starting its containers, applies the CDI
specs' env edits to the processes, and unprepares the claims when the pod goes.

Scope, deliberately small: one pass per second over the node's pods (a poll, not a watch), no
images, no volumes beyond hostPath and emptyDir (their mount paths are rewritten in env values),
restarts with a capped back-off for ``restartPolicy: Always``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubernetes import client as k8s

from neuron_cores import (
    ALLOCATIONS_ANNOTATION,
    VISIBLE_CORES_ENV,
    format_record,
    lookup_instance_type,
    parse_core_list,
)
from neuron_cores.logs import configure_logging
from neuron_device_plugin.ids import CORE_ID_PREFIX, parse_id
from neuron_localcluster import nodes, pods
from neuron_localcluster.dra_kubelet import (
    ClaimHandle,
    ClaimsNotReadyError,
    DRAKubelet,
    PluginWatcher,
)
from neuron_localcluster.kube import ApiException, api_client_for, body, raw_json
from neuron_localcluster.kubelet_emulator import KubeletEmulator, PluginClient
from neuron_localcluster.pod_resources_server import ContainerHolding, PodResourcesServer
from neuron_localcluster.podnet import PodNetwork, PodNetworkError

log = logging.getLogger(__name__)

LEASE_NAMESPACE = "kube-node-lease"
ALLOCATIONS_FILE = "allocations.json"
LEASE_SECONDS = 40
TICK_S = 1.0
MAX_BACKOFF_S = 30.0
POD_GRACE_S = 10.0
DEVICE_PLUGIN = "device-plugin"
DRA = "dra"
ALLOCATIONS = (DEVICE_PLUGIN, DRA)
DRA_DRIVER_NAME = "neuroncores.neurongroups.dev"
DRA_RETRY_S = 2.0
UNHEALTHY_CORES_FILE = "unhealthy-cores"


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


def plugin_dir_for(workdir: Path) -> Path:
    """A short folder for the plugin sockets: a unix socket path must stay under 108 bytes."""
    return Path(tempfile.gettempdir()) / f"ng-dp-{_digest(workdir)}"


def pod_resources_socket_for(workdir: Path) -> Path:
    """The PodResources socket, in its own folder as on a real node (a kubelet restart cleans the
    device-plugin folder, not this one)."""
    return Path(tempfile.gettempdir()) / f"ng-pr-{_digest(workdir)}" / "kubelet.sock"


def dra_dir_for(workdir: Path) -> Path:
    """The short folder of the DRA driver's sockets: ``plugins/<driver>/`` and
    ``plugins_registry/`` as under /var/lib/kubelet on a real node."""
    return Path(tempfile.gettempdir()) / f"ng-dra-{_digest(workdir)}"


def _digest(workdir: Path) -> str:
    return hashlib.sha1(str(workdir.resolve()).encode()).hexdigest()[:12]


class NodeAgent:
    def __init__(
        self,
        *,
        api: k8s.ApiClient,
        spec: nodes.NodeSpec,
        workdir: Path,
        plugin_argv: list[str] | None = None,
        bin_dirs: tuple[Path, ...] = (),
        allocation: str = DEVICE_PLUGIN,
        kubeconfig: Path | None = None,
    ) -> None:
        if allocation not in ALLOCATIONS:
            raise ValueError(f"allocation {allocation!r} is not one of {', '.join(ALLOCATIONS)}")
        if allocation == DRA and kubeconfig is None:
            raise ValueError("allocation 'dra' needs the kubeconfig the DRA driver uses")
        self.allocation = allocation
        self.kubeconfig = kubeconfig
        self.core = k8s.CoreV1Api(api)
        self.resource = k8s.ResourceV1Api(api)
        self.coord = k8s.CoordinationV1Api(api)
        self.spec = spec
        self.workdir = workdir
        self.plugin_dir = plugin_dir_for(workdir)
        self.plugin_argv = plugin_argv
        self.bin_dirs = bin_dirs or (Path(sys.executable).parent,)
        self.emulator = KubeletEmulator(self.plugin_dir)
        self.pod_resources = PodResourcesServer(pod_resources_socket_for(workdir))
        self.plugin: subprocess.Popen[bytes] | None = None
        self.net = PodNetwork(workdir)
        self.running: dict[str, RunningPod] = {}
        self.stopping = threading.Event()
        self._last_capacity: dict[str, str] | None = None
        self._next_lease = 0.0
        self._next_node_status = 0.0
        self._published: str | None = None
        self.dra_dir = dra_dir_for(workdir)
        self.cdi_dir = workdir / "cdi"
        self.watcher = PluginWatcher(self.dra_dir / "plugins_registry", wipe=self._wipe_slices)
        self.dra = DRAKubelet(self.watcher, self.cdi_dir, self._read_claim)
        # pod uid -> (next try, why, claims prepared so far) of pods whose claims are not ready
        self._waiting: dict[str, tuple[float, str, list[ClaimHandle]]] = {}

    def _wipe_slices(self, driver: str) -> None:
        """Delete ``driver``'s ResourceSlices for this node, as the kubelet does once a driver
        has been gone for its wiping delay (an uninstalled driver leaves no devices behind)."""
        selector = f"spec.nodeName={self.spec.name},spec.driver={driver}"
        try:
            self.resource.delete_collection_resource_slice(field_selector=selector)
        except ApiException as exc:
            log.warning(
                "could not delete %s's ResourceSlices: %s %s", driver, exc.status, exc.reason
            )

    # ---- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        self.plugin_dir.mkdir(parents=True, exist_ok=True)
        self.net.setup()
        self.emulator.start()
        self.pod_resources.start()
        if self.allocation == DRA:
            self._start_dra_driver()
            return
        argv = self.plugin_argv or [
            str(self._program("neuron-device-plugin")),
            "--backend",
            "simulated",
            "--instance-type",
            self.spec.instance_type,
            "--device-plugin-dir",
            str(self.plugin_dir),
            "--metrics-port",
            "0",
            "--pod-resources-socket",
            str(self.pod_resources.socket_path),
        ]
        plugin_log = self.workdir / "device-plugin.log"
        with plugin_log.open("ab") as out:
            env = {**os.environ, "NODE_NAME": self.spec.name}
            self.plugin = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env
            )
        log.info("device plugin started (pid %s), log %s", self.plugin.pid, plugin_log)
        self.emulator.wait_for_registration(nodes.CORE_RESOURCE, timeout=60)
        log.info("device plugin registered %s", nodes.CORE_RESOURCE)
        try:
            self.emulator.wait_for_registration(nodes.DEVICE_RESOURCE, timeout=10)
        except TimeoutError:
            log.warning(
                "device plugin did not register %s; the node offers cores only",
                nodes.DEVICE_RESOURCE,
            )
        self._register_node()

    def _start_dra_driver(self) -> None:
        """Register the Node (the driver owns its slices by the Node's uid), then run the driver
        for this node with its kubelet side, and register it as a kubelet would."""
        self._register_node()
        assert self.kubeconfig is not None
        registry = self.watcher.registry_dir
        registry.mkdir(parents=True, exist_ok=True)
        self.cdi_dir.mkdir(parents=True, exist_ok=True)
        argv = self.plugin_argv or [
            str(self._program("neuron-dra-driver")),
            "--node-name",
            self.spec.name,
            "--backend",
            "simulated",
            "--instance-type",
            self.spec.instance_type,
            "--health-file",
            str(self.workdir / UNHEALTHY_CORES_FILE),
            "--kubeconfig",
            str(self.kubeconfig),
            "--kubelet-plugin",
            "--plugin-dir",
            str(self.dra_dir / "plugins" / DRA_DRIVER_NAME),
            "--registry-dir",
            str(registry),
            "--cdi-dir",
            str(self.cdi_dir),
        ]
        driver_log = self.workdir / "dra-driver.log"
        with driver_log.open("ab") as out:
            self.plugin = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT
            )
        log.info("DRA driver started (pid %s), log %s", self.plugin.pid, driver_log)
        deadline = time.monotonic() + 60
        while DRA_DRIVER_NAME not in self.watcher.drivers:
            if self.plugin.poll() is not None:
                raise RuntimeError(
                    f"the DRA driver exited {self.plugin.returncode} before registering; "
                    f"see {driver_log}"
                )
            if time.monotonic() > deadline:
                raise TimeoutError(f"the DRA driver did not register in 60s; see {driver_log}")
            self.watcher.scan()
            time.sleep(0.2)
        log.info("DRA driver %s registered; the node offers its cores through DRA", DRA_DRIVER_NAME)

    def _read_claim(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            response = self.resource.read_namespaced_resource_claim(
                name, namespace, _preload_content=False
            )
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return raw_json(response)

    def _program(self, name: str) -> Path:
        for folder in self.bin_dirs:
            if os.access(folder / name, os.X_OK):
                return folder / name
        raise FileNotFoundError(f"{name} not found in {', '.join(map(str, self.bin_dirs))}")

    def run_forever(self) -> None:
        while not self.stopping.is_set():
            started = time.monotonic()
            try:
                self.tick()
            except ApiException as exc:
                log.warning("API error during tick: %s %s %s", exc.status, exc.reason, exc.body)
            except (OSError, RuntimeError, ValueError) as exc:
                # The loop is the node's supervisor: one bad pod or hiccup must not end it.
                log.warning("error during tick: %s", exc)
            self.stopping.wait(max(0.0, TICK_S - (time.monotonic() - started)))

    def shutdown(self) -> None:
        self.stopping.set()
        self._stop_pods(list(self.running.values()), grace=5.0)
        # Close the kubelet side first: the plugin's ListAndWatch streams end, so it exits at once.
        self.emulator.stop()
        what = "DRA driver" if self.allocation == DRA else "device plugin"
        if self.plugin is not None:
            if self.plugin.poll() is None:
                self.plugin.terminate()
            try:
                self.plugin.wait(10)
            except subprocess.TimeoutExpired:
                log.warning(
                    "%s (pid %s) ignored SIGTERM for 10s; killing it", what, self.plugin.pid
                )
                self.plugin.kill()
                self.plugin.wait()
        self.pod_resources.stop()
        self.watcher.close()
        self.net.teardown()
        shutil.rmtree(self.dra_dir, ignore_errors=True)
        shutil.rmtree(self.plugin_dir, ignore_errors=True)
        shutil.rmtree(self.pod_resources.socket_path.parent, ignore_errors=True)
        log.info("node agent for %s stopped", self.spec.name)

    # ---- node ------------------------------------------------------------------------------

    def _resource_counts(self) -> tuple[dict[str, str], dict[str, str]]:
        capacity: dict[str, str] = {}
        allocatable: dict[str, str] = {}
        if self.allocation == DRA:
            # No Neuron extended resources at all: a node that lists one (even as 0) is served by
            # a device plugin as far as the scheduler's DRA extended-resource support goes.
            return capacity, allocatable
        for resource in pods.NEURON_RESOURCES:
            plugin = self.emulator.client(resource)
            devices = plugin.devices() if plugin is not None else []
            capacity[resource] = str(len(devices))
            allocatable[resource] = str(sum(1 for d in devices if d.healthy))
        return capacity, allocatable

    def _register_node(self) -> None:
        capacity, allocatable = self._resource_counts()
        manifest = nodes.node_manifest(self.spec, capacity=capacity, allocatable=allocatable)
        try:
            self.core.create_node(body(manifest))
            log.info("registered node %s with %s", self.spec.name, capacity)
        except ApiException as exc:
            if exc.status != 409:
                raise
        self._update_node_status(force=True)

    def _update_node_status(self, *, force: bool = False) -> None:
        capacity, allocatable = self._resource_counts()
        now = time.monotonic()
        if not force and capacity == self._last_capacity and now < self._next_node_status:
            return
        base = nodes.node_manifest(self.spec, capacity=capacity, allocatable=allocatable)["status"]
        stamp = pods.now_rfc3339()
        status = {
            **base,
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
                {"type": "Hostname", "address": self.spec.name},
            ],
            "nodeInfo": {
                "architecture": "amd64",
                "operatingSystem": "linux",
                "kubeletVersion": "neuron-groups-node-agent",
                "containerRuntimeVersion": "local-process://1",
                "kernelVersion": os.uname().release,
                "kubeProxyVersion": "",
                "osImage": "emulated Neuron node",
                "machineID": "",
                "systemUUID": "",
                "bootID": "",
            },
        }
        self.core.patch_node_status(self.spec.name, {"status": status})
        if capacity != self._last_capacity:
            log.info("node %s capacity %s allocatable %s", self.spec.name, capacity, allocatable)
        self._last_capacity = capacity
        self._next_node_status = now + 30

    def _renew_lease(self) -> None:
        now = time.monotonic()
        if now < self._next_lease:
            return
        self._next_lease = now + 10
        # A MicroTime: the client re-renders it with isoformat(), which drops a zero fraction
        # that the apiserver then refuses; a non-zero microsecond keeps the fraction.
        now_dt = dt.datetime.now(dt.UTC)
        stamp = now_dt.replace(microsecond=now_dt.microsecond or 1).isoformat()
        lease = {
            "metadata": {"name": self.spec.name, "namespace": LEASE_NAMESPACE},
            "spec": {
                "holderIdentity": self.spec.name,
                "leaseDurationSeconds": LEASE_SECONDS,
                "renewTime": stamp,
            },
        }
        try:
            self.coord.patch_namespaced_lease(self.spec.name, LEASE_NAMESPACE, lease)
        except ApiException as exc:
            if exc.status != 404:
                raise
            self.coord.create_namespaced_lease(LEASE_NAMESPACE, body(lease))

    # ---- pods ------------------------------------------------------------------------------

    def tick(self) -> None:
        self._renew_lease()
        self._update_node_status()
        self._publish_allocations()
        if self.allocation == DRA:
            self.watcher.scan()
        response = self.core.list_pod_for_all_namespaces(
            field_selector=f"spec.nodeName={self.spec.name}", _preload_content=False
        )
        listed = raw_json(response)
        seen: set[str] = set()
        for pod in listed.get("items") or []:
            meta = pod["metadata"]
            uid = meta["uid"]
            seen.add(uid)
            if meta.get("deletionTimestamp"):
                self._finish_deletion(uid, meta)
                continue
            if uid not in self.running:
                if (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
                    continue
                if uid in self._waiting and self._waiting[uid][0] > time.monotonic():
                    continue
                self._admit(pod)
            else:
                self._supervise(self.running[uid])
        for uid in list(self.running):
            if uid not in seen:
                self._stop_pod(self.running.pop(uid))
        for uid in list(self._waiting):
            if uid not in seen:  # gone before it started: undo what was prepared for it
                in_use = {c.uid for pod in self.running.values() for c in pod.claims}
                for claim in self._waiting.pop(uid)[2]:
                    if claim.uid not in in_use:
                        self.dra.unprepare(claim)

    def _finish_deletion(self, uid: str, meta: dict[str, Any]) -> None:
        pod = self.running.pop(uid, None)
        if pod is not None:
            self._stop_pod(pod)
        try:
            self.core.delete_namespaced_pod(
                meta["name"],
                meta["namespace"],
                grace_period_seconds=0,
                body=k8s.V1DeleteOptions(
                    grace_period_seconds=0, preconditions=k8s.V1Preconditions(uid=uid)
                ),
            )
            log.info("pod %s/%s deleted", meta["namespace"], meta["name"])
        except ApiException as exc:
            if exc.status not in (404, 409):
                raise

    def _admit(self, pod: dict[str, Any]) -> None:
        meta, spec = pod["metadata"], pod["spec"]
        prepared = None
        if self.allocation == DRA:
            try:
                prepared = self.dra.prepare_pod(pod)
            except ClaimsNotReadyError as exc:
                # As a kubelet: the pod waits (ContainerCreating) and the prepare is retried.
                why = str(exc)
                if meta["uid"] not in self._waiting or self._waiting[meta["uid"]][1] != why:
                    log.info("pod %s/%s waits: %s", meta["namespace"], meta["name"], why)
                    self._report_waiting(pod, why)
                self._waiting[meta["uid"]] = (time.monotonic() + DRA_RETRY_S, why, exc.prepared)
                return
            self._waiting.pop(meta["uid"], None)
        pod_dir = self.workdir / "pods" / f"{meta['namespace']}_{meta['name']}_{meta['uid'][:8]}"
        pod_dir.mkdir(parents=True, exist_ok=True)
        # hostNetwork pods share the node's addresses, as on a real node: no pod network
        # namespace, 127.0.0.1 as their IP, so they reach the node's loopback services.
        host_network = bool(spec.get("hostNetwork"))
        ip = "127.0.0.1" if host_network else self.net.take()
        running = RunningPod(
            host_network=host_network,
            uid=meta["uid"],
            namespace=meta["namespace"],
            name=meta["name"],
            pod_ip=ip,
            started_at=pods.now_rfc3339(),
            restart_policy=str(spec.get("restartPolicy") or "Always"),
        )
        self.running[running.uid] = running
        if prepared is not None:
            running.claims = prepared.claims
            if prepared.devices:
                running.devices[DRA_DRIVER_NAME] = prepared.devices
        try:
            volumes = pods.volume_paths(pod, pod_dir)
            for local in volumes.values():
                Path(local).mkdir(parents=True, exist_ok=True)
            for container in spec.get("containers") or []:
                if prepared is None:
                    allocated = self._allocate(running, container)
                else:
                    self._check_extended(pod, container)
                    edits = prepared.per_container[str(container["name"])]
                    allocated = dict(edits.env)
                    running.cdi[str(container["name"])] = {
                        "cdiDevices": edits.cdi_ids,
                        # Recorded, not applied: a local process has no /dev/neuronN to get.
                        "deviceNodes": edits.device_nodes,
                        "mounts": edits.mounts,
                    }
                mounts = pods.mount_map(container, volumes)
                env = pods.container_env(
                    pod,
                    container,
                    allocated=allocated,
                    pod_ip=ip,
                    node=self.spec.name,
                    base=self._base_env(pod_dir),
                    mounts=mounts,
                )
                # $(VAR) in command and args: the container's env and the plugin's Allocate
                # envs, what the kubelet expands with (CDI edits are applied later, by the
                # runtime, and the agent's base env stands for the image's)
                seen = pods.container_env(
                    pod,
                    container,
                    allocated=allocated if prepared is None else {},
                    pod_ip=ip,
                    node=self.spec.name,
                    base={},
                    mounts=mounts,
                )
                argv = pods.resolve_command(container, self.bin_dirs, os.environ.get("PATH"), seen)
                if not host_network:
                    argv = self.net.wrap(argv)
                running.containers.append(
                    RunningContainer(
                        container=container,
                        argv=argv,
                        env=env,
                        log_path=pod_dir / f"{container['name']}.log",
                        check=pods.readiness_check(container),
                    )
                )
            self._write_allocations()
            log.info(
                "admitted pod %s/%s on %s with devices %s",
                running.namespace,
                running.name,
                ip,
                running.devices,
            )
        except (pods.PodSpecError, PodNetworkError, TimeoutError, RuntimeError) as exc:
            running.failed = str(exc)
            log.warning("pod %s/%s cannot run: %s", running.namespace, running.name, exc)
        self._supervise(running)

    def _check_extended(self, pod: dict[str, Any], container: dict[str, Any]) -> None:
        """A DRA node has no Neuron extended resources: a container asking for one runs only on
        the claim the scheduler made for it (as a kubelet, which would reject the pod for want
        of the resource otherwise)."""
        asked = pods.neuron_requests(container)
        if not asked or (pod.get("status") or {}).get("extendedResourceClaimStatus"):
            return
        resource, count = next(iter(sorted(asked.items())))
        raise pods.PodSpecError(
            f"container {container.get('name')!r} asks for {resource}: {count}, which node "
            f"{self.spec.name} offers only through DRA, and the pod has no "
            "status.extendedResourceClaimStatus: it was bound without the scheduler, or no "
            f"DeviceClass has extendedResourceName {resource}"
        )

    def _report_waiting(self, pod: dict[str, Any], why: str) -> None:
        """Pending, containers ContainerCreating, and why in the pod's message (a kubelet says
        it in a FailedPrepareDynamicResources event)."""
        meta = pod["metadata"]
        containers = [
            pods.container_status(
                c,
                running_since=None,
                ready=False,
                restarts=0,
                pid=None,
                waiting_reason="ContainerCreating",
            )
            for c in pod["spec"].get("containers") or []
        ]
        status = pods.pod_status(
            phase="Pending",
            pod_ip=None,
            ready=False,
            started_at=pods.now_rfc3339(),
            containers=containers,
            message=f"waiting for its ResourceClaims to be prepared: {why}",
        )
        try:
            self.core.patch_namespaced_pod_status(
                meta["name"], meta["namespace"], {"status": status}
            )
        except ApiException as exc:
            if exc.status != 404:
                raise

    def _write_allocations(self) -> None:
        """``allocations.json``: which devices and Allocate envs each running pod holds.

        The kubelet keeps this in its checkpoint and serves it over the PodResources API: so does
        the agent (:class:`PodResourcesServer`, which the device plugin lists to learn that
        silicon came back), and the file in the node's folder carries the envs too (``make demo``
        prints its core map from it).
        """
        self.pod_resources.set([h for pod in self.running.values() for h in pod.holdings])
        data = {
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
                    if k.startswith(("NEURON", "AWS_NEURON"))
                },
            }
            for pod in self.running.values()
        }
        path = self.workdir / ALLOCATIONS_FILE
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
        os.replace(tmp, path)
        self._publish_allocations()

    def _publish_allocations(self) -> None:
        """The same allocations as the Node annotation ``kubectl neuron cores`` reads.

        The cores are each container's ``NEURON_RT_VISIBLE_CORES`` from Allocate (what its
        processes got); unhealthy cores are the plugin's, as the kubelet would see them.
        """
        held = {
            f"{pod.namespace}/{pod.name}": sorted(
                core
                for rc in pod.containers
                if rc.env.get(VISIBLE_CORES_ENV)
                for core in parse_core_list(rc.env[VISIBLE_CORES_ENV])
            )
            for pod in self.running.values()
        }
        plugin = self.emulator.client(nodes.CORE_RESOURCE)
        taken = {core for cores in held.values() for core in cores}
        unhealthy = sorted(
            index
            for device in (plugin.devices() if plugin else [])
            if not device.healthy
            and (index := parse_id(device.id, CORE_ID_PREFIX)) is not None
            and index not in taken
        )
        total = int(self._resource_counts()[0].get(nodes.CORE_RESOURCE, "0"))
        if total <= 0 and self.allocation == DRA:
            # DRA nodes advertise no neuroncore capacity: the instance type says how many cores
            # (the CDI env of each claim still sets NEURON_RT_VISIBLE_CORES, read above)
            total = lookup_instance_type(self.spec.instance_type).cores
        if total <= 0:
            return
        record = format_record(total, held, unhealthy)
        if record == self._published:
            return
        meta = {"metadata": {"annotations": {ALLOCATIONS_ANNOTATION: record}}}
        try:
            self.core.patch_node(self.spec.name, meta)
            self._published = record
        except ApiException as exc:
            log.warning("cannot publish allocations on node %s: %s", self.spec.name, exc.reason)

    def _base_env(self, pod_dir: Path) -> dict[str, str]:
        keep = ("PATH", "LANG", "LC_ALL", "TZ", "OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
        env = {k: os.environ[k] for k in keep if k in os.environ}
        env["HOME"] = str(pod_dir)
        # The runtime simulates this node's cores; its arbiter's lock files are node-local.
        env["NEURON_SIM_INSTANCE_TYPE"] = self.spec.instance_type
        env["NEURON_SIM_STATE_DIR"] = str(self.workdir / "neuron-sim")
        env["PYTHONSAFEPATH"] = "1"
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def _allocate(self, running: RunningPod, container: dict[str, Any]) -> dict[str, str]:
        envs: dict[str, str] = {}
        for resource, count in pods.neuron_requests(container).items():
            plugin = self.emulator.client(resource)
            if plugin is None:
                raise pods.PodSpecError(f"no device plugin registered {resource} on this node")
            ids = self._choose(plugin, resource, count)
            result = plugin.allocate(ids)
            running.devices.setdefault(resource, []).extend(ids)
            running.holdings.append(
                ContainerHolding(
                    running.namespace, running.name, str(container["name"]), resource, tuple(ids)
                )
            )
            envs.update(result.envs)
        return envs

    def _choose(self, plugin: PluginClient, resource: str, count: int) -> list[str]:
        taken = {i for pod in self.running.values() for i in pod.devices.get(resource, [])}
        available = [d.id for d in plugin.devices() if d.healthy and d.id not in taken]
        if len(available) < count:
            raise pods.PodSpecError(
                f"UnexpectedAdmissionError: {resource}: asked {count}, {len(available)} free"
            )
        preferred = plugin.preferred_allocation(available, [], count)
        if len(preferred) == count and set(preferred) <= set(available):
            return preferred
        log.warning(
            "plugin preferred %s for %d of %s; using the first free", preferred, count, resource
        )
        return available[:count]

    def _supervise(self, pod: RunningPod) -> None:
        if pod.failed is None:
            now = time.monotonic()
            for rc in pod.containers:
                self._supervise_container(pod, rc, now)
        self._report(pod)

    def _supervise_container(self, pod: RunningPod, rc: RunningContainer, now: float) -> None:
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
                rc.next_start = now + min(MAX_BACKOFF_S, 2.0**rc.restarts)
        if (
            rc.process is None
            and now >= rc.next_start
            and (rc.last_exit is None or rc.restart_pending)
        ):
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
            rc.ready = self._probe(pod.pod_ip, rc.check)

    @staticmethod
    def _probe(ip: str, check: pods.ReadinessCheck) -> bool:
        if check.port is None:
            return True
        url = f"http://{ip}:{check.port}{check.path}"
        try:
            with urllib.request.urlopen(url, timeout=1.0) as resp:
                return 200 <= int(resp.status) < 400
        except (urllib.error.URLError, OSError, ValueError):
            return False

    def _report(self, pod: RunningPod) -> None:
        if pod.failed is not None:
            status = pods.pod_status(
                phase="Failed",
                pod_ip=None,
                ready=False,
                started_at=pod.started_at,
                containers=[],
                message=pod.failed,
                reason="UnexpectedAdmissionError",
            )
        else:
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
            status = pods.pod_status(
                phase=phase,
                pod_ip=pod.pod_ip,
                ready=all_ready,
                started_at=pod.started_at,
                containers=statuses,
            )
        if _comparable(status) == _comparable(pod.last_status):
            return
        try:
            self.core.patch_namespaced_pod_status(pod.name, pod.namespace, {"status": status})
            pod.last_status = status
        except ApiException as exc:
            if exc.status != 404:
                raise

    def _stop_pod(self, pod: RunningPod, *, grace: float = POD_GRACE_S) -> None:
        self._stop_pods([pod], grace=grace)

    def _stop_pods(self, stopping: list[RunningPod], *, grace: float = POD_GRACE_S) -> None:
        """SIGTERM every container of ``stopping`` at once, then SIGKILL what outlives ``grace``."""
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
            self._release(pod)

    def _release(self, pod: RunningPod) -> None:
        if not pod.host_network:
            self.net.give_back(pod.pod_ip)
        in_use = {c.uid for other in self.running.values() for c in other.claims}
        for claim in pod.claims:
            if claim.uid not in in_use:  # a claim shared with a pod still here stays prepared
                self.dra.unprepare(claim)
        self._write_allocations()
        log.info(
            "stopped pod %s/%s, freed %s", pod.namespace, pod.name, pod.devices or "no devices"
        )


def _comparable(status: dict[str, Any] | None) -> Any:
    """A status without timestamps, to skip patches that would change nothing."""
    if status is None:
        return None
    out = dict(status)
    out["conditions"] = [
        {k: v for k, v in c.items() if k != "lastTransitionTime"} for c in status["conditions"]
    ]
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m neuron_localcluster.node_agent",
        description=(
            "Run one emulated Neuron node: the kubelet emulator, the project's device plugin "
            "(simulated backend), and the pods bound to the node as local processes. Normally "
            "started by `neuron-localcluster up`, not by hand."
        ),
    )
    parser.add_argument("--kubeconfig", required=True, type=Path, help="kubeconfig to use")
    parser.add_argument("--node", required=True, help="the Node's name")
    parser.add_argument("--instance-type", default="inf1.6xlarge", help="EC2 instance type")
    parser.add_argument("--workdir", required=True, type=Path, help="folder for sockets and logs")
    parser.add_argument(
        "--allocation",
        choices=ALLOCATIONS,
        default=DEVICE_PLUGIN,
        help="how the node offers its NeuronCores: the device plugin (extended resources) or "
        "the DRA driver (ResourceSlices; the agent acts as the kubelet's DRA manager)",
    )
    args = parser.parse_args(argv)
    configure_logging(log_format="text", level="INFO")
    api = api_client_for(args.kubeconfig)
    agent = NodeAgent(
        api=api,
        spec=nodes.NodeSpec(args.node, args.instance_type, emulated=True),
        workdir=args.workdir,
        allocation=args.allocation,
        kubeconfig=args.kubeconfig,
    )

    def _term(signum: int, _frame: object) -> None:
        log.info("signal %s: shutting down", signum)
        agent.stopping.set()

    signal.signal(signal.SIGTERM, _term)
    signal.signal(signal.SIGINT, _term)
    try:
        agent.start()
        agent.run_forever()
    finally:
        agent.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
