"""A stand-in for the kubelet's side of the Device Plugin API, for the local cluster and tests.

It lives with the local cluster, not in the device plugin's package: the emulated node's agent
runs it (:mod:`neuron_localcluster.node_agent`), and the device plugin's tests use it as their
kubelet; an installed device plugin carries only the plugin.

It behaves like the kubelet's device manager where a plugin can tell the difference:

* :meth:`KubeletEmulator.start` removes every socket in the device-plugin directory (a stale
  ``kubelet.sock`` left by a crash, and every plugin's socket) before it listens on
  ``kubelet.sock``, as a starting kubelet does;
* its Register handler dials the plugin's socket and calls GetDevicePluginOptions *before* it
  answers; any failure (a bad request, a socket that is gone) comes back as a plain error, which
  gRPC reports as UNKNOWN, with the kubelet's wording (``failed to dial device plugin: ...``);
* after a successful Register it keeps a ListAndWatch stream open through a background reader and
  offers GetPreferredAllocation and Allocate on demand.

:meth:`KubeletEmulator.crash` stops it the way ``kill -9`` does: the streams end and a stale
``kubelet.sock`` stays behind, so the next :meth:`KubeletEmulator.start` is a real-looking restart.
:meth:`KubeletEmulator.stop` with ``delete_sockets=True`` clears the directory on the way out.

The local control plane uses it to emulate one node: capacity from :meth:`PluginClient.devices`,
and :meth:`PluginClient.preferred_allocation` plus :meth:`PluginClient.allocate` per pod.

The kubelet's PodResources API, the other socket a plugin talks to, is emulated by
:mod:`neuron_localcluster.pod_resources_server`.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable, Sequence
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import grpc

from neuron_device_plugin.api import deviceplugin_pb2 as pb
from neuron_device_plugin.api.services import (
    API_VERSION,
    DevicePluginStub,
    add_registration_servicer,
)
from neuron_device_plugin.ids import HEALTHY, KUBELET_SOCKET_NAME

log = logging.getLogger(__name__)

# The kubelet's dial of a registering plugin gives up after 10 s.
DIAL_TIMEOUT_S = 10.0
_DIAL_POLL_S = 0.05


class DialError(RuntimeError):
    """The plugin's socket did not accept a connection, or its options call failed."""


class RegistrationError(RuntimeError):
    """Why the emulated kubelet answers Register with an error (UNKNOWN, as the kubelet does)."""


@dataclass(frozen=True)
class DeviceInfo:
    """One device as the kubelet sees it in a ListAndWatch response."""

    id: str
    health: str
    numa_nodes: tuple[int, ...] = ()

    @property
    def healthy(self) -> bool:
        return self.health == HEALTHY


@dataclass(frozen=True)
class RegistrationInfo:
    version: str
    endpoint: str
    resource_name: str
    pre_start_required: bool
    get_preferred_allocation_available: bool
    count: int = 1


@dataclass(frozen=True)
class AllocationResult:
    """One container's Allocate answer, as plain data."""

    envs: dict[str, str]
    devices: list[tuple[str, str, str]]
    mounts: list[tuple[str, str, bool]] = field(default_factory=list)
    annotations: dict[str, str] = field(default_factory=dict)


