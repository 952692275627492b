"""The Node: owns the sockets, the protocol cores and the process table; runs the loop.

Theory of operation
-------------------
A node is the thin I/O shell around the sans-I/O cores. Inputs arrive from ZeroMQ sockets
(ROUTER: batches and handshakes; DEALERs: handshake replies; SUB: heartbeats and group
topics; socket monitors: closed connections) and from timers; the node feeds them to the
mesh core (:mod:`fabric.protocol.mesh`), to the service cores (pg, global, ...) and to the
process layer, and executes the effects they return. Only the node's event loop mutates
state, so reads (``nodes()``, ``whereis``) are plain lookups.

Process semantics (spawn, send, links, monitors, remote signals) live in
:mod:`fabric.runtime`, which this class inherits; this module is the mesh and transport
half.
"""

from __future__ import annotations

import asyncio
import os
import secrets
from dataclasses import dataclass
from typing import Any

import msgpack
import structlog
import zmq

from fabric.config import NodeConfig, load_cookie
from fabric.errors import ConfigError
from fabric.global_ import Global
from fabric.inputs import _EVENTS, _POLLIN, Inputs
from fabric.outbound import MAX_BATCH, Outbound
from fabric.pg import Groups
from fabric.protocol import mesh as m
from fabric.protocol.codec import Codec
from fabric.protocol.effects import Log
from fabric.protocol.messages import (
    HEARTBEAT_TOPIC,
)
from fabric.runtime import ProcessRuntime
from fabric.transport.security import DATA_DOMAIN, SocketSecurity
from fabric.transport.zap import ZapHandler
from fabric.transport.zeromq import (
    HANDSHAKE_EVENTS,
    Reader,
    bind_in_range,
    configure,
    limit_inbound_parts,
    open_monitor,
)
from fabric.types import parse_node_name

__all__ = ["Node", "NodeDown", "NodeMonitor", "NodeUp"]

TICK: float = 0.05


@dataclass(frozen=True, slots=True)
class NodeUp:
    """A peer's session came up."""

    node: str


@dataclass(frozen=True, slots=True)
class NodeDown:
    """A peer's session ended, with a reason: ``connection_closed``,
    ``heartbeat_timeout``, ``shutdown`` (it stopped gracefully), ``disconnect`` (asked
    locally)."""

    node: str
    reason: str


class NodeMonitor:
    """An async iterator of node events; see :meth:`Node.monitor_nodes`."""

    def __init__(self, node: Node) -> None:
        self._node = node
        self._queue: asyncio.Queue[NodeUp | NodeDown | None] = asyncio.Queue()
        node._watchers.append(self._queue)
        if node.stopped:
            self._queue.put_nowait(None)  # nothing will ever come: end at once

    def __aiter__(self) -> NodeMonitor:
        return self

    async def __anext__(self) -> NodeUp | NodeDown:
        event = await self._queue.get()
        if event is None:
            self.close()
            raise StopAsyncIteration
        return event

    async def next(self, timeout: float | None = None) -> NodeUp | NodeDown:
        """The next event, waiting at most ``timeout`` seconds (``TimeoutError``)."""
        return await asyncio.wait_for(self.__anext__(), timeout)

    def close(self) -> None:
        if self._queue in self._node._watchers:
            self._node._watchers.remove(self._queue)


@dataclass
class _Channel:
    sock: zmq.Socket[Any]
    out: Outbound
    reader: Reader
    monitor: zmq.Socket[Any]
    monitor_reader: Reader
    connected: bool = False


