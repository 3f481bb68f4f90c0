"""The kubelet's PodResources API (``List``), served by the emulated node for its device plugin.

The Device Plugin API never tells a plugin when devices come back; a plugin that offers both Neuron
resources lists the kubelet's PodResources socket to learn it (docs/device-plugin.md).  On the
emulated node the agent plays that part: :class:`PodResourcesServer` answers ``List`` with the
devices each running container holds, on a socket in a folder of its own (a kubelet restart does
not clean it, unlike the device-plugin folder).  Test machinery and local cluster only: an
installed device plugin is the client of this API, never its server.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import grpc

from neuron_device_plugin.api import podresources_pb2 as pr
from neuron_device_plugin.podresources import POD_RESOURCES_SERVICE

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ContainerHolding:
    """The device IDs of one resource that one running container holds."""

    namespace: str
    pod: str
    container: str
    resource_name: str
    device_ids: tuple[str, ...]


def listing_response(holdings: Sequence[ContainerHolding]) -> pr.ListPodResourcesResponse:
    """A PodResources ``List`` answer: pods in first-seen order, each with its containers."""
    pods: dict[tuple[str, str], dict[str, list[ContainerHolding]]] = {}
    for held in holdings:
        pods.setdefault((held.namespace, held.pod), {}).setdefault(held.container, []).append(held)
    return pr.ListPodResourcesResponse(
        pod_resources=[
            pr.PodResources(
                name=pod,
                namespace=namespace,
                containers=[
                    pr.ContainerResources(
                        name=container,
                        devices=[
                            pr.ContainerDevices(
                                resource_name=h.resource_name, device_ids=list(h.device_ids)
                            )
                            for h in held
                        ],
                    )
                    for container, held in containers.items()
                ],
            )
            for (namespace, pod), containers in pods.items()
        ]
    )


class PodResourcesServer:
    """The kubelet's PodResources ``List`` on ``socket_path``, answering the last :meth:`set`.

    Like the kubelet's checkpoint, the holdings outlive :meth:`stop`; a stopped server refuses
    connections, so a plugin listing then keeps every hold.
    """

    def __init__(self, socket_path: Path) -> None:
        self.socket_path = Path(socket_path)
        self.calls = 0
        self._holdings: tuple[ContainerHolding, ...] = ()
        self._lock = threading.Lock()
        self._server: grpc.Server | None = None

    def set(self, holdings: Sequence[ContainerHolding]) -> int:
        """Replace what running containers hold; return how many Lists were answered before."""
        with self._lock:
            self._holdings = tuple(holdings)
            return self.calls

    def start(self) -> PodResourcesServer:
        self.socket_path.parent.mkdir(parents=True, exist_ok=True)
        self.socket_path.unlink(missing_ok=True)
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        handler = grpc.unary_unary_rpc_method_handler(
            self._list,
            request_deserializer=pr.ListPodResourcesRequest.FromString,
            response_serializer=pr.ListPodResourcesResponse.SerializeToString,
        )
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(POD_RESOURCES_SERVICE, {"List": handler}),)
        )
        server.add_insecure_port(f"unix://{self.socket_path.resolve()}")
        server.start()
        self._server = server
        log.info("kubelet emulator serving PodResources on %s", self.socket_path)
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.stop(None).wait()
        self.socket_path.unlink(missing_ok=True)

    def __enter__(self) -> PodResourcesServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _list(
        self, request: pr.ListPodResourcesRequest, context: grpc.ServicerContext
    ) -> pr.ListPodResourcesResponse:
        with self._lock:
            self.calls += 1
            holdings = self._holdings
        return listing_response(holdings)
