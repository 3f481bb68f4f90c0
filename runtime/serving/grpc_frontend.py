"""gRPC front end: ``inference.GRPCInferenceService``'s methods, served by ``grpc_server``.

The methods are registered by their full paths (``/inference.GRPCInferenceService/<Method>``,
exactly as generated stubs call them), with the generated message classes for (de)serialisation,
on the REST server's event loop.  Errors end a call with a precise status: INVALID_ARGUMENT for a
malformed request, NOT_FOUND for an unknown model or version, UNAVAILABLE while loading or when
the runtime is out of cores, RESOURCE_EXHAUSTED for an oversized message (``grpc_server`` checks
the size before parsing), DEADLINE_EXCEEDED when the call's own deadline passes.
"""

from __future__ import annotations

import logging

import grpc
from google.protobuf import json_format

from neuron_runtime.serving import grpc_codec
from neuron_runtime.serving import inference_pb2 as pb
from neuron_runtime.serving.errors import ErrorKind, InferenceError
from neuron_runtime.serving.grpc_server import GrpcError, GrpcServer, UnaryMethod
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


def _error(exc: InferenceError) -> GrpcError:
    return GrpcError(GRPC_STATUS[exc.kind], exc.message)


class GrpcFrontend:
    def __init__(self, service: InferenceService, *, version: str) -> None:
        self.service = service
        self.version = version

    async def server_live(self, _: pb.ServerLiveRequest) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=self.service.live)

    async def server_ready(self, _: pb.ServerReadyRequest) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.service.ready)

    async def model_ready(self, request: pb.ModelReadyRequest) -> pb.ModelReadyResponse:
        if not self.service.is_model_ready(request.name, request.version):
            self._raise_if_not_found(request.name, request.version)
            return pb.ModelReadyResponse(ready=False)
        return pb.ModelReadyResponse(ready=True)

    async def server_metadata(self, _: pb.ServerMetadataRequest) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(
            name=SERVER_NAME, version=self.version, extensions=list(EXTENSIONS)
        )

    async def model_metadata(self, request: pb.ModelMetadataRequest) -> pb.ModelMetadataResponse:
        try:
            served = self.service.model(request.name, request.version)
        except InferenceError as exc:
            raise _error(exc) from None
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

    async def model_infer(self, request: pb.ModelInferRequest) -> pb.ModelInferResponse:
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
            raise _error(exc) from None
        except Exception:
            self.service.count_failure(name, "grpc", "internal")
            if served is not None:
                served.statistics.record_failure(timing)
            log.exception("inference on model %s failed", name)
            raise GrpcError(
                grpc.StatusCode.INTERNAL, f"internal error while running model '{name}'"
            ) from None

    async def model_config(self, request: pb.ModelConfigRequest) -> pb.ModelConfigResponse:
        try:
            served = self.service.model(request.name, request.version)
        except InferenceError as exc:
            raise _error(exc) from None
        return pb.ModelConfigResponse(config=json_format.ParseDict(served.config, pb.ModelConfig()))

    async def model_statistics(
        self, request: pb.ModelStatisticsRequest
    ) -> pb.ModelStatisticsResponse:
        try:
            entries = self.service.statistics(request.name, request.version)
        except InferenceError as exc:
            raise _error(exc) from None
        return json_format.ParseDict({"model_stats": entries}, pb.ModelStatisticsResponse())

    def _raise_if_not_found(self, name: str, version: str) -> None:
        try:
            self.service.model(name, version)
        except InferenceError as exc:
            if exc.kind is ErrorKind.NOT_FOUND:
                raise _error(exc) from None

    def methods(self) -> dict[str, UnaryMethod]:
        """Every method by its full path, as ``GrpcServer`` routes them."""
        table = {
            "ServerLive": UnaryMethod(pb.ServerLiveRequest, self.server_live),
            "ServerReady": UnaryMethod(pb.ServerReadyRequest, self.server_ready),
            "ModelReady": UnaryMethod(pb.ModelReadyRequest, self.model_ready),
            "ServerMetadata": UnaryMethod(pb.ServerMetadataRequest, self.server_metadata),
            "ModelMetadata": UnaryMethod(pb.ModelMetadataRequest, self.model_metadata),
            "ModelInfer": UnaryMethod(pb.ModelInferRequest, self.model_infer),
            "ModelConfig": UnaryMethod(pb.ModelConfigRequest, self.model_config),
            "ModelStatistics": UnaryMethod(pb.ModelStatisticsRequest, self.model_statistics),
        }
        return {f"/{SERVICE_NAME}/{name}": method for name, method in table.items()}


def build_grpc_server(frontend: GrpcFrontend, *, max_message_bytes: int) -> GrpcServer:
    return GrpcServer(frontend.methods(), max_message_bytes=max_message_bytes)
