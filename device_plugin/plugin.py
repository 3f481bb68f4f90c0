"""Serving, registering and re-registering: the kubelet lifecycle of the two plugins.

Order matters and is the API's: serve gRPC on our socket first, then call Register on
``kubelet.sock``.  A restarting kubelet deletes every socket in the device-plugin directory
(including the stale ``kubelet.sock`` a crash leaves) and listens again; its Register handler dials
our socket before it answers, and answers any failure as a plain error (UNKNOWN).  Pods have been
killed in real clusters by plugins that were slow to notice, so one watcher thread polls every
``watch_interval_s`` (0.2 s by default, well inside the 2 s we promise) and, per resource:

* if our socket is gone (or is another file), serves again on a fresh one, abandoning any
  registration in flight, which named the old socket;
* if ``kubelet.sock`` is a different file than the one we registered with, registers again.

Register runs off the watcher thread, as a gRPC future the watcher looks at on its next step (it is
woken as soon as the call ends), so a Register that hangs in a kubelet dialling a deleted socket
never stops the watcher from re-serving that socket.  A registration in flight whose kubelet or
socket has changed since it began is cancelled and started again at once.

No answer of the kubelet ends the plugin: every failure, whatever its gRPC status, is retried with
a capped exponential backoff (from ``watch_interval_s`` to ``REGISTER_BACKOFF_CAP_S``), which starts
over whenever the kubelet's socket or ours changes.  A failure is logged once, when it first
appears or changes, not on every retry; readiness says why a resource is not registered.

Health is polled from the backend on a second thread, every ``health_interval_s``; a change bumps
the resource manager's generation, which wakes every ListAndWatch stream to send the full list.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import grpc

from neuron_cores import CORE_RESOURCE, DEVICE_RESOURCE
from neuron_device_plugin.api import deviceplugin_pb2 as pb
from neuron_device_plugin.api.services import (
    API_VERSION,
    DevicePluginServicer,
    RegistrationStub,
    add_device_plugin_servicer,
)
from neuron_device_plugin.ids import DEFAULT_PLUGIN_DIR, KUBELET_SOCKET_NAME
from neuron_device_plugin.metrics import PluginMetrics
from neuron_device_plugin.nodeannotation import AllocationPublisher, Patch, node_patcher
from neuron_device_plugin.podresources import HoldRefresher, PodResourcesClient
from neuron_device_plugin.policy import DEFAULT_POLICY, lookup_policy
from neuron_device_plugin.resources import (
    ResourceKind,
    ResourceManager,
    SiliconLedger,
    build_managers,
    parse_resources_mode,
)
from neuron_device_plugin.servicer import DevicePluginService
from neuron_device_plugin.topology import Backend, Topology

log = logging.getLogger(__name__)

# One Register call may take this long; the kubelet dials us inside it, which takes milliseconds
# when our socket is there.  A call outliving its kubelet or our socket is cancelled before that.
REGISTER_TIMEOUT_S = 5.0
# Retries of a failing Register back off from the watch interval up to this.
REGISTER_BACKOFF_CAP_S = 5.0
MAX_SOCKET_PATH = 107  # sun_path is 108 bytes on Linux, one of them the terminating NUL
_RESOURCE_NAME = re.compile(r"^[A-Za-z0-9][-A-Za-z0-9_.]*/[A-Za-z0-9][-A-Za-z0-9_.]*$")
# Each Register call gets a channel with its own connection state: with gRPC's shared subchannels a
# refused connection to a dead kubelet's stale socket would hold back the next call by the
# reconnect backoff (a second or more), though a new kubelet already listens on that path.
_CHANNEL_OPTIONS = [("grpc.use_local_subchannel_pool", 1)]

FileIdentity = tuple[int, int, int]


@dataclass(frozen=True)
class PluginConfig:
    plugin_dir: Path = Path(DEFAULT_PLUGIN_DIR)
    core_resource: str = CORE_RESOURCE
    device_resource: str = DEVICE_RESOURCE
    policy: str = DEFAULT_POLICY
    health_interval_s: float = 5.0
    watch_interval_s: float = 0.2
    max_workers: int = 16
    resources: str = "both"
    pod_resources_socket: Path | None = None
    # publish the node's core-allocation record on this Node (needs pod_resources_socket)
    publish_node: str | None = None
    kubeconfig: str | None = None  # for publishing; None: the in-cluster account

    def __post_init__(self) -> None:
        for flag, name in (
            ("--core-resource-name", self.core_resource),
            ("--device-resource-name", self.device_resource),
        ):
            if not _RESOURCE_NAME.match(name):
                raise ValueError(
                    f"{flag} {name!r} is not an extended resource name; use the form "
                    "'vendor-domain/resource', such as 'aws.amazon.com/neuroncore'"
                )
        if self.core_resource == self.device_resource:
            raise ValueError(
                f"the core and device resources must differ, both are {self.core_resource!r}"
            )
        lookup_policy(self.policy)
        parse_resources_mode(self.resources)
        if self.publish_node is not None and self.pod_resources_socket is None:
            raise ValueError(
                "--publish-allocations needs the kubelet's PodResources socket (it lists which "
                "pod holds which device); set --pod-resources-socket, or turn publishing off"
            )
        if self.publish_node is not None and not self.publish_node.strip():
            raise ValueError(
                "--publish-allocations needs --node-name (env NEURON_DP_NODE_NAME): the Node "
                "to publish on, the one this plugin runs on"
            )
        if self.health_interval_s <= 0 or self.watch_interval_s <= 0:
            raise ValueError(
                f"intervals must be positive: health {self.health_interval_s}, "
                f"watch {self.watch_interval_s}"
            )


def socket_name(resource_name: str) -> str:
    """The plugin's socket file name: ``neuron-dp-`` plus the resource's last part, ``.sock``."""
    tail = resource_name.rsplit("/", 1)[-1]
    return "neuron-dp-" + re.sub(r"[^A-Za-z0-9_.-]", "_", tail) + ".sock"


def _file_identity(path: Path) -> FileIdentity | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return (st.st_dev, st.st_ino, st.st_ctime_ns)


def create_plugin_server(
    servicer: DevicePluginServicer, socket_path: Path, *, max_workers: int = 16
) -> grpc.Server:
    """A gRPC server (not started) for one plugin on a unix socket; tests bind their own path."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=max_workers))
    add_device_plugin_servicer(server, servicer)
    server.add_insecure_port(f"unix://{socket_path.resolve()}")
    return server