class PluginClient:
    """The kubelet's connection to one registered plugin."""

    def __init__(self, socket_path: Path, resource_name: str) -> None:
        self.socket_path = socket_path
        self.resource_name = resource_name
        # A channel of its own (no subchannel shared with an earlier, failed dial of the same
        # path), as each of the kubelet's dials is.
        self._channel = grpc.insecure_channel(
            f"unix://{socket_path.resolve()}", options=[("grpc.use_local_subchannel_pool", 1)]
        )
        self._stub = DevicePluginStub(self._channel)
        self._lock = threading.Condition()
        self._devices: list[DeviceInfo] = []
        self._updates = 0
        self._stream_error: grpc.RpcError | None = None
        self._reader: threading.Thread | None = None
        self._closed = False

    def connect(
        self, timeout: float, still_wanted: Callable[[], bool] = lambda: True
    ) -> pb.DevicePluginOptions:
        """Dial the plugin and ask its options, as the kubelet does inside Register.

        The call waits for the socket to accept a connection (the kubelet's blocking dial).
        DialError after ``timeout`` (``context deadline exceeded``, the kubelet's words), as soon
        as ``still_wanted`` turns false (the caller of Register went away), or with the status of
        a plugin that answered GetDevicePluginOptions with an error.
        """
        call: grpc.Future[pb.DevicePluginOptions] = self._stub.get_device_plugin_options.future(
            pb.Empty(), timeout=timeout, wait_for_ready=True
        )
        while True:
            try:
                return call.result(timeout=_DIAL_POLL_S)
            except grpc.FutureTimeoutError:
                if not still_wanted():
                    call.cancel()
                    raise DialError("failed to dial device plugin: context canceled") from None
            except grpc.RpcError as err:
                if isinstance(err, grpc.Call):
                    if err.code() is grpc.StatusCode.DEADLINE_EXCEEDED:
                        raise DialError(
                            "failed to dial device plugin: context deadline exceeded"
                        ) from None
                    raise DialError(
                        f"GetDevicePluginOptions failed: {err.code().name}: {err.details()}"
                    ) from None
                raise DialError(f"failed to dial device plugin: {err}") from None

    def start_watch(self) -> None:
        """Open the ListAndWatch stream and keep reading it in the background."""
        stream = self._stub.list_and_watch(pb.Empty(), wait_for_ready=True)
        self._reader = threading.Thread(
            target=self._read, args=(stream,), name=f"lw-{self.resource_name}", daemon=True
        )
        self._reader.start()

    def _read(self, stream: grpc.CallIterator[pb.ListAndWatchResponse]) -> None:
        try:
            for response in stream:
                devices = [
                    DeviceInfo(
                        id=d.ID,
                        health=d.health,
                        numa_nodes=tuple(n.ID for n in d.topology.nodes),
                    )
                    for d in response.devices
                ]
                with self._lock:
                    self._devices = devices
                    self._updates += 1
                    self._lock.notify_all()
        except grpc.RpcError as err:
            with self._lock:
                if not self._closed:
                    self._stream_error = err
                    log.info("ListAndWatch stream of %s ended: %s", self.resource_name, err)
                self._lock.notify_all()

    @property
    def updates(self) -> int:
        """How many ListAndWatch responses have arrived."""
        with self._lock:
            return self._updates

    @property
    def stream_ended(self) -> bool:
        with self._lock:
            return self._stream_error is not None

    def options(self, timeout: float = 5.0) -> pb.DevicePluginOptions:
        return self._stub.get_device_plugin_options(pb.Empty(), timeout=timeout)

    def devices(self) -> list[DeviceInfo]:
        with self._lock:
            return list(self._devices)

    def wait_for_devices(
        self, predicate: Callable[[list[DeviceInfo]], bool], timeout: float = 5.0
    ) -> list[DeviceInfo]:
        """Wait until the latest device list satisfies ``predicate``; TimeoutError otherwise."""
        with self._lock:
            if not self._lock.wait_for(lambda: predicate(list(self._devices)), timeout):
                raise TimeoutError(
                    f"{self.resource_name}: device list did not reach the expected state in "
                    f"{timeout}s; latest: {[(d.id, d.health) for d in self._devices]}"
                )
            return list(self._devices)

    def preferred_allocation(
        self,
        available: Sequence[str],
        must_include: Sequence[str] = (),
        size: int = 1,
        timeout: float = 5.0,
    ) -> list[str]:
        request = pb.PreferredAllocationRequest(
            container_requests=[
                pb.ContainerPreferredAllocationRequest(
                    available_deviceIDs=list(available),
                    must_include_deviceIDs=list(must_include),
                    allocation_size=size,
                )
            ]
        )
        response = self._stub.get_preferred_allocation(request, timeout=timeout)
        return list(response.container_responses[0].deviceIDs)

    def allocate(self, ids: Sequence[str], timeout: float = 5.0) -> AllocationResult:
        request = pb.AllocateRequest(
            container_requests=[pb.ContainerAllocateRequest(devices_ids=list(ids))]
        )
        container = self._stub.allocate(request, timeout=timeout).container_responses[0]
        return AllocationResult(
            envs=dict(container.envs),
            devices=[(d.container_path, d.host_path, d.permissions) for d in container.devices],
            mounts=[(m.container_path, m.host_path, m.read_only) for m in container.mounts],
            annotations=dict(container.annotations),
        )

    def close(self) -> None:
        with self._lock:
            self._closed = True
        self._channel.close()  # cancels the ListAndWatch stream too
        if self._reader is not None:
            self._reader.join(timeout=5)


