"""Per-peer outbound queues: batching, flow control, and bounded memory.

Theory of operation
-------------------
Sending is the hot path, and per-message Python work is the cost to beat. A send appends
the message to its peer's queue and, if no flush is pending, schedules one with
``call_soon``; every message queued during the same loop turn leaves in one frame (one
encode call, one ZeroMQ send). Frames are capped at ``max_batch`` messages.

Latency comes first for the first message of a turn: when no flush is pending it is sent at
once, and only what follows it in the same turn waits for the flush (as Nagle's algorithm
sends the first segment and coalesces the rest). A request or a reply thus leaves without
waiting one more loop turn, and a burst costs one extra frame, its first message.

Flow control is ZeroMQ's: when the DEALER's high-water mark is reached the send fails with
EAGAIN, the queue keeps its messages and a retry is scheduled. Memory stays bounded by
``limit`` messages per peer (Erlang's dist buffer busy limit): past it a plain send raises
:class:`~fabric.errors.BackpressureError` and ``wait_for_room`` suspends the sender until
the queue drains below half the limit. Nothing is dropped silently while the peer is up;
when the session ends, what is still queued is counted as ``dropped_on_down``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, Final

import zmq

from fabric.errors import BackpressureError, LocalProtocolError
from fabric.transport.zeromq import PART_SIZE, split_frame

__all__ = ["Outbound"]

MAX_BATCH: Final = 1024
RETRY_DELAY: Final = 0.002


class Outbound:
    """The ordered stream of messages from this node to one peer."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        peer: str,
        sock: zmq.Socket[Any],
        encode: Callable[[Any], bytes],
        limit: int,
        on_sent: Callable[[], None],
    ) -> None:
        self.loop = loop
        self.peer = peer
        self.sock = sock
        self._encode = encode
        self.limit = limit
        self._on_sent = on_sent  # lets the transport re-check the socket's edge
        self.queue: list[Any] = []
        self.open = False  # True once the session is up: batches may flow
        self._scheduled = False
        self._room: asyncio.Event | None = None
        self.sent_messages = 0
        self.sent_frames = 0
        self.sent_bytes = 0  # payload bytes of the frames sent (metrics)
        self.refused = 0
        self.unencodable = 0

    def push(self, message: Any) -> None:
        """Queue one message.

        Raises:
            BackpressureError: ``limit`` messages are already queued for this peer.
        """
        queue = self.queue
        if len(queue) >= self.limit:
            self.refused += 1
            raise BackpressureError(self.peer, len(queue))
        queue.append(message)
        if not self._scheduled and self.open:
            self._first_of_turn()

    def push_control(self, message: Any) -> None:
        """Queue a control message; never refused (control traffic is small and vital)."""
        self.queue.append(message)
        if not self._scheduled and self.open:
            self._first_of_turn()

    def push_checked(self, message: Any) -> None:
        """Queue one message, refusing it here if it cannot be encoded.

        A call or a reply must report an unencodable value to whoever sent it, which a
        later flush cannot do. The first message of a turn is encoded once, as the frame
        it leaves in; any other is encoded once more on its own to check it.

        Raises:
            LocalProtocolError: ``message`` holds something the codec refuses (nothing
                is queued).
            BackpressureError: as :meth:`push`.
        """
        queue = self.queue
        if queue or self._scheduled or not self.open:
            self._encode([message])
            self.push(message)
            return
        frame = self._encode([message])
        queue.append(message)
        self._first_of_turn(frame)

    def _first_of_turn(self, frame: bytes | None = None) -> None:
        # Nothing pending: send this message now, and coalesce the rest of the turn.
        self._scheduled = True
        self.loop.call_soon(self.flush)
        self._write(frame)

    def start(self) -> None:
        """The session is up: let queued messages flow."""
        self.open = True
        if self.queue and not self._scheduled:
            self._scheduled = True
            self.loop.call_soon(self.flush)

    async def wait_for_room(self) -> None:
        """Suspend until the queue is below half its limit."""
        while len(self.queue) >= self.limit and self.open:
            if self._room is None:
                self._room = asyncio.Event()
            self._room.clear()
            await self._room.wait()

    def flush(self) -> None:
        """Send everything queued (the end of a turn); retry soon if ZeroMQ is full."""
        self._scheduled = False
        if not self.queue:
            return  # the turn's first message left at once and nothing followed it
        if not self._write():
            self._scheduled = True
            self.loop.call_later(RETRY_DELAY, self.flush)

    def _write(self, frame: bytes | None = None) -> bool:
        """Send the queue in frames of at most MAX_BATCH messages; False if ZeroMQ's
        buffer filled up first (what is left stays queued, in order). ``frame``: the
        first batch already encoded (by :meth:`push_checked`)."""
        queue = self.queue
        done = True
        while queue:
            batch = queue[:MAX_BATCH]
            try:
                if frame is None:
                    frame = self._encode(batch)
            except LocalProtocolError:
                batch = self._drop_unencodable(batch)
                if not batch:
                    continue
                frame = self._encode(batch)
            try:
                if len(frame) > PART_SIZE:  # [transport hook] long frames go in parts
                    self.sock.send_multipart(split_frame(frame), zmq.NOBLOCK)
                else:
                    self.sock.send(frame, zmq.NOBLOCK)
            except zmq.Again:
                done = False
                break
            except zmq.ZMQError:
                return True  # socket closed under us: the session is ending
            del queue[: len(batch)]
            self.sent_frames += 1
            self.sent_bytes += len(frame)
            self.sent_messages += len(batch)
            frame = None
        self._on_sent()
        room = self._room
        if room is not None and len(queue) < self.limit // 2:
            room.set()
        return done

    def _drop_unencodable(self, batch: list[Any]) -> list[Any]:
        """Remove from the queue the messages that cannot be encoded (counted in
        ``unencodable``); return the rest of ``batch``. A send of a set, say, must not
        jam the stream for every message behind it."""
        good = []
        for message in batch:
            try:
                self._encode([message])
                good.append(message)
            except LocalProtocolError:
                self.unencodable += 1
        del self.queue[: len(batch)]
        self.queue[:0] = good
        return good

    def send_frame(self, frame: bytes) -> None:
        """Send one handshake frame now, ahead of batches (before the session is up)."""
        try:
            self.sock.send(frame, zmq.NOBLOCK)
        except zmq.ZMQError:
            pass  # the handshake deadline will report it
        self._on_sent()

    def close(self) -> int:
        """Forget the queue; returns how many messages were still in it."""
        self.open = False
        dropped = len(self.queue)
        self.queue.clear()
        if self._room is not None:
            self._room.set()
        return dropped