def register_request(endpoint: str, resource_name: str) -> pb.RegisterRequest:
    return pb.RegisterRequest(
        version=API_VERSION,
        endpoint=endpoint,
        resource_name=resource_name,
        options=pb.DevicePluginOptions(get_preferred_allocation_available=True),
    )


def describe_rpc_error(err: BaseException) -> str:
    """``CODE: details`` of a finished call, one line and without gRPC's debug string."""
    if isinstance(err, grpc.Call):
        code = err.code()
        name = code.name if isinstance(code, grpc.StatusCode) else str(code)
        return f"{name}: {err.details()}"
    return f"{type(err).__name__}: {err}"


@dataclass
class _PendingRegistration:
    """A Register call in flight, and what it was made for."""

    channel: grpc.Channel
    call: grpc.Future[pb.Empty]
    kubelet: FileIdentity
    socket: FileIdentity | None

    def abandon(self) -> None:
        self.call.cancel()
        self.channel.close()


class PluginEndpoint:
    """One resource's socket, gRPC server and registration state.

    Only the watcher thread calls :meth:`serve` and :meth:`step`; a Register in flight runs in
    gRPC's threads and calls ``wake`` when it ends.
    """

    def __init__(
        self,
        manager: ResourceManager,
        plugin_dir: Path,
        metrics: PluginMetrics,
        stopping: threading.Event,
        max_workers: int,
        *,
        initial_backoff_s: float = 0.2,
        wake: threading.Event | None = None,
    ) -> None:
        self.manager = manager
        self.plugin_dir = plugin_dir
        self.socket_path = plugin_dir / socket_name(manager.resource_name)
        self.metrics = metrics
        self.servicer = DevicePluginService(manager, metrics, stopping)
        self.max_workers = max_workers
        self.initial_backoff_s = initial_backoff_s
        self.wake = wake or threading.Event()
        self._server: grpc.Server | None = None
        self._socket_identity: FileIdentity | None = None
        self.registered_with: FileIdentity | None = None
        self.registrations = 0
        self._pending: _PendingRegistration | None = None
        # Retry state: what the last failure was against, when to try again, the next delay.
        self._failed_for: tuple[FileIdentity, FileIdentity | None] | None = None
        self._retry_at = 0.0
        self._backoff_s = initial_backoff_s
        self.last_failure: str | None = None

    @property
    def resource_name(self) -> str:
        return self.manager.resource_name

    def serve(self) -> None:
        if len(str(self.socket_path.resolve())) > MAX_SOCKET_PATH:
            raise ValueError(
                f"socket path {self.socket_path} is longer than the {MAX_SOCKET_PATH} bytes a unix "
                "socket allows; choose a shorter --device-plugin-dir"
            )
        self._abandon_pending()
        self.stop_serving()
        self._check_plugin_dir()
        self.socket_path.unlink(missing_ok=True)
        try:
            server = create_plugin_server(
                self.servicer, self.socket_path, max_workers=self.max_workers
            )
        except RuntimeError as err:  # gRPC's way of saying it could not bind
            # the directory may have gone since the check: then say that, in the same words, so
            # the watcher logs it once
            self._check_plugin_dir()
            raise OSError(
                f"cannot serve {self.resource_name} on {self.socket_path}: {err}"
            ) from None
        self._server = server
        self._server.start()
        self._socket_identity = _file_identity(self.socket_path)
        self.registered_with = None
        log.info("serving %s on %s", self.resource_name, self.socket_path)

    def _check_plugin_dir(self) -> None:
        if not self.plugin_dir.is_dir():
            raise FileNotFoundError(
                f"device-plugin directory {self.plugin_dir} is gone; serving "
                f"{self.resource_name} again once it is back"
            )

    def socket_lost(self) -> bool:
        identity = _file_identity(self.socket_path)
        return identity is None or identity != self._socket_identity

    def stop_serving(self, grace: float | None = None) -> None:
        self._abandon_pending()
        if self._server is not None:
            self._server.stop(grace).wait()
            self._server = None
        if self._socket_identity is not None and not self.socket_lost():
            self.socket_path.unlink(missing_ok=True)
        self._socket_identity = None

    # --- registration ---------------------------------------------------------------------------

    def step(self, kubelet_socket: Path, kubelet: FileIdentity | None, now: float) -> None:
        """One watcher step for this resource: serve again if needed, then (re-)register.

        ``kubelet`` is the identity of ``kubelet.sock`` read *before* our socket is checked: a
        starting kubelet removes the sockets before it listens, so a new ``kubelet.sock`` seen
        first means its clean-up is already visible to the check of our socket.
        """
        if self.socket_lost():
            log.warning("socket %s was removed (kubelet restart?); serving again", self.socket_path)
            self.serve()
        if kubelet is None:
            self._abandon_pending()
            return
        target = (kubelet, self._socket_identity)
        pending = self._pending
        if pending is not None:
            if (pending.kubelet, pending.socket) != target:
                log.info(
                    "abandoning a Register of %s: the kubelet or our socket changed meanwhile",
                    self.resource_name,
                )
                self._abandon_pending()
            elif not pending.call.done():
                return
            else:
                self._pending = None
                pending.channel.close()
                self._finish(pending, now)
        if self.registered_with == kubelet:
            return
        if self._failed_for == target and now < self._retry_at:
            return
        self._begin(kubelet_socket, kubelet)

    def _begin(self, kubelet_socket: Path, kubelet: FileIdentity) -> None:
        channel = grpc.insecure_channel(
            f"unix://{kubelet_socket.resolve()}", options=_CHANNEL_OPTIONS
        )
        request = register_request(self.socket_path.name, self.resource_name)
        call = RegistrationStub(channel).register.future(request, timeout=REGISTER_TIMEOUT_S)
        self._pending = _PendingRegistration(channel, call, kubelet, self._socket_identity)
        call.add_done_callback(lambda _: self.wake.set())

    def _finish(self, pending: _PendingRegistration, now: float) -> None:
        error = pending.call.exception()
        if error is None:
            self._registered(pending.kubelet)
            return
        reason = describe_rpc_error(error)
        target = (pending.kubelet, pending.socket)
        if self._failed_for != target:
            self._backoff_s = self.initial_backoff_s
        self._failed_for = target
        self._retry_at = now + self._backoff_s
        if reason != self.last_failure:
            log.warning(
                "Register of %s with the kubelet failed, retrying (backoff up to %.0fs): %s",
                self.resource_name,
                REGISTER_BACKOFF_CAP_S,
                reason,
            )
            self.last_failure = reason
        self._backoff_s = min(2 * self._backoff_s, REGISTER_BACKOFF_CAP_S)

    def _registered(self, kubelet: FileIdentity) -> None:
        self.registered_with = kubelet
        self.registrations += 1
        self._failed_for = None
        self._backoff_s = self.initial_backoff_s
        self.metrics.registrations.labels(resource=self.resource_name).inc()
        if self.registrations > 1:
            self.metrics.reregistrations.labels(resource=self.resource_name).inc()
        log.info(
            "registered %s with the kubelet (registration %d%s)",
            self.resource_name,
            self.registrations,
            f", after: {self.last_failure}" if self.last_failure else "",
        )
        self.last_failure = None

    def _abandon_pending(self) -> None:
        if self._pending is not None:
            self._pending.abandon()
            self._pending = None


