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

The agent is the loop that ties the node's parts together; each concern is a module of its own:
pod admission (:mod:`neuron_localcluster.pod_admission`), process supervision
(:mod:`neuron_localcluster.pod_supervision`), status reporting
(:mod:`neuron_localcluster.node_status`) and the node's Lease
(:mod:`neuron_localcluster.node_lease`); the kubelet's side of the device plugin is
:mod:`neuron_localcluster.kubelet_emulator` and :mod:`neuron_localcluster.pod_resources_server`,
its side of DRA :mod:`neuron_localcluster.dra_kubelet`.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from kubernetes import client as k8s

from neuron_cores import CORE_RESOURCE, DEVICE_RESOURCE
from neuron_cores.logs import configure_logging
from neuron_dra_driver.layout import DRIVER_NAME as DRA_DRIVER_NAME
from neuron_localcluster import nodes, pods
from neuron_localcluster.dra_kubelet import DRAKubelet, PluginWatcher
from neuron_localcluster.kube import ApiException, api_client_for, raw_json
from neuron_localcluster.kubelet_emulator import DeviceInfo, KubeletEmulator
from neuron_localcluster.layout import ALLOCATIONS, DEVICE_PLUGIN, DRA
from neuron_localcluster.node_files import (
    ALLOCATIONS_FILE,
    UNHEALTHY_CORES_FILE,
    dra_dir_for,
    plugin_dir_for,
    pod_resources_socket_for,
)
from neuron_localcluster.node_lease import NodeLease
from neuron_localcluster.node_status import (
    StatusReporter,
    allocation_record,
    allocations_file,
    resource_counts,
)
from neuron_localcluster.pod_admission import PodAdmitter
from neuron_localcluster.pod_resources_server import PodResourcesServer
from neuron_localcluster.pod_supervision import POD_GRACE_S, RunningPod, stop_pods, supervise
from neuron_localcluster.podnet import PodNetwork

log = logging.getLogger(__name__)

TICK_S = 1.0


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
        self.dra_dir = dra_dir_for(workdir)
        self.cdi_dir = workdir / "cdi"
        self.watcher = PluginWatcher(self.dra_dir / "plugins_registry", wipe=self._wipe_slices)
        self.dra = DRAKubelet(self.watcher, self.cdi_dir, self._read_claim)
        self.lease = NodeLease(k8s.CoordinationV1Api(api), spec.name)
        self.reporter = StatusReporter(self.core, spec, kernel=os.uname().release)
        self.admitter = PodAdmitter(
            spec=spec,
            workdir=workdir,
            bin_dirs=self.bin_dirs,
            net=self.net,
            emulator=self.emulator,
            dra=self.dra if allocation == DRA else None,
            reporter=self.reporter,
            running=self.running,
        )

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
            *self._publishing_flags(),
        ]
        plugin_log = self.workdir / "device-plugin.log"
        with plugin_log.open("ab") as out:
            env = {**os.environ, "NODE_NAME": self.spec.name}
            self.plugin = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env
            )
        log.info("device plugin started (pid %s), log %s", self.plugin.pid, plugin_log)
        self.emulator.wait_for_registration(CORE_RESOURCE, timeout=60)
        log.info("device plugin registered %s", CORE_RESOURCE)
        try:
            self.emulator.wait_for_registration(DEVICE_RESOURCE, timeout=10)
        except TimeoutError:
            log.warning(
                "device plugin did not register %s; the node offers cores only",
                DEVICE_RESOURCE,
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
        stop_pods(list(self.running.values()), grace=5.0, stopped=self._release)
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

    def _devices(self) -> dict[str, list[DeviceInfo]]:
        """The latest device list of each resource the plugin registered."""
        out: dict[str, list[DeviceInfo]] = {}
        for resource in pods.NEURON_RESOURCES:
            plugin = self.emulator.client(resource)
            out[resource] = plugin.devices() if plugin is not None else []
        return out

    def _resource_counts(self) -> tuple[dict[str, str], dict[str, str]]:
        return resource_counts(self._devices(), dra=self.allocation == DRA)

    def _register_node(self) -> None:
        self.reporter.register_node(*self._resource_counts())

    # ---- pods ------------------------------------------------------------------------------

    def tick(self) -> None:
        self.lease.renew()
        self.reporter.update_node(*self._resource_counts())
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
                if self.admitter.waits(uid):
                    continue
                self._admit(pod)
            else:
                self._supervise(self.running[uid])
        for uid in list(self.running):
            if uid not in seen:
                self._stop_pod(self.running.pop(uid))
        self.admitter.forget(seen)

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
        running = self.admitter.admit(pod)
        if running is None:
            return
        if running.failed is None:
            self._write_allocations()
        self._supervise(running)

    def _supervise(self, pod: RunningPod) -> None:
        supervise(pod, time.monotonic())
        self.reporter.report_pod(pod)

    def _write_allocations(self) -> None:
        """``allocations.json``: which devices and Allocate envs each running pod holds.

        The kubelet keeps this in its checkpoint and serves it over the PodResources API: so does
        the agent (:class:`PodResourcesServer`, which the device plugin lists to learn that
        silicon came back), and the file in the node's folder carries the envs too (``make demo``
        prints its core map from it).
        """
        self.pod_resources.set([h for pod in self.running.values() for h in pod.holdings])
        path = self.workdir / ALLOCATIONS_FILE
        tmp = path.with_suffix(".tmp")
        tmp.write_text(
            json.dumps(allocations_file(self.running.values()), indent=2, sort_keys=True)
        )
        os.replace(tmp, path)
        self._publish_allocations()

    @property
    def _plugin_publishes(self) -> bool:
        """The device plugin this agent starts publishes its Node's allocation record, as on a
        real node, from the PodResources listing this agent serves: on device-plugin nodes,
        given a kubeconfig to do it with (not a plugin of ``plugin_argv``, nor under DRA)."""
        return (
            self.allocation == DEVICE_PLUGIN
            and self.plugin_argv is None
            and self.kubeconfig is not None
        )

    def _publishing_flags(self) -> list[str]:
        if not self._plugin_publishes:
            return []
        return [
            "--publish-allocations=true",
            "--node-name",
            self.spec.name,
            "--kubeconfig",
            str(self.kubeconfig),
        ]

    def _publish_allocations(self) -> None:
        """The same allocations as the Node annotation ``kubectl neuron cores`` reads.  On
        device-plugin nodes the plugin publishes it (``_plugin_publishes``); the agent writes it
        only where no plugin of ours can: DRA nodes, and a plugin given by ``plugin_argv``."""
        if self._plugin_publishes:
            return
        devices = self._devices()
        capacity = resource_counts(devices, dra=self.allocation == DRA)[0]
        record = allocation_record(
            self.running.values(),
            devices[CORE_RESOURCE],
            capacity_cores=int(capacity.get(CORE_RESOURCE, "0")),
            instance_type=self.spec.instance_type,
            dra=self.allocation == DRA,
        )
        self.reporter.publish_allocations(record)

    def _stop_pod(self, pod: RunningPod, *, grace: float = POD_GRACE_S) -> None:
        stop_pods([pod], grace=grace, stopped=self._release)

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
