"""Unary gRPC over the runtime's own HTTP/2 server (``serving/grpc_server``).

The pure parts (message framing, ``grpc-timeout``, ``grpc-message`` encoding) are tested as
functions; the server is driven by grpcio's own client, which is the reference for what a gRPC
client expects, and by the bare HTTP/2 client for what grpcio never sends.
"""

from __future__ import annotations

import asyncio
import gzip
import socket
import threading
import zlib
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import grpc
import pytest
from google.protobuf import wrappers_pb2

from neuron_runtime.serving import http2
from neuron_runtime.serving.grpc_server import (
    GrpcError,
    GrpcServer,
    UnaryMethod,
    frame_message,
    parse_timeout,
    percent_encode,
    unframe_message,
)

Text = wrappers_pb2.StringValue
T = TypeVar("T")


# -- pure ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("message", "encoded"),
    [
        ("plain words, 100", b"plain words, 100"),
        ("50% done", b"50%25 done"),
        ("line\nbreak", b"line%0Abreak"),
        ("café", b"caf%C3%A9"),
    ],
)
def test_grpc_message_is_percent_encoded(message: str, encoded: bytes) -> None:
    assert percent_encode(message) == encoded


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("1H", 3600.0),
        ("2M", 120.0),
        ("3S", 3.0),
        ("250m", 0.25),
        ("10u", 1e-5),
        ("99999999n", 0.099999999),
    ],
)
def test_grpc_timeout_units(value: str, seconds: float) -> None:
    assert parse_timeout(value) == pytest.approx(seconds)


@pytest.mark.parametrize("value", ["", "S", "10", "10s", "123456789S", "-1S", "1.5S", "\u0661S"])
def test_malformed_grpc_timeouts_are_refused_by_name(value: str) -> None:
    with pytest.raises(ValueError, match="1 to 8 digits followed by one of H M S m u n"):
        parse_timeout(value)


def test_messages_round_trip_through_their_prefix() -> None:
    assert frame_message(b"abc") == b"\x00\x00\x00\x00\x03abc"
    assert unframe_message(frame_message(b"abc"), None, 100) == b"abc"
    assert unframe_message(frame_message(b""), "identity", 100) == b""


@pytest.mark.parametrize(
    ("encoding", "compress"),
    [("gzip", gzip.compress), ("deflate", zlib.compress)],
)
def test_compressed_messages_are_inflated(
    encoding: str, compress: Callable[[bytes], bytes]
) -> None:
    packed = compress(b"tensor" * 100)
    body = b"\x01" + len(packed).to_bytes(4, "big") + packed
    assert unframe_message(body, encoding, 1000) == b"tensor" * 100


@pytest.mark.parametrize(
    ("body", "encoding", "code", "words"),
    [
        (b"\x00\x00", None, grpc.StatusCode.INTERNAL, "5-byte prefix"),
        (b"\x00\x00\x00\x00\x09abc", None, grpc.StatusCode.INTERNAL, "says 9 bytes but 3"),
        (frame_message(b"a") + frame_message(b"b"), None, grpc.StatusCode.INTERNAL, "exactly one"),
        (b"\x02\x00\x00\x00\x00", None, grpc.StatusCode.INTERNAL, "flag 2"),
        (b"\x01\x00\x00\x00\x01x", None, grpc.StatusCode.INTERNAL, "no grpc-encoding"),
        (b"\x01\x00\x00\x00\x03abc", "gzip", grpc.StatusCode.INTERNAL, "does not decompress"),
    ],
)
def test_malformed_bodies_are_refused_with_what_is_wrong(
    body: bytes, encoding: str | None, code: grpc.StatusCode, words: str
) -> None:
    with pytest.raises(GrpcError, match=words) as refused:
        unframe_message(body, encoding, 100)
    assert refused.value.code == code


@pytest.mark.parametrize(
    ("packed", "words"),
    [
        (gzip.compress(b"tensor" * 100)[:-6], "truncated"),
        (gzip.compress(b"tensor") + b"junk", "bytes after its end"),
    ],
)
def test_compressed_messages_must_be_whole(packed: bytes, words: str) -> None:
    body = b"\x01" + len(packed).to_bytes(4, "big") + packed
    with pytest.raises(GrpcError, match=words) as refused:
        unframe_message(body, "gzip", 1000)
    assert refused.value.code == grpc.StatusCode.INTERNAL


def test_a_compressed_message_may_not_inflate_past_the_limit() -> None:
    bomb = gzip.compress(b"\x00" * 1_000_000)
    body = b"\x01" + len(bomb).to_bytes(4, "big") + bomb
    with pytest.raises(GrpcError, match="over 1000 bytes") as refused:
        unframe_message(body, "gzip", 1000)
    assert refused.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED


# -- served --------------------------------------------------------------------------------------


