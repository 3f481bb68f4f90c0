"""Messages between the runtime's parent and its workers: length-prefixed pickles on a descriptor.

Why not ``multiprocessing.connection.Connection``: it reads every message with two system calls
(the length, then the body) and its ``wait`` builds a new selector on every call.  On a machine
with as many cores as groups, each of those microseconds in the parent is taken from a worker.
A ``Channel`` writes a message with one system call and reads whatever is available with one,
returning every complete message in it, so a dispatcher woken by two completions reads both at
once.  The framing (``frame``, ``split_frames``) is pure and tested apart from the I/O.

A frame is a 4-byte little-endian payload length followed by the payload, a pickle of a tuple.
"""

from __future__ import annotations

import os
import pickle
import struct
from collections import deque
from typing import Any

HEADER = struct.Struct("<I")
READ_SIZE = 1 << 16
MAX_FRAME = (1 << 32) - 1


def frame(msg: tuple[Any, ...]) -> bytes:
    """One message as bytes on the wire: its length, then its pickle."""
    payload = pickle.dumps(msg, protocol=pickle.HIGHEST_PROTOCOL)
    if len(payload) > MAX_FRAME:
        raise ValueError(f"a message of {len(payload)} bytes is over the {MAX_FRAME}-byte limit")
    return HEADER.pack(len(payload)) + payload


def split_frames(buffer: bytes | bytearray) -> tuple[list[bytes], int]:
    """The complete frames' payloads at the start of ``buffer``, and how many bytes they used.

    A frame cut short (its header or its payload not all there yet) is left for the next read.
    """
    payloads: list[bytes] = []
    start = 0
    view = memoryview(buffer)
    while len(buffer) - start >= HEADER.size:
        (size,) = HEADER.unpack_from(buffer, start)
        end = start + HEADER.size + size
        if end > len(buffer):
            break
        payloads.append(bytes(view[start + HEADER.size : end]))
        start = end
    view.release()
    return payloads, start


class Channel:
    """One end of a pipe or socket carrying messages; owns the descriptor.

    Not thread-safe: each end is used by one thread (the group's dispatcher, or a worker).
    """

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._buffer = bytearray()
        self._ready: deque[tuple[Any, ...]] = deque()

    def fileno(self) -> int:
        return self.fd

    def send(self, msg: tuple[Any, ...]) -> None:
        """Write one message; one system call unless the descriptor takes it in parts."""
        data = memoryview(frame(msg))
        while data:
            data = data[os.write(self.fd, data) :]

    def has_ready(self) -> bool:
        """Whether complete messages were read already (a poll would not report them)."""
        return bool(self._ready)

    def read_available(self) -> list[tuple[Any, ...]]:
        """Messages read already, else one read (blocking until data comes) and its messages.

        Raises EOFError when the other end is closed (a dead worker, a parent gone).
        """
        if not self._ready:
            self._read_once()
        messages = list(self._ready)
        self._ready.clear()
        return messages

    def recv(self) -> tuple[Any, ...]:
        """The next message, reading (blocking) until one is complete."""
        while not self._ready:
            self._read_once()
        return self._ready.popleft()

    def _read_once(self) -> None:
        data = os.read(self.fd, READ_SIZE)
        if not data:
            raise EOFError(f"descriptor {self.fd} was closed at the other end")
        if self._buffer:
            self._buffer += data
            payloads, used = split_frames(self._buffer)
            del self._buffer[:used]
        else:
            payloads, used = split_frames(data)
            self._buffer += data[used:]
        self._ready.extend(pickle.loads(p) for p in payloads)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
