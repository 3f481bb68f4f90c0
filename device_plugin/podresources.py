"""Learning from the kubelet which device IDs running containers still hold (PodResources API v1).

The Device Plugin API tells a plugin when devices are handed out (Allocate), never when they come
back.  The kubelet knows, and answers ``List`` on its PodResources socket with every running
container's device IDs per resource.  When a node offers both Neuron resources, the plugin lists
on every health poll and hands the result to the :class:`SiliconLedger`: holds that no container
has any more end, so the other resource offers that silicon again; after a plugin restart the
first listing (taken before the sockets are served) recovers every hold still in force.

A failed listing changes nothing (holds are kept; releasing on an error would share silicon).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc

from neuron_device_plugin.api import podresources_pb2 as pr
from neuron_device_plugin.resources import ResourceKind, SiliconLedger, held_by_kind
from neuron_device_plugin.topology import Topology

log = logging.getLogger(__name__)

DEFAULT_POD_RESOURCES_SOCKET = "/var/lib/kubelet/pod-resources/kubelet.sock"
POD_RESOURCES_SERVICE = "v1.PodResourcesLister"
LIST_METHOD = f"/{POD_RESOURCES_SERVICE}/List"
LIST_TIMEOUT_S = 2.0
# The kubelet's own limit on a PodResources answer; a node's listing is far smaller.
MAX_LISTING_BYTES = 16 * 1024 * 1024

Listing = list[tuple[str, list[str]]]


@dataclass(frozen=True)
class PodHolding:
    """Device IDs of one resource held by a container of a pod, as the kubelet lists them."""

    namespace: str
    pod: str
    resource: str
    device_ids: tuple[str, ...]


def holdings_in(response: pr.ListPodResourcesResponse) -> list[PodHolding]:
    """Every container device entry of a List answer, with its pod."""
    return [
        PodHolding(pod.namespace, pod.name, devices.resource_name, tuple(devices.device_ids))
        for pod in response.pod_resources
        for container in pod.containers
        for devices in container.devices
    ]


def devices_in(response: pr.ListPodResourcesResponse) -> Listing:
    """(resource name, device IDs) for every container device entry of a List answer."""
    return [(h.resource, list(h.device_ids)) for h in holdings_in(response)]


class PodResourcesClient:
    """Calls ``List`` on the kubelet's PodResources socket; a fresh channel each time."""

    def __init__(self, socket_path: Path, timeout: float = LIST_TIMEOUT_S) -> None:
        self.socket_path = socket_path
        self.timeout = timeout

    def list_devices(self) -> Listing:
        """Every running container's devices; grpc.RpcError when the kubelet does not answer."""
        return devices_in(self._list())

    def list_holdings(self) -> list[PodHolding]:
        """Every running container's devices with its pod; grpc.RpcError as ``list_devices``."""
        return holdings_in(self._list())

    def _list(self) -> pr.ListPodResourcesResponse:
        options = [("grpc.max_receive_message_length", MAX_LISTING_BYTES)]
        target = f"unix://{self.socket_path.resolve()}"
        with grpc.insecure_channel(target, options=options) as channel:
            call: grpc.UnaryUnaryMultiCallable[
                pr.ListPodResourcesRequest, pr.ListPodResourcesResponse
            ] = channel.unary_unary(
                LIST_METHOD,
                request_serializer=pr.ListPodResourcesRequest.SerializeToString,
                response_deserializer=pr.ListPodResourcesResponse.FromString,
            )
            return call(pr.ListPodResourcesRequest(), timeout=self.timeout)


class HoldRefresher:
    """One step per health poll: list, then let the ledger release what is no longer held."""

    def __init__(
        self,
        ledger: SiliconLedger,
        names: Mapping[ResourceKind, str],
        topology: Topology,
        lister: Callable[[], Sequence[tuple[str, Sequence[str]]]],
        *,
        source: str = "PodResources",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ledger = ledger
        self.names = dict(names)
        self.topology = topology
        self.lister = lister
        self.source = source
        self.clock = clock
        self.failing = False

    def refresh(self) -> bool:
        """List and apply; True when a listing was applied, False (holds kept) when it failed."""
        started = self.clock()
        try:
            listing = self.lister()
        except grpc.RpcError as err:
            code = err.code() if isinstance(err, grpc.Call) else None
            self._failed(f"{code}: {err.details() if isinstance(err, grpc.Call) else err}")
            return False
        except OSError as err:
            self._failed(str(err))
            return False
        if self.failing:
            log.info("%s answers again; releasing holds it no longer lists", self.source)
            self.failing = False
        if self.ledger.apply_listing(held_by_kind(listing, self.names, self.topology), started):
            log.info(
                "silicon in use after a %s listing: cores %s; devices' cores %s",
                self.source,
                sorted(self.ledger.held(ResourceKind.CORE)) or "none",
                sorted(self.ledger.held(ResourceKind.DEVICE)) or "none",
            )
        return True

    def _failed(self, reason: str) -> None:
        if not self.failing:
            log.warning(
                "cannot list pod resources from %s (%s); keeping every hold until it answers",
                self.source,
                reason,
            )
        self.failing = True
