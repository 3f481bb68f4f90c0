"""Bring a local control plane up, find it again, and take it down: the one place that does I/O.

Why one class for the CLI, the demo and the pytest fixture: they must behave the same, so
``make cluster-up``, ``make demo`` and the session fixture all call :meth:`LocalCluster.up` and
:meth:`LocalCluster.down`.  Everything runs on 127.0.0.1 with freshly generated certificates;
etcd -> kube-apiserver (RBAC, PodSecurity, service-account signing) -> kube-controller-manager
(per-controller service-account credentials, so garbage collection and the ReplicaSet and
Deployment controllers act) -> kube-scheduler -> kwok (simulated nodes) -> one node agent per
emulated node; with ``autoscaler`` set, Karpenter's kwok provider and its NodePool come last
(:mod:`neuron_localcluster.karpenter`), so nodes appear when NeuronWorkload pods wait for them.
The state folder records ports and pids (``state.json``, ``pids/``), so another process can
attach to a running cluster or stop it.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import shutil
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from kubernetes import client as k8s

from neuron_dra_driver.classes import device_classes
from neuron_dra_driver.layout import DRIVER_NAME
from neuron_localcluster import binaries, clitools, karpenter, layout, nodes, pki, podnet, processes
from neuron_localcluster.kube import ApiException, api_client_for, body, raw_json
from neuron_localcluster.layout import ALLOCATIONS, DEVICE_PLUGIN, DRA, Layout, Ports
from neuron_localcluster.node_files import UNHEALTHY_CORES_FILE, dra_dir_for, plugin_dir_for

log = logging.getLogger(__name__)

T = TypeVar("T")
DEFAULT_KWOK_NODES = "2xinf1.6xlarge"
DEFAULT_EMULATED_NODES = "inf1.6xlarge"
KWOK_STAGES = Path(__file__).with_name("kwok-stages.yaml")
KUBECTL_TIMEOUT_S = 120.0


class ClusterError(RuntimeError):
    """The cluster could not be started or reached; the message says where to look."""


@dataclass
class LocalCluster:
    """A running local cluster; the contract the fixture and the demo hand to tests."""

    state_dir: Path
    server: str
    ports: Ports
    kwok_nodes: list[str] = field(default_factory=list)
    emulated_nodes: list[str] = field(default_factory=list)
    kubectl_path: Path | None = None
    autoscaler: str = "none"
    allocation: str = DEVICE_PLUGIN

    # ---- the contract ----------------------------------------------------------------------

    @property
    def layout(self) -> Layout:
        return Layout(self.state_dir)

    @property
    def kubeconfig(self) -> Path:
        return self.layout.kubeconfig

    @property
    def emulated_node(self) -> str:
        if not self.emulated_nodes:
            raise ClusterError("this cluster was started without an emulated node")
        return self.emulated_nodes[0]

    def kubectl(
        self,
        *args: str,
        check: bool = True,
        input: str | None = None,
        timeout: float = KUBECTL_TIMEOUT_S,
    ) -> subprocess.CompletedProcess[str]:
        """Run the real kubectl against this cluster (``--kubeconfig`` set), capturing output.

        A call that has not finished after ``timeout`` seconds is killed and raises
        :class:`ClusterError` (which :meth:`wait_for` treats as "not yet", so a stalled call
        inside a wait is retried rather than eating the whole test's time).
        """
        if self.kubectl_path is None:
            self.kubectl_path = clitools.ensure_kubectl()
        cmd = [str(self.kubectl_path), f"--kubeconfig={self.kubeconfig}", *args]
        try:
            proc = subprocess.run(
                cmd,
                input=input,
                stdin=subprocess.DEVNULL if input is None else None,
                capture_output=True,
                text=True,
                check=False,
                timeout=timeout,
            )
        except subprocess.TimeoutExpired as exc:
            log.warning("kubectl %s did not finish in %.0fs; killed", " ".join(args), timeout)
            raise ClusterError(
                f"kubectl {' '.join(args)} did not finish in {timeout:.0f}s (killed); pass "
                "timeout= for longer waits, and see the kube-apiserver log in "
                f"{self.layout.logs}"
            ) from exc
        if check and proc.returncode != 0:
            raise ClusterError(
                f"kubectl {' '.join(args)} failed (exit {proc.returncode}): {proc.stderr.strip()}"
            )
        return proc

    def api_client(self) -> k8s.ApiClient:
        return api_client_for(self.kubeconfig)

    def impersonating_kubeconfig(
        self, namespace: str, service_account: str, *, expiration_seconds: int = 3600
    ) -> Path:
        """A kubeconfig that acts as ``system:serviceaccount:NAMESPACE:SA``.

        It carries a TokenRequest token for the service account (one hour by default), not
        impersonation headers: kubectl, kubernetes-python and kopf all honour a bearer token, while
        only kubectl reads a kubeconfig's ``as:``.  The account must exist.
        """
        core = k8s.CoreV1Api(self.api_client())
        request = k8s.AuthenticationV1TokenRequest(
            spec=k8s.V1TokenRequestSpec(
                audiences=[layout.SA_ISSUER], expiration_seconds=expiration_seconds
            )
        )
        try:
            answer = core.create_namespaced_service_account_token(
                service_account, namespace, request
            )
        except ApiException as exc:
            raise ClusterError(
                f"cannot get a token for service account {namespace}/{service_account}: "
                f"{exc.status} {exc.reason}; create the account first (e.g. install the chart)"
            ) from exc
        token = answer.status.token if answer.status else None
        if not token:
            raise ClusterError(
                f"the TokenRequest for {namespace}/{service_account} came back empty"
            )
        user = f"system:serviceaccount:{namespace}:{service_account}"
        data = layout.token_kubeconfig(
            self.server, self.layout.pki.ca_cert, user, str(token), namespace
        )
        path = self.state_dir / "kubeconfigs" / f"sa-{namespace}-{service_account}.kubeconfig"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(layout.dump_yaml(data))
        path.chmod(0o600)
        return path

    def wait_for(self, predicate: Callable[[], T | None], timeout: float, what: str) -> T:
        """Call ``predicate`` until it returns something truthy; raise naming ``what`` otherwise."""
        deadline = time.monotonic() + timeout
        last_error: Exception | None = None
        while True:
            try:
                result = predicate()
                if result:
                    return result
            except (ApiException, OSError, ClusterError, KeyError, ValueError) as exc:
                last_error = exc
            if time.monotonic() >= deadline:
                detail = f" (last error: {last_error})" if last_error else ""
                raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}{detail}")
            time.sleep(0.5)

    # ---- state -----------------------------------------------------------------------------

    def save(self) -> None:
        data = {
            "server": self.server,
            "ports": layout.ports_dict(self.ports),
            "kwok_nodes": self.kwok_nodes,
            "emulated_nodes": self.emulated_nodes,
            "kubeconfig": str(self.kubeconfig),
            "autoscaler": self.autoscaler,
            "allocation": self.allocation,
        }
        self.layout.state_file.write_text(json.dumps(data, indent=2))

    @classmethod
    def attach(cls, state_dir: Path | None = None) -> LocalCluster:
        """The cluster recorded in ``state_dir`` (it may have stopped: see :meth:`running`)."""
        folder = state_dir or layout.default_state_dir()
        try:
            data = json.loads(Layout(folder).state_file.read_text())
        except (OSError, ValueError) as exc:
            raise ClusterError(
                f"no local cluster recorded in {folder} ({exc}); start one with "
                "`make cluster-up` or `neuron-localcluster up`"
            ) from exc
        return cls(
            state_dir=folder,
            server=str(data["server"]),
            ports=Ports(**data["ports"]),
            kwok_nodes=list(data.get("kwok_nodes", [])),
            emulated_nodes=list(data.get("emulated_nodes", [])),
            autoscaler=str(data.get("autoscaler", "none")),
            allocation=str(data.get("allocation", DEVICE_PLUGIN)),
        )

    def processes(self) -> list[tuple[str, bool]]:
        return [(r.name, processes.alive(r)) for r in processes.recorded(self.layout.pids)]

    def running(self) -> bool:
        procs = self.processes()
        return bool(procs) and all(ok for _, ok in procs)

    # ---- up / down -------------------------------------------------------------------------

    @classmethod
    def up(
        cls,
        state_dir: Path | None = None,
        *,
        kwok_nodes: str = DEFAULT_KWOK_NODES,
        emulated_nodes: str = DEFAULT_EMULATED_NODES,
        env: Mapping[str, str] | None = None,
        progress: Callable[[str], None] | None = None,
        autoscaler: karpenter.Settings | None = None,
        allocation: str = DEVICE_PLUGIN,
    ) -> LocalCluster:
        """Start a fresh cluster in ``state_dir`` (stopping and wiping whatever was there).

        ``autoscaler``: run Karpenter's kwok provider with these settings (built on first use,
        like the control plane), and a NodePool for Neuron capacity.

        ``allocation``: ``device-plugin`` (nodes advertise ``aws.amazon.com/neuroncore``) or
        ``dra`` (nodes offer their cores only as the DRA driver's ResourceSlices: a driver process
        publishes each kwok node's pool, each emulated node runs the driver with its kubelet side,
        and the driver's DeviceClasses are created).
        """
        if allocation not in ALLOCATIONS:
            raise ClusterError(
                f"allocation {allocation!r} is not one of {', '.join(ALLOCATIONS)}: "
                "device-plugin (the default) or dra"
            )
        if autoscaler is not None and allocation == DRA:
            raise ClusterError(
                "--autoscaler karpenter with --allocation dra is not supported yet: Karpenter's "
                "nodes get their NeuronCores from a capacity publisher that stands in for the "
                "device plugin, and no DRA driver publishes their pools; use one or the other"
            )
        say = progress or (lambda msg: log.info("%s", msg))
        folder = (state_dir or layout.default_state_dir()).resolve()
        specs = nodes.name_nodes(
            nodes.parse_node_specs(kwok_nodes, emulated=False)
            + nodes.parse_node_specs(emulated_nodes, emulated=True)
        )
        started = time.monotonic()
        say("building or reusing control-plane binaries (first build: many minutes)")
        bins = binaries.ensure_binaries(env)
        assets = None
        if autoscaler is not None:
            say("building or reusing Karpenter's kwok provider (first build: minutes)")
            assets = karpenter.ensure_karpenter(env)
        say(f"binaries ready in {time.monotonic() - started:.0f}s")
        kubectl = clitools.ensure_kubectl()
        stop_cluster(folder)
        _wipe(folder)
        lay = Layout(folder)
        for sub in (lay.root, lay.logs, lay.pids, lay.etcd_data, lay.root / "kubeconfigs"):
            sub.mkdir(parents=True, exist_ok=True)
        lay.etcd_data.chmod(0o700)
        ports = layout.pick_ports()
        server = f"https://127.0.0.1:{ports.apiserver}"
        keys = pki.generate(lay.pki.folder)
        for who in layout.KUBECONFIG_IDENTITIES:
            path = lay.kubeconfig if who is pki.ADMIN else lay.component_kubeconfig(who)
            path.write_text(layout.dump_yaml(layout.kubeconfig(server, keys, who)))
            path.chmod(0o600)
        shutil.copyfile(KWOK_STAGES, lay.kwok_config)
        cluster = cls(
            state_dir=folder,
            server=server,
            ports=ports,
            kwok_nodes=[s.name for s in specs if not s.emulated],
            emulated_nodes=[s.name for s in specs if s.emulated],
            kubectl_path=kubectl,
            autoscaler="none" if autoscaler is None else "karpenter",
            allocation=allocation,
        )
        cluster.save()
        try:
            cluster._start_control_plane(bins, say)
            cluster._start_nodes(specs, say)
            if autoscaler is not None and assets is not None:
                cluster._start_karpenter(assets, autoscaler, say)
        except BaseException:
            log.error("start failed; stopping what was started (logs stay in %s)", lay.logs)
            stop_cluster(folder)
            raise
        say(f"cluster up in {time.monotonic() - started:.0f}s; kubeconfig: {lay.kubeconfig}")
        return cluster

    def _spawn(self, name: str, argv: Sequence[str], env: Mapping[str, str] | None = None) -> None:
        lay = self.layout
        processes.spawn(
            name, argv, pid_dir=lay.pids, log_file=lay.logs / f"{name}.log", env=env, cwd=lay.root
        )

    def _start_control_plane(self, bins: binaries.Binaries, say: Callable[[str], None]) -> None:
        lay, ports = self.layout, self.ports
        self._spawn("etcd", layout.etcd_args(bins, lay, ports))
        self._await_health("etcd", f"{layout.etcd_url(ports)}/health", 60, client=True)
        self._spawn("kube-apiserver", layout.apiserver_args(bins, lay, ports))
        self._await_health("kube-apiserver", f"{self.server}/readyz", 120, client=True)
        say("kube-apiserver ready")
        self._spawn("kube-controller-manager", layout.controller_manager_args(bins, lay, ports))
        self._spawn("kube-scheduler", layout.scheduler_args(bins, lay, ports))
        self._await_health(
            "kube-controller-manager", f"https://127.0.0.1:{ports.controller_manager}/healthz", 90
        )
        self._await_health("kube-scheduler", f"https://127.0.0.1:{ports.scheduler}/healthz", 90)
        core = k8s.CoreV1Api(self.api_client())
        self.wait_for(
            lambda: core.read_namespaced_service_account("default", "default"),
            90,
            "the controller-manager to create the default service account",
        )
        say("controller-manager and scheduler ready")
        self._spawn("kwok", layout.kwok_args(bins, lay, ports))

    def _start_nodes(self, specs: list[nodes.NodeSpec], say: Callable[[str], None]) -> None:
        core = k8s.CoreV1Api(self.api_client())
        dra = self.allocation == DRA
        if dra:
            self._create_device_classes()
        for spec in specs:
            if not spec.emulated:
                # Under DRA a node offers no Neuron extended resources; its driver publishes it.
                none: dict[str, str] | None = {} if dra else None
                core.create_node(body(nodes.node_manifest(spec, capacity=none, allocatable=none)))
                if dra:
                    self._spawn_kwok_driver(spec)
        for spec in specs:
            if spec.emulated:
                workdir = self.layout.node_dir(spec.name)
                workdir.mkdir(parents=True, exist_ok=True)
                argv = [
                    sys.executable,
                    "-m",
                    "neuron_localcluster.node_agent",
                    f"--kubeconfig={self.layout.component_kubeconfig(pki.NODE_AGENT)}",
                    f"--node={spec.name}",
                    f"--instance-type={spec.instance_type}",
                    f"--workdir={workdir}",
                    f"--allocation={self.allocation}",
                ]
                env = {**os.environ, "PYTHONSAFEPATH": "1"}
                self._spawn(f"node-agent-{spec.name}", argv, env)
        for spec in specs:
            self.wait_for(
                functools.partial(_node_ready, core, spec.name),
                120,
                f"node {spec.name} to be Ready (log: {self._node_log(spec)})",
            )
            kind = "emulated" if spec.emulated else "kwok"
            say(f"node {spec.name} ({spec.instance_type}, {kind}) Ready")
        if dra:
            for spec in specs:
                self.wait_for(
                    functools.partial(_pool_published, self.api_client(), spec.name),
                    120,
                    f"the DRA driver to publish node {spec.name}'s ResourceSlices",
                )
            say("every node's NeuronCores are published as DRA ResourceSlices")

    def _create_device_classes(self) -> None:
        api = k8s.ResourceV1Api(self.api_client())
        for manifest in device_classes():
            api.create_device_class(body(manifest))

    def _spawn_kwok_driver(self, spec: nodes.NodeSpec) -> None:
        """The driver in publish-for-node mode: it runs here and publishes a node it is not on."""
        workdir = self.layout.node_dir(spec.name)
        workdir.mkdir(parents=True, exist_ok=True)
        argv = [
            str(Path(sys.executable).parent / "neuron-dra-driver"),
            f"--node-name={spec.name}",
            "--backend=simulated",
            f"--instance-type={spec.instance_type}",
            f"--health-file={workdir / UNHEALTHY_CORES_FILE}",
            f"--kubeconfig={self.layout.component_kubeconfig(pki.NODE_AGENT)}",
        ]
        self._spawn(f"dra-driver-{spec.name}", argv, {**os.environ, "PYTHONSAFEPATH": "1"})

    def _start_karpenter(
        self, assets: karpenter.Assets, settings: karpenter.Settings, say: Callable[[str], None]
    ) -> None:
        """CRDs, Karpenter, the capacity publisher, then the NodeClass and NodePool."""
        lay, ports = self.layout, self.ports
        folder = lay.root / "karpenter"
        folder.mkdir(parents=True, exist_ok=True)
        self.kubectl("apply", "--server-side", *(f"--filename={crd}" for crd in assets.crds))
        self.kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd", "--all")
        types_file = folder / "instance-types.json"
        types_file.write_text(json.dumps(karpenter.instance_types_file(settings), indent=2))
        kubeconfig = lay.component_kubeconfig(pki.KARPENTER)
        env = karpenter.process_env(
            os.environ,
            kubeconfig=kubeconfig,
            instance_types_path=types_file,
            metrics_port=ports.karpenter_metrics,
            health_port=ports.karpenter_health,
        )
        self._spawn("karpenter", [str(assets.binary)], env)
        self._await_health("karpenter", f"http://127.0.0.1:{ports.karpenter_health}/readyz", 120)
        publisher = [
            sys.executable,
            "-m",
            "neuron_localcluster.capacity_publisher",
            f"--kubeconfig={kubeconfig}",
        ]
        self._spawn("capacity-publisher", publisher, {**os.environ, "PYTHONSAFEPATH": "1"})
        for document in (
            karpenter.nodeclass_manifest(settings),
            karpenter.nodepool_manifest(settings),
        ):
            path = folder / f"{document['kind'].lower()}.yaml"
            path.write_text(layout.dump_yaml(document))
            self.kubectl("apply", "-f", str(path))
        self.wait_for(
            functools.partial(self._nodepool_ready, settings.nodepool),
            60,
            f"NodePool {settings.nodepool} to be Ready (log: {lay.logs / 'karpenter.log'})",
        )
        say(
            f"Karpenter {assets.version} (kwok provider) ready; NodePool {settings.nodepool}: "
            f"{', '.join(settings.instance_types)}, consolidateAfter {settings.consolidate_after}"
        )

    def _nodepool_ready(self, name: str) -> bool:
        pool = json.loads(self.kubectl("get", "nodepool", name, "-o", "json").stdout)
        conditions = (pool.get("status") or {}).get("conditions") or []
        return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)

    def _node_log(self, spec: nodes.NodeSpec) -> Path:
        name = f"node-agent-{spec.name}" if spec.emulated else "kwok"
        return self.layout.logs / f"{name}.log"

    def _ssl_context(self, *, client: bool) -> ssl.SSLContext:
        keys = self.layout.pki
        if client:
            ctx = ssl.create_default_context(cafile=str(keys.ca_cert))
            ctx.load_cert_chain(str(keys.client_cert(pki.ADMIN)), str(keys.client_key(pki.ADMIN)))
            return ctx
        # The controller-manager and scheduler serve /healthz with self-signed certificates
        # they generate themselves; this probe only asks "are you up" on loopback.
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        return ctx

    def _await_health(self, name: str, url: str, timeout: float, *, client: bool = False) -> None:
        ctx = self._ssl_context(client=client) if url.startswith("https") else None
        rec = next(r for r in processes.recorded(self.layout.pids) if r.name == name)

        def healthy() -> bool:
            if not processes.alive(rec):
                raise ClusterError(f"{name} exited; see {self.layout.logs / (name + '.log')}")
            try:
                with urllib.request.urlopen(url, timeout=2, context=ctx) as resp:
                    return int(resp.status) == 200
            except (urllib.error.URLError, OSError):
                return False

        deadline = time.monotonic() + timeout
        while not healthy():
            if time.monotonic() > deadline:
                tail = _tail(self.layout.logs / f"{name}.log")
                raise ClusterError(
                    f"{name} not healthy at {url} after {timeout:.0f}s; log:\n{tail}"
                )
            time.sleep(0.3)

    def down(self) -> list[str]:
        return stop_cluster(self.state_dir)

    def status(self) -> dict[str, Any]:
        return {
            "state_dir": str(self.state_dir),
            "kubeconfig": str(self.kubeconfig),
            "server": self.server,
            "processes": dict(self.processes()),
            "kwok_nodes": self.kwok_nodes,
            "emulated_nodes": self.emulated_nodes,
            "autoscaler": self.autoscaler,
            "allocation": self.allocation,
        }


def _pool_published(api: k8s.ApiClient, node: str) -> bool:
    """Every slice of the node's pool is there (the count each slice declares)."""
    listed = k8s.ResourceV1Api(api).list_resource_slice(
        field_selector=f"spec.nodeName={node}", _preload_content=False
    )
    slices = [
        s for s in raw_json(listed).get("items") or [] if s["spec"].get("driver") == DRIVER_NAME
    ]
    if not slices:
        return False
    return len(slices) >= int(slices[0]["spec"]["pool"]["resourceSliceCount"])


def _node_ready(core: k8s.CoreV1Api, name: str) -> bool:
    node = core.read_node(name)
    for cond in (node.status.conditions if node.status else None) or []:
        if cond.type == "Ready":
            return bool(cond.status == "True")
    return False


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _wipe(folder: Path) -> None:
    """Remove an earlier cluster's state; refuse to touch a folder that is not one."""
    if not folder.exists():
        return
    if any(folder.iterdir()) and not Layout(folder).state_file.exists():
        raise ClusterError(
            f"{folder} is not empty and holds no local-cluster state.json; refusing to wipe it. "
            f"Point {layout.STATE_ENV} (or --state-dir) at an empty or a cluster folder."
        )
    shutil.rmtree(folder)


def stop_cluster(state_dir: Path) -> list[str]:
    """Stop every process recorded in ``state_dir`` (node agents first, etcd last)."""
    pid_dir = Layout(state_dir).pids
    if not pid_dir.is_dir():
        return []
    stopped = processes.stop_all(pid_dir, layout.COMPONENT_ORDER)
    node_dirs = sorted((state_dir / "nodes").glob("*"))
    podnet.teardown_recorded(node_dirs)
    for node_dir in node_dirs:  # sockets of an agent that was killed before it cleaned up
        shutil.rmtree(plugin_dir_for(node_dir), ignore_errors=True)
        shutil.rmtree(dra_dir_for(node_dir), ignore_errors=True)
    return stopped
