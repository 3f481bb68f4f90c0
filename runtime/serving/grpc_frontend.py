"""gRPC front end: ``inference.GRPCInferenceService`` on grpc.aio, sharing the REST server's loop.

The handlers are registered by hand with ``method_handlers_generic_handler`` (method paths
``/inference.GRPCInferenceService/<Method>``, exactly as generated stubs would register them), using
the generated message classes for (de)serialisation.  Errors abort with a precise status:
INVALID_ARGUMENT for a malformed request, NOT_FOUND for an unknown model or version, UNAVAILABLE
while loading or when the runtime is out of cores, RESOURCE_EXHAUSTED for an oversized message
(enforced by grpc itself through ``max_receive_message_length``).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc
from google.protobuf import json_format
from google.protobuf.message import Message

from neuron_runtime.serving import grpc_codec
from neuron_runtime.serving import inference_pb2 as pb
from neuron_runtime.serving.errors import ErrorKind, InferenceError
from neuron_runtime.serving.service import (
    EXTENSIONS,
    MODEL_VERSION,
    PLATFORM,
    SERVER_NAME,
    InferenceService,
)
from neuron_runtime.serving.statistics import RequestTiming

log = logging.getLogger(__name__)

SERVICE_NAME = "inference.GRPCInferenceService"

GRPC_STATUS: dict[ErrorKind, grpc.StatusCode] = {
    ErrorKind.BAD_REQUEST: grpc.StatusCode.INVALID_ARGUMENT,
    ErrorKind.NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    ErrorKind.TOO_LARGE: grpc.StatusCode.RESOURCE_EXHAUSTED,
    ErrorKind.UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
    ErrorKind.EXHAUSTED: grpc.StatusCode.UNAVAILABLE,
    ErrorKind.TIMEOUT: grpc.StatusCode.DEADLINE_EXCEEDED,
}

Req = TypeVar("Req", bound=Message)
Resp = TypeVar("Resp", bound=Message)
Context = grpc.aio.ServicerContext[Any, Any]


class GrpcFrontend:
    def __init__(self, service: InferenceService, *, version: str) -> None:
        self.service = service
        self.version = version

    async def server_live(self, _: pb.ServerLiveRequest, __: Context) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=self.service.live)

    async def server_ready(self, _: pb.ServerReadyRequest, __: Context) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.service.ready)

    async def model_ready(
        self, request: pb.ModelReadyRequest, context: Context
    ) -> pb.ModelReadyResponse:
        if not self.service.is_model_ready(request.name, request.version):
            await self._abort_if_not_found(request.name, request.version, context)
            return pb.ModelReadyResponse(ready=False)
        return pb.ModelReadyResponse(ready=True)

    async def server_metadata(
        self, _: pb.ServerMetadataRequest, __: Context
    ) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(
            name=SERVER_NAME, version=self.version, extensions=list(EXTENSIONS)
        )

    async def model_metadata(
        self, request: pb.ModelMetadataRequest, context: Context
    ) -> pb.ModelMetadataResponse:
        try:
            served = self.service.model(request.name, request.version)
        except InferenceError as exc:
            await context.abort(GRPC_STATUS[exc.kind], exc.message)
            raise  # unreachable: abort raises
        tensor = pb.ModelMetadataResponse.TensorMetadata
        return pb.ModelMetadataResponse(
            name=served.name,
            versions=[MODEL_VERSION],
            platform=PLATFORM,
            inputs=[
                tensor(name=m.name, datatype=m.datatype, shape=m.shape)
                for m in served.signature.inputs
            ],
            outputs=[
                tensor(name=m.name, datatype=m.datatype, shape=m.shape)
                for m in served.signature.outputs
            ],
        )

    async def model_infer(
        self, request: pb.ModelInferRequest, context: Context
    ) -> pb.ModelInferResponse:
        timing = RequestTiming()
        name = request.model_name
        self.service.count_request(name, "grpc")
        served = None
        try:
            served = self.service.model(name, request.model_version)
            inputs, wanted = grpc_codec.decode_infer_request(request, served.signature)
            timing.mark_decoded()
            outputs = await self.service.infer(served, inputs, timing)
            response = grpc_codec.encode_infer_response(
                model_name=served.name,
                model_version=request.model_version,
                request_id=request.id,
                outputs=outputs,
                names=wanted or served.output_names,
            )
            served.statistics.record_success(timing, served.rows(inputs))
            return response
        except InferenceError as exc:
            self.service.count_failure(name, "grpc", exc.kind.value)
            if served is not None:
                served.statistics.record_failure(timing)
            await context.abort(GRPC_STATUS[exc.kind], exc.message)
            raise
        except Exception:
            self.service.count_failure(name, "grpc", "internal")
            if served is not None:
                served.statistics.record_failure(timing)
            log.exception("inference on model %s failed", name)
            await context.abort(
                grpc.StatusCode.INTERNAL, f"internal error while running model '{name}'"
            )
            raise

    async def model_config(
        self, request: pb.ModelConfigRequest, context: Context
    ) -> pb.ModelConfigResponse:
        try:
            served = self.service.model(request.name, request.version)
        except InferenceError as exc:
            await context.abort(GRPC_STATUS[exc.kind], exc.message)
            raise  # unreachable: abort raises
        return pb.ModelConfigResponse(config=json_format.ParseDict(served.config, pb.ModelConfig()))

    async def model_statistics(
        self, request: pb.ModelStatisticsRequest, context: Context
    ) -> pb.ModelStatisticsResponse:
        try:
            entries = self.service.statistics(request.name, request.version)
        except InferenceError as exc:
            await context.abort(GRPC_STATUS[exc.kind], exc.message)
            raise  # unreachable: abort raises
        return json_format.ParseDict({"model_stats": entries}, pb.ModelStatisticsResponse())

    async def _abort_if_not_found(self, name: str, version: str, context: Context) -> None:
        try:
            self.service.model(name, version)
        except InferenceError as exc:
            if exc.kind is ErrorKind.NOT_FOUND:
                await context.abort(grpc.StatusCode.NOT_FOUND, exc.message)

    def handler(self) -> grpc.GenericRpcHandler[Any, Any]:
        def unary(
            method: Callable[[Req, Context], Awaitable[Resp]], request_type: type[Req]
        ) -> grpc.RpcMethodHandler[Any, Any]:
            return grpc.unary_unary_rpc_method_handler(
                method,
                request_deserializer=request_type.FromString,
                response_serializer=lambda message: message.SerializeToString(),
            )

        return grpc.method_handlers_generic_handler(
            SERVICE_NAME,
            {
                "ServerLive": unary(self.server_live, pb.ServerLiveRequest),
                "ServerReady": unary(self.server_ready, pb.ServerReadyRequest),
                "ModelReady": unary(self.model_ready, pb.ModelReadyRequest),
                "ServerMetadata": unary(self.server_metadata, pb.ServerMetadataRequest),
                "ModelMetadata": unary(self.model_metadata, pb.ModelMetadataRequest),
                "ModelInfer": unary(self.model_infer, pb.ModelInferRequest),
                "ModelConfig": unary(self.model_config, pb.ModelConfigRequest),
                "ModelStatistics": unary(self.model_statistics, pb.ModelStatisticsRequest),
            },
        )


def build_grpc_server(frontend: GrpcFrontend, *, max_message_bytes: int) -> grpc.aio.Server:
    options = [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.so_reuseport", 0),
    ]
    server = grpc.aio.server(options=options)
    server.add_generic_rpc_handlers((frontend.handler(),))
    return server
