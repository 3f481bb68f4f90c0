"""The emulated node's pod admission: from a pod bound to the node to processes ready to start.

What a kubelet does before a pod's containers run, in small: its devices (through the device
plugin, GetPreferredAllocation then Allocate, as the kubelet's device manager; or through DRA,
its ResourceClaims prepared by the driver and the CDI edits read back), its address (a loopback
address of its own, or the node's for ``hostNetwork``), its volumes, and each container's
environment and command with ``$(VAR)`` references expanded.  A pod whose claims are not ready
waits (Pending, ContainerCreating) and is tried again; a pod that cannot run at all is admitted
as failed, with the reason.

The choices are pure (:func:`free_devices`, :func:`settle`, :func:`check_extended`,
:func:`base_env`); :class:`PodAdmitter` makes the calls.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from pathlib import Path
from typing import Any

from neuron_dra_driver.layout import DRIVER_NAME as DRA_DRIVER_NAME
from neuron_localcluster import nodes, pods
from neuron_localcluster.dra_kubelet import ClaimHandle, ClaimsNotReadyError, DRAKubelet
from neuron_localcluster.kubelet_emulator import DeviceInfo, KubeletEmulator
from neuron_localcluster.node_status import StatusReporter
from neuron_localcluster.pod_resources_server import ContainerHolding
from neuron_localcluster.pod_supervision import RunningContainer, RunningPod
from neuron_localcluster.podnet import PodNetwork, PodNetworkError

log = logging.getLogger(__name__)

DRA_RETRY_S = 2.0
# What a pod's processes keep of the agent's environment (the rest is the pod's own).
KEPT_ENV = ("PATH", "LANG", "LC_ALL", "TZ", "OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")


def free_devices(
    resource: str, count: int, devices: Sequence[DeviceInfo], taken: set[str]
) -> list[str]:
    """The healthy devices no running pod holds; refused when fewer than ``count``."""
    available = [d.id for d in devices if d.healthy and d.id not in taken]
    if len(available) < count:
        raise pods.PodSpecError(
            f"UnexpectedAdmissionError: {resource}: asked {count}, {len(available)} free"
        )
    return available


def settle(preferred: Sequence[str], available: Sequence[str], count: int) -> list[str]:
    """The plugin's preferred devices when they are ``count`` of the free ones, else the first
    ``count`` free (a plugin's preference is advice, as for the kubelet)."""
    if len(preferred) == count and set(preferred) <= set(available):
        return list(preferred)
    return list(available[:count])


def check_extended(pod: Mapping[str, Any], container: Mapping[str, Any], node: str) -> None:
    """A DRA node has no Neuron extended resources: a container asking for one runs only on
    the claim the scheduler made for it (as a kubelet, which would reject the pod for want
    of the resource otherwise)."""
    asked = pods.neuron_requests(container)
    if not asked or (pod.get("status") or {}).get("extendedResourceClaimStatus"):
        return
    resource, count = next(iter(sorted(asked.items())))
    raise pods.PodSpecError(
        f"container {container.get('name')!r} asks for {resource}: {count}, which node "
        f"{node} offers only through DRA, and the pod has no "
        "status.extendedResourceClaimStatus: it was bound without the scheduler, or no "
        f"DeviceClass has extendedResourceName {resource}"
    )


def base_env(
    environ: Mapping[str, str], *, pod_dir: Path, instance_type: str, sim_state_dir: Path
) -> dict[str, str]:
    """What every process of a pod starts with, before the container's own env."""
    env = {k: environ[k] for k in KEPT_ENV if k in environ}
    env["HOME"] = str(pod_dir)
    # The runtime simulates this node's cores; its arbiter's lock files are node-local.
    env["NEURON_SIM_INSTANCE_TYPE"] = instance_type
    env["NEURON_SIM_STATE_DIR"] = str(sim_state_dir)
    env["PYTHONSAFEPATH"] = "1"
    env["PYTHONUNBUFFERED"] = "1"
    return env


def pod_dir_name(meta: Mapping[str, Any]) -> str:
    return f"{meta['namespace']}_{meta['name']}_{str(meta['uid'])[:8]}"


class PodAdmitter:
    """Admits pods into ``running`` (shared with the node agent): devices, address, processes.

    ``dra`` is None on a device-plugin node; ``emulator`` is the kubelet side of its plugin.
    """

    def __init__(
        self,
        *,
        spec: nodes.NodeSpec,
        workdir: Path,
        bin_dirs: tuple[Path, ...],
        net: PodNetwork,
        emulator: KubeletEmulator,
        dra: DRAKubelet | None,
        reporter: StatusReporter,
        running: MutableMapping[str, RunningPod],
        clock: Callable[[], float] = time.monotonic,
        environ: Mapping[str, str] = os.environ,
    ) -> None:
        self.spec = spec
        self.workdir = workdir
        self.bin_dirs = bin_dirs
        self.net = net
        self.emulator = emulator
        self.dra = dra
        self.reporter = reporter
        self.running = running
        self.clock = clock
        self.environ = environ
        # pod uid -> (next try, why, claims prepared so far) of pods whose claims are not ready
        self.waiting: dict[str, tuple[float, str, list[ClaimHandle]]] = {}

    def waits(self, uid: str) -> bool:
        """Whether the pod waits for its claims and its next try is not due yet."""
        return uid in self.waiting and self.waiting[uid][0] > self.clock()

    def forget(self, present: set[str]) -> None:
        """Pods that went before they started: undo what was prepared for them."""
        for uid in list(self.waiting):
            if uid in present:
                continue
            in_use = {c.uid for pod in self.running.values() for c in pod.claims}
            for claim in self.waiting.pop(uid)[2]:
                if claim.uid not in in_use and self.dra is not None:
                    self.dra.unprepare(claim)

    def admit(self, pod: dict[str, Any]) -> RunningPod | None:
        """The pod, now in ``running`` (failed, with the reason, if it cannot run); None while
        its claims are not ready."""
        meta, spec = pod["metadata"], pod["spec"]
        prepared = None
        if self.dra is not None:
            try:
                prepared = self.dra.prepare_pod(pod)
            except ClaimsNotReadyError as exc:
                # As a kubelet: the pod waits (ContainerCreating) and the prepare is retried.
                why = str(exc)
                if meta["uid"] not in self.waiting or self.waiting[meta["uid"]][1] != why:
                    log.info("pod %s/%s waits: %s", meta["namespace"], meta["name"], why)
                    self.reporter.report_waiting(pod, why)
                self.waiting[meta["uid"]] = (self.clock() + DRA_RETRY_S, why, exc.prepared)
                return None
            self.waiting.pop(meta["uid"], None)
        pod_dir = self.workdir / "pods" / pod_dir_name(meta)
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
                    check_extended(pod, container, self.spec.name)
                    edits = prepared.per_container[str(container["name"])]
                    allocated = dict(edits.env)
                    running.cdi[str(container["name"])] = {
                        "cdiDevices": edits.cdi_ids,
                        # Recorded, not applied: a local process has no /dev/neuronN to get.
                        "deviceNodes": edits.device_nodes,
                        "mounts": edits.mounts,
                    }
                running.containers.append(
                    self._container(
                        pod,
                        container,
                        allocated=allocated,
                        pod_dir=pod_dir,
                        volumes=volumes,
                        from_plugin=prepared is None,
                    )
                )
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
        return running

    def _container(
        self,
        pod: dict[str, Any],
        container: dict[str, Any],
        *,
        allocated: dict[str, str],
        pod_dir: Path,
        volumes: Mapping[str, str],
        from_plugin: bool,
    ) -> RunningContainer:
        """One container's process: its env, and its command with ``$(VAR)`` expanded."""
        running = self.running[pod["metadata"]["uid"]]
        ip = running.pod_ip
        mounts = pods.mount_map(container, volumes)
        base = base_env(
            self.environ,
            pod_dir=pod_dir,
            instance_type=self.spec.instance_type,
            sim_state_dir=self.workdir / "neuron-sim",
        )
        env = pods.container_env(
            pod,
            container,
            allocated=allocated,
            pod_ip=ip,
            node=self.spec.name,
            base=base,
            mounts=mounts,
        )
        # $(VAR) in command and args: the container's env and the plugin's Allocate envs, what
        # the kubelet expands with (CDI edits are applied later, by the runtime, and the base
        # env stands for the image's)
        seen = pods.container_env(
            pod,
            container,
            allocated=allocated if from_plugin else {},
            pod_ip=ip,
            node=self.spec.name,
            base={},
            mounts=mounts,
        )
        argv = pods.resolve_command(container, self.bin_dirs, self.environ.get("PATH"), seen)
        if not running.host_network:
            argv = self.net.wrap(argv)
        return RunningContainer(
            container=container,
            argv=argv,
            env=env,
            log_path=pod_dir / f"{container['name']}.log",
            check=pods.readiness_check(container),
        )

    def _allocate(self, running: RunningPod, container: dict[str, Any]) -> dict[str, str]:
        """GetPreferredAllocation then Allocate for each Neuron resource; Allocate's envs."""
        envs: dict[str, str] = {}
        for resource, count in pods.neuron_requests(container).items():
            plugin = self.emulator.client(resource)
            if plugin is None:
                raise pods.PodSpecError(f"no device plugin registered {resource} on this node")
            taken = {i for pod in self.running.values() for i in pod.devices.get(resource, [])}
            available = free_devices(resource, count, plugin.devices(), taken)
            preferred = plugin.preferred_allocation(available, [], count)
            ids = settle(preferred, available, count)
            if ids != preferred:
                log.warning(
                    "plugin preferred %s for %d of %s; using the first free",
                    preferred,
                    count,
                    resource,
                )
            result = plugin.allocate(ids)
            running.devices.setdefault(resource, []).extend(ids)
            running.holdings.append(
                ContainerHolding(
                    running.namespace, running.name, str(container["name"]), resource, tuple(ids)
                )
            )
            envs.update(result.envs)
        return envs