class PluginManager:
    """Both plugins of one node: discovery, serving, registration, health and shutdown."""

    def __init__(
        self,
        backend: Backend,
        config: PluginConfig | None = None,
        metrics: PluginMetrics | None = None,
        *,
        node_patch: Patch | None = None,
    ) -> None:
        """``node_patch`` writes the allocation record when ``config.publish_node`` is set
        (default: through the Kubernetes API, ``nodeannotation.node_patcher``)."""
        self.backend = backend
        self._node_patch = node_patch
        self.config = config or PluginConfig()
        self.metrics = metrics or PluginMetrics()
        self.kubelet_socket = self.config.plugin_dir / KUBELET_SOCKET_NAME
        self.topology: Topology | None = None
        self.endpoints: dict[str, PluginEndpoint] = {}
        self._stopping = threading.Event()
        self._wake = threading.Event()
        self._done = threading.Event()
        self._threads: list[threading.Thread] = []
        self._waiting_logged = False
        self.ledger: SiliconLedger | None = None
        self.holds: HoldRefresher | None = None
        self.publisher: AllocationPublisher | None = None
        self._step_error: str | None = None

    def start(self) -> None:
        """Discover devices, serve both sockets, then register from the watcher thread."""
        if not self.config.plugin_dir.is_dir():
            raise FileNotFoundError(
                f"device-plugin directory {self.config.plugin_dir} does not exist; "
                "set --device-plugin-dir to the kubelet's (default " + DEFAULT_PLUGIN_DIR + ")"
            )
        topology = self.backend.discover()
        self.topology = topology
        log.info("%s backend found %s", self.backend.name, topology.describe())
        policy = lookup_policy(self.config.policy)
        names = {
            ResourceKind.CORE: self.config.core_resource,
            ResourceKind.DEVICE: self.config.device_resource,
        }
        mode = parse_resources_mode(self.config.resources)
        self.ledger = SiliconLedger() if len(mode.kinds) == 2 else None
        if self.ledger is not None and self.config.pod_resources_socket is not None:
            lister = PodResourcesClient(self.config.pod_resources_socket).list_devices
            self.holds = HoldRefresher(
                self.ledger, names, topology, lister, source=str(self.config.pod_resources_socket)
            )
        node = self.config.publish_node
        if node is not None and self.config.pod_resources_socket is not None:
            patch = self._node_patch or node_patcher(node, self.config.kubeconfig)
            holdings = PodResourcesClient(self.config.pod_resources_socket).list_holdings
            self.publisher = AllocationPublisher(node, patch, holdings, names)
        for manager in build_managers(topology, policy, names=names, mode=mode, ledger=self.ledger):
            self.endpoints[manager.resource_name] = PluginEndpoint(
                manager,
                self.config.plugin_dir,
                self.metrics,
                self._stopping,
                self.config.max_workers,
                initial_backoff_s=self.config.watch_interval_s,
                wake=self._wake,
            )
        self._poll_health()
        for endpoint in self.endpoints.values():
            endpoint.serve()
        for target, name in ((self._watch_loop, "kubelet-watch"), (self._health_loop, "health")):
            thread = threading.Thread(target=target, name=f"neuron-dp-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)

    # --- registration watcher -------------------------------------------------------------------

    def _watch_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                self.check_kubelet()
            except Exception as err:  # the watcher must outlive any one step
                message = f"{type(err).__name__}: {err}"
                if message != self._step_error:
                    # A file-system or configuration problem is said in one line; anything else
                    # is a bug of ours, worth its traceback (once).
                    log.error(
                        "kubelet watcher step failed, retrying: %s",
                        message,
                        exc_info=not isinstance(err, OSError | ValueError),
                    )
                    self._step_error = message
            else:
                self._step_error = None
            self._wake.wait(self.config.watch_interval_s)
            self._wake.clear()

    def check_kubelet(self) -> None:
        """One watcher step: re-serve lost sockets, (re-)register where the kubelet is new."""
        kubelet = _file_identity(self.kubelet_socket)
        if kubelet is None:
            if not self._waiting_logged:
                log.info("waiting for the kubelet socket %s", self.kubelet_socket)
                self._waiting_logged = True
        else:
            self._waiting_logged = False
        now = time.monotonic()
        for endpoint in self.endpoints.values():
            endpoint.step(self.kubelet_socket, kubelet, now)

    # --- health ---------------------------------------------------------------------------------

    def _health_loop(self) -> None:
        while not self._stopping.wait(self.config.health_interval_s):
            try:
                self._poll_health()
            except OSError as err:
                log.error("health poll failed, keeping the last health: %s", err)

    def _poll_health(self) -> None:
        assert self.topology is not None
        if self.holds is not None:
            self.holds.refresh()
        unhealthy = self.backend.unhealthy_cores(self.topology)
        for endpoint in self.endpoints.values():
            manager = endpoint.manager
            if manager.set_unhealthy_cores(unhealthy):
                self.metrics.health_changes.labels(resource=manager.resource_name).inc()
                log.warning(
                    "%s health changed: %s",
                    manager.resource_name,
                    [d.id for d in manager.devices() if d.health != "Healthy"] or "all healthy",
                )
            self.metrics.set_devices(manager.resource_name, manager.health_counts())
        if self.publisher is not None:
            self.publisher.publish(self.topology, unhealthy)

    def poll_health_now(self) -> None:
        """Poll the backend at once instead of waiting for the next tick (tests, signals)."""
        self._poll_health()

    # --- probes ---------------------------------------------------------------------------------

    def liveness(self) -> tuple[bool, str]:
        """Alive while the process answers (the chart's liveness probe): no answer of the kubelet
        is fatal, the watcher retries every failure."""
        return True, "ok"

    def readiness(self) -> tuple[bool, str]:
        """Ready when every resource is registered with the current kubelet."""
        kubelet = _file_identity(self.kubelet_socket)
        waiting = [
            e
            for e in self.endpoints.values()
            if e.registered_with is None or e.registered_with != kubelet
        ]
        if not self.endpoints:
            return False, "not started"
        if waiting:
            return False, "not registered yet: " + "; ".join(
                e.resource_name + (f" (last Register: {e.last_failure})" if e.last_failure else "")
                for e in waiting
            )
        return True, "registered: " + ", ".join(self.endpoints)

    # --- shutdown -------------------------------------------------------------------------------

    def wait(self, timeout: float | None = None) -> bool:
        """Block until stop(); True if that happened within ``timeout``."""
        return self._done.wait(timeout)

    def stop(self) -> None:
        """Stop serving, end the streams and remove our sockets."""
        self._stopping.set()
        self._wake.set()
        for endpoint in self.endpoints.values():
            endpoint.manager.wake_watchers()
        for thread in self._threads:
            if thread is not threading.current_thread():
                thread.join(timeout=10)
        for endpoint in self.endpoints.values():
            endpoint.stop_serving(grace=1.0)
        self._done.set()
        if self.endpoints:
            log.info("stopped; removed our sockets from %s", self.config.plugin_dir)

    def __enter__(self) -> PluginManager:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
