"""Serving, registering and re-registering: the kubelet lifecycle of the two plugins.

Order matters and is the API's: serve gRPC on our socket first, then call Register on
``kubelet.sock``.  A restarting kubelet deletes every socket in the device-plugin directory and
creates ``kubelet.sock`` again; pods have been killed in real clusters by plugins that were slow to
notice.  So one watcher thread polls every ``watch_interval_s`` (0.2 s by default, well inside the
2 s we promise): if our socket is gone it serves again on a fresh one, and if ``kubelet.sock`` is a
different file than the one we registered with, it registers again.  A kubelet that is not there
yet (UNAVAILABLE) is waited for; a kubelet that answers Register with an error has refused us, and
that is fatal: :attr:`PluginManager.failure` says why and :meth:`PluginManager.wait` returns.

Health is polled from the backend on a second thread, every ``health_interval_s``; a change bumps
the resource manager's generation, which wakes every ListAndWatch stream to send the full list.
"""

from __future__ import annotations

import logging
import re
import threading
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import grpc

from neuron_device_plugin.api import deviceplugin_pb2 as pb
from neuron_device_plugin.api.services import (
    API_VERSION,
    DevicePluginServicer,
    RegistrationStub,
    add_device_plugin_servicer,
)
from neuron_device_plugin.ids import (
    CORE_RESOURCE,
    DEFAULT_PLUGIN_DIR,
    DEVICE_RESOURCE,
    KUBELET_SOCKET_NAME,
)
from neuron_device_plugin.metrics import PluginMetrics
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

REGISTER_TIMEOUT_S = 5.0
MAX_SOCKET_PATH = 107  # sun_path is 108 bytes on Linux, one of them the terminating NUL
_RESOURCE_NAME = re.compile(r"^[A-Za-z0-9][-A-Za-z0-9_.]*/[A-Za-z0-9][-A-Za-z0-9_.]*$")
_RETRYABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


class RegistrationRefusedError(RuntimeError):
    """The kubelet answered Register with an error; retrying would not change its mind."""


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
        if self.health_interval_s <= 0 or self.watch_interval_s <= 0:
            raise ValueError(
                f"intervals must be positive: health {self.health_interval_s}, "
                f"watch {self.watch_interval_s}"
            )


def socket_name(resource_name: str) -> str:
    """The plugin's socket file name: ``neuron-dp-`` plus the resource's last part, ``.sock``."""
    tail = resource_name.rsplit("/", 1)[-1]
    return "neuron-dp-" + re.sub(r"[^A-Za-z0-9_.-]", "_", tail) + ".sock"


def _file_identity(path: Path) -> tuple[int, int, int] | None:
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


def register_with_kubelet(
    kubelet_socket: Path, endpoint: str, resource_name: str, timeout: float = REGISTER_TIMEOUT_S
) -> None:
    """Call Register; RegistrationRefusedError if the kubelet says no, grpc.RpcError if away."""
    request = pb.RegisterRequest(
        version=API_VERSION,
        endpoint=endpoint,
        resource_name=resource_name,
        options=pb.DevicePluginOptions(get_preferred_allocation_available=True),
    )
    with grpc.insecure_channel(f"unix://{kubelet_socket.resolve()}") as channel:
        try:
            RegistrationStub(channel).register(request, timeout=timeout)
        except grpc.RpcError as err:
            code = err.code() if isinstance(err, grpc.Call) else None
            if code in _RETRYABLE:
                raise
            details = err.details() if isinstance(err, grpc.Call) else str(err)
            raise RegistrationRefusedError(
                f"the kubelet at {kubelet_socket} refused to register {resource_name} "
                f"(endpoint {endpoint}, API {API_VERSION}): {code}: {details}"
            ) from None