class _RegistrationService:
    def __init__(self, emulator: KubeletEmulator) -> None:
        self.emulator = emulator

    def register(self, request: pb.RegisterRequest, context: grpc.ServicerContext) -> pb.Empty:
        try:
            self.emulator.register(request, context.is_active)
        except RegistrationError as err:
            log.warning("Register of %r failed: %s", request.resource_name, err)
            # The kubelet returns a plain Go error, which gRPC sends as UNKNOWN.
            context.abort(grpc.StatusCode.UNKNOWN, str(err))
        return pb.Empty()


class KubeletEmulator:
    """Registration server on ``kubelet.sock`` plus a :class:`PluginClient` per resource.

    ``refuse`` makes every Register fail with that message; ``dial_timeout_s`` bounds the dial
    of a registering plugin's socket (the kubelet's 10 s by default); ``on_register`` is called
    with each Register request as it arrives, before the dial (tests use it to act at that moment).
    """

    def __init__(
        self,
        plugin_dir: Path,
        *,
        refuse: str | None = None,
        dial_timeout_s: float = DIAL_TIMEOUT_S,
        on_register: Callable[[pb.RegisterRequest], None] | None = None,
    ) -> None:
        self.plugin_dir = Path(plugin_dir)
        self.socket_path = self.plugin_dir / KUBELET_SOCKET_NAME
        self.refuse = refuse
        self.dial_timeout_s = dial_timeout_s
        self.on_register = on_register
        self.registrations: dict[str, RegistrationInfo] = {}
        self._clients: dict[str, PluginClient] = {}
        self._lock = threading.Condition()
        self._server: grpc.Server | None = None
        self._serving = False

    # --- lifecycle ------------------------------------------------------------------------------

    def start(self) -> KubeletEmulator:
        """Clean the directory of sockets, as a starting kubelet does, then serve Registration."""
        self.plugin_dir.mkdir(parents=True, exist_ok=True)
        removed = self.remove_sockets()
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
        add_registration_servicer(server, _RegistrationService(self))
        server.add_insecure_port(f"unix://{self.socket_path.resolve()}")
        server.start()
        with self._lock:
            self._server = server
            self._serving = True
        log.info(
            "kubelet emulator serving Registration on %s (removed %d stale sockets)",
            self.socket_path,
            removed,
        )
        return self

    def remove_sockets(self) -> int:
        """Remove every socket in the directory; how many there were."""
        removed = 0
        for path in self.plugin_dir.iterdir():
            if path.is_socket():
                path.unlink(missing_ok=True)
                removed += 1
        return removed

    def _shutdown(self, *, wait_for_clients: bool = True) -> None:
        with self._lock:
            self._serving = False
            server, self._server = self._server, None
            clients = list(self._clients.values())
            self._clients.clear()
        if server is not None:
            server.stop(None).wait()
        if wait_for_clients:
            for client in clients:
                client.close()
        else:
            # Closing a channel with an open stream can take a fifth of a second; a dying kubelet
            # does not wait for it, so it happens behind the caller's back.
            for client in clients:
                threading.Thread(target=client.close, name="kubelet-crash", daemon=True).start()

    def stop(self, *, delete_sockets: bool = False) -> None:
        """Stop serving and close every plugin connection, removing ``kubelet.sock``.

        ``delete_sockets`` also removes every other socket in the directory.
        """
        self._shutdown()
        self.socket_path.unlink(missing_ok=True)
        if delete_sockets:
            self.remove_sockets()

    def crash(self) -> None:
        """Die as ``kill -9`` would: streams end and a stale ``kubelet.sock`` stays behind.

        The stale file is a socket nobody listens on (connecting to it is refused), until the
        next :meth:`start` removes it.
        """
        self._shutdown(wait_for_clients=False)
        if not self.socket_path.exists():
            stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                stale.bind(str(self.socket_path))
            finally:
                stale.close()

    def __enter__(self) -> KubeletEmulator:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # --- registration ---------------------------------------------------------------------------

    def check_registration(self, request: pb.RegisterRequest) -> str | None:
        """Why the kubelet would refuse this request, or None if it accepts it."""
        if self.refuse is not None:
            return self.refuse
        if request.version != API_VERSION:
            return f"version {request.version!r} is not supported; the kubelet speaks {API_VERSION}"
        if not request.endpoint or "/" in request.endpoint:
            return f"endpoint {request.endpoint!r} must be a socket file name in {self.plugin_dir}"
        if "/" not in request.resource_name:
            return f"resource name {request.resource_name!r} is not an extended resource name"
        return None

    def register(
        self, request: pb.RegisterRequest, still_wanted: Callable[[], bool] = lambda: True
    ) -> None:
        """The kubelet's Register: check, dial the plugin, ask its options, then start watching.

        RegistrationError says why not; the caller's answer is then an error (UNKNOWN).
        """
        if self.on_register is not None:
            self.on_register(request)
        problem = self.check_registration(request)
        if problem:
            raise RegistrationError(problem)
        client = PluginClient(self.plugin_dir / request.endpoint, request.resource_name)
        try:
            client.connect(self.dial_timeout_s, still_wanted)
        except DialError as err:
            client.close()
            raise RegistrationError(str(err)) from None
        with self._lock:
            if not self._serving:
                client.close()
                raise RegistrationError("the kubelet is shutting down")
            previous = self.registrations.get(request.resource_name)
            self.registrations[request.resource_name] = RegistrationInfo(
                version=request.version,
                endpoint=request.endpoint,
                resource_name=request.resource_name,
                pre_start_required=request.options.pre_start_required,
                get_preferred_allocation_available=(
                    request.options.get_preferred_allocation_available
                ),
                count=previous.count + 1 if previous else 1,
            )
            old = self._clients.pop(request.resource_name, None)
            self._clients[request.resource_name] = client
            client.start_watch()
            self._lock.notify_all()
        if old is not None:
            old.close()

    def wait_for_registration(self, resource_name: str, timeout: float = 5.0) -> PluginClient:
        """The client for ``resource_name`` once it registered and sent its first device list."""
        deadline = time.monotonic() + timeout
        with self._lock:
            if not self._lock.wait_for(lambda: resource_name in self._clients, timeout):
                raise TimeoutError(
                    f"{resource_name} did not register with the kubelet emulator at "
                    f"{self.socket_path} within {timeout}s; "
                    f"registered: {sorted(self.registrations)}"
                )
            client = self._clients[resource_name]
        client.wait_for_devices(bool, max(0.0, deadline - time.monotonic()))
        return client

    def client(self, resource_name: str) -> PluginClient | None:
        with self._lock:
            return self._clients.get(resource_name)
