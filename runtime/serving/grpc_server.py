"""Unary gRPC calls over ``http2``: the part of the gRPC protocol the inference service needs.

Each complete HTTP/2 request is one call (the "gRPC over HTTP2" protocol): ``POST`` to
``/<service>/<Method>`` with ``content-type: application/grpc``, a body of one length-prefixed
message, optionally compressed (``grpc-encoding`` gzip or deflate), and a deadline in
``grpc-timeout``.  The method's coroutine gets the parsed request message and returns the response
message, or raises ``GrpcError`` with a status code and a message for the client.  The answer is
headers, the length-prefixed response, and trailers with ``grpc-status`` (and a percent-encoded
``grpc-message``); a call that fails before it runs is answered "trailers-only".

Why not grpc.aio: its server costs 0.2-0.3 ms of CPU per call even answering a ready-made message
(docs/serving.md), which is more than the rest of an inference of a small model.  This module
runs on the server's own event loop and spends a few tens of microseconds.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
import zlib
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.message import DecodeError, Message

from neuron_runtime.serving.http2 import LINGER_S, Http2Connection, Stream

log = logging.getLogger(__name__)

CONTENT_TYPE = "application/grpc"
ENCODINGS = ("identity", "deflate", "gzip")
ACCEPT_ENCODING = ",".join(ENCODINGS).encode()
# Longest grpc-message sent: percent-encoding can triple it, and clients cap their headers.
MAX_MESSAGE_CHARS = 1024
TIMEOUT_UNITS = {"H": 3600.0, "M": 60.0, "S": 1.0, "m": 1e-3, "u": 1e-6, "n": 1e-9}

_OK_HEADERS = ((b":status", b"200"), (b"content-type", CONTENT_TYPE.encode()))
_OK_TRAILERS = ((b"grpc-status", b"0"),)


class GrpcError(Exception):
    """End a call with ``code`` and ``message``."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class UnaryMethod:
    request_type: type[Message]
    handler: Callable[[Any], Awaitable[Message]]


def percent_encode(message: str) -> bytes:
    """``grpc-message``'s encoding: printable ASCII but ``%`` as is, all else %XX (pure)."""
    out = bytearray()
    for byte in message.encode():
        if 0x20 <= byte <= 0x7E and byte != 0x25:
            out.append(byte)
        else:
            out += b"%%%02X" % byte
    return bytes(out)


def parse_timeout(value: str) -> float:
    """``grpc-timeout`` (up to 8 digits and a unit) in seconds (pure); ValueError if malformed."""
    digits, unit = value[:-1], value[-1:]
    if not digits.isascii() or not digits.isdigit() or len(digits) > 8 or unit not in TIMEOUT_UNITS:
        raise ValueError(
            f"grpc-timeout {value!r} is not 1 to 8 digits followed by one of H M S m u n"
        )
    return int(digits) * TIMEOUT_UNITS[unit]


def frame_message(payload: bytes) -> bytes:
    """gRPC's length prefix: a 0 (not compressed) byte and the 4-byte big-endian length."""
    return b"\x00" + len(payload).to_bytes(4, "big") + payload


def unframe_message(body: bytes, encoding: str | None, limit: int) -> bytes:
    """The one message of a unary request's body (pure); GrpcError when it is malformed."""
    if len(body) < 5:
        raise GrpcError(
            grpc.StatusCode.INTERNAL,
            f"the request body is {len(body)} bytes; a unary call carries one message "
            "(a 5-byte prefix and the message)",
        )
    compressed = body[0]
    length = int.from_bytes(body[1:5], "big")
    if len(body) != 5 + length:
        raise GrpcError(
            grpc.StatusCode.INTERNAL,
            f"the request's message prefix says {length} bytes but {len(body) - 5} follow; "
            "a unary call carries exactly one message",
        )
    message = body[5:]
    if compressed == 0:
        return message
    if compressed != 1:
        raise GrpcError(grpc.StatusCode.INTERNAL, f"compressed flag {compressed} is not 0 or 1")
    if encoding in (None, "identity"):
        raise GrpcError(
            grpc.StatusCode.INTERNAL,
            "the message is flagged compressed but the call has no grpc-encoding",
        )
    wbits = 16 + zlib.MAX_WBITS if encoding == "gzip" else zlib.MAX_WBITS
    inflater = zlib.decompressobj(wbits)
    try:
        plain = inflater.decompress(message, limit + 1)
    except zlib.error as exc:
        raise GrpcError(
            grpc.StatusCode.INTERNAL, f"the {encoding} message does not decompress: {exc}"
        ) from exc
    if len(plain) > limit:
        raise GrpcError(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            f"the request message decompresses to over {limit} bytes, the server's limit",
        )
    if not inflater.eof or inflater.unused_data:
        raise GrpcError(
            grpc.StatusCode.INTERNAL,
            f"the {encoding} message is truncated or has bytes after its end",
        )
    return plain


