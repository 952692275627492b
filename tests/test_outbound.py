"""Outbound queues on a fake socket and a fake loop: the first message of a turn leaves at
once, the rest of the turn in one batch, and ``push_checked`` refuses what cannot be
encoded before anything is queued (deterministic: no sockets, no real loop)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import zmq

from fabric.errors import BackpressureError, LocalProtocolError
from fabric.outbound import Outbound
from fabric.protocol.codec import Codec


class FakeLoop:
    """Records ``call_soon``/``call_later`` callbacks; the test runs them as a turn ends."""

    def __init__(self) -> None:
        self.ready: list[Callable[[], None]] = []

    def call_soon(self, fn: Callable[[], None]) -> None:
        self.ready.append(fn)

    def call_later(self, delay: float, fn: Callable[[], None]) -> None:
        self.ready.append(fn)

    def end_turn(self) -> None:
        ready, self.ready = self.ready, []
        for fn in ready:
            fn()


class FakeSocket:
    """Takes frames, or answers EAGAIN while ``full``."""

    def __init__(self) -> None:
        self.frames: list[bytes] = []
        self.full = False

    def send(self, frame: bytes, flags: int = 0) -> None:
        if self.full:
            raise zmq.Again()
        self.frames.append(frame)


def _outbound(limit: int = 100, encode: Callable[[Any], bytes] | None = None,
              on_sent: Callable[[], None] | None = None,
              ) -> tuple[Outbound, FakeLoop, FakeSocket, Codec]:
    loop, sock, codec = FakeLoop(), FakeSocket(), Codec()
    out = Outbound(loop, "peer@127.0.0.1:1", sock,  # type: ignore[arg-type]
                   encode or codec.encode, limit, on_sent=on_sent or (lambda: None))
    out.open = True
    return out, loop, sock, codec


def _sent(sock: FakeSocket, codec: Codec) -> list[list[Any]]:
    return [codec.decode(frame) for frame in sock.frames]


def test_push_checked_sends_the_first_message_of_a_turn_at_once_encoded_once() -> None:
    encodes: list[Any] = []
    codec = Codec()

    def encode(value: Any) -> bytes:
        encodes.append(value)
        return codec.encode(value)

    out, loop, sock, _ = _outbound(encode=encode)
    out.push_checked([6, "srv", 1, 2, 3, ("req", 1)])
    assert _sent(sock, codec) == [[[6, "srv", 1, 2, 3, ("req", 1)]]]
    assert len(encodes) == 1 and not out.queue
    out.push_checked([7, 1, 2, 3, True, "later in the turn", False])
    out.push([1, "x", "plain"])
    assert len(sock.frames) == 1  # the rest of the turn waits for the flush...
    loop.end_turn()
    assert _sent(sock, codec)[1] == [[7, 1, 2, 3, True, "later in the turn", False],
                                     [1, "x", "plain"]]  # ...and leaves in one batch, in order
    assert (out.sent_frames, out.sent_messages) == (2, 3)


@pytest.mark.parametrize("first_of_turn", [True, False])
def test_push_checked_refuses_an_unencodable_message_and_queues_nothing(
        first_of_turn: bool) -> None:
    out, loop, sock, codec = _outbound()
    if not first_of_turn:
        out.push([1, "x", "before"])
    with pytest.raises(LocalProtocolError):
        out.push_checked([6, "srv", 1, 2, 3, {"a set"}])
    loop.end_turn()
    expected = [] if first_of_turn else [[[1, "x", "before"]]]
    assert _sent(sock, codec) == expected and not out.queue and out.unencodable == 0


def test_push_checked_keeps_the_message_when_zeromq_is_full_and_the_flush_retries() -> None:
    looks: list[int] = []
    out, loop, sock, codec = _outbound(on_sent=lambda: looks.append(1))
    sock.full = True
    out.push_checked([6, "srv", 1, 2, 3, "first"])
    assert looks  # a refused send may consume the socket's edge: the transport looks
    out.push([1, "x", "second"])
    assert out.queue == [[6, "srv", 1, 2, 3, "first"], [1, "x", "second"]]
    loop.end_turn()  # still full: the flush reschedules itself
    assert not sock.frames and len(out.queue) == 2
    sock.full = False
    loop.end_turn()
    assert _sent(sock, codec) == [[[6, "srv", 1, 2, 3, "first"], [1, "x", "second"]]]


def test_push_checked_applies_the_outbound_limit() -> None:
    out, loop, sock, codec = _outbound(limit=2)
    out.open = False  # nothing flows: the queue fills up
    out.push_checked([1, "x", 1])
    out.push_checked([1, "x", 2])
    with pytest.raises(BackpressureError):
        out.push_checked([1, "x", 3])
    assert out.refused == 1 and len(out.queue) == 2
