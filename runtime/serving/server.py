"""Assembling the server, and its life: listen, load, serve, drain on SIGTERM, exit 0.

``create_server`` wires the service and both front ends around a model loader, and binds nothing
until ``start`` (tests pass port 0 and read the bound ports back).  ``serve`` is the process: it
builds a ``NeuronRuntime`` from the environment, starts listening *before* loading the models (so
liveness answers while a large model loads and readiness says "not yet"), and turns SIGTERM into
the shutdown Kubernetes expects:

1. readiness goes false at once, so the endpoint is taken out of rotation;
2. the server keeps serving for ``--drain-delay`` seconds (requests still routed to it succeed);
3. listeners close, in-flight requests get up to ``--shutdown-grace`` seconds to finish;
4. the runtime is closed (its worker processes and core claims end) and the process exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket

from aiohttp import web
from prometheus_client import CollectorRegistry

from neuron_runtime.serving.config import GRPC_PORT_ENV, HTTP_PORT_ENV, ServeConfig
from neuron_runtime.serving.grpc_frontend import GrpcFrontend, build_grpc_server
from neuron_runtime.serving.grpc_server import GrpcServer
from neuron_runtime.serving.http_connection import RefusingSockSite
from neuron_runtime.serving.http_frontend import RestFrontend
from neuron_runtime.serving.metrics import RuntimeCollector, ServingMetrics
from neuron_runtime.serving.service import (
    InferenceService,
    ModelLoader,
    RuntimeHooks,
    server_version,
)

log = logging.getLogger(__name__)


class ListenError(Exception):
    """A port the server cannot listen on; the message names the address and what to do."""


def _listen_error(what: str, address: str, flag: str, env: str, problem: str) -> ListenError:
    return ListenError(
        f"cannot listen for {what} on {address}: {problem}; pick another port with {flag} "
        f"({env}) or stop the process that holds it"
    )


def _listen_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


def _grpc_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class InferenceServer:
    def __init__(self, config: ServeConfig, service: InferenceService, hooks: RuntimeHooks) -> None:
        self.config = config
        self.service = service
        self._hooks = hooks
        version = server_version()
        self._rest = RestFrontend(
            service,
            max_body_bytes=config.max_body_bytes,
            version=version,
            read_timeout_s=config.read_timeout_s,
        )
        self._grpc_frontend = GrpcFrontend(service, version=version)
        self._runner: web.AppRunner | None = None
        self._grpc: GrpcServer | None = None
        self._load_task: asyncio.Task[None] | None = None
        self.http_port = 0
        self.grpc_port: int | None = None

    async def start(self) -> None:
        """Bind both ports, then load the models in the background."""
        config = self.config
        try:
            sock = _listen_socket(config.host, config.http_port)
        except OSError as exc:
            address = _grpc_address(config.host, config.http_port)
            problem = exc.strerror or str(exc)
            raise _listen_error("REST", address, "--http-port", HTTP_PORT_ENV, problem) from exc
        self.http_port = sock.getsockname()[1]
        self._runner = web.AppRunner(
            self._rest.build_app(),
            access_log=None,
            shutdown_timeout=config.shutdown_grace_s,
        )
        await self._runner.setup()
        await RefusingSockSite(self._runner, sock, read_timeout_s=config.read_timeout_s).start()
        if config.grpc_port is not None:
            self._grpc = build_grpc_server(
                self._grpc_frontend, max_message_bytes=config.max_body_bytes
            )
            address = _grpc_address(config.host, config.grpc_port)
            try:
                grpc_sock = _listen_socket(config.host, config.grpc_port)
            except OSError as exc:
                problem = exc.strerror or str(exc)
                raise _listen_error("gRPC", address, "--grpc-port", GRPC_PORT_ENV, problem) from exc
            self.grpc_port = await self._grpc.start(grpc_sock)
        log.info(
            "listening on %s: http %s, grpc %s",
            config.host,
            self.http_port,
            self.grpc_port if self.grpc_port is not None else "off",
        )
        self._load_task = asyncio.create_task(self._load())

    async def _load(self) -> None:
        try:
            await asyncio.to_thread(self.service.load_models)
        except Exception as exc:
            self.service.load_error = f"{type(exc).__name__}: {exc}"
            log.error("loading models failed: %s", self.service.load_error)
            raise
        log.info("ready: %s", ", ".join(self.service.expected_names))

    async def wait_loaded(self) -> None:
        """Return once every model is loaded; raise what loading raised."""
        if self._load_task is None:
            raise RuntimeError("start() the server first")
        await asyncio.shield(self._load_task)

    async def abort(self) -> None:
        """Undo a ``start`` that failed part way: close what it opened, then the runtime."""
        if self._runner is not None:
            await self._runner.cleanup()
        if self._grpc is not None:
            await self._grpc.stop(0)
        await asyncio.to_thread(self.service.close)
        if self._hooks.close is not None:
            await asyncio.to_thread(self._hooks.close)

    async def shutdown(self) -> None:
        self.service.start_draining()
        log.info(
            "draining: not ready; serving %.1fs more, then up to %.1fs for in-flight requests",
            self.config.drain_delay_s,
            self.config.shutdown_grace_s,
        )
        if self.config.drain_delay_s > 0:
            await asyncio.sleep(self.config.drain_delay_s)
        stops = []
        if self._runner is not None:
            stops.append(self._runner.cleanup())
        if self._grpc is not None:
            stops.append(self._grpc.stop(self.config.shutdown_grace_s))
        await asyncio.gather(*stops)
        if self._load_task is not None and not self._load_task.done():
            self._load_task.cancel()
        with contextlib.suppress(BaseException):
            if self._load_task is not None:
                await self._load_task
        await asyncio.to_thread(self.service.close)
        if self._hooks.close is not None:
            await asyncio.to_thread(self._hooks.close)
        log.info("stopped")


def create_server(
    config: ServeConfig,
    *,
    loader: ModelLoader,
    hooks: RuntimeHooks | None = None,
    registry: CollectorRegistry | None = None,
) -> InferenceServer:
    """The server for ``config``, unbound: ``await server.start()`` listens and loads."""
    hooks = hooks or RuntimeHooks()
    registry = registry or CollectorRegistry()
    metrics = ServingMetrics(registry)
    if hooks.stats is not None:
        registry.register(RuntimeCollector(hooks.stats))
    service = InferenceService(
        entries=config.models,
        loader=loader,
        metrics=metrics,
        threads_per_group=config.threads_per_group,
        max_message_bytes=config.max_body_bytes,
        resource_exhausted=hooks.resource_exhausted,
        invalid_input=hooks.invalid_input,
        unavailable=hooks.unavailable,
        failure=hooks.failure,
    )
    return InferenceServer(config, service, hooks)


async def run_until_signalled(server: InferenceServer) -> int:
    """Serve until SIGTERM/SIGINT (exit 0 after draining) or a failed model load (exit 1)."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await server.start()
    except BaseException:
        await server.abort()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        raise
    stopped = asyncio.create_task(stop.wait())
    loaded = asyncio.create_task(server.wait_loaded())
    await asyncio.wait({stopped, loaded}, return_when=asyncio.FIRST_COMPLETED)
    failed = loaded.done() and loaded.exception() is not None
    if not failed:
        await stopped
        log.info("signal received")
    for task in (stopped, loaded):
        task.cancel()
        with contextlib.suppress(BaseException):
            await task
    await server.shutdown()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.remove_signal_handler(sig)
    return 1 if failed else 0