class PluginEndpoint:
    """One resource's socket, gRPC server and registration state."""

    def __init__(
        self,
        manager: ResourceManager,
        plugin_dir: Path,
        metrics: PluginMetrics,
        stopping: threading.Event,
        max_workers: int,
    ) -> None:
        self.manager = manager
        self.plugin_dir = plugin_dir
        self.socket_path = plugin_dir / socket_name(manager.resource_name)
        self.metrics = metrics
        self.servicer = DevicePluginService(manager, metrics, stopping)
        self.max_workers = max_workers
        self._server: grpc.Server | None = None
        self._socket_identity: tuple[int, int, int] | None = None
        self.registered_with: tuple[int, int, int] | None = None
        self.registrations = 0

    @property
    def resource_name(self) -> str:
        return self.manager.resource_name

    def serve(self) -> None:
        if len(str(self.socket_path.resolve())) > MAX_SOCKET_PATH:
            raise ValueError(
                f"socket path {self.socket_path} is longer than the {MAX_SOCKET_PATH} bytes a unix "
                "socket allows; choose a shorter --device-plugin-dir"
            )
        self.stop_serving()
        self.socket_path.unlink(missing_ok=True)
        self._server = create_plugin_server(
            self.servicer, self.socket_path, max_workers=self.max_workers
        )
        self._server.start()
        self._socket_identity = _file_identity(self.socket_path)
        self.registered_with = None
        log.info("serving %s on %s", self.resource_name, self.socket_path)

    def socket_lost(self) -> bool:
        identity = _file_identity(self.socket_path)
        return identity is None or identity != self._socket_identity

    def stop_serving(self, grace: float | None = None) -> None:
        if self._server is not None:
            self._server.stop(grace).wait()
            self._server = None
        if self._socket_identity is not None and not self.socket_lost():
            self.socket_path.unlink(missing_ok=True)
        self._socket_identity = None

    def register(self, kubelet_socket: Path, kubelet_identity: tuple[int, int, int]) -> None:
        register_with_kubelet(kubelet_socket, self.socket_path.name, self.resource_name)
        self.registered_with = kubelet_identity
        self.registrations += 1
        self.metrics.registrations.labels(resource=self.resource_name).inc()
        if self.registrations > 1:
            self.metrics.reregistrations.labels(resource=self.resource_name).inc()
        log.info(
            "registered %s with the kubelet (registration %d)",
            self.resource_name,
            self.registrations,
        )


class PluginManager:
    """Both plugins of one node: discovery, serving, registration, health and shutdown."""

    def __init__(
        self,
        backend: Backend,
        config: PluginConfig | None = None,
        metrics: PluginMetrics | None = None,
    ) -> None:
        self.backend = backend
        self.config = config or PluginConfig()
        self.metrics = metrics or PluginMetrics()
        self.kubelet_socket = self.config.plugin_dir / KUBELET_SOCKET_NAME
        self.failure: str | None = None
        self.topology: Topology | None = None
        self.endpoints: dict[str, PluginEndpoint] = {}
        self._stopping = threading.Event()
        self._done = threading.Event()
        self._threads: list[threading.Thread] = []
        self._waiting_logged = False
        self.ledger: SiliconLedger | None = None
        self.holds: HoldRefresher | None = None

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
        for manager in build_managers(topology, policy, names=names, mode=mode, ledger=self.ledger):
            self.endpoints[manager.resource_name] = PluginEndpoint(
                manager,
                self.config.plugin_dir,
                self.metrics,
                self._stopping,
                self.config.max_workers,
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
            except RegistrationRefusedError as err:
                self._fail(str(err))
                return
            self._stopping.wait(self.config.watch_interval_s)

    def check_kubelet(self) -> None:
        """One watcher step: re-serve lost sockets, (re-)register where the kubelet is new."""
        for endpoint in self.endpoints.values():
            if endpoint.socket_lost():
                log.warning(
                    "socket %s was removed (kubelet restart?); serving again", endpoint.socket_path
                )
                endpoint.serve()
        kubelet = _file_identity(self.kubelet_socket)
        if kubelet is None:
            if not self._waiting_logged:
                log.info("waiting for the kubelet socket %s", self.kubelet_socket)
                self._waiting_logged = True
            return
        self._waiting_logged = False
        for endpoint in self.endpoints.values():
            if endpoint.registered_with == kubelet:
                continue
            try:
                endpoint.register(self.kubelet_socket, kubelet)
            except grpc.RpcError as err:
                log.warning(
                    "kubelet not answering Register for %s yet: %s", endpoint.resource_name, err
                )

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

    def poll_health_now(self) -> None:
        """Poll the backend at once instead of waiting for the next tick (tests, signals)."""
        self._poll_health()

    # --- probes ---------------------------------------------------------------------------------

    def liveness(self) -> tuple[bool, str]:
        """Alive unless a fatal failure happened (the chart's liveness probe)."""
        if self.failure:
            return False, self.failure
        return True, "ok"

    def readiness(self) -> tuple[bool, str]:
        """Ready when every resource is registered with the current kubelet."""
        waiting = [e.resource_name for e in self.endpoints.values() if e.registered_with is None]
        if self.failure or not self.endpoints or waiting:
            return False, self.failure or f"not registered yet: {waiting or 'not started'}"
        return True, "registered: " + ", ".join(self.endpoints)

    # --- shutdown -------------------------------------------------------------------------------

    def _fail(self, message: str) -> None:
        log.error("%s", message)
        self.failure = message
        self._done.set()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until stop() or a fatal failure; True if that happened within ``timeout``."""
        return self._done.wait(timeout)

    def stop(self) -> None:
        """Stop serving, end the streams and remove our sockets."""
        self._stopping.set()
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
