"""Typed gRPC glue for the kubelet's DRA v1 and plugin registration v1 services.

The method paths are fixed by the kubelet: ``/<proto package>.<Service>/<Method>``.  As in the
device plugin, the glue is written here instead of generated, so that ``mypy --strict`` checks
every caller.
"""

from __future__ import annotations

from typing import Protocol

import grpc

from neuron_dra_driver.api import dra_pb2 as dra
from neuron_dra_driver.api import pluginregistration_pb2 as reg

DRA_SERVICE = "k8s.io.kubelet.pkg.apis.dra.v1.DRAPlugin"
REGISTRATION_SERVICE = "pluginregistration.Registration"
# What a DRA plugin lists in PluginInfo.supported_versions: the services it serves.
DRA_SERVICE_VERSION = "v1.DRAPlugin"
DRA_PLUGIN_TYPE = "DRAPlugin"


def method_path(service: str, method: str) -> str:
    return f"/{service}/{method}"


class DRAPluginServicer(Protocol):
    def node_prepare_resources(
        self, request: dra.NodePrepareResourcesRequest, context: grpc.ServicerContext
    ) -> dra.NodePrepareResourcesResponse: ...

    def node_unprepare_resources(
        self, request: dra.NodeUnprepareResourcesRequest, context: grpc.ServicerContext
    ) -> dra.NodeUnprepareResourcesResponse: ...


class RegistrationServicer(Protocol):
    def get_info(
        self, request: reg.InfoRequest, context: grpc.ServicerContext
    ) -> reg.PluginInfo: ...

    def notify_registration_status(
        self, request: reg.RegistrationStatus, context: grpc.ServicerContext
    ) -> reg.RegistrationStatusResponse: ...


def add_dra_servicer(server: grpc.Server, servicer: DRAPluginServicer) -> None:
    handlers = {
        "NodePrepareResources": grpc.unary_unary_rpc_method_handler(
            servicer.node_prepare_resources,
            request_deserializer=dra.NodePrepareResourcesRequest.FromString,
            response_serializer=dra.NodePrepareResourcesResponse.SerializeToString,
        ),
        "NodeUnprepareResources": grpc.unary_unary_rpc_method_handler(
            servicer.node_unprepare_resources,
            request_deserializer=dra.NodeUnprepareResourcesRequest.FromString,
            response_serializer=dra.NodeUnprepareResourcesResponse.SerializeToString,
        ),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(DRA_SERVICE, handlers),))


def add_registration_servicer(server: grpc.Server, servicer: RegistrationServicer) -> None:
    handlers = {
        "GetInfo": grpc.unary_unary_rpc_method_handler(
            servicer.get_info,
            request_deserializer=reg.InfoRequest.FromString,
            response_serializer=reg.PluginInfo.SerializeToString,
        ),
        "NotifyRegistrationStatus": grpc.unary_unary_rpc_method_handler(
            servicer.notify_registration_status,
            request_deserializer=reg.RegistrationStatus.FromString,
            response_serializer=reg.RegistrationStatusResponse.SerializeToString,
        ),
    }
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(REGISTRATION_SERVICE, handlers),)
    )


class DRAPluginStub:
    """A client of the DRA service (what the kubelet is); used by tests and the emulation."""

    def __init__(self, channel: grpc.Channel) -> None:
        self.node_prepare_resources: grpc.UnaryUnaryMultiCallable[
            dra.NodePrepareResourcesRequest, dra.NodePrepareResourcesResponse
        ] = channel.unary_unary(
            method_path(DRA_SERVICE, "NodePrepareResources"),
            request_serializer=dra.NodePrepareResourcesRequest.SerializeToString,
            response_deserializer=dra.NodePrepareResourcesResponse.FromString,
        )
        self.node_unprepare_resources: grpc.UnaryUnaryMultiCallable[
            dra.NodeUnprepareResourcesRequest, dra.NodeUnprepareResourcesResponse
        ] = channel.unary_unary(
            method_path(DRA_SERVICE, "NodeUnprepareResources"),
            request_serializer=dra.NodeUnprepareResourcesRequest.SerializeToString,
            response_deserializer=dra.NodeUnprepareResourcesResponse.FromString,
        )


class RegistrationStub:
    """A client of the registration service (the kubelet's plugin watcher)."""

    def __init__(self, channel: grpc.Channel) -> None:
        self.get_info: grpc.UnaryUnaryMultiCallable[reg.InfoRequest, reg.PluginInfo] = (
            channel.unary_unary(
                method_path(REGISTRATION_SERVICE, "GetInfo"),
                request_serializer=reg.InfoRequest.SerializeToString,
                response_deserializer=reg.PluginInfo.FromString,
            )
        )
        self.notify_registration_status: grpc.UnaryUnaryMultiCallable[
            reg.RegistrationStatus, reg.RegistrationStatusResponse
        ] = channel.unary_unary(
            method_path(REGISTRATION_SERVICE, "NotifyRegistrationStatus"),
            request_serializer=reg.RegistrationStatus.SerializeToString,
            response_deserializer=reg.RegistrationStatusResponse.FromString,
        )
