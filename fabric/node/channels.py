"""The channels to peers: one DEALER socket and one ordered outbound queue per peer.

Theory of operation
-------------------
The mesh core decides when a channel exists: :class:`Channels` opens one on its
``OpenChannel`` effect and closes it on ``CloseChannel``; nothing else creates or removes
one, so the channels mirror the core's sessions. A channel is a DEALER connected to the
peer's ROUTER, its :class:`~fabric.outbound.Outbound` queue (ordered, batching, bounded),
a ZeroMQ socket monitor (to learn at once that the TCP connection closed) and a
:class:`~fabric.transport.zeromq.Reader` for each, which call the
:class:`~fabric.node.reactor.Reactor`.

Sending to a peer (:meth:`Channels.push`) queues on its channel; with no channel and no
session it asks the mesh core to connect first, as Erlang auto-connects. Messages sent
while a session is being negotiated (an attempt the peer started has no channel yet) wait
in ``_waiting`` and move into the channel's queue, in order, when it opens; they are
counted as dropped (``dropped_on_down``) if the attempt fails. The same list keeps a
channel's queue when the core replaces only the socket (``CloseChannel(handover=True)``).

Low-level interface (used by :mod:`fabric.calls`, :mod:`fabric.genserver` and the tests;
documented in ARCHITECTURE.md): :meth:`get`, :meth:`outbound`, :meth:`push`,
:meth:`push_control`, :meth:`push_wait`, :meth:`wait_for_room`, :meth:`waiting`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import zmq

from fabric.config import NodeConfig
from fabric.errors import BackpressureError, ConfigError
from fabric.node.effects import EffectExecutor
from fabric.node.metrics import Metrics
from fabric.outbound import MAX_BATCH, Outbound
from fabric.protocol import mesh as m
from fabric.protocol.codec import Codec
from fabric.transport.security import SocketSecurity
from fabric.transport.zeromq import HANDSHAKE_EVENTS, Reader, configure, open_monitor

if TYPE_CHECKING:
    from fabric.node.reactor import Reactor

__all__ = ["Channel", "Channels"]

_EVENTS = int(zmq.EVENTS)  # plain ints: the enum members cost a Python-level conversion
_POLLIN = int(zmq.POLLIN)


@dataclass(eq=False)
class Channel:
    """One peer's DEALER, its outbound queue, its monitor socket and their readers."""

    peer: str
    sock: zmq.Socket[Any]
    out: Outbound
    monitor: zmq.Socket[Any]
    reader: Reader | None = None
    monitor_reader: Reader | None = None
    connected: bool = False  # the monitor reported EVENT_CONNECTED
    closed: bool = False  # closed by CloseChannel: its readers must stop