class Echo:
    """Methods of a test service: echo, fail, wait."""

    def __init__(self) -> None:
        self.cancelled = threading.Event()
        self.release = asyncio.Event()

    async def echo(self, request: Text) -> Text:
        return Text(value=request.value.upper())

    async def refuse(self, request: Text) -> Text:
        raise GrpcError(grpc.StatusCode.FAILED_PRECONDITION, f"cannot {request.value}: 100% sure ✗")

    async def crash(self, request: Text) -> Text:
        raise RuntimeError("a bug")

    async def wait(self, request: Text) -> Text:
        try:
            await self.release.wait()
        except asyncio.CancelledError:
            self.cancelled.set()
            raise
        return Text(value="released")

    async def huge(self, request: Text) -> Text:
        return Text(value="z" * 5000)

    async def wordy(self, request: Text) -> Text:
        raise GrpcError(grpc.StatusCode.INVALID_ARGUMENT, "é" * 5000)


class Served:
    def __init__(self, max_message_bytes: int) -> None:
        self.methods = Echo()
        table = {
            name: UnaryMethod(Text, getattr(self.methods, name))
            for name in ("echo", "refuse", "crash", "wait", "huge", "wordy")
        }
        self.server = GrpcServer(
            {f"/test.Echo/{name}": method for name, method in table.items()},
            max_message_bytes=max_message_bytes,
        )
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        sock = socket.create_server(("127.0.0.1", 0))
        sock.setblocking(False)
        self.port = self.call(self.server.start(sock))
        self.channel = grpc.insecure_channel(f"127.0.0.1:{self.port}")

    def call(self, coro: Any, timeout: float = 30) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def rpc(self, method: str, value: str, **options: Any) -> str:
        stub = self.channel.unary_unary(
            f"/test.Echo/{method}",
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=Text.FromString,
        )
        reply: Text = stub(Text(value=value), timeout=options.pop("timeout", 30), **options)
        return reply.value

    def raw(self, case: Callable[[Any], Awaitable[T]], raw_http2: Any) -> T:
        async def run() -> T:
            client = await raw_http2.connect(self.port)
            try:
                return await case(client)
            finally:
                await client.close()

        result: T = self.call(run())
        return result

    def close(self) -> None:
        self.channel.close()
        self.call(self.server.stop(0))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()


@pytest.fixture
def served() -> Iterator[Served]:
    server = Served(max_message_bytes=1000)
    yield server
    server.close()


def test_calls_are_answered(served: Served) -> None:
    assert served.rpc("echo", "hello") == "HELLO"
    assert [served.rpc("echo", str(n)) for n in range(50)] == [str(n) for n in range(50)]


def test_compressed_calls_are_answered(served: Served) -> None:
    assert served.rpc("echo", "squeeze " * 50, compression=grpc.Compression.Gzip) == (
        "SQUEEZE " * 50
    )
    assert served.rpc("echo", "deflated", compression=grpc.Compression.Deflate) == "DEFLATED"


def _code(served: Served, method: str, value: str = "x", **options: Any) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as failed:
        served.rpc(method, value, **options)
    return failed.value


def test_a_refusal_reaches_the_client_with_its_code_and_words(served: Served) -> None:
    error: Any = _code(served, "refuse", "fly")
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error.details() == "cannot fly: 100% sure ✗"


def test_long_refusals_are_cut_to_what_clients_accept(served: Served) -> None:
    error: Any = _code(served, "wordy")
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == "é" * 1024 + "..."


def test_a_failing_method_is_internal_and_logged(
    served: Served, caplog: pytest.LogCaptureFixture
) -> None:
    error: Any = _code(served, "crash")
    assert (error.code(), error.details()) == (
        grpc.StatusCode.INTERNAL,
        "internal error; see the server log",
    )
    assert "gRPC method /test.Echo/crash failed" in caplog.text
    assert "a bug" in caplog.text
    assert served.rpc("echo", "still serving") == "STILL SERVING"


def test_an_unknown_method_is_unimplemented_and_lists_the_served_ones(served: Served) -> None:
    error: Any = _code(served, "Nope")
    assert error.code() == grpc.StatusCode.UNIMPLEMENTED
    assert "unknown method '/test.Echo/Nope'" in error.details()
    assert "/test.Echo/echo" in error.details()


def test_oversized_messages_are_resource_exhausted_both_ways(served: Served) -> None:
    error: Any = _code(served, "echo", "y" * 2000)
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "--max-body-bytes" in error.details()
    error = _code(served, "huge")
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "the response is 5003 bytes" in error.details()


def test_a_client_that_gives_up_cancels_the_call(served: Served) -> None:
    error: Any = _code(served, "wait", timeout=0.3)
    assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert served.methods.cancelled.wait(10)  # the server stopped working on it


def _status(trailers: dict[str, str]) -> tuple[int, str]:
    return int(trailers["grpc-status"]), trailers.get("grpc-message", "")


