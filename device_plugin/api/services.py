"""Typed gRPC glue for the two v1beta1 services: method paths, server registration, client stubs.

grpcio-tools would generate the same glue as ``deviceplugin_pb2_grpc``, but untyped; writing the
few lines here keeps every caller checked by ``mypy --strict`` and lets the servicer methods use
Python names.  The method paths are fixed by the API: ``/v1beta1.<Service>/<Method>``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

import grpc

from neuron_device_plugin.api import deviceplugin_pb2 as pb

API_VERSION = "v1beta1"
REGISTRATION_SERVICE = f"{API_VERSION}.Registration"
DEVICE_PLUGIN_SERVICE = f"{API_VERSION}.DevicePlugin"


def method_path(service: str, method: str) -> str:
    return f"/{service}/{method}"


class RegistrationServicer(Protocol):
    """What the kubelet (or our emulator of it) serves on ``kubelet.sock``."""

    def register(self, request: pb.RegisterRequest, context: grpc.ServicerContext) -> pb.Empty: ...


class DevicePluginServicer(Protocol):
    """What a device plugin serves on its own socket."""

    def get_device_plugin_options(
        self, request: pb.Empty, context: grpc.ServicerContext
    ) -> pb.DevicePluginOptions: ...

    def list_and_watch(
        self, request: pb.Empty, context: grpc.ServicerContext
    ) -> Iterator[pb.ListAndWatchResponse]: ...

    def get_preferred_allocation(
        self, request: pb.PreferredAllocationRequest, context: grpc.ServicerContext
    ) -> pb.PreferredAllocationResponse: ...

    def allocate(
        self, request: pb.AllocateRequest, context: grpc.ServicerContext
    ) -> pb.AllocateResponse: ...

    def pre_start_container(
        self, request: pb.PreStartContainerRequest, context: grpc.ServicerContext
    ) -> pb.PreStartContainerResponse: ...


def add_registration_servicer(server: grpc.Server, servicer: RegistrationServicer) -> None:
    handlers = {
        "Register": grpc.unary_unary_rpc_method_handler(
            servicer.register,
            request_deserializer=pb.RegisterRequest.FromString,
            response_serializer=pb.Empty.SerializeToString,
        ),
    }
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(REGISTRATION_SERVICE, handlers),)
    )


def add_device_plugin_servicer(server: grpc.Server, servicer: DevicePluginServicer) -> None:
    handlers = {
        "GetDevicePluginOptions": grpc.unary_unary_rpc_method_handler(
            servicer.get_device_plugin_options,
            request_deserializer=pb.Empty.FromString,
            response_serializer=pb.DevicePluginOptions.SerializeToString,
        ),
        "ListAndWatch": grpc.unary_stream_rpc_method_handler(
            servicer.list_and_watch,
            request_deserializer=pb.Empty.FromString,
            response_serializer=pb.ListAndWatchResponse.SerializeToString,
        ),
        "GetPreferredAllocation": grpc.unary_unary_rpc_method_handler(
            servicer.get_preferred_allocation,
            request_deserializer=pb.PreferredAllocationRequest.FromString,
            response_serializer=pb.PreferredAllocationResponse.SerializeToString,
        ),
        "Allocate": grpc.unary_unary_rpc_method_handler(
            servicer.allocate,
            request_deserializer=pb.AllocateRequest.FromString,
            response_serializer=pb.AllocateResponse.SerializeToString,
        ),
        "PreStartContainer": grpc.unary_unary_rpc_method_handler(
            servicer.pre_start_container,
            request_deserializer=pb.PreStartContainerRequest.FromString,
            response_serializer=pb.PreStartContainerResponse.SerializeToString,
        ),
    }
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(DEVICE_PLUGIN_SERVICE, handlers),)
    )


class RegistrationStub:
    """Client of the kubelet's Registration service."""

    def __init__(self, channel: grpc.Channel) -> None:
        self.register: grpc.UnaryUnaryMultiCallable[pb.RegisterRequest, pb.Empty] = (
            channel.unary_unary(
                method_path(REGISTRATION_SERVICE, "Register"),
                request_serializer=pb.RegisterRequest.SerializeToString,
                response_deserializer=pb.Empty.FromString,
            )
        )


class DevicePluginStub:
    """Client of a device plugin, as the kubelet uses it."""

    def __init__(self, channel: grpc.Channel) -> None:
        path = DEVICE_PLUGIN_SERVICE
        self.get_device_plugin_options: grpc.UnaryUnaryMultiCallable[
            pb.Empty, pb.DevicePluginOptions
        ] = channel.unary_unary(
            method_path(path, "GetDevicePluginOptions"),
            request_serializer=pb.Empty.SerializeToString,
            response_deserializer=pb.DevicePluginOptions.FromString,
        )
        self.list_and_watch: grpc.UnaryStreamMultiCallable[pb.Empty, pb.ListAndWatchResponse] = (
            channel.unary_stream(
                method_path(path, "ListAndWatch"),
                request_serializer=pb.Empty.SerializeToString,
                response_deserializer=pb.ListAndWatchResponse.FromString,
            )
        )
        self.get_preferred_allocation: grpc.UnaryUnaryMultiCallable[
            pb.PreferredAllocationRequest, pb.PreferredAllocationResponse
        ] = channel.unary_unary(
            method_path(path, "GetPreferredAllocation"),
            request_serializer=pb.PreferredAllocationRequest.SerializeToString,
            response_deserializer=pb.PreferredAllocationResponse.FromString,
        )
        self.allocate: grpc.UnaryUnaryMultiCallable[pb.AllocateRequest, pb.AllocateResponse] = (
            channel.unary_unary(
                method_path(path, "Allocate"),
                request_serializer=pb.AllocateRequest.SerializeToString,
                response_deserializer=pb.AllocateResponse.FromString,
            )
        )
        self.pre_start_container: grpc.UnaryUnaryMultiCallable[
            pb.PreStartContainerRequest, pb.PreStartContainerResponse
        ] = channel.unary_unary(
            method_path(path, "PreStartContainer"),
            request_serializer=pb.PreStartContainerRequest.SerializeToString,
            response_deserializer=pb.PreStartContainerResponse.FromString,
        )