class Node(Inputs, ProcessRuntime):
    """A named fabric node.

    Args:
        name: ``name@host:port``, or ``name@host`` to bind a port from ``port_range``.
        cookie: the shared secret; default ``FABRIC_COOKIE`` or ``~/.fabric.cookie``.
        config: a :class:`NodeConfig`; keyword ``options`` override its fields.

    Raises:
        ConfigError: invalid name, cookie or option.
    """

    def __init__(
        self,
        name: str,
        cookie: str | bytes | None = None,
        *,
        config: NodeConfig | None = None,
        **options: Any,
    ) -> None:
        if config is not None and options:
            config = NodeConfig(**{**config.__dict__, **options})
        self.config = config or NodeConfig.from_env(**options)
        self._requested = parse_node_name(name)
        self._cookie = load_cookie(cookie)
        self.name = str(self._requested)
        self.creation = 0
        self.codec = Codec(self.config.max_frame)
        self.log: Any = structlog.get_logger("fabric").bind(node=self.name)
        self.started = False
        self.stopped = False
        self._channels: dict[str, _Channel] = {}
        self._watchers: list[asyncio.Queue[NodeUp | NodeDown | None]] = []
        self._connect_waiters: dict[str, list[asyncio.Future[tuple[bool, str]]]] = {}
        self._ping_waiters: dict[int, asyncio.Future[bool]] = {}
        self._last_connect_error: dict[str, str] = {}
        # [transport hook] why ZeroMQ's handshake with a peer failed, for ConnectDone;
        # and the addresses whose data-plane key our ZAP handler refused, when.
        self.transport_refusals: dict[str, str] = {}
        self._refused_addresses: dict[str, float] = {}
        self._bad_input = 0
        self._bad_input_logged = 0.0
        self._router_draining = False  # see _on_router
        self.metrics: dict[str, int] = {"dropped_on_down": 0, "undeliverable": 0}
        self._tick_handle: asyncio.TimerHandle | None = None
        super().__init__()

    # -- life cycle -----------------------------------------------------------------------

    async def __aenter__(self) -> Node:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        """Bind the sockets and start ticking.

        Raises:
            ConfigError: no free port, or the address cannot be bound.
        """
        if self.started:
            raise ConfigError("node already started")
        self.loop = asyncio.get_running_loop()
        cfg = self.config
        self.ctx: zmq.Context[Any] = zmq.Context()
        host = cfg.bind_host or self._requested.host
        opts = dict(max_frame=cfg.max_frame, sndhwm=cfg.sndhwm, rcvhwm=cfg.rcvhwm)
        # [transport hook] CURVE on both planes, vetted by a ZAP handler bound before any
        # socket can accept a connection (D13, D18).
        try:
            self.security = SocketSecurity(
                self._cookie, encrypt=cfg.encrypt_data_plane,
                secret_key=cfg.curve_secret_key, allowed_keys=cfg.curve_allowed_keys)
        except ConfigError:
            self.ctx.destroy(linger=0)
            raise
        self.zap = ZapHandler(self.loop, self.ctx, self.security.admits, self._zap_refused)
        self.router = self.ctx.socket(zmq.ROUTER)
        configure(self.router, **opts)
        self.router.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self.security.data_server(self.router, cfg.handshake_timeout)
        limit_inbound_parts(self.router, cfg.max_frame)
        self._router_monitor = open_monitor(self.ctx, self.router, HANDSHAKE_EVENTS)
        self._router_monitor_reader = Reader(self.loop, self._router_monitor,
                                             self._on_router_monitor)
        self.pub = self.ctx.socket(zmq.PUB)
        configure(self.pub, **opts)
        self.security.pub_server(self.pub)
        limit_inbound_parts(self.pub, cfg.max_frame)  # it only receives subscriptions
        # Two SUB sockets, so two connections to each peer's PUB: heartbeats never queue
        # behind a backlog of group publishes (nor get dropped with them at the HWM).
        self.sub = self.ctx.socket(zmq.SUB)
        configure(self.sub, **opts)
        self.hb_sub = self.ctx.socket(zmq.SUB)
        configure(self.hb_sub, **opts)
        self.security.pub_client(self.sub)
        self.security.pub_client(self.hb_sub)
        try:
            if self._requested.port is not None:
                port = bind_in_range(self.router, host, self._requested.port,
                                     self._requested.port)
            else:
                port = bind_in_range(self.router, host, *cfg.port_range)
            h = f"[{host}]" if ":" in host else host
            if cfg.pub_port:
                self.pub.bind(f"tcp://{h}:{cfg.pub_port}")
                self.pub_port = cfg.pub_port
            else:
                self.pub_port = self.pub.bind_to_random_port(f"tcp://{h}")
        except zmq.ZMQError as exc:
            self.zap.close()  # [transport hook] readers first: their sockets close next
            self._router_monitor_reader.close()
            self.ctx.destroy(linger=0)
            raise ConfigError(f"cannot bind {self._requested} on {host}: {exc}") from None
        self.hb_sub.setsockopt(zmq.SUBSCRIBE, HEARTBEAT_TOPIC)
        self.name = str(self._requested.with_port(port))
        self.creation = secrets.randbits(32) or 1
        self.log = structlog.get_logger("fabric").bind(node=self.name)
        self.mesh = m.MeshCore(
            self.name, self.creation, self._cookie, self.pub_port, os.urandom,
            hidden=cfg.hidden, heartbeat_interval=cfg.heartbeat_interval,
            heartbeat_timeout=cfg.heartbeat_timeout, handshake_timeout=cfg.handshake_timeout,
            reconnect_window=cfg.reconnect_window,
            reconnect_max_backoff=cfg.reconnect_max_backoff,
        )
        # Services every node runs, so that views are complete wherever they are read.
        self.pg = Groups(self)
        self.global_ = Global(self)
        self._router_reader = Reader(self.loop, self.router, self._on_router)
        self._sub_reader = Reader(self.loop, self.sub, self._on_sub)
        self._hb_reader = Reader(self.loop, self.hb_sub, self._on_sub)
        self.started = True
        self._tick()
        self.log.info("node_started", pub_port=self.pub_port, hidden=cfg.hidden)

    async def stop(self) -> None:
        """Stop gracefully: end local processes, say goodbye, drain, close.

        Peers see ``NodeDown(reason="shutdown")`` at once. Messages queued before the stop
        are delivered (each peer acknowledges the goodbye after everything before it);
        what could not be delivered within ``drain_timeout`` is counted and logged.
        """
        if not self.started or self.stopped:
            return
        self.stopped = True
        await self._stop_processes()
        self._exec(self.mesh.stop(self.loop.time()))
        deadline = self.loop.time() + self.config.drain_timeout
        while not self.mesh.all_acked() and self.loop.time() < deadline:
            await asyncio.sleep(0.01)
        acked = self.mesh.all_acked()
        self._exec(self.mesh.close_all(self.loop.time()))
        if self._tick_handle is not None:
            self._tick_handle.cancel()
        self._router_reader.close()
        self._sub_reader.close()
        self._hb_reader.close()
        self._router_monitor_reader.close()
        self.zap.close()
        for fut in self._ping_waiters.values():
            if not fut.done():
                fut.set_result(False)
        self.ctx.destroy(linger=0)
        for q in self._watchers:
            q.put_nowait(None)
        self.log.info("node_stopped", drained=acked, **self.metrics)

    # -- public mesh API ------------------------------------------------------------------

    def nodes(self) -> list[str]:
        """Visible peers with a session up (hidden nodes are not listed)."""
        return self.mesh.nodes()

    def hidden_nodes(self) -> list[str]:
        """Hidden peers with a session up."""
        return self.mesh.hidden_nodes()

    async def connect(self, peer: str, timeout: float | None = None) -> bool:
        """Connect to ``peer`` (and, unless hidden, transitively to its cluster).

        Returns True once the session is up, False if it could not be made; then
        :meth:`last_connect_error` says why (``bad_cookie``, ``key_refused``,
        ``security_mismatch`` (README "Security"), ``name_in_use``,
        ``version``, ``connection_refused``, ``timeout``...).

        Raises:
            ConfigError: ``peer`` is not a valid full node name.
        """
        self._require_started()
        peer = str(parse_node_name(peer))
        fut: asyncio.Future[tuple[bool, str]] = self.loop.create_future()
        self._connect_waiters.setdefault(peer, []).append(fut)
        self._exec(self.mesh.connect(peer, self.loop.time()))
        try:
            ok, reason = await asyncio.wait_for(
                fut, self.config.handshake_timeout + 1.0 if timeout is None else timeout)
        except asyncio.TimeoutError:
            ok, reason = False, "timeout"
        if not ok:
            self._last_connect_error[peer] = reason
        return ok

    def last_connect_error(self, peer: str) -> str | None:
        """Why the last failed :meth:`connect` to ``peer`` failed."""
        return self._last_connect_error.get(str(parse_node_name(peer)))

    def disconnect(self, peer: str) -> bool:
        """End the session with ``peer`` (NodeDown reason ``disconnect``)."""
        self._require_started()
        was_up: bool = self.mesh.is_up(peer)
        self._exec(self.mesh.disconnect(peer, self.loop.time()))
        return was_up

    async def ping(self, peer: str, timeout: float = 3.0) -> str:
        """``"pong"`` if ``peer`` answers (connecting first if needed), else ``"pang"``."""
        self._require_started()
        try:
            peer = str(parse_node_name(peer))
        except ConfigError:
            return "pang"
        if peer == self.name:
            return "pong"
        if not self.mesh.is_up(peer) and not await self.connect(peer, timeout):
            return "pang"
        token = secrets.randbits(48)
        fut: asyncio.Future[bool] = self.loop.create_future()
        self._ping_waiters[token] = fut
        self._exec(self.mesh.ping(peer, token))
        try:
            return "pong" if await asyncio.wait_for(fut, timeout) else "pang"
        except asyncio.TimeoutError:
            return "pang"
        finally:
            self._ping_waiters.pop(token, None)

    def monitor_nodes(self) -> NodeMonitor:
        """Subscribe to ``NodeUp`` / ``NodeDown`` events from this call on.

        Use as ``async for event in node.monitor_nodes(): ...``; events are queued from
        the moment of the call, so none is missed between subscribing and iterating.
        It may be called before :meth:`start`: a peer already dialling this node's port can
        complete its handshake in the node's very first read, before any task created
        after ``start()`` runs, so a program that must see every event subscribes first.
        Iteration ends when the node stops; ``close()`` unsubscribes early.
        """
        return NodeMonitor(self)

    def _require_started(self) -> None:
        if not self.started or self.stopped:
            raise ConfigError("node is not running (use 'async with node' or await start())")

    # -- effects --------------------------------------------------------------------------

    def _exec(self, effects: list[Any]) -> None:
        for eff in effects:
            t = type(eff)
            if t is m.Control:
                ch = self._channels.get(eff.peer)
                if ch is not None:
                    ch.out.push_control(eff.message)
            elif t is m.ChannelSend:
                ch = self._channels.get(eff.peer)
                if ch is not None:
                    ch.out.send_frame(self.codec.encode(eff.frame))
            elif t is m.RouterSend:
                try:
                    self.router.send_multipart([eff.identity, self.codec.encode(eff.frame)],
                                               zmq.NOBLOCK)
                except zmq.ZMQError:
                    pass  # peer gone or full: a refusal is best effort
                self._router_reader.poke()
            elif t is m.OpenChannel:
                self._open_channel(eff.peer, eff.endpoint, eff.identity)
            elif t is m.CloseChannel:
                self._close_channel(eff.peer, eff.flush, eff.handover)
            elif t is m.SubConnect:
                self.sub.connect(eff.endpoint)
                self.hb_sub.connect(eff.endpoint)
            elif t is m.SubDisconnect:
                try:
                    self.sub.disconnect(eff.endpoint)
                    self.hb_sub.disconnect(eff.endpoint)
                except zmq.ZMQError:
                    pass
            elif t is m.PublishHeartbeat:
                try:
                    self.pub.send_multipart(
                        [HEARTBEAT_TOPIC, msgpack.packb([self.name, self.creation])],
                        zmq.NOBLOCK)
                except zmq.ZMQError:
                    pass
            elif t is m.PeerUp:
                ch = self._channels.get(eff.peer)
                if ch is not None:
                    ch.out.start()
                self.log.info("nodeup", peer=eff.peer, hidden=eff.hidden)
                if not eff.hidden:
                    self._notify(NodeUp(eff.peer))
                self._on_nodeup(eff.peer)
            elif t is m.PeerDown:
                self.log.info("nodedown", peer=eff.peer, reason=eff.reason)
                if not eff.hidden:
                    self._notify(NodeDown(eff.peer, eff.reason))
                self._on_nodedown(eff.peer, eff.reason)
            elif t is m.ConnectDone:
                reason = self._transport_reason(eff.peer, eff.ok, eff.reason)
                if not eff.ok:
                    self.metrics["dropped_on_down"] += len(self._early.pop(eff.peer, ()))
                for fut in self._connect_waiters.pop(eff.peer, []):
                    if not fut.done():
                        fut.set_result((eff.ok, reason))
            elif t is m.Pong:
                pong = self._ping_waiters.get(eff.token)
                if pong is not None and not pong.done():
                    pong.set_result(True)
            elif t is Log:
                getattr(self.log, eff.level)(eff.event, **eff.fields)
            else:
                self._exec_service_effect(eff)

    def _notify(self, event: NodeUp | NodeDown) -> None:
        for q in self._watchers:
            q.put_nowait(event)

    def _open_channel(self, peer: str, endpoint: str, identity: bytes) -> None:
        self._close_channel(peer, False, True)
        cfg = self.config
        sock = self.ctx.socket(zmq.DEALER)
        # Frames hold up to MAX_BATCH messages: size the socket's queue from the message
        # limit, or ZeroMQ would buffer far more than outbound_limit messages per peer.
        hwm = min(cfg.sndhwm, max(16, cfg.outbound_limit // MAX_BATCH))
        configure(sock, max_frame=cfg.max_frame, sndhwm=hwm, rcvhwm=cfg.rcvhwm)
        sock.setsockopt(zmq.ROUTING_ID, identity)
        self.security.data_client(sock)  # [transport hook] this node's current CURVE key
        mon = open_monitor(self.ctx, sock, zmq.EVENT_CONNECTED | zmq.EVENT_DISCONNECTED
                           | zmq.EVENT_CONNECT_RETRIED | HANDSHAKE_EVENTS)
        sock.connect(endpoint)
        holder: list[_Channel] = []

        def after_send() -> None:
            # A send can consume the edge of the socket's descriptor: look at its state now
            # (cheaper than scheduling a read that nearly always finds nothing).
            try:
                if holder and sock.getsockopt(_EVENTS) & _POLLIN:
                    holder[0].reader.poke()
            except zmq.ZMQError:
                pass  # closed under a pending flush: the session is over

        out = Outbound(self.loop, peer, sock, self.codec.encode, cfg.outbound_limit,
                       after_send)
        ch = _Channel(sock, out, Reader(self.loop, sock, lambda s: self._on_channel(peer, s)),
                      mon, Reader(self.loop, mon, lambda s: self._on_monitor(peer, sock, s)))
        holder.append(ch)
        self._channels[peer] = ch
        # Messages sent while the session was being negotiated, in order.
        early = self._early.pop(peer, None)
        if early:
            out.queue.extend(early)

    def _close_channel(self, peer: str, flush: bool, handover: bool = False) -> None:
        ch = self._channels.pop(peer, None)
        if ch is None:
            return
        if flush:
            ch.out.flush()
        if handover and ch.out.queue:
            # Not the end of the session, only of this socket: keep what was queued.
            self._early.setdefault(peer, [])[:0] = ch.out.queue
            ch.out.queue = []
        self.metrics["dropped_on_down"] += ch.out.close()
        ch.reader.close()
        ch.monitor_reader.close()
        try:
            ch.sock.disable_monitor()
        except zmq.ZMQError:
            pass
        ch.monitor.close(0)
        ch.sock.close(500 if flush else 0)

    # -- transport security [transport hook: D18] -----------------------------------------

    def _zap_refused(self, domain: str, address: str) -> None:
        """Our ZAP handler refused a client key: count it, remember where from."""
        self.metrics["key_refused"] = self.metrics.get("key_refused", 0) + 1
        if domain == DATA_DOMAIN:
            if len(self._refused_addresses) >= 64:  # strangers pick addresses: bounded
                self._refused_addresses.clear()
            self._refused_addresses[address] = self.loop.time()
        self._bad("key_refused", domain=domain, address=address)

    def _transport_reason(self, peer: str, ok: bool, reason: str) -> str:
        """A failed connect's reason, told more precisely when ZeroMQ's handshake failed:
        ``key_refused`` (one side's key is not on the other's allowlist), ``bad_cookie``
        (the keys differ: another cookie), ``security_mismatch`` (one side in clear)."""
        why = self.transport_refusals.pop(peer, None)
        if ok:
            return reason
        if why is not None:
            return why
        # ZAP tells the address, not the node: a refusal from the peer's host during this
        # attempt is taken as its key refused when it dialled back with BIND.
        refused_at = self._refused_addresses.get(parse_node_name(peer).host.strip("[]"))
        if refused_at is not None and self.loop.time() - refused_at \
                <= self.config.handshake_timeout + 1.0:
            return "key_refused"
        return reason

    # -- inputs ---------------------------------------------------------------------------

    def _tick(self) -> None:
        self._on_sub(self.hb_sub)  # heartbeats first: do not judge peers on unread evidence
        self._exec(self.mesh.tick(self.loop.time()))
        self._tick_handle = self.loop.call_later(TICK, self._tick)
