"""Messages between the parent and its workers: framing, and one read taking in several."""

from __future__ import annotations

import os
import pickle
import struct
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from neuron_runtime.channel import READ_SIZE, Channel, frame, split_frames

DONE: tuple[Any, ...] = ("done", 7, [(0, 0.25)])
RUN: tuple[Any, ...] = ("run", 8, "mlp", 0, 1, 4096, [(0, (64, 512)), (131072, (64, 10))], [])


def _pickled(msg: tuple[Any, ...]) -> bytes:
    return pickle.dumps(msg, protocol=pickle.HIGHEST_PROTOCOL)


@pytest.mark.parametrize(
    ("buffer", "payloads", "used"),
    [
        (b"", [], 0),
        (frame(DONE)[:3], [], 0),
        (frame(DONE)[:-1], [], 0),
        (frame(DONE), [_pickled(DONE)], len(frame(DONE))),
        (frame(DONE) + frame(RUN), [_pickled(DONE), _pickled(RUN)], len(frame(DONE) + frame(RUN))),
        (frame(DONE) + frame(RUN)[:5], [_pickled(DONE)], len(frame(DONE))),
        (struct.pack("<I", 0), [b""], 4),
    ],
    ids=[
        "empty",
        "half-a-header",
        "payload-cut-short",
        "one-frame",
        "two-frames",
        "frame-then-partial",
        "empty-payload",
    ],
)
def test_split_frames(buffer: bytes, payloads: list[bytes], used: int) -> None:
    assert split_frames(buffer) == (payloads, used)


@pytest.fixture
def pipe() -> Iterator[tuple[Channel, Channel]]:
    r, w = os.pipe()
    reader, writer = Channel(r), Channel(w)
    yield reader, writer
    reader.close()
    writer.close()


def test_one_read_takes_in_every_message_that_came(pipe: tuple[Channel, Channel]) -> None:
    reader, writer = pipe
    for rid in range(5):
        writer.send(("done", rid, []))
    assert reader.read_available() == [("done", rid, []) for rid in range(5)]
    assert not reader.has_ready()


def test_recv_returns_one_and_keeps_the_rest_ready(pipe: tuple[Channel, Channel]) -> None:
    reader, writer = pipe
    writer.send(("loaded", "a"))
    writer.send(("done", 1, []))
    assert reader.recv() == ("loaded", "a")
    assert reader.has_ready()  # already read: a poll on the descriptor would not report it
    assert reader.read_available() == [("done", 1, [])]


def test_a_message_larger_than_one_read_arrives_whole(pipe: tuple[Channel, Channel]) -> None:
    reader, writer = pipe
    big = ("failed", 3, "x" * (3 * READ_SIZE))
    sender = threading.Thread(target=writer.send, args=(big,))  # larger than the pipe's buffer
    sender.start()
    received: list[tuple[Any, ...]] = []
    for _ in range(100):  # bounded: a few reads of READ_SIZE each
        received += reader.read_available()
        if received:
            break
    sender.join(timeout=10)
    assert received == [big]


def test_the_other_end_closing_is_eof(pipe: tuple[Channel, Channel]) -> None:
    reader, writer = pipe
    writer.send(DONE)
    writer.close()
    assert reader.read_available() == [DONE]
    with pytest.raises(EOFError, match="closed at the other end"):
        reader.read_available()
