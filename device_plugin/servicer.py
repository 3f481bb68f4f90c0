"""The DevicePlugin gRPC servicer: translation between protobuf and the resource manager.

It holds no device state of its own.  Bad requests (unknown, repeated or unhealthy IDs, impossible
sizes) abort with INVALID_ARGUMENT; IDs whose silicon the node's other resource holds abort with
FAILED_PRECONDITION.  The message names the first offending IDs and counts the rest, so the
kubelet's event on the pod says what went wrong, and is bounded so it always fits the status
trailer (a long one would reach the client as RESOURCE_EXHAUSTED, the reason lost).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from typing import NoReturn

import grpc

from neuron_device_plugin.api import deviceplugin_pb2 as pb
from neuron_device_plugin.ids import DeviceIDError, DeviceInUseError, bounded_message
from neuron_device_plugin.metrics import PluginMetrics
from neuron_device_plugin.policy import AllocationRequestError
from neuron_device_plugin.resources import AdvertisedDevice, ContainerAllocation, ResourceManager

log = logging.getLogger(__name__)

# How often an idle ListAndWatch stream checks that its client and the server are still there.
STREAM_POLL_S = 0.5


def device_message(device: AdvertisedDevice) -> pb.Device:
    message = pb.Device(ID=device.id, health=device.health)
    if device.numa_node is not None:
        message.topology.nodes.append(pb.NUMANode(ID=device.numa_node))
    return message


def allocation_message(allocation: ContainerAllocation) -> pb.ContainerAllocateResponse:
    return pb.ContainerAllocateResponse(
        envs=allocation.envs,
        devices=[
            pb.DeviceSpec(
                container_path=d.container_path, host_path=d.host_path, permissions=d.permissions
            )
            for d in allocation.devices
        ],
        mounts=[
            pb.Mount(container_path=c, host_path=h, read_only=ro) for c, h, ro in allocation.mounts
        ],
        annotations=allocation.annotations,
    )


class DevicePluginService:
    def __init__(
        self, manager: ResourceManager, metrics: PluginMetrics, stopping: threading.Event
    ) -> None:
        self.manager = manager
        self.metrics = metrics
        self.stopping = stopping

    @property
    def _resource(self) -> str:
        return self.manager.resource_name

    def get_device_plugin_options(
        self, request: pb.Empty, context: grpc.ServicerContext
    ) -> pb.DevicePluginOptions:
        return pb.DevicePluginOptions(
            pre_start_required=False, get_preferred_allocation_available=True
        )

    def list_and_watch(
        self, request: pb.Empty, context: grpc.ServicerContext
    ) -> Iterator[pb.ListAndWatchResponse]:
        generation = self.manager.generation
        log.info("ListAndWatch stream opened for %s", self._resource)
        yield self._device_list()
        while context.is_active() and not self.stopping.is_set():
            current = self.manager.wait_for_change(generation, STREAM_POLL_S)
            if current != generation and not self.stopping.is_set():
                generation = current
                log.info("sending %s device list after a health change", self._resource)
                yield self._device_list()
        log.info("ListAndWatch stream closed for %s", self._resource)

    def _device_list(self) -> pb.ListAndWatchResponse:
        return pb.ListAndWatchResponse(devices=[device_message(d) for d in self.manager.devices()])

    def get_preferred_allocation(
        self, request: pb.PreferredAllocationRequest, context: grpc.ServicerContext
    ) -> pb.PreferredAllocationResponse:
        response = pb.PreferredAllocationResponse()
        for container in request.container_requests:
            try:
                chosen = self.manager.preferred(
                    list(container.available_deviceIDs),
                    list(container.must_include_deviceIDs),
                    container.allocation_size,
                )
            except (DeviceIDError, AllocationRequestError) as err:
                self._refuse("GetPreferredAllocation", err, context)
            contiguous = self.manager.is_contiguous(chosen)
            self.metrics.preferred.labels(
                resource=self._resource, contiguous=str(contiguous).lower()
            ).inc()
            response.container_responses.append(
                pb.ContainerPreferredAllocationResponse(deviceIDs=chosen)
            )
        return response

    def allocate(
        self, request: pb.AllocateRequest, context: grpc.ServicerContext
    ) -> pb.AllocateResponse:
        try:
            allocations = self.manager.allocate_containers(
                [list(container.devices_ids) for container in request.container_requests]
            )
        except DeviceIDError as err:
            self._refuse("Allocate", err, context)
        for allocation in allocations:
            self.metrics.allocations.labels(resource=self._resource).inc()
            log.info("allocated %s: %s", self._resource, allocation.envs)
        return pb.AllocateResponse(container_responses=[allocation_message(a) for a in allocations])

    def pre_start_container(
        self, request: pb.PreStartContainerRequest, context: grpc.ServicerContext
    ) -> pb.PreStartContainerResponse:
        return pb.PreStartContainerResponse()

    def _refuse(self, call: str, err: Exception, context: grpc.ServicerContext) -> NoReturn:
        self.metrics.allocation_errors.labels(resource=self._resource, call=call).inc()
        message = bounded_message(str(err))
        code = (
            grpc.StatusCode.FAILED_PRECONDITION
            if isinstance(err, DeviceInUseError)
            else grpc.StatusCode.INVALID_ARGUMENT
        )
        log.warning("%s refused for %s: %s", call, self._resource, message)
        context.abort(code, message)