class Channels:
    """Every open channel of the node, by peer name; see the module docstring."""

    def __init__(self, loop: asyncio.AbstractEventLoop, ctx: zmq.Context[Any],
                 config: NodeConfig, codec: Codec, mesh: m.MeshCore,
                 executor: EffectExecutor, metrics: Metrics,
                 security: SocketSecurity) -> None:
        self.loop = loop
        self._ctx = ctx
        self._security = security  # the keys each new DEALER gets
        self._config = config
        self._codec = codec
        self._mesh = mesh
        self._run = executor.run
        self._metrics = metrics
        self._reactor: Reactor | None = None
        # peer -> its open channel. Read directly (without a method call) on the send
        # path by the node, which holds this very dict.
        self.by_peer: dict[str, Channel] = {}
        # peer -> messages sent while its session is being negotiated (no channel yet)
        self._waiting: dict[str, list[Any]] = {}

    def attach(self, executor: EffectExecutor, reactor: Reactor) -> None:
        """Register the effects channels run, and the reactor that reads their sockets
        (called once, by the node's wiring)."""
        self._reactor = reactor
        executor.register(m.OpenChannel, self._on_open)
        executor.register(m.CloseChannel, self._on_close)
        executor.register(m.Control, self._on_control)
        executor.register(m.ChannelSend, self._on_channel_send)

    # -- low-level interface --------------------------------------------------------------

    def get(self, peer: str) -> Channel | None:
        """The open channel to ``peer``, or None."""
        return self.by_peer.get(peer)

    def peers(self) -> list[str]:
        """Peers with an open channel (session up or being negotiated)."""
        return sorted(self.by_peer)

    def outbound(self, peer: str) -> Outbound | None:
        """The outbound queue to ``peer`` (its counters, queue length), or None."""
        ch = self.by_peer.get(peer)
        return None if ch is None else ch.out

    def waiting(self, peer: str) -> int:
        """How many messages wait for a session with ``peer`` that has no channel yet."""
        return len(self._waiting.get(peer, ()))

    def push(self, node: str, message: list[Any]) -> None:
        """Queue ``message`` for ``node``, connecting first if there is no session (as
        Erlang auto-connects); queued messages wait for the session, in order.

        Raises:
            BackpressureError: ``node``'s buffer is full.
        """
        ch = self.by_peer.get(node)
        if ch is None:
            mesh = self._mesh
            if not mesh.knows(node):
                try:
                    self._run(mesh.connect(node, self.loop.time()))
                except ConfigError:
                    self._metrics.undeliverable += 1
                    return
                ch = self.by_peer.get(node)
            if ch is None:
                if not mesh.negotiating(node):
                    # The attempt failed at once (stopping, bad name): nothing will
                    # ever take these messages, so do not hold them.
                    self._metrics.undeliverable += 1
                    return
                # A handshake we accept has no channel yet: hold the message for it.
                waiting = self._waiting.setdefault(node, [])
                if len(waiting) >= self._config.outbound_limit:
                    raise BackpressureError(node, len(waiting))
                waiting.append(message)
                return
        ch.out.push(message)

    def push_control(self, peer: str, message: list[Any]) -> None:
        """Queue a control message (never refused) on ``peer``'s open channel; dropped if
        there is none (the session is over, and so is what the message was about)."""
        ch = self.by_peer.get(peer)
        if ch is not None:
            ch.out.push_control(message)

    async def push_wait(self, node: str, message: list[Any]) -> None:
        """Like :meth:`push`, but wait for room in the buffer instead of raising."""
        while True:
            try:
                self.push(node, message)
                return
            except BackpressureError as exc:
                if not await self.wait_for_room(exc.node):
                    return

    async def wait_for_room(self, node: str) -> bool:
        """Wait until ``node``'s outbound buffer has room; False if it has no channel
        (the message cannot be queued: like Erlang, the send is dropped)."""
        ch = self.by_peer.get(node)
        if ch is None:
            return False
        await ch.out.wait_for_room()
        return True

    def connect_failed(self, peer: str) -> None:
        """The attempt to reach ``peer`` failed: what waited for it is dropped."""
        self._metrics.dropped_on_down += len(self._waiting.pop(peer, ()))

    def start(self, peer: str) -> None:
        """The session with ``peer`` is up: its queue may flow."""
        ch = self.by_peer.get(peer)
        if ch is not None:
            ch.out.start()

    # -- effects --------------------------------------------------------------------------

    def _on_control(self, service: str, eff: m.Control) -> None:
        ch = self.by_peer.get(eff.peer)
        if ch is not None:
            ch.out.push_control(eff.message)

    def _on_channel_send(self, service: str, eff: m.ChannelSend) -> None:
        ch = self.by_peer.get(eff.peer)
        if ch is not None:
            ch.out.send_frame(self._codec.encode(eff.frame))

    def _on_open(self, service: str, eff: m.OpenChannel) -> None:
        peer = eff.peer
        self._close(peer, False, True)
        cfg = self._config
        sock = self._ctx.socket(zmq.DEALER)
        # Frames hold up to MAX_BATCH messages: size the socket's queue from the message
        # limit, or ZeroMQ would buffer far more than outbound_limit messages per peer.
        hwm = min(cfg.sndhwm, max(16, cfg.outbound_limit // MAX_BATCH))
        configure(sock, max_frame=cfg.max_frame, sndhwm=hwm, rcvhwm=cfg.rcvhwm)
        sock.setsockopt(zmq.ROUTING_ID, eff.identity)
        self._security.data_client(sock)  # this node's current CURVE key (D18)
        mon = open_monitor(self._ctx, sock, zmq.EVENT_CONNECTED | zmq.EVENT_DISCONNECTED
                           | zmq.EVENT_CONNECT_RETRIED | HANDSHAKE_EVENTS)
        sock.connect(eff.endpoint)
        out = Outbound(self.loop, peer, sock, self._codec.encode, cfg.outbound_limit,
                       _after_send_check(sock, lambda: ch.reader))
        ch = Channel(peer, sock, out, mon)
        reactor = self._reactor
        assert reactor is not None, "Channels.attach was not called"
        ch.reader = Reader(self.loop, sock, lambda s: reactor.on_channel(ch, s))
        ch.monitor_reader = Reader(self.loop, mon, lambda s: reactor.on_monitor(ch, s))
        self.by_peer[peer] = ch
        # Messages sent while the session was being negotiated, in order.
        waiting = self._waiting.pop(peer, None)
        if waiting:
            out.queue.extend(waiting)

    def _on_close(self, service: str, eff: m.CloseChannel) -> None:
        self._close(eff.peer, eff.flush, eff.handover)

    def _close(self, peer: str, flush: bool, handover: bool = False) -> None:
        ch = self.by_peer.pop(peer, None)
        if ch is None:
            return
        ch.closed = True
        if flush:
            ch.out.flush()
        if handover and ch.out.queue:
            # Not the end of the session, only of this socket: keep what was queued.
            self._waiting.setdefault(peer, [])[:0] = ch.out.queue
            ch.out.queue = []
        self._metrics.channel_closed(peer, ch.out)  # its sent/refused counts outlive it
        self._metrics.dropped_on_down += ch.out.close()
        for reader in (ch.reader, ch.monitor_reader):
            if reader is not None:
                reader.close()
        try:
            ch.sock.disable_monitor()
        except zmq.ZMQError:
            pass
        ch.monitor.close(0)
        ch.sock.close(500 if flush else 0)


def _after_send_check(sock: zmq.Socket[Any],
                      reader: Callable[[], Reader | None]) -> Callable[[], None]:
    """What the outbound queue calls after a send: a send can consume the edge of the
    socket's descriptor, so look at its state now (cheaper than scheduling a read that
    nearly always finds nothing) and poke the reader if input is waiting."""

    def after_send() -> None:
        try:
            if sock.getsockopt(_EVENTS) & _POLLIN:  # type: ignore[operator]
                r = reader()
                if r is not None:
                    r.poke()
        except zmq.ZMQError:
            pass  # closed under a pending flush: the session is over

    return after_send
