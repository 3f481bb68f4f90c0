"""HTTP/2 connections (``serving/http2``), frame by frame, with a bare client.

The server side is an ``Http2Connection`` with a small handler that answers each request with a
body of the size the request asks for; the client writes exactly the frames a case needs.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import Awaitable, Callable
from typing import Any

import hpack
import pytest

from neuron_runtime.serving import http2
from neuron_runtime.serving.http2 import Http2Connection, Stream

Frame = tuple[int, int, int, bytes]


class Answering:
    """Answers a request whose body is a decimal size with that many bytes and a trailer."""

    def __init__(self) -> None:
        self.requests: list[Stream] = []
        self.resets: list[int] = []
        self.hold = False  # leave requests unanswered (to test resets and limits)
        self.connection: Http2Connection | None = None

    def request(self, connection: Http2Connection, stream: Stream) -> None:
        self.requests.append(stream)
        if self.hold:
            return
        if stream.too_large is not None:
            connection.respond(stream, ((b":status", b"413"),))
            return
        size = int(stream.body) if len(stream.body) < 20 else 0
        connection.respond(
            stream, ((b":status", b"200"),), b"x" * size, ((b"done", str(size).encode()),)
        )

    def reset(self, stream: Stream) -> None:
        self.resets.append(stream.id)


def serve(
    case: Callable[[int, Answering], Awaitable[None]], *, max_body_bytes: int = 1 << 20
) -> Answering:
    """Run ``case(port, handler)`` against a fresh listener on 127.0.0.1."""
    handler = Answering()

    async def main() -> None:
        loop = asyncio.get_running_loop()

        def connection() -> Http2Connection:
            handler.connection = Http2Connection(handler, max_body_bytes=max_body_bytes)
            return handler.connection

        server = await loop.create_server(connection, "127.0.0.1", 0)
        try:
            await case(server.sockets[0].getsockname()[1], handler)
        finally:
            server.close()

    asyncio.run(main())
    return handler


def test_frame_layout() -> None:
    assert http2.frame(http2.PING, http2.ACK, 0, b"12345678") == (
        b"\x00\x00\x08\x06\x01\x00\x00\x00\x0012345678"
    )
    assert http2.frame(http2.DATA, 0, 2**31 + 3)[5:9] == b"\x00\x00\x00\x03"  # R bit cleared


@pytest.mark.parametrize(
    "headers",
    [
        [(b":status", b"200"), (b"content-type", b"application/grpc")],
        [(b":status", b"404"), (b"grpc-message", b"x" * 300), (b"x-long-name-" * 20, b"")],
        [(b"grpc-status", b"0")],
    ],
)
def test_header_blocks_decode_with_an_independent_decoder(
    headers: list[tuple[bytes, bytes]],
) -> None:
    decoder = hpack.Decoder()
    assert decoder.decode(http2.encode_headers(headers), raw=True) == headers
    # Literals never indexed: decoding again gives the same, and the table stays empty.
    assert decoder.decode(http2.encode_headers(headers), raw=True) == headers
    assert len(decoder.header_table.dynamic_entries) == 0


def test_settings_are_announced_and_acknowledged(raw_http2: Any) -> None:
    async def case(port: int, handler: Answering) -> None:
        client = await raw_http2.connect(port)
        kind, flags, _, payload = await client.frame()
        assert (kind, flags) == (http2.SETTINGS, 0)
        announced = dict(struct.iter_unpack(">HI", payload))
        assert announced[http2.SETTINGS_MAX_CONCURRENT_STREAMS] == http2.MAX_CONCURRENT_STREAMS
        assert announced[http2.SETTINGS_ENABLE_PUSH] == 0
        ack = await client.until(http2.SETTINGS)
        assert ack[1] == http2.ACK
        await client.close()

    serve(case)


def test_ping_is_answered_with_its_payload(raw_http2: Any) -> None:
    async def case(port: int, handler: Answering) -> None:
        client = await raw_http2.connect(port)
        client.send(http2.PING, 0, 0, b"pingpong")
        _kind, flags, _, payload = await client.until(http2.PING)
        assert (flags, payload) == (http2.ACK, b"pingpong")
        await client.close()

    serve(case)


def test_requests_on_one_connection_are_answered_on_their_own_streams(raw_http2: Any) -> None:
    async def case(port: int, handler: Answering) -> None:
        client = await raw_http2.connect(port)
        for stream_id, size in ((1, 10), (3, 0), (5, 20_000)):
            client.request(stream_id, str(size).encode())
        for stream_id, size in ((1, 10), (3, 0), (5, 20_000)):
            headers, body, trailers = await client.response(stream_id)
            assert headers[":status"] == "200"
            assert body == b"x" * size
            assert trailers == {"done": str(size)}
        assert [s.id for s in handler.requests] == [1, 3, 5]
        await client.close()

    serve(case)


def test_a_body_larger_than_the_clients_windows_waits_for_window_updates(raw_http2: Any) -> None:
    async def case(port: int, handler: Answering) -> None:
        # The stream window is 1,000 bytes and the connection's stays at the default 65,535.
        client = await raw_http2.connect(
            port, settings=((http2.SETTINGS_INITIAL_WINDOW_SIZE, 1000),)
        )
        client.request(1, b"100000")
        await client.until(http2.HEADERS, 1)
        sent = 0
        while sent < 1000:
            _kind, _, _, payload = await client.until(http2.DATA, 1)
            sent += len(payload)
        assert sent == 1000  # no more than the window
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(client.until(http2.DATA, 1), 0.3)
        # Opening the stream window alone gets the rest of the connection window, and no more.
        client.send(http2.WINDOW_UPDATE, 0, 1, (200_000).to_bytes(4, "big"))
        while sent < 65_535:
            sent += len((await client.until(http2.DATA, 1))[3])
        assert sent == 65_535
        client.send(http2.WINDOW_UPDATE, 0, 0, (200_000).to_bytes(4, "big"))
        _, body, trailers = await client.response(1, headers_read=True)
        assert sent + len(body) == 100_000
        assert trailers == {"done": "100000"}
        await client.close()

    serve(case)


def test_a_lowered_initial_window_applies_to_open_streams(raw_http2: Any) -> None:
    async def case(port: int, handler: Answering) -> None:
        client = await raw_http2.connect(port, settings=((http2.SETTINGS_INITIAL_WINDOW_SIZE, 0),))
        client.request(1, b"50")
        await client.until(http2.HEADERS, 1)
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(client.until(http2.DATA, 1), 0.3)
        payload = struct.pack(">HI", http2.SETTINGS_INITIAL_WINDOW_SIZE, 100)
        client.send(http2.SETTINGS, 0, 0, payload)
        _, body, trailers = await client.response(1, headers_read=True)
        assert (body, trailers) == (b"x" * 50, {"done": "50"})
        await client.close()

    serve(case)


def test_header_blocks_continue_across_frames(raw_http2: Any) -> None:
    async def case(port: int, handler: Answering) -> None:
        client = await raw_http2.connect(port)
        block = client.block(
            [(":method", "POST"), (":path", "/t"), (":scheme", "http"), ("x-pad", "p" * 3000)]
        )
        client.send(http2.HEADERS, 0, 1, block[:10])
        client.send(http2.CONTINUATION, 0, 1, block[10:100])
        client.send(http2.CONTINUATION, http2.END_HEADERS, 1, block[100:])
        client.send(http2.DATA, http2.END_STREAM, 1, b"3")
        _, body, _ = await client.response(1)
        assert body == b"xxx"
        assert handler.requests[0].header("x-pad") == "p" * 3000
        await client.close()

    serve(case)


async def _reset_code(client: Any, stream_id: int) -> int:
    _, _, _, payload = await client.until(http2.RST_STREAM, stream_id)
    return int.from_bytes(payload, "big")


async def _goaway(client: Any) -> tuple[int, int, bytes]:
    _, _, _, payload = await client.until(http2.GOAWAY)
    last, code = struct.unpack(">II", payload[:8])
    return last, code, payload[8:]


@pytest.mark.parametrize(
    ("frames", "code", "words"),
    [
        ([(http2.HEADERS, 0, 1, b""), (http2.PING, 0, 0, b"12345678")], 1, b"interrupted"),
        ([(http2.CONTINUATION, http2.END_HEADERS, 1, b"")], 1, b"CONTINUATION"),
        ([(http2.HEADERS, http2.END_HEADERS, 2, b"")], 1, b"stream 2"),
        ([(http2.DATA, 0, 7, b"x")], 1, b"idle stream 7"),
        ([(http2.PING, 0, 0, b"short")], 6, b"8 bytes"),
        ([(http2.SETTINGS, 0, 0, b"12345")], 6, b"multiple of 6"),
        ([(http2.SETTINGS, 0, 0, struct.pack(">HI", 5, 100))], 1, b"MAX_FRAME_SIZE 100"),
        ([(http2.SETTINGS, 0, 0, struct.pack(">HI", 4, 2**31))], 3, b"INITIAL_WINDOW_SIZE"),
        ([(http2.WINDOW_UPDATE, 0, 0, b"\x00\x00\x00\x00")], 1, b"WINDOW_UPDATE of 0"),
        ([(http2.WINDOW_UPDATE, 0, 0, b"\x7f\xff\xff\xff")], 3, b"connection window"),
        ([(http2.PUSH_PROMISE, http2.END_HEADERS, 1, b"\x00\x00\x00\x02")], 1, b"push"),
        ([(http2.HEADERS, http2.END_HEADERS, 1, b"\xff\xff\xff\xff")], 9, b"undecodable"),
        ([(0x20, 0, 0, b"unknown types are ignored"), (http2.PING, 0, 0, b"short")], 6, b"8 bytes"),
    ],
)
def test_connection_errors_go_away_with_their_code(
    raw_http2: Any, frames: list[Frame], code: int, words: bytes
) -> None:
    async def case(port: int, handler: Answering) -> None:
        client = await raw_http2.connect(port)
        for frame in frames:
            client.send(*frame)
        _last, got, debug = await _goaway(client)
        assert (got, words in debug) == (code, True), debug
        assert await client.reader.read() == b""  # and the server closes
        await client.close()

    serve(case)


def test_a_client_that_is_not_http2_is_told_and_disconnected(raw_http2: Any) -> None:
    async def case(port: int, handler: Answering) -> None:
        client = await raw_http2.connect(port, preface=b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        _last, code, debug = await _goaway(client)
        assert code == http2.PROTOCOL_ERROR
        assert b"REST is on the HTTP port" in debug
        await client.close()

    serve(case)


def test_a_frame_over_the_announced_size_is_a_frame_size_error(raw_http2: Any) -> None:
    async def case(port: int, handler: Answering) -> None:
        client = await raw_http2.connect(port)
        client.writer.write((http2.FRAME_SIZE + 1).to_bytes(3, "big") + b"\x00\x00\x00\x00\x00\x01")
        _last, code, _debug = await _goaway(client)
        assert code == http2.FRAME_SIZE_ERROR
        await client.close()

    serve(case)


def test_a_cancelled_stream_reaches_the_handler_and_the_connection_lives_on(
    raw_http2: Any,
) -> None:
    async def case(port: int, handler: Answering) -> None:
        handler.hold = True
        client = await raw_http2.connect(port)
        client.request(1, b"5")
        client.send(http2.RST_STREAM, 0, 1, struct.pack(">I", http2.CANCEL))
        client.send(http2.PING, 0, 0, b"afterrst")
        await client.until(http2.PING)
        assert handler.resets == [1]
        handler.hold = False
        client.request(3, b"2")
        _, body, _ = await client.response(3)
        assert body == b"xx"
        await client.close()

    serve(case)


def test_dropping_the_connection_resets_its_open_streams(raw_http2: Any) -> None:
    async def case(port: int, handler: Answering) -> None:
        handler.hold = True
        client = await raw_http2.connect(port)
        client.request(1, b"5")
        client.request(3, b"5")
        await client.until(http2.SETTINGS)
        while len(handler.requests) < 2:
            await asyncio.sleep(0.01)
        await client.close()
        for _ in range(200):
            if len(handler.resets) == 2:
                break
            await asyncio.sleep(0.01)
        assert sorted(handler.resets) == [1, 3]

    serve(case)


def test_a_body_over_the_limit_is_dropped_and_marked(raw_http2: Any) -> None:
    async def case(port: int, handler: Answering) -> None:
        client = await raw_http2.connect(port)
        client.send(http2.HEADERS, http2.END_HEADERS, 1, client.block([(":method", "POST")]))
        for _ in range(3):
            client.send(http2.DATA, 0, 1, b"y" * 400)
        client.send(http2.DATA, http2.END_STREAM, 1, b"")
        headers, _, _ = await client.response(1)
        assert headers[":status"] == "413"
        assert handler.requests[0].too_large is not None
        assert "1000 bytes" in handler.requests[0].too_large
        assert handler.requests[0].body == b""
        await client.close()

    serve(case, max_body_bytes=1000)


def test_large_request_bodies_get_window_updates(raw_http2: Any) -> None:
    async def case(port: int, handler: Answering) -> None:
        client = await raw_http2.connect(port)
        client.send(http2.HEADERS, http2.END_HEADERS, 1, client.block([(":method", "POST")]))
        chunk = b"0" * (http2.FRAME_SIZE // 2)
        for _ in range(http2.STREAM_WINDOW // len(chunk) // 2):
            client.send(http2.DATA, 0, 1, chunk)
        _, _, _stream_id, payload = await client.until(http2.WINDOW_UPDATE, 1)
        assert int.from_bytes(payload, "big") == http2.STREAM_WINDOW // 2
        client.send(http2.DATA, http2.END_STREAM, 1, b"")
        await client.response(1)
        await client.close()

    serve(case, max_body_bytes=http2.STREAM_WINDOW)


def test_a_handler_that_fails_resets_only_its_stream(
    raw_http2: Any, caplog: pytest.LogCaptureFixture
) -> None:
    async def case(port: int, handler: Answering) -> None:
        client = await raw_http2.connect(port)
        client.request(1, b"not a size")  # the handler's int() raises
        _, _, stream_id, payload = await client.until(http2.RST_STREAM)
        assert (stream_id, int.from_bytes(payload, "big")) == (1, http2.INTERNAL_ERROR)
        client.request(3, b"1")
        _, body, _ = await client.response(3)
        assert body == b"x"
        await client.close()

    serve(case)
    assert "answering HTTP/2 stream 1 failed" in caplog.text


def test_streams_over_the_concurrency_limit_are_refused(
    raw_http2: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(http2, "MAX_CONCURRENT_STREAMS", 2)

    async def case(port: int, handler: Answering) -> None:
        handler.hold = True
        client = await raw_http2.connect(port)
        for stream_id in (1, 3, 5):
            client.request(stream_id, b"1")
        _, _, stream_id, payload = await client.until(http2.RST_STREAM)
        assert (stream_id, int.from_bytes(payload, "big")) == (5, http2.REFUSED_STREAM)
        assert [s.id for s in handler.requests] == [1, 3]
        await client.close()

    serve(case)


def test_going_away_finishes_open_streams_then_closes(raw_http2: Any) -> None:
    async def case(port: int, handler: Answering) -> None:
        handler.hold = True
        client = await raw_http2.connect(port)
        client.request(1, b"4")
        while not handler.requests:
            await asyncio.sleep(0.01)
        stream = handler.requests[0]
        connection = handler.connection
        assert connection is not None
        connection.go_away()
        last, code, _ = await _goaway(client)
        assert (last, code) == (1, http2.NO_ERROR)
        client.request(3, b"1")  # after GOAWAY: refused
        _, _, refused, _ = await client.until(http2.RST_STREAM)
        assert refused == 3
        connection.respond(stream, ((b":status", b"200"),), b"done", ())
        _, body, _ = await client.response(1)
        assert body == b"done"
        assert await client.reader.read() == b""
        await client.close()

    serve(case)


def test_unfinished_bodies_are_bounded_per_connection(raw_http2: Any) -> None:
    async def case(port: int, handler: Answering) -> None:
        client = await raw_http2.connect(port)
        chunk = b"0" * 120_000
        for stream_id in (1, 3, 5):  # 300,000 (twice the largest body) may be held at once
            client.send(http2.HEADERS, http2.END_HEADERS, stream_id, client.block([]))
            client.send(http2.DATA, 0, stream_id, chunk)
        client.send(http2.DATA, http2.END_STREAM, 5, b"")
        headers, _, _ = await client.response(5)
        assert headers[":status"] == "413"
        refusal = handler.requests[0].too_large
        assert refusal is not None
        assert "holds 240000 bytes of unfinished requests, and 300000 is the most" in refusal
        # The window came back as the data arrived, and the held streams still finish.
        for stream_id in (1, 3):
            client.send(http2.DATA, http2.END_STREAM, stream_id, b"")
            headers, body, _ = await client.response(stream_id)
            assert (headers[":status"], body) == ("200", b"")
        await client.close()

    serve(case, max_body_bytes=150_000)


def test_data_beyond_a_streams_window_resets_it(
    raw_http2: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(http2, "STREAM_WINDOW", 1000)

    async def case(port: int, handler: Answering) -> None:
        client = await raw_http2.connect(port)
        client.send(http2.HEADERS, http2.END_HEADERS, 1, client.block([]))
        client.send(http2.DATA, 0, 1, b"0" * 600)  # over half: the window is returned
        _, _, _, increment = await client.until(http2.WINDOW_UPDATE, 1)
        assert int.from_bytes(increment, "big") == 600
        client.send(http2.DATA, 0, 1, b"0" * 1001)  # one byte past the window
        assert await _reset_code(client, 1) == http2.FLOW_CONTROL_ERROR
        assert handler.resets == [1]
        await client.close()

    serve(case)


def test_data_beyond_the_connections_window_is_a_connection_error(
    raw_http2: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(http2, "CONNECTION_WINDOW", 70_000)

    async def case(port: int, handler: Answering) -> None:
        client = await raw_http2.connect(port)
        client.send(http2.HEADERS, http2.END_HEADERS, 1, client.block([]))
        client.send(http2.DATA, 0, 1, b"0" * 70_001)
        _, code, debug = await _goaway(client)
        assert (code, debug) == (http2.FLOW_CONTROL_ERROR, b"DATA beyond the connection's window")
        await client.close()

    serve(case)


def test_data_after_the_end_of_a_request_resets_it(raw_http2: Any) -> None:
    async def case(port: int, handler: Answering) -> None:
        handler.hold = True
        client = await raw_http2.connect(port)
        client.request(1, b"1")
        client.send(http2.DATA, 0, 1, b"more")
        assert await _reset_code(client, 1) == http2.STREAM_CLOSED
        assert handler.resets == [1]
        await client.close()

    serve(case)


def test_stream_level_mistakes_reset_only_their_stream(raw_http2: Any) -> None:
    async def case(port: int, handler: Answering) -> None:
        handler.hold = True
        client = await raw_http2.connect(port)
        client.request(1, b"1")
        client.send(http2.PRIORITY, 0, 1, b"\x00\x00")
        assert await _reset_code(client, 1) == http2.FRAME_SIZE_ERROR
        client.request(3, b"1")
        client.send(http2.WINDOW_UPDATE, 0, 3, b"\x00\x00\x00\x00")
        assert await _reset_code(client, 3) == http2.PROTOCOL_ERROR
        assert handler.resets == [1, 3]
        client.send(http2.WINDOW_UPDATE, 0, 9, b"\x00\x00\x00\x01")  # idle stream: fatal
        _, code_, _ = await _goaway(client)
        assert code_ == http2.PROTOCOL_ERROR
        await client.close()

    serve(case)


def test_header_values_that_are_not_utf8_are_kept_as_bytes(raw_http2: Any) -> None:
    async def case(port: int, handler: Answering) -> None:
        client = await raw_http2.connect(port)
        block = client.block([(":method", "POST"), ("user-agent", "caf\xe9".encode("latin-1"))])
        client.send(http2.HEADERS, http2.END_HEADERS, 1, block)
        client.send(http2.DATA, http2.END_STREAM, 1, b"1")
        _, body, _ = await client.response(1)
        assert body == b"x"
        assert handler.requests[0].header("user-agent") == "caf\xe9"
        await client.close()

    serve(case)


def test_a_client_that_does_not_read_is_not_read_from(raw_http2: Any) -> None:
    async def case(port: int, handler: Answering) -> None:
        client = await raw_http2.connect(port)
        await client.until(http2.SETTINGS)
        connection = handler.connection
        assert connection is not None and connection.transport is not None
        # PINGs whose answers are never read: the server's socket buffer fills, it pauses.
        for _ in range(1000):
            for _ in range(5000):
                client.send(http2.PING, 0, 0, b"12345678")
            await asyncio.sleep(0.01)
            if not connection.transport.is_reading():
                break
        assert not connection.transport.is_reading()
        await client.close()

    serve(case)


def test_answers_are_not_held_back_by_nagle(raw_http2: Any) -> None:
    """A socket made outside asyncio (proto 0, as the server's are) gets TCP_NODELAY too."""
    handler = Answering()

    async def main() -> int:
        sock = socket.create_server(("127.0.0.1", 0))
        sock.setblocking(False)
        assert sock.proto == 0  # asyncio sets TCP_NODELAY only for IPPROTO_TCP sockets

        def connection() -> Http2Connection:
            handler.connection = Http2Connection(handler, max_body_bytes=100)
            return handler.connection

        server = await asyncio.get_running_loop().create_server(connection, sock=sock)
        client = await raw_http2.connect(sock.getsockname()[1])
        client.request(1, b"1")
        await client.response(1)
        assert handler.connection is not None and handler.connection.transport is not None
        accepted = handler.connection.transport.get_extra_info("socket")
        nodelay: int = accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        await client.close()
        server.close()
        return nodelay

    assert asyncio.run(main()) != 0


def test_remembered_header_blocks_follow_the_dynamic_table() -> None:
    encoder = hpack.Encoder()
    blocks = http2.HeaderBlocks()
    first = encoder.encode([(":path", "/a"), ("x-id", "one")])  # enters the table
    assert blocks.decode(first) == ([(":path", "/a"), ("x-id", "one")], 5 + 2 + 4 + 3 + 2 * 32)
    again = encoder.encode([(":path", "/a"), ("x-id", "one")])  # indexed only: remembered
    assert blocks.decode(again)[0] == [(":path", "/a"), ("x-id", "one")]
    assert blocks.decode(again) is blocks.decode(again)
    # A new entry shifts the dynamic indexes: the same bytes now mean something else.
    blocks.decode(encoder.encode([("x-id", "two")]))
    assert blocks.decode(again)[0] != [(":path", "/a"), ("x-id", "one")]
    assert blocks.decode(again)[0] == [("x-id", "one"), ("x-id", "two")]  # indexes 63 and 62
