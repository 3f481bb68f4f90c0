"""REST front end: the Open Inference Protocol's HTTP routes on aiohttp, plus ``/metrics``.

A thin adapter.  Decoding, validation and encoding live in ``rest_codec`` and ``tensors``; the
models, routing and counting in ``service``.  What this module adds is HTTP itself: routes, body
size limits, and the rule that every error leaves as JSON ``{"error": "..."}`` with a status that
says whose fault it was.  Unknown routes and wrong methods are JSON 404/405 too, and only a genuine
fault of ours becomes a 500 (logged with its traceback).

Large bodies are decoded in a worker thread so one big request does not stall the event loop for
every other client.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from neuron_runtime.serving import rest_codec
from neuron_runtime.serving.config import DEFAULT_READ_TIMEOUT_S, READ_TIMEOUT_ENV
from neuron_runtime.serving.errors import ErrorKind, InferenceError
from neuron_runtime.serving.http_connection import close_after
from neuron_runtime.serving.service import (
    EXTENSIONS,
    MODEL_VERSION,
    PLATFORM,
    SERVER_NAME,
    InferenceService,
    ServedModel,
)
from neuron_runtime.serving.statistics import RequestTiming
from neuron_runtime.serving.tensors import TensorMeta

log = logging.getLogger(__name__)

# Bodies larger than this are decoded off the event loop.
_OFFLOAD_BYTES = 256 * 1024

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _json(payload: object, status: int = 200) -> web.Response:
    return web.Response(
        body=json.dumps(payload).encode(), status=status, content_type=rest_codec.JSON_CONTENT_TYPE
    )


def _error(status: int, message: str) -> web.Response:
    return web.Response(
        body=rest_codec.error_body(message),
        status=status,
        content_type=rest_codec.JSON_CONTENT_TYPE,
    )


def _tensor_json(meta: TensorMeta) -> dict[str, object]:
    return {"name": meta.name, "datatype": meta.datatype, "shape": list(meta.shape)}


def _shortened(path: str, limit: int = 120) -> str:
    """A path for a message: a URL of 8000 characters does not make an 8000-character error."""
    return path if len(path) <= limit else f"{path[:limit]}... ({len(path)} characters)"


class _BrokenBodyError(InferenceError):
    """A body that cannot be read to its end: the answer closes the connection."""


@web.middleware
async def _errors_as_json(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except InferenceError as exc:
        if exc.kind is ErrorKind.TIMEOUT or isinstance(exc, _BrokenBodyError):
            # The rest of the body is not coming, or cannot be read: answer, then close instead
            # of lingering (aiohttp's lingering read of a body that failed to decode raises
            # again, and logs that as an unhandled exception with a traceback).
            return await close_after(request, _error(exc.http_status, exc.message))
        return _error(exc.http_status, exc.message)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        if exc.status == 404:
            reason = f"no route {request.method} {_shortened(request.path)}"
        else:
            reason = exc.text or exc.reason
        return _error(exc.status, reason)


class RestFrontend:
    def __init__(
        self,
        service: InferenceService,
        *,
        max_body_bytes: int,
        version: str,
        read_timeout_s: float = DEFAULT_READ_TIMEOUT_S,
    ) -> None:
        self.service = service
        self.max_body_bytes = max_body_bytes
        self.version = version
        self.read_timeout_s = read_timeout_s

    def build_app(self) -> web.Application:
        app = web.Application(client_max_size=self.max_body_bytes, middlewares=[_errors_as_json])
        get, post = web.get, web.post
        model = "/v2/models/{model}"
        versioned = "/v2/models/{model}/versions/{version}"
        app.add_routes(
            [
                get("/v2/health/live", self.live),
                get("/v2/health/ready", self.ready),
                get("/v2", self.server_metadata),
                # Before the model routes, which would read "stats" as a model's name.
                get("/v2/models/stats", self.statistics),
                get(model, self.model_metadata),
                get(versioned, self.model_metadata),
                get(f"{model}/ready", self.model_ready),
                get(f"{versioned}/ready", self.model_ready),
                get(f"{model}/config", self.model_config),
                get(f"{versioned}/config", self.model_config),
                get(f"{model}/stats", self.statistics),
                get(f"{versioned}/stats", self.statistics),
                post(f"{model}/infer", self.infer),
                post(f"{versioned}/infer", self.infer),
                get("/metrics", self.metrics),
            ]
        )
        return app

    async def live(self, _: web.Request) -> web.Response:
        failure = self.service.failure
        if failure is None:
            return _json({"live": True})
        return _json({"live": False, "error": failure}, 400)

    async def ready(self, _: web.Request) -> web.Response:
        ready = self.service.ready
        return _json({"ready": ready}, 200 if ready else 400)

    async def server_metadata(self, _: web.Request) -> web.Response:
        return _json({"name": SERVER_NAME, "version": self.version, "extensions": list(EXTENSIONS)})

    async def model_metadata(self, request: web.Request) -> web.Response:
        served = self._model(request)
        signature = served.signature
        return _json(
            {
                "name": served.name,
                "versions": [MODEL_VERSION],
                "platform": PLATFORM,
                "inputs": [_tensor_json(m) for m in signature.inputs],
                "outputs": [_tensor_json(m) for m in signature.outputs],
            }
        )

    async def model_config(self, request: web.Request) -> web.Response:
        return _json(self._model(request).config)

    async def statistics(self, request: web.Request) -> web.Response:
        entries = self.service.statistics(
            request.match_info.get("model", ""), request.match_info.get("version")
        )
        return _json({"model_stats": entries})

    async def model_ready(self, request: web.Request) -> web.Response:
        name = request.match_info["model"]
        version = request.match_info.get("version")
        if self.service.is_model_ready(name, version):
            return _json({"name": name, "ready": True})
        try:
            self.service.model(name, version)
        except InferenceError as exc:
            if exc.kind is ErrorKind.NOT_FOUND:
                raise
        return _json({"name": name, "ready": False}, 400)

    async def metrics(self, _: web.Request) -> web.Response:
        loop = asyncio.get_running_loop()
        body = await loop.run_in_executor(None, generate_latest, self.service.metrics.registry)
        response = web.Response(body=body)
        response.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return response

    def _model(self, request: web.Request) -> ServedModel:
        return self.service.model(request.match_info["model"], request.match_info.get("version"))

    async def infer(self, request: web.Request) -> web.Response:
        name = request.match_info["model"]
        self.service.count_request(name, "rest")
        try:
            return await self._infer(request)
        except InferenceError as exc:
            self.service.count_failure(name, "rest", exc.kind.value)
            raise
        except Exception:
            self.service.count_failure(name, "rest", "internal")
            log.exception("inference on model %s failed", name)
            return _error(500, f"internal error while running model '{name}'; see server logs")

    async def _infer(self, request: web.Request) -> web.Response:
        timing = RequestTiming()
        served = self._model(request)
        try:
            response = await self._run(request, served, timing)
        except BaseException:
            served.statistics.record_failure(timing)
            raise
        return response

    async def _run(
        self, request: web.Request, served: ServedModel, timing: RequestTiming
    ) -> web.Response:
        body = await self._read_body(request)
        header_length = rest_codec.parse_header_length(
            request.headers.get(rest_codec.HEADER_LENGTH), len(body)
        )
        if len(body) > _OFFLOAD_BYTES:
            decoded = await asyncio.get_running_loop().run_in_executor(
                None, rest_codec.parse_infer_request, body, header_length, served.signature
            )
        else:
            decoded = rest_codec.parse_infer_request(body, header_length, served.signature)
        timing.mark_decoded()
        outputs = await self.service.infer(served, decoded.inputs, timing)
        payload, json_length = rest_codec.encode_infer_response(
            model_name=served.name,
            model_version=request.match_info.get("version"),
            request_id=decoded.request_id,
            outputs=outputs,
            selected=rest_codec.select_outputs(decoded, served.signature),
        )
        if json_length is None:
            response = web.Response(body=payload, content_type=rest_codec.JSON_CONTENT_TYPE)
        else:
            response = web.Response(body=payload, content_type=rest_codec.BINARY_CONTENT_TYPE)
            response.headers[rest_codec.HEADER_LENGTH] = str(json_length)
        served.statistics.record_success(timing, served.rows(decoded.inputs))
        return response

    async def _read_body(self, request: web.Request) -> bytes:
        declared = request.content_length
        if declared is not None and declared > self.max_body_bytes:
            raise self._too_large(declared)
        try:
            async with asyncio.timeout(self.read_timeout_s):
                return await request.read()
        except web.HTTPRequestEntityTooLarge as exc:
            raise self._too_large(None) from exc
        except TimeoutError as exc:
            raise InferenceError(
                ErrorKind.TIMEOUT,
                f"the request body did not arrive within {self.read_timeout_s:g} s of its headers; "
                f"send it faster (or raise the server's --read-timeout / {READ_TIMEOUT_ENV})",
            ) from exc
        except web.RequestPayloadError as exc:
            # Bad chunked framing, a body shorter than Content-Length, undecodable gzip: the
            # client's fault, so a 400 that says so rather than a 500 with a traceback.
            raise _BrokenBodyError(
                ErrorKind.BAD_REQUEST, f"the request body is malformed: {exc}"
            ) from exc

    def _too_large(self, size: int | None) -> InferenceError:
        got = f" ({size} bytes)" if size is not None else ""
        return InferenceError(
            ErrorKind.TOO_LARGE,
            f"request body{got} is larger than the server's limit of {self.max_body_bytes} bytes; "
            "send smaller batches or raise --max-body-bytes",
        )
