"""HTTP/2 server connections (RFC 9113) over cleartext, as gRPC clients speak it, on asyncio.

One ``Http2Connection`` is the asyncio protocol of one TCP connection.  It reads the client's
preface and frames, keeps the HPACK decoding state (RFC 7541, with the ``hpack`` package), both
directions' flow-control windows and the streams, and hands each *complete* request (headers and
whole body) to its ``StreamHandler``.  The handler answers with ``respond`` (headers, body, and
trailers or none), which is sent at once as far as the client's windows allow and the rest when
they open.  A request is one stream: the gRPC front end needs nothing else (unary calls), so
server push and streaming bodies towards the handler are not offered.

What a client gets wrong is answered the way RFC 9113 says: a connection error sends GOAWAY with
its code and closes; a stream error resets that stream only.  Limits are the SETTINGS this server
sends: ``MAX_CONCURRENT_STREAMS``, ``MAX_FRAME_SIZE``, ``MAX_HEADER_LIST_SIZE`` and the windows.
A header list over the limit still decodes (the HPACK state must stay in step) and is handed on
marked, so the handler can refuse it in its protocol's words; a body over the handler's limit is
dropped as it arrives and the stream handed on marked the same way.

Responses encode their header fields as literals that never touch the dynamic table, so the
encoder keeps no state; the decoder's table follows the client's SETTINGS_HEADER_TABLE_SIZE.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from hpack import Decoder
from hpack.exceptions import HPACKError

log = logging.getLogger(__name__)

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
NOT_HTTP2 = (
    "not an HTTP/2 client preface (this port serves gRPC over HTTP/2 cleartext; REST is on the "
    "HTTP port)"
)

# Frame types (RFC 9113 section 6).
DATA = 0x0
HEADERS = 0x1
PRIORITY = 0x2
RST_STREAM = 0x3
SETTINGS = 0x4
PUSH_PROMISE = 0x5
PING = 0x6
GOAWAY = 0x7
WINDOW_UPDATE = 0x8
CONTINUATION = 0x9

# Flags.
END_STREAM = 0x1
ACK = 0x1
END_HEADERS = 0x4
PADDED = 0x8
PRIORITY_FLAG = 0x20

# Error codes (section 7).
NO_ERROR = 0x0
PROTOCOL_ERROR = 0x1
INTERNAL_ERROR = 0x2
FLOW_CONTROL_ERROR = 0x3
STREAM_CLOSED = 0x5
FRAME_SIZE_ERROR = 0x6
REFUSED_STREAM = 0x7
CANCEL = 0x8
COMPRESSION_ERROR = 0x9

# Settings (section 6.5.2).
SETTINGS_HEADER_TABLE_SIZE = 0x1
SETTINGS_ENABLE_PUSH = 0x2
SETTINGS_MAX_CONCURRENT_STREAMS = 0x3
SETTINGS_INITIAL_WINDOW_SIZE = 0x4
SETTINGS_MAX_FRAME_SIZE = 0x5
SETTINGS_MAX_HEADER_LIST_SIZE = 0x6

DEFAULT_WINDOW = 65_535
DEFAULT_FRAME_SIZE = 16_384
MAX_WINDOW = 2**31 - 1
MAX_FRAME_SIZE_LIMIT = 2**24 - 1

# What this server announces.
MAX_CONCURRENT_STREAMS = 1_000
FRAME_SIZE = 1 << 20
STREAM_WINDOW = 4 << 20
CONNECTION_WINDOW = 16 << 20
MAX_HEADER_LIST_SIZE = 16 << 10
# Unfinished request bodies one connection may hold, as a multiple of the largest body.
BUFFERED_BODIES = 2
# After the last answer of a connection that goes away, how long it reads on before closing.
LINGER_S = 1.0
# A header block is buffered whole before it is decoded; past this it is an attack, not a request.
MAX_HEADER_BLOCK = 256 << 10


def frame(kind: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    """One frame on the wire (pure)."""
    length = len(payload)
    return (
        length.to_bytes(3, "big")
        + bytes((kind, flags))
        + (stream_id & MAX_WINDOW).to_bytes(4, "big")
        + payload
    )


def _hpack_int(value: int, prefix_bits: int, first: int) -> bytes:
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes((first | value,))
    out = bytearray((first | limit,))
    value -= limit
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _hpack_string(data: bytes) -> bytes:
    return _hpack_int(len(data), 7, 0x00) + data


# Static-table indexes (RFC 7541 appendix A) this encoder uses.
_STATUS_200 = 8
_STATIC_NAMES = {b":status": 8, b"content-type": 31}
_STATUS_INDEXED = {b"200": 0x80 | _STATUS_200}


def encode_headers(headers: Iterable[tuple[bytes, bytes]]) -> bytes:
    """An HPACK block of literals that never enter the dynamic table (pure).

    ``:status: 200`` is the static table's entry 8; names the static table has are referred to
    by index; everything else is a literal name and value, neither Huffman-coded.
    """
    out = bytearray()
    for name, value in headers:
        if name == b":status" and value in _STATUS_INDEXED:
            out.append(_STATUS_INDEXED[value])
            continue
        index = _STATIC_NAMES.get(name)
        if index is not None:
            out += _hpack_int(index, 4, 0x00)  # literal without indexing, indexed name
        else:
            out.append(0x00)
            out += _hpack_string(name)
        out += _hpack_string(value)
    return bytes(out)


class HeaderBlocks:
    """HPACK decoding that remembers blocks which left the dynamic table as it was.

    A client repeating a call sends the same bytes each time (every field indexed), and the
    ``hpack`` decoder, pure Python, spends about 22 us per such block.  A block decoded with
    the table in a given state always decodes the same way and changes nothing, so while the
    table stays in that state its answer can be reused; any change clears what is remembered.
    """

    MAX_BLOCKS = 64
    MAX_BLOCK_BYTES = 4096

    def __init__(self) -> None:
        self._decoder = Decoder(max_header_list_size=MAX_HEADER_BLOCK)
        self._known: dict[bytes, tuple[list[tuple[str, str]], int]] = {}

    def decode(self, block: bytes) -> tuple[list[tuple[str, str]], int]:
        """The block's fields (shared between callers: never modify them) and their size as
        SETTINGS_MAX_HEADER_LIST_SIZE counts it."""
        known = self._known.get(block)
        if known is not None:
            return known
        table = self._decoder.header_table
        before = (tuple(table.dynamic_entries), table.maxsize)
        # Latin-1 maps every byte: a value HTTP/2 allows never fails to decode.
        fields = [
            (bytes(name).decode("latin-1"), bytes(value).decode("latin-1"))
            for name, value in self._decoder.decode(block, raw=True)
        ]
        decoded = fields, sum(len(name) + len(value) + 32 for name, value in fields)
        if (tuple(table.dynamic_entries), table.maxsize) != before:
            self._known.clear()
        elif len(self._known) < self.MAX_BLOCKS and len(block) <= self.MAX_BLOCK_BYTES:
            self._known[block] = decoded
        return decoded


class Http2Error(Exception):
    """A connection error: GOAWAY with ``code``, then close."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(eq=False)
