"""A worker's message loop, run in this process on socket pairs (no subprocess, no model)."""

from __future__ import annotations

import socket
import threading

import pytest

from neuron_runtime.channel import Channel, frame
from neuron_runtime.worker import EVICT, EVICTED, STOP, Core, serve


def _serve_in_thread(core: Core) -> list[BaseException]:
    """Run serve() to its end (bounded); what it raised, if anything."""
    raised: list[BaseException] = []

    def run() -> None:
        try:
            serve(core, None)
        except BaseException as exc:  # noqa: BLE001 - the test reports whatever escaped
            raised.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout=30)
    assert not thread.is_alive(), "serve() did not return"
    return raised


@pytest.mark.parametrize(
    "unread_by_parent",
    [False, True],
    ids=["parent-closed", "parent-died-with-a-reply-unread"],
)
def test_a_worker_ends_quietly_when_its_parent_is_gone(unread_by_parent: bool) -> None:
    """A parent killed with a reply unread leaves ECONNRESET rather than end-of-file; either way
    the worker is an orphan and must exit without a traceback."""
    parent, child = socket.socketpair()
    core = Core(0, Channel(child.detach()), None, arena_fd=-1)
    if unread_by_parent:
        core.ctrl.send((EVICTED, "mlp"))  # a reply the parent never read
    parent.close()
    assert _serve_in_thread(core) == []
    core.ctrl.close()


def test_every_message_of_one_read_is_handled_in_order() -> None:
    parent, child = socket.socketpair()
    core = Core(0, Channel(child.detach()), None, arena_fd=-1)
    parent.sendall(frame((EVICT, "a")) + frame((EVICT, "b")) + frame((STOP,)))
    assert _serve_in_thread(core) == []
    replies = Channel(parent.detach())
    assert [replies.recv(), replies.recv()] == [(EVICTED, "a"), (EVICTED, "b")]
    replies.close()
    core.ctrl.close()