class GrpcServer:
    """Serves ``methods`` (full paths such as ``/pkg.Service/Method``) on one listening socket."""

    def __init__(self, methods: Mapping[str, UnaryMethod], *, max_message_bytes: int) -> None:
        self.methods = dict(methods)
        self.max_message_bytes = max_message_bytes
        self._server: asyncio.Server | None = None
        self._connections: set[Http2Connection] = set()
        self._calls: dict[Stream, asyncio.Task[None]] = {}

    async def start(self, sock: socket.socket) -> int:
        """Serve on a bound socket; return its port."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self._connection, sock=sock)
        return int(sock.getsockname()[1])

    def _connection(self) -> Http2Connection:
        # The body is the message and its 5-byte prefix.
        connection = Http2Connection(self, max_body_bytes=self.max_message_bytes + 5)
        self._connections.add(connection)
        connection.closed.add_done_callback(lambda _: self._connections.discard(connection))
        return connection

    # -- http2.StreamHandler -----------------------------------------------------------------------

    def request(self, connection: Http2Connection, stream: Stream) -> None:
        try:
            method, payload, timeout = self._accept(stream)
        except GrpcError as exc:
            self._refuse(connection, stream, exc.code, exc.message)
            return
        except _NotGrpcError as exc:
            self._refuse(connection, stream, exc.code, exc.message, http_status=exc.status)
            return
        try:
            request = method.request_type.FromString(payload)
        except DecodeError as exc:
            self._refuse(
                connection,
                stream,
                grpc.StatusCode.INVALID_ARGUMENT,
                f"the request is not a {method.request_type.DESCRIPTOR.full_name}: {exc}",
            )
            return
        task = asyncio.get_running_loop().create_task(
            self._call(connection, stream, method, request, timeout)
        )
        self._calls[stream] = task

    def reset(self, stream: Stream) -> None:
        task = self._calls.pop(stream, None)
        if task is not None:
            task.cancel()

    # -- one call --------------------------------------------------------------------------------

    def _accept(self, stream: Stream) -> tuple[UnaryMethod, bytes, float | None]:
        method = path = content_type = encoding = timeout = None
        for name, value in stream.headers:
            if name == ":path":
                path = value
            elif name == ":method":
                method = value
            elif name == "content-type":
                content_type = value
            elif name == "grpc-encoding":
                encoding = value
            elif name == "grpc-timeout":
                timeout = value
        if stream.too_large is not None:
            raise GrpcError(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"{stream.too_large}; send a smaller request, or raise the server's "
                "--max-body-bytes",
            )
        if method != "POST":
            raise _NotGrpcError(
                b"405", grpc.StatusCode.UNIMPLEMENTED, f"gRPC calls are POST, not {method}"
            )
        if content_type is None or not content_type.startswith(CONTENT_TYPE):
            raise _NotGrpcError(
                b"415",
                grpc.StatusCode.INTERNAL,
                f"content-type {content_type!r} is not {CONTENT_TYPE}",
            )
        unary = self.methods.get(path or "")
        if unary is None:
            raise GrpcError(
                grpc.StatusCode.UNIMPLEMENTED,
                f"unknown method {path!r}; this server serves " + ", ".join(sorted(self.methods)),
            )
        if encoding not in (None, *ENCODINGS):
            raise GrpcError(
                grpc.StatusCode.UNIMPLEMENTED,
                f"grpc-encoding {encoding!r} is not supported; use one of {', '.join(ENCODINGS)}",
            )
        seconds = None
        if timeout is not None:
            try:
                seconds = parse_timeout(timeout)
            except ValueError as exc:
                raise GrpcError(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from None
        payload = unframe_message(bytes(stream.body), encoding, self.max_message_bytes)
        return unary, payload, seconds

    async def _call(
        self,
        connection: Http2Connection,
        stream: Stream,
        method: UnaryMethod,
        request: Message,
        timeout: float | None,
    ) -> None:
        started = time.monotonic()
        try:
            if timeout is None:
                response = await method.handler(request)
            else:
                async with asyncio.timeout(timeout):
                    response = await method.handler(request)
            payload = response.SerializeToString()
            if len(payload) > self.max_message_bytes:
                raise GrpcError(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"the response is {len(payload)} bytes, over the server's limit of "
                    f"{self.max_message_bytes} (--max-body-bytes)",
                )
            connection.respond(stream, _OK_HEADERS, frame_message(payload), _OK_TRAILERS)
        except GrpcError as exc:
            self._refuse(connection, stream, exc.code, exc.message)
        except TimeoutError:
            waited = time.monotonic() - started
            self._refuse(
                connection,
                stream,
                grpc.StatusCode.DEADLINE_EXCEEDED,
                f"the call's deadline passed after {waited:.3f} s",
            )
        except asyncio.CancelledError:
            if not stream.closed:  # the server is stopping, not the client cancelling
                self._refuse(connection, stream, grpc.StatusCode.UNAVAILABLE, "server stopping")
            raise
        except Exception:
            log.exception("gRPC method %s failed", stream.header(":path"))
            self._refuse(
                connection, stream, grpc.StatusCode.INTERNAL, "internal error; see the server log"
            )
        finally:
            self._calls.pop(stream, None)

    @staticmethod
    def _refuse(
        connection: Http2Connection,
        stream: Stream,
        code: grpc.StatusCode,
        message: str,
        *,
        http_status: bytes = b"200",
    ) -> None:
        """A trailers-only answer: ``code`` and ``message`` (and an HTTP status other than 200
        for a request that is not gRPC at all)."""
        if stream.responded:
            return
        if len(message) > MAX_MESSAGE_CHARS:  # clients cap their headers (C-core: 8 KiB)
            message = message[:MAX_MESSAGE_CHARS] + "..."
        connection.respond(
            stream,
            (
                (b":status", http_status),
                (b"content-type", CONTENT_TYPE.encode()),
                (b"grpc-status", b"%d" % code.value[0]),
                (b"grpc-message", percent_encode(message)),
                (b"grpc-accept-encoding", ACCEPT_ENCODING),
            ),
        )

    # -- stopping --------------------------------------------------------------------------------

    async def stop(self, grace: float | None) -> None:
        """Stop listening and refuse new calls; let calls in flight (uploads included) finish
        for ``grace`` seconds, then cancel what is left and close every connection."""
        if self._server is not None:
            self._server.close()
        for connection in list(self._connections):
            connection.go_away()
        # A connection closes itself once every stream it had is answered and the client has
        # closed its side (or after http2.LINGER_S).
        if self._connections and grace:
            await asyncio.wait([c.closed for c in self._connections], timeout=grace)
        for task in list(self._calls.values()):
            task.cancel()
        if self._calls:
            await asyncio.wait(list(self._calls.values()), timeout=1.0)
        if self._connections:
            await asyncio.wait([c.closed for c in self._connections], timeout=LINGER_S + 0.5)
        for connection in list(self._connections):
            if connection.transport is not None:
                connection.transport.close()
        if self._server is not None:
            await self._server.wait_closed()


class _NotGrpcError(Exception):
    """A request that is not gRPC at all: answered with an HTTP status as well."""

    def __init__(self, status: bytes, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