class Stream:
    """One request: what arrived, and what is still to be sent of its answer."""

    id: int
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytearray = field(default_factory=bytearray)
    # Set when the request broke a limit; the handler answers in its own protocol's words.
    too_large: str | None = None
    received: bool = False
    send_window: int = DEFAULT_WINDOW
    # Bytes consumed since the last stream WINDOW_UPDATE.
    unacknowledged: int = 0
    # What the client may still send on this stream (the window this server granted).
    recv_window: int = STREAM_WINDOW
    pending: bytearray = field(default_factory=bytearray)
    pending_tail: bytes | None = None  # trailers block, or b"" for END_STREAM on the last DATA
    closed: bool = False
    responded: bool = False

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None


class StreamHandler(Protocol):
    """The application above the connection."""

    def request(self, connection: Http2Connection, stream: Stream) -> None:
        """A complete request (or one marked ``too_large``); answer it with ``respond``."""

    def reset(self, stream: Stream) -> None:
        """The client cancelled the stream, or the connection went away: stop working on it."""


class Http2Connection(asyncio.Protocol):
    def __init__(
        self,
        handler: StreamHandler,
        *,
        max_body_bytes: int,
    ) -> None:
        self.handler = handler
        self.max_body_bytes = max_body_bytes
        self.transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._preface_seen = False
        self._decoder = HeaderBlocks()
        self._peer_window = DEFAULT_WINDOW  # connection-level send window
        self._peer_initial_window = DEFAULT_WINDOW
        self._peer_frame_size = DEFAULT_FRAME_SIZE
        self._recv_unacknowledged = 0
        # What the client may still send on all streams: the default until connection_made
        # grants the rest of CONNECTION_WINDOW.
        self._recv_window = DEFAULT_WINDOW
        # Bodies of unfinished requests held on this connection, and their limit.
        self._buffered = 0
        self._buffer_limit = BUFFERED_BODIES * max_body_bytes
        self.streams: dict[int, Stream] = {}
        self._last_stream_id = 0
        # HEADERS without END_HEADERS: (stream, block so far, END_STREAM flag)
        self._continuing: tuple[Stream, bytearray, bool] | None = None
        self._blocked: list[Stream] = []  # streams with output waiting for a window
        self.going_away = False
        self._lingering: asyncio.TimerHandle | None = None
        self.closed = asyncio.get_running_loop().create_future()

    # -- asyncio.Protocol ------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            # asyncio sets this only on sockets it made itself with proto IPPROTO_TCP; without
            # it a client's delayed ACK holds every second write back 40 ms.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        settings = b"".join(
            struct.pack(">HI", key, value)
            for key, value in (
                (SETTINGS_ENABLE_PUSH, 0),
                (SETTINGS_MAX_CONCURRENT_STREAMS, MAX_CONCURRENT_STREAMS),
                (SETTINGS_INITIAL_WINDOW_SIZE, STREAM_WINDOW),
                (SETTINGS_MAX_FRAME_SIZE, FRAME_SIZE),
                (SETTINGS_MAX_HEADER_LIST_SIZE, MAX_HEADER_LIST_SIZE),
            )
        )
        raise_window = struct.pack(">I", CONNECTION_WINDOW - DEFAULT_WINDOW)
        self._recv_window = CONNECTION_WINDOW
        self._write(frame(SETTINGS, 0, 0, settings) + frame(WINDOW_UPDATE, 0, 0, raise_window))

    def connection_lost(self, exc: Exception | None) -> None:
        if self._lingering is not None:
            self._lingering.cancel()
        for stream in list(self.streams.values()):
            self._remove(stream)
        self._blocked.clear()
        if not self.closed.done():
            self.closed.set_result(None)

    def pause_writing(self) -> None:
        # A client that does not read its answers is not read from either, so it cannot
        # make the server buffer answers without end.
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        if self._lingering is not None:
            return  # answered everything and half-closed: only waiting for the client to close
        buffer = self._buffer
        buffer += data
        try:
            if not self._preface_seen:
                if not PREFACE.startswith(bytes(buffer[: len(PREFACE)])):
                    raise Http2Error(PROTOCOL_ERROR, NOT_HTTP2)
                if len(buffer) < len(PREFACE):
                    return
                del buffer[: len(PREFACE)]
                self._preface_seen = True
            offset = 0
            end = len(buffer)
            while end - offset >= 9:
                length = int.from_bytes(buffer[offset : offset + 3], "big")
                if length > FRAME_SIZE:
                    raise Http2Error(
                        FRAME_SIZE_ERROR, f"a frame of {length} bytes exceeds {FRAME_SIZE}"
                    )
                if end - offset - 9 < length:
                    break
                kind = buffer[offset + 3]
                flags = buffer[offset + 4]
                stream_id = int.from_bytes(buffer[offset + 5 : offset + 9], "big") & MAX_WINDOW
                payload = bytes(buffer[offset + 9 : offset + 9 + length])
                offset += 9 + length
                self._frame(kind, flags, stream_id, payload)
                if self.transport is None or self.transport.is_closing():
                    return
            del buffer[:offset]
        except Http2Error as exc:
            self.abort(exc.code, str(exc))

    # -- frames ----------------------------------------------------------------------------------

    def _frame(self, kind: int, flags: int, stream_id: int, payload: bytes) -> None:
        if self._continuing is not None and kind != CONTINUATION:
            raise Http2Error(PROTOCOL_ERROR, "a header block was interrupted")
        if kind == DATA:
            self._data(flags, stream_id, payload)
        elif kind == HEADERS:
            self._headers(flags, stream_id, payload)
        elif kind == CONTINUATION:
            self._continuation(flags, stream_id, payload)
        elif kind == WINDOW_UPDATE:
            self._window_update(stream_id, payload)
        elif kind == SETTINGS:
            self._settings(flags, stream_id, payload)
        elif kind == PING:
            if stream_id != 0:
                raise Http2Error(PROTOCOL_ERROR, "PING on a stream")
            if len(payload) != 8:
                raise Http2Error(FRAME_SIZE_ERROR, "PING payload is not 8 bytes")
            if not flags & ACK:
                self._write(frame(PING, ACK, 0, payload))
        elif kind == RST_STREAM:
            if stream_id == 0:
                raise Http2Error(PROTOCOL_ERROR, "RST_STREAM on stream 0")
            if len(payload) != 4:
                raise Http2Error(FRAME_SIZE_ERROR, "RST_STREAM payload is not 4 bytes")
            stream = self.streams.get(stream_id)
            if stream is not None:
                self._remove(stream)
            elif stream_id > self._last_stream_id:
                raise Http2Error(PROTOCOL_ERROR, "RST_STREAM on an idle stream")
        elif kind == GOAWAY:
            self.going_away = True
            self._close_if_idle()
        elif kind == PRIORITY:
            if stream_id == 0:
                raise Http2Error(PROTOCOL_ERROR, "PRIORITY on stream 0")
            if len(payload) != 5:
                self._reset(stream_id, FRAME_SIZE_ERROR)
        elif kind == PUSH_PROMISE:
            raise Http2Error(PROTOCOL_ERROR, "a client may not push")
        # Unknown frame types are ignored (section 5.5).

    def _unpad(self, flags: int, payload: bytes) -> bytes:
        if not flags & PADDED:
            return payload
        if not payload or payload[0] >= len(payload):
            raise Http2Error(PROTOCOL_ERROR, "padding longer than the frame")
        return payload[1 : len(payload) - payload[0]]

    def _headers(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id == 0 or stream_id % 2 == 0:
            raise Http2Error(PROTOCOL_ERROR, f"HEADERS on stream {stream_id}")
        block = self._unpad(flags, payload)
        if flags & PRIORITY_FLAG:
            block = block[5:]
        stream = self.streams.get(stream_id)
        if stream is not None:
            # Trailers of a request: gRPC clients send none; accept and end the request.
            if stream.received:
                raise Http2Error(STREAM_CLOSED, f"HEADERS on half-closed stream {stream_id}")
            if not flags & END_STREAM:
                raise Http2Error(PROTOCOL_ERROR, "trailers without END_STREAM")
        else:
            if stream_id <= self._last_stream_id:
                raise Http2Error(STREAM_CLOSED, f"HEADERS on closed stream {stream_id}")
            self._last_stream_id = stream_id
            stream = Stream(
                stream_id, send_window=self._peer_initial_window, recv_window=STREAM_WINDOW
            )
            self.streams[stream_id] = stream
        if flags & END_HEADERS:
            self._header_block(stream, block, bool(flags & END_STREAM))
        else:
            self._continuing = (stream, bytearray(block), bool(flags & END_STREAM))

    def _continuation(self, flags: int, stream_id: int, payload: bytes) -> None:
        if self._continuing is None or self._continuing[0].id != stream_id:
            raise Http2Error(PROTOCOL_ERROR, "CONTINUATION without its HEADERS")
        stream, block, end_stream = self._continuing
        block += payload
        if len(block) > MAX_HEADER_BLOCK:
            raise Http2Error(PROTOCOL_ERROR, f"a header block over {MAX_HEADER_BLOCK} bytes")
        if flags & END_HEADERS:
            self._continuing = None
            self._header_block(stream, bytes(block), end_stream)

    def _header_block(self, stream: Stream, block: bytes, end_stream: bool) -> None:
        try:
            fields, size = self._decoder.decode(block)
        except HPACKError as exc:
            raise Http2Error(COMPRESSION_ERROR, f"undecodable header block: {exc}") from exc
        fresh = not stream.headers
        if fresh:
            stream.headers = fields
            if size > MAX_HEADER_LIST_SIZE:
                stream.too_large = (
                    f"the request's headers are {size} bytes, over the limit of "
                    f"{MAX_HEADER_LIST_SIZE}"
                )
            if self.going_away or len(self.streams) > MAX_CONCURRENT_STREAMS:
                self._reset(stream.id, REFUSED_STREAM)
                return
        if end_stream:
            self._complete(stream)

    def _data(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id == 0:
            raise Http2Error(PROTOCOL_ERROR, "DATA on stream 0")
        self._recv_window -= len(payload)
        if self._recv_window < 0:
            raise Http2Error(FLOW_CONTROL_ERROR, "DATA beyond the connection's window")
        self._consumed(len(payload))
        stream = self.streams.get(stream_id)
        if stream is None or stream.received:
            if stream_id > self._last_stream_id:
                raise Http2Error(PROTOCOL_ERROR, f"DATA on idle stream {stream_id}")
            self._reset(stream_id, STREAM_CLOSED)
            return
        stream.recv_window -= len(payload)
        if stream.recv_window < 0:
            self._reset(stream_id, FLOW_CONTROL_ERROR)
            return
        data = self._unpad(flags, payload)
        if stream.too_large is None:
            self._hold(stream, data)
        if flags & END_STREAM:
            self._complete(stream)
            return
        stream.unacknowledged += len(payload)
        if stream.unacknowledged >= STREAM_WINDOW // 2:
            increment, stream.unacknowledged = stream.unacknowledged, 0
            stream.recv_window += increment
            self._write(frame(WINDOW_UPDATE, 0, stream_id, struct.pack(">I", increment)))

    def _hold(self, stream: Stream, data: bytes) -> None:
        """Buffer part of a body, or mark the request too large and drop what it holds."""
        if len(stream.body) + len(data) > self.max_body_bytes:
            limit = self.max_body_bytes
            stream.too_large = f"the request's body is over the limit of {limit} bytes"
        elif self._buffered + len(data) > self._buffer_limit:
            stream.too_large = (
                f"this connection holds {self._buffered} bytes of unfinished requests, and "
                f"{self._buffer_limit} is the most; send fewer large requests at once"
            )
        else:
            stream.body += data
            self._buffered += len(data)
            return
        self._buffered -= len(stream.body)
        stream.body = bytearray()

    def _consumed(self, size: int) -> None:
        """Return connection window as DATA arrives (buffering is bounded by ``_hold``)."""
        self._recv_unacknowledged += size
        if self._recv_unacknowledged >= CONNECTION_WINDOW // 2:
            increment, self._recv_unacknowledged = self._recv_unacknowledged, 0
            self._recv_window += increment
            self._write(frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", increment)))

    def _complete(self, stream: Stream) -> None:
        stream.received = True
        self._buffered -= len(stream.body)  # the handler holds it now
        try:
            self.handler.request(self, stream)
        except Exception:
            log.exception("answering HTTP/2 stream %d failed", stream.id)
            if not stream.responded:
                stream.closed = True  # no reset() for the handler that just failed
                self._reset(stream.id, INTERNAL_ERROR)

    def _window_update(self, stream_id: int, payload: bytes) -> None:
        if len(payload) != 4:
            raise Http2Error(FRAME_SIZE_ERROR, "WINDOW_UPDATE payload is not 4 bytes")
        increment = int.from_bytes(payload, "big") & MAX_WINDOW
        if stream_id == 0:
            if increment == 0:
                raise Http2Error(PROTOCOL_ERROR, "WINDOW_UPDATE of 0")
            self._peer_window += increment
            if self._peer_window > MAX_WINDOW:
                raise Http2Error(FLOW_CONTROL_ERROR, "connection window over 2^31-1")
            self._flush_blocked()
            return
        stream = self.streams.get(stream_id)
        if stream is None:
            if stream_id > self._last_stream_id:
                raise Http2Error(PROTOCOL_ERROR, f"WINDOW_UPDATE on idle stream {stream_id}")
            return
        if increment == 0 or stream.send_window + increment > MAX_WINDOW:
            self._reset(stream_id, PROTOCOL_ERROR if increment == 0 else FLOW_CONTROL_ERROR)
            return
        stream.send_window += increment
        if stream.pending or stream.pending_tail is not None:
            self._flush(stream)

    def _settings(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id != 0:
            raise Http2Error(PROTOCOL_ERROR, "SETTINGS on a stream")
        if flags & ACK:
            if payload:
                raise Http2Error(FRAME_SIZE_ERROR, "SETTINGS ACK with a payload")
            return
        if len(payload) % 6:
            raise Http2Error(FRAME_SIZE_ERROR, "SETTINGS payload not a multiple of 6")
        for offset in range(0, len(payload), 6):
            key, value = struct.unpack_from(">HI", payload, offset)
            if key == SETTINGS_INITIAL_WINDOW_SIZE:
                if value > MAX_WINDOW:
                    raise Http2Error(FLOW_CONTROL_ERROR, "INITIAL_WINDOW_SIZE over 2^31-1")
                delta = value - self._peer_initial_window
                self._peer_initial_window = value
                for stream in self.streams.values():
                    stream.send_window += delta
                    if stream.send_window > MAX_WINDOW:
                        raise Http2Error(FLOW_CONTROL_ERROR, "a stream window over 2^31-1")
            elif key == SETTINGS_MAX_FRAME_SIZE:
                if not DEFAULT_FRAME_SIZE <= value <= MAX_FRAME_SIZE_LIMIT:
                    raise Http2Error(PROTOCOL_ERROR, f"MAX_FRAME_SIZE {value} out of range")
                self._peer_frame_size = value
            elif key == SETTINGS_ENABLE_PUSH and value > 1:
                raise Http2Error(PROTOCOL_ERROR, f"ENABLE_PUSH {value}")
            # HEADER_TABLE_SIZE bounds the table of the *client's* decoder; this encoder never
            # indexes, so it needs no size update.  The others only bound what this server
            # sends, which is less.
        self._write(frame(SETTINGS, ACK, 0))
        self._flush_blocked()

    # -- answering ---------------------------------------------------------------------------------

    def respond(
        self,
        stream: Stream,
        headers: Sequence[tuple[bytes, bytes]],
        body: bytes = b"",
        trailers: Sequence[tuple[bytes, bytes]] | None = None,
    ) -> None:
        """Answer ``stream``: headers, then ``body`` and ``trailers`` as the windows allow.

        Without a body and trailers the headers end the stream (gRPC's "trailers-only").
        """
        if stream.responded:
            raise RuntimeError(f"stream {stream.id} answered twice")
        stream.responded = True
        if stream.closed or self.transport is None or self.transport.is_closing():
            return
        head = encode_headers(headers)
        ends = not body and trailers is None
        head_frames = self._header_frames(stream.id, head, END_STREAM if ends else 0)
        if ends:
            self._write(head_frames)
            self._finish(stream)
            return
        stream.pending += body
        stream.pending_tail = encode_headers(trailers) if trailers is not None else b""
        self._flush(stream, head_frames)  # one write for a whole small answer

    def _header_frames(self, stream_id: int, block: bytes, flags: int) -> bytes:
        size = self._peer_frame_size
        if len(block) <= size:
            return frame(HEADERS, flags | END_HEADERS, stream_id, block)
        chunks = [block[i : i + size] for i in range(0, len(block), size)]
        out = [frame(HEADERS, flags, stream_id, chunks[0])]
        out += [frame(CONTINUATION, 0, stream_id, chunk) for chunk in chunks[1:-1]]
        out.append(frame(CONTINUATION, END_HEADERS, stream_id, chunks[-1]))
        return b"".join(out)

    def _flush(self, stream: Stream, first: bytes = b"") -> None:
        pending = stream.pending
        out: list[bytes] = [first]
        while pending:
            allowed = min(stream.send_window, self._peer_window, self._peer_frame_size)
            if allowed <= 0:
                break
            chunk = bytes(pending[:allowed])
            del pending[:allowed]
            stream.send_window -= len(chunk)
            self._peer_window -= len(chunk)
            last = not pending and stream.pending_tail == b""
            out.append(frame(DATA, END_STREAM if last else 0, stream.id, chunk))
        if pending:
            if stream not in self._blocked:
                self._blocked.append(stream)
            self._write(b"".join(out))
            return
        tail, stream.pending_tail = stream.pending_tail, None
        if tail:
            out.append(self._header_frames(stream.id, tail, END_STREAM))
        self._write(b"".join(out))
        self._finish(stream)

    def _flush_blocked(self) -> None:
        blocked, self._blocked = self._blocked, []
        for stream in blocked:
            if not stream.closed:
                self._flush(stream)

    def _finish(self, stream: Stream) -> None:
        """The answer is sent: the stream is closed."""
        stream.closed = True
        self._forget(stream)

    def _remove(self, stream: Stream) -> None:
        """The stream ends without (the rest of) its answer: the handler stops working on it."""
        if not stream.received:
            self._buffered -= len(stream.body)
            stream.body = bytearray()
        if not stream.closed:
            stream.closed = True
            self.handler.reset(stream)
        self._forget(stream)

    def _reset(self, stream_id: int, code: int) -> None:
        """A stream error: RST_STREAM with ``code``, and the stream (if open) removed."""
        self._write(frame(RST_STREAM, 0, stream_id, struct.pack(">I", code)))
        stream = self.streams.get(stream_id)
        if stream is not None:
            self._remove(stream)

    def _forget(self, stream: Stream) -> None:
        self.streams.pop(stream.id, None)
        if stream in self._blocked:
            self._blocked.remove(stream)
        self._close_if_idle()

    def _write(self, data: bytes) -> None:
        if (
            data
            and self._lingering is None
            and self.transport is not None
            and not self.transport.is_closing()
        ):
            self.transport.write(data)

    # -- ending ----------------------------------------------------------------------------------

    def go_away(self) -> None:
        """Refuse new streams, let the open ones finish, then close."""
        if self.transport is None or self.transport.is_closing():
            return
        if not self.going_away:
            self.going_away = True
            self._write(frame(GOAWAY, 0, 0, struct.pack(">II", self._last_stream_id, NO_ERROR)))
        self._close_if_idle()

    def abort(self, code: int, message: str) -> None:
        """A connection error: tell the client why, and close."""
        if self.transport is None or self.transport.is_closing():
            return
        log.info("closing an HTTP/2 connection: %s", message)
        payload = struct.pack(">II", self._last_stream_id, code) + message.encode()[:512]
        self._write(frame(GOAWAY, 0, 0, payload))
        self.transport.close()

    def _close_if_idle(self) -> None:
        transport = self.transport
        if not self.going_away or self.streams or transport is None or transport.is_closing():
            return
        # Half-close and read on for a moment: closing outright while the client's last
        # WINDOW_UPDATE or PING is in flight would answer it with a TCP reset, which can
        # discard the end of the answer before the client has read it.
        if self._lingering is not None:
            return
        try:
            transport.write_eof()
        except (OSError, NotImplementedError, RuntimeError):
            transport.close()  # the peer is gone already, or this transport cannot half-close
            return
        self._lingering = asyncio.get_running_loop().call_later(LINGER_S, transport.close)

    def eof_received(self) -> bool:
        if self._lingering is not None and self.transport is not None:
            self.transport.close()
        return False