def test_the_calls_own_deadline_ends_it_on_the_server(served: Served, raw_http2: Any) -> None:
    async def case(client: Any) -> dict[str, str]:
        client.request(
            1,
            frame_message(Text(value="x").SerializeToString()),
            "/test.Echo/wait",
            extra=(("grpc-timeout", "200m"),),
        )
        headers, _, trailers = await client.response(1)
        return {**headers, **trailers}

    fields = served.raw(case, raw_http2)
    code, message = _status(fields)
    assert code == grpc.StatusCode.DEADLINE_EXCEEDED.value[0]
    assert "deadline passed after" in message
    assert served.methods.cancelled.is_set()


@pytest.mark.parametrize(
    "refusal",
    [
        ("GET", "application/grpc", (), b"", "405", grpc.StatusCode.UNIMPLEMENTED, "not GET"),
        ("POST", "text/plain", (), b"", "415", grpc.StatusCode.INTERNAL, "'text/plain'"),
        (
            "POST",
            "application/grpc",
            (("grpc-encoding", "br"),),
            frame_message(b""),
            "200",
            grpc.StatusCode.UNIMPLEMENTED,
            "'br' is not supported",
        ),
        (
            "POST",
            "application/grpc",
            (("grpc-timeout", "soon"),),
            frame_message(b""),
            "200",
            grpc.StatusCode.INVALID_ARGUMENT,
            "grpc-timeout 'soon'",
        ),
        (
            "POST",
            "application/grpc+proto",
            (),
            frame_message(b"\xff\xff\xff"),
            "200",
            grpc.StatusCode.INVALID_ARGUMENT,
            "not a google.protobuf.StringValue",
        ),
    ],
)
def test_requests_that_are_not_good_grpc_are_answered_in_grpcs_terms(
    served: Served, raw_http2: Any, refusal: tuple[Any, ...]
) -> None:
    method, content_type, extra, body, status, code, words = refusal

    async def case(client: Any) -> dict[str, str]:
        client.request(
            1, body, "/test.Echo/echo", method=method, content_type=content_type, extra=extra
        )
        headers, _, trailers = await client.response(1)
        return {**headers, **trailers}

    fields = served.raw(case, raw_http2)
    assert fields[":status"] == status
    got_code, message = _status(fields)
    assert got_code == code.value[0]
    assert words in message


def test_stopping_lets_calls_in_flight_finish(served: Served, raw_http2: Any) -> None:
    async def case(client: Any) -> tuple[dict[str, str], bytes]:
        client.request(1, frame_message(Text(value="x").SerializeToString()), "/test.Echo/wait")
        await client.until(http2.SETTINGS)
        await asyncio.sleep(0.1)
        stopping = asyncio.ensure_future(served.server.stop(5.0))
        _, _, _, goaway = await client.until(http2.GOAWAY)
        assert goaway[4:8] == b"\x00\x00\x00\x00"  # NO_ERROR
        served.methods.release.set()
        _headers, body, trailers = await client.response(1)
        await stopping
        return trailers, body

    trailers, body = served.raw(case, raw_http2)
    assert _status(trailers) == (0, "")
    assert Text.FromString(body[5:]).value == "released"
    with pytest.raises(OSError):
        served.call(asyncio.open_connection("127.0.0.1", served.port))


def test_calls_still_running_after_the_grace_are_unavailable(
    served: Served, raw_http2: Any
) -> None:
    async def case(client: Any) -> dict[str, str]:
        client.request(1, frame_message(Text(value="x").SerializeToString()), "/test.Echo/wait")
        await client.until(http2.SETTINGS)
        await asyncio.sleep(0.1)
        stopping = asyncio.ensure_future(served.server.stop(0.2))
        headers, _, trailers = await client.response(1)
        await stopping
        return {**headers, **trailers}

    fields = served.raw(case, raw_http2)
    assert _status(fields) == (grpc.StatusCode.UNAVAILABLE.value[0], "server stopping")


def test_stopping_waits_for_a_request_still_uploading(served: Served, raw_http2: Any) -> None:
    async def case(client: Any) -> tuple[dict[str, str], bytes]:
        body = frame_message(Text(value="late").SerializeToString())
        block = client.block(
            [
                (":method", "POST"),
                (":path", "/test.Echo/echo"),
                ("content-type", "application/grpc"),
            ]
        )
        client.send(http2.HEADERS, http2.END_HEADERS, 1, block)
        client.send(http2.DATA, 0, 1, body[:3])
        await client.until(http2.SETTINGS)
        await asyncio.sleep(0.1)
        stopping = asyncio.ensure_future(served.server.stop(5.0))
        await client.until(http2.GOAWAY)
        await asyncio.sleep(0.3)
        assert not stopping.done()
        client.send(http2.DATA, http2.END_STREAM, 1, body[3:])
        _, reply, trailers = await client.response(1)
        await client.close()
        await stopping
        return trailers, reply

    trailers, reply = served.raw(case, raw_http2)
    assert _status(trailers) == (0, "")
    assert Text.FromString(reply[5:]).value == "LATE"
