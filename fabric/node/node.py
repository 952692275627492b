"""The Node: wires the objects a node is made of, and offers the public API.

Theory of operation
-------------------
A node is the thin I/O shell around the sans-I/O cores. It is composed of objects with
one job each, created and wired in one place (:meth:`Node.start`), each passed the
collaborators it uses:

* :class:`~fabric.node.sockets.Sockets`: the context, the ROUTER, the PUB and the SUBs;
* :class:`~fabric.node.channels.Channels`: one DEALER and ordered queue per peer;
* :class:`~fabric.node.processes.ProcessTable`: local processes and names;
* :class:`~fabric.node.mailboxes.Mailboxes`: delivery under the mailbox bound, flow
  control with peers;
* :class:`~fabric.node.signals.Signals`: links, monitors, exits, calls' monitors;
* :class:`~fabric.node.services.ServiceHost`: service cores (pg, global...);
* :class:`~fabric.node.reactor.Reactor`: reads the sockets and dispatches what they carry;
* :class:`~fabric.node.effects.EffectExecutor`: runs every core's effects by type;
* :class:`~fabric.node.metrics.Metrics`: every counter, declared in one place.

The node itself owns only its identity, its life cycle (start, tick, stop) and the
waiters of its public mesh API (``connect``, ``ping``, ``monitor_nodes``); it runs the
mesh core's session events (``PeerUp``, ``PeerDown``, ``ConnectDone``, ``Pong``) by
telling the objects concerned. Only the node's event loop mutates state, so reads
(``nodes()``, ``whereis``) are plain lookups. ARCHITECTURE.md draws the whole picture.
"""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import zmq

from fabric._deprecation import deprecated
from fabric.config import NodeConfig, load_cookie
from fabric.errors import (
    BackpressureError,
    ConfigError,
    LocalProtocolError,
    MailboxFullError,
    NodeDownError,
)
from fabric.exports import resolve_export
from fabric.logs import get_logger
from fabric.metrics.exporter import MetricsExporter
from fabric.node.channels import Channels
from fabric.node.drain import Drain, DrainHook
from fabric.node.effects import EffectExecutor
from fabric.node.mailboxes import Mailboxes
from fabric.node.metrics import Metrics
from fabric.node.processes import ProcessFn, ProcessTable
from fabric.node.reactor import Reactor
from fabric.node.refusals import TransportRefusals
from fabric.node.services import ServiceHost, standard_services
from fabric.node.signals import Signals
from fabric.node.sockets import Sockets
from fabric.node.timers import Timers
from fabric.outbound import MAX_BATCH
from fabric.protocol import mesh as m
from fabric.protocol.codec import Codec
from fabric.protocol.effects import Log
from fabric.protocol.flow import is_system
from fabric.protocol.messages import K_REG_SEND, K_SEND, K_SEND_TUPLE
from fabric.protocol.processes import NORMAL
from fabric.timeouts import CALL_TIMEOUT, connect_timeout, wait_for
from fabric.types import PANG, PONG, Answer, GlobalName, Pid, Ref, parse_node_name

if TYPE_CHECKING:
    from fabric.discovery import Discovery
    from fabric.global_ import Global
    from fabric.pg import Groups
    from fabric.process import Process

__all__ = ["Node", "NodeDown", "NodeMonitor", "NodeUp"]

TICK: float = 0.05


@dataclass(frozen=True, slots=True)
class NodeUp:
    """A peer's session came up."""

    node: str


@dataclass(frozen=True, slots=True)
class NodeDown:
    """A peer's session ended, with a reason: ``connection_closed`` (its process died, or
    came back as a new run), ``peer_reset`` (it lives, but ended the session itself),
    ``heartbeat_timeout``, ``shutdown`` (it stopped gracefully), ``disconnect`` (asked
    locally), ``blocked`` (:meth:`Node.block`)."""

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
        """The next event, waiting at most ``timeout`` seconds.

        Raises:
            FabricTimeout: nothing happened within ``timeout`` (a ``TimeoutError``).
            StopAsyncIteration: the node stopped.
        """
        return await wait_for(self.__anext__(), timeout, "NodeMonitor.next")

    def close(self) -> None:
        if self._queue in self._node._watchers:
            self._node._watchers.remove(self._queue)


class Node:
    """A named fabric node.

    Args:
        name: ``name@host:port``, or ``name@host`` to bind a port from ``port_range``.
        cookie: the shared secret; default ``FABRIC_COOKIE`` or ``~/.fabric.cookie``.
        config: a :class:`NodeConfig`; keyword ``options`` override its fields.

    Raises:
        ConfigError: invalid name, cookie or option.

    Its public API is listed by concept in docs/API.md (async exactly when a method may
    wait for another node or process). Service authors use :mod:`fabric.lowlevel`. The
    objects it is made of are attributes for fabric's own runtime modules, tools and tests
    (ARCHITECTURE.md section 8), not API: ``processes`` from construction; ``sockets``,
    ``channels``, ``signals``, ``services``, ``reactor``, ``effects``, ``mailboxes`` and
    ``mesh`` once started.
    """

    # The services every node runs, set by start() (fabric.node.services.standard_service)
    pg: Groups
    global_: Global

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
        self.log: Any = get_logger(node=self.name)
        self.started = False
        self.stopped = False
        self.metrics = Metrics()
        self.processes = ProcessTable(self, self.metrics)
        self.drain = Drain(self)  # what a graceful stop does first (fabric.node.drain)
        self._stopping: asyncio.Future[None] | None = None
        self._watchers: list[asyncio.Queue[NodeUp | NodeDown | None]] = []
        self._connect_waiters: dict[str, list[asyncio.Future[tuple[bool, str]]]] = {}
        self._ping_waiters: dict[int, asyncio.Future[bool]] = {}
        self._last_connect_error: dict[str, str] = {}
        self._tick_handle: asyncio.TimerHandle | None = None
        self.discovery: Discovery | None = None  # see NodeConfig.discovery
        # Serves this node's Prometheus metrics if config.metrics_address is set.
        self.metrics_exporter: MetricsExporter | None = None

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
        self.loop = loop = asyncio.get_running_loop()
        cfg = self.config
        # Why ZeroMQ's (CURVE, ZAP) handshakes failed; told by the ZAP handler, which
        # Sockets.bind starts first, and by the sockets' monitors (node/refusals.py).
        self.refusals = refusals = TransportRefusals(
            self.metrics, cfg.encrypt_data_plane,
            lambda what, **fields: self.reactor.bad(what, **fields))
        sockets = Sockets.bind(self._requested, cfg, self._cookie, loop,
                               refusals.zap_refused)
        if cfg.metrics_address:
            try:
                self.metrics_exporter = MetricsExporter.open(self, cfg.metrics_address)
            except ConfigError:
                sockets.close()
                raise
        self.name = str(self._requested.with_port(sockets.port))
        self.creation = secrets.randbits(32) or 1
        self.log = get_logger(node=self.name)
        self.mesh = mesh = m.MeshCore(
            self.name, self.creation, self._cookie, sockets.pub_port, os.urandom,
            hidden=cfg.hidden, heartbeat_interval=cfg.heartbeat_interval,
            heartbeat_timeout=cfg.heartbeat_timeout, handshake_timeout=cfg.handshake_timeout,
            reconnect_window=cfg.reconnect_window,
            reconnect_max_backoff=cfg.reconnect_max_backoff,
            reconnect_idle_backoff=cfg.reconnect_idle_backoff,
            reconnect_give_up=cfg.reconnect_give_up,
        )
        self._wire(loop, sockets, mesh)
        self._timers = Timers(loop, self.send, self.make_ref, self.log, self.metrics)
        # Services every node runs, so that views are complete wherever they are read:
        # node.pg, node.global_ (injected by their facades, D26).
        for attribute, factory in standard_services():
            setattr(self, attribute, factory(self))
        self.started = True
        self._tick()
        self.log.info("node_started", pub_port=self.pub_port, hidden=cfg.hidden)
        if cfg.discovery:  # it stops by itself when the node stops
            from fabric.discovery import start as start_discovery
            self.discovery = start_discovery(self, cfg.discovery, secret=self._cookie)

    def _wire(self, loop: asyncio.AbstractEventLoop, sockets: Sockets,
              mesh: m.MeshCore) -> None:
        """Create the node's objects and give each its collaborators: the one place
        where the node is put together (ARCHITECTURE.md section 3)."""
        metrics = self.metrics
        metrics.mesh_stats = mesh.stats
        self.sockets = sockets
        self.effects = executor = EffectExecutor()
        self._run = executor.run
        sockets.attach(executor, metrics, self.codec, self.name, self.creation)
        self.security = sockets.security  # keys and allowlist, changeable at run time
        self.zap = sockets.zap  # the ZAP handler: its admitted and refused counts
        self.channels = channels = Channels(loop, sockets.ctx, self.config, self.codec, mesh,
                                            executor, metrics, sockets.security)
        self._by_peer = channels.by_peer  # read on every remote send
        self.services = services = ServiceHost(loop, mesh, channels.by_peer, executor,
                                               metrics, self.codec)
        table = self.processes
        self.signals = signals = Signals(table, channels, mesh, services, self.codec,
                                         metrics, self.config, self.send, self.name,
                                         self.creation)
        signals.attach(executor)
        table.bind(self.name, self.creation, loop, self.log, signals.exited, executor)
        self.mailboxes = mailboxes = Mailboxes(table, mesh, executor, metrics, self.log,
                                               self.name, self.creation)
        self.reactor = reactor = Reactor(loop, sockets, mesh, self.codec, executor, metrics,
                                         self.log, mailboxes, signals, services,
                                         self.refusals)
        channels.attach(executor, reactor)
        self._send_local = mailboxes.send_local
        self._send_local_name = mailboxes.send_local_name
        self._congested = mailboxes.congested  # read on every remote send
        # The mesh core's session events: the node tells the objects concerned.
        executor.register(m.PeerUp, self._on_peer_up)
        executor.register(m.PeerDown, self._on_peer_down)
        executor.register(m.ConnectDone, self._on_connect_done)
        executor.register(m.Pong, self._on_pong)
        executor.register(Log, self._on_log)

    @property
    def draining(self) -> bool:
        """True once a graceful stop began: new calls and spawns from other nodes are
        refused with :class:`~fabric.errors.NodeDrainingError`."""
        return self.drain.started

    def on_drain(self, hook: DrainHook, handoff: bool = False) -> Callable[[], None]:
        """Run ``await hook()`` when the node stops gracefully, before it says goodbye.

        Hooks run after the node stopped taking new work from other nodes, unregistered
        its global names and pg memberships and let the calls in flight finish; the
        node is still connected and local processes still run (hand singletons over
        here). With ``handoff=True`` the hook runs earlier, right after new work is
        refused and while the node still holds its names and groups: for work that
        moves with its state and withdraws from routing itself (a distributed
        supervisor's children), which others would otherwise start afresh as soon as
        the groups are left. All of it shares ``NodeConfig.stop_grace`` seconds.
        Returns a function that removes the hook. See :mod:`fabric.node.drain`.
        """
        return self.drain.add_hook(hook, handoff)

    async def stop(self) -> None:
        """Stop gracefully: drain, end local processes, say goodbye, close.

        The drain (:mod:`fabric.node.drain`, within ``stop_grace`` seconds): refuse new
        calls and spawns from other nodes (:class:`~fabric.errors.NodeDrainingError`),
        unregister global names and pg memberships, let calls in flight finish, run the
        :meth:`on_drain` hooks. Then peers see ``NodeDown(reason="shutdown")``. Messages
        queued before the stop are delivered (each peer acknowledges the goodbye after
        everything before it); what could not be delivered within ``drain_timeout`` is
        counted and logged. A second call waits for the first stop to end.
        """
        if not self.started or self.stopped:
            return
        if self._stopping is not None:
            await asyncio.shield(self._stopping)
            return
        self._stopping = self.loop.create_future()
        try:
            await self.drain.run(self.config.stop_grace)
            await self._close()
        finally:
            self._stopping.set_result(None)

    async def _close(self) -> None:
        """End local processes, say goodbye, wait for the acknowledgements, close."""
        self.stopped = True
        await self.signals.stop_processes(self.config.drain_timeout)
        self._run(self.mesh.stop(self.loop.time()))
        deadline = self.loop.time() + self.config.drain_timeout
        while not self.mesh.all_acked() and self.loop.time() < deadline:
            await asyncio.sleep(0.01)
        acked = self.mesh.all_acked()
        self._run(self.mesh.close_all(self.loop.time()))
        if self._tick_handle is not None:
            self._tick_handle.cancel()
        self._timers.close()
        self.reactor.close()
        for fut in self._ping_waiters.values():
            if not fut.done():
                fut.set_result(False)
        self.sockets.close()
        for q in self._watchers:
            q.put_nowait(None)
        if self.metrics_exporter is not None:
            await self.metrics_exporter.aclose()
        self.log.info("node_stopped", drained=acked, **self.metrics.as_dict())

    def _tick(self) -> None:
        self.reactor.read_heartbeats()  # first: do not judge peers on unread evidence
        self._run(self.mesh.tick(self.loop.time()))
        self._tick_handle = self.loop.call_later(TICK, self._tick)

    # -- the sockets: fabric.lowlevel.sockets(node); the old attributes are deprecated ------

    @property
    def ctx(self) -> zmq.Context[Any]:
        deprecated("Node.ctx", "fabric.lowlevel.sockets(node).ctx")
        return self.sockets.ctx

    @property
    def router(self) -> zmq.Socket[Any]:
        deprecated("Node.router", "fabric.lowlevel.sockets(node).router")
        return self.sockets.router

    @property
    def pub(self) -> zmq.Socket[Any]:
        deprecated("Node.pub", "fabric.lowlevel.sockets(node).pub")
        return self.sockets.pub

    @property
    def sub(self) -> zmq.Socket[Any]:
        deprecated("Node.sub", "fabric.lowlevel.sockets(node).sub")
        return self.sockets.sub

    @property
    def hb_sub(self) -> zmq.Socket[Any]:
        deprecated("Node.hb_sub", "fabric.lowlevel.sockets(node).hb_sub")
        return self.sockets.hb_sub

    @property
    def pub_port(self) -> int:
        """The port of this node's PUB socket (heartbeats and group broadcasts)."""
        return self.sockets.pub_port

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
        self._run(self.mesh.connect(peer, self.loop.time()))
        try:
            ok, reason = await asyncio.wait_for(
                fut, connect_timeout(self.config) if timeout is None else timeout)
        except asyncio.TimeoutError:
            ok, reason = False, "timeout"
        if not ok:
            self._last_connect_error[peer] = reason
        return ok

    def get_cookie(self) -> bytes:
        """The cluster's shared secret, as bytes (Erlang's ``erlang:get_cookie/0``): for
        code that derives its own keys from it, as discovery's beacons do. Never send it."""
        return self._cookie

    def learn(self, peer: str) -> None:
        """Reach ``peer`` in the background, retrying until it answers: the entry point
        for discovery (a name from DNS, a seed list...). Unlike :meth:`connect`, nothing
        waits, and a failed attempt is retried with the reconnect backoff.

        Raises:
            ConfigError: ``peer`` is not a valid full node name.
        """
        self._require_started()
        self._run(self.mesh.learn(peer, self.loop.time()))

    def last_connect_error(self, peer: str) -> str | None:
        """Why the last failed :meth:`connect` to ``peer`` failed."""
        return self._last_connect_error.get(str(parse_node_name(peer)))

    def disconnect(self, peer: str) -> bool:
        """End the session with ``peer`` (NodeDown reason ``disconnect``)."""
        self._require_started()
        was_up: bool = self.mesh.is_up(peer)
        self._run(self.mesh.disconnect(peer, self.loop.time()))
        return was_up

    def block(self, peer: str, duration: float) -> bool:
        """Fault injection for tests and demos: cut this node off from ``peer`` for
        ``duration`` seconds, as a network partition between the two would.

        The session ends (NodeDown reason ``blocked`` here, ``peer_reset`` at the
        peer), every attempt either way is refused, and when the time is up (or at
        :meth:`unblock`) this node dials ``peer`` again. To split a cluster, block each
        node of one side on the nodes of the other side. It models a clean symmetric cut,
        not loss, delay or a silent network (no heartbeat timeout happens); see
        :meth:`fabric.protocol.mesh.MeshCore.block`. Returns whether a session was up.
        """
        self._require_started()
        was_up: bool = self.mesh.is_up(peer)
        now = self.loop.time()
        self._run(self.mesh.block(peer, now + duration, now))
        return was_up

    def unblock(self, peer: str) -> None:
        """End :meth:`block` of ``peer`` now; the session comes back by itself."""
        self._require_started()
        self._run(self.mesh.unblock(peer, self.loop.time()))

    async def ping(self, peer: str, timeout: float = CALL_TIMEOUT) -> Answer:
        """``"pong"`` if ``peer`` answers (connecting first if needed), else ``"pang"``:
        an :class:`~fabric.types.Answer`, true for ``"pong"`` only."""
        self._require_started()
        try:
            peer = str(parse_node_name(peer))
        except ConfigError:
            return PANG
        if peer == self.name:
            return PONG
        if not self.mesh.is_up(peer) and not await self.connect(peer, timeout):
            return PANG
        token = secrets.randbits(48)
        fut: asyncio.Future[bool] = self.loop.create_future()
        self._ping_waiters[token] = fut
        self._run(self.mesh.ping(peer, token))
        try:
            return PONG if await asyncio.wait_for(fut, timeout) else PANG
        except asyncio.TimeoutError:
            return PANG
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

    # -- processes ------------------------------------------------------------------------

    def make_ref(self) -> Ref:
        """A reference unique within this node run."""
        return self.processes.make_ref()

    def is_local(self, pid: Pid) -> bool:
        return pid.node == self.name

    def is_alive(self, pid: Pid) -> bool:
        """True if ``pid`` is a live process of this node run."""
        return self.processes.is_alive(pid)

    def spawn(self, fn: ProcessFn, *args: Any, link_to: Process | None = None,
              name: str | None = None, mailbox_limit: int | None = None) -> Pid:
        """Start ``async def fn(proc, *args)`` as a local process; returns its pid.

        ``mailbox_limit``: the most messages its mailbox holds (default: the config's
        ``mailbox_limit``); see :class:`~fabric.errors.MailboxFullError`."""
        self._require_started()
        return self.processes.spawn(fn, args, link_to, name, mailbox_limit)

    def new_mailbox(self, mailbox_limit: int | None = None) -> Process:
        """A process without a task: a mailbox for code outside any process (calls)."""
        return self.processes.new_mailbox(mailbox_limit)

    def close_mailbox(self, proc: Process) -> None:
        if proc.alive:
            self.signals.exited(proc, NORMAL)

    async def spawn_on(self, node: str, spec: str, *args: Any, link_to: Process | None = None,
                       timeout: float = CALL_TIMEOUT) -> Pid:
        """Spawn ``"module:function"`` on ``node``; only functions that node exports.

        Raises:
            NotExportedError: the function is unknown there or not exported.
            NodeDownError: the node is unreachable or went down meanwhile.
            SpawnTimeout: the node is up but did not answer within ``timeout``.
        """
        if node == self.name:
            fn = resolve_export(spec, self.config.allow_remote_spawn)
            return self.spawn(fn, *args, link_to=link_to)
        if not self.mesh.is_up(node) and not await self.connect(node):
            raise NodeDownError(node, "noconnection")
        return await self.signals.spawn_remote(node, spec, args, link_to, timeout)

    def register(self, name: str, pid: Pid) -> None:
        """Register a local name for a local, live process.

        Raises:
            NameConflictError: the name is taken, or the process already has another name.
            LocalProtocolError: the pid is not local or not alive.
        """
        self.processes.register(name, pid)

    def unregister(self, name: str) -> None:
        self.processes.unregister(name)

    def whereis(self, name: str) -> Pid | None:
        """The pid registered locally under ``name``, or None."""
        return self.processes.whereis(name)

    def registered(self) -> list[str]:
        return self.processes.registered()

    def exit(self, pid: Pid, reason: Any) -> None:
        """Send an exit signal to ``pid`` (``"kill"`` kills even a trapping process)."""
        self.signals.exit(pid, reason)

    # -- sending --------------------------------------------------------------------------

    def send(self, dest: Any, message: Any) -> None:
        """Send to a pid, a local name, or ``(name, node)``. Never blocks; never raises for
        a dead or unknown destination (as in Erlang), but raises
        :class:`BackpressureError` when the peer's outbound buffer is full, and its
        subclass :class:`MailboxFullError` when the destination's mailbox is full (a
        local one, or one its node reported busy)."""
        t = type(dest)
        if t is Pid:
            node = dest[0]
            if node == self.name:
                self._send_local(dest, message)
            else:
                if self._congested and dest in self._congested and not is_system(message):
                    raise self.mailboxes.refused(dest)
                envelope = ([K_SEND_TUPLE, dest, *message] if type(message) is tuple
                            else [K_SEND, dest, message])
                ch = self._by_peer.get(node)
                if ch is not None:
                    ch.out.push(envelope)
                else:
                    self.channels.push(node, envelope)
        elif t is str:
            self._send_local_name(dest, message)
        elif t is GlobalName:
            pid = self.global_.whereis_name(dest.name)
            if pid is None:
                self.metrics.undeliverable += 1
            else:
                self.send(pid, message)
        elif t is tuple and len(dest) == 2:
            name, node = dest
            if node == self.name:
                self._send_local_name(name, message)
            else:
                if self._congested and dest in self._congested and not is_system(message):
                    raise self.mailboxes.refused(dest)
                self.channels.push(node, [K_REG_SEND, name, message])
        else:
            raise LocalProtocolError(f"cannot send to {dest!r}: not a pid, name or (name, node)")

    async def send_wait(self, dest: Any, message: Any) -> None:
        """Like :meth:`send`, but waits for room in the peer's buffer or in the
        destination's mailbox instead of raising (wrap it in ``asyncio.wait_for`` to
        bound the wait: a process that never reads never makes room)."""
        while True:
            try:
                self.send(dest, message)
                if type(dest) is Pid and dest[0] != self.name:
                    ch = self._by_peer.get(dest[0])
                    if ch is not None and len(ch.out.queue) >= MAX_BATCH:
                        # A full batch is waiting: let the loop send it (and heartbeat)
                        # instead of queueing up to the limit in one go.
                        await asyncio.sleep(0)
                return
            except MailboxFullError as exc:
                await self.mailboxes.wait_for_room(exc.dest)  # the pid a GlobalName named
            except BackpressureError as exc:
                if not await self.channels.wait_for_room(exc.node):
                    return

    # -- timers ---------------------------------------------------------------------------

    def send_after(self, dest: Any, message: Any, delay: float) -> Ref:
        """Send ``message`` to ``dest`` (anything :meth:`send` takes) in ``delay`` seconds;
        returns the timer's ref for :meth:`cancel_timer` (Erlang's ``send_after/3``).

        The destination is resolved when the timer fires; a dead one drops the message.

        Raises:
            LocalProtocolError: ``delay`` is negative.
        """
        self._require_started()
        return self._timers.send_after(dest, message, delay)

    def cancel_timer(self, ref: Ref) -> float | None:
        """Cancel a :meth:`send_after` timer: the seconds it had left, or None if it
        already fired, was cancelled, or is unknown (Erlang's ``false``). Once this
        returns, its message is not sent."""
        self._require_started()
        return self._timers.cancel(ref)

    def read_timer(self, ref: Ref) -> float | None:
        """Seconds before a :meth:`send_after` timer fires, or None (not pending)."""
        self._require_started()
        return self._timers.read(ref)

    # -- services: moved to fabric.lowlevel (these spellings are deprecated) ---------------

    def add_service(self, core: Any) -> None:
        """Deprecated: :func:`fabric.lowlevel.add_service`."""
        deprecated("Node.add_service(core)", "fabric.lowlevel.add_service(node, core)")
        self.services.add_service(core)

    def service(self, name: str) -> Any:
        """Deprecated: :func:`fabric.lowlevel.service`."""
        deprecated("Node.service(name)", "fabric.lowlevel.service(node, name)")
        return self.services.service(name)

    def on_topic(self, prefix: bytes, handler: Any) -> None:
        """Deprecated: :func:`fabric.lowlevel.on_topic`."""
        deprecated("Node.on_topic(...)", "fabric.lowlevel.on_topic(node, ...)")
        self.services.on_topic(prefix, handler)

    def on_effect(self, effect_type: type, handler: Any) -> None:
        """Deprecated: :func:`fabric.lowlevel.on_effect`."""
        deprecated("Node.on_effect(...)", "fabric.lowlevel.on_effect(node, ...)")
        self.services.on_effect(effect_type, handler)

    def expect(self, token: Any) -> asyncio.Future[Any]:
        """Deprecated: :func:`fabric.lowlevel.expect`."""
        deprecated("Node.expect(token)", "fabric.lowlevel.expect(node, token)")
        return self.services.expect(token)

    def run_service(self, service: str, effects: list[Any]) -> Any:
        """Deprecated: :func:`fabric.lowlevel.run_service`."""
        deprecated("Node.run_service(...)", "fabric.lowlevel.run_service(node, ...)")
        return self.services.run_service(service, effects)

    # -- the mesh core's session events ---------------------------------------------------

    def _on_peer_up(self, service: str, eff: m.PeerUp) -> None:
        self.channels.start(eff.peer)
        self.signals.nodeup(eff.peer)  # before anyone hears of it and links or monitors
        self.log.info("nodeup", peer=eff.peer, hidden=eff.hidden)
        if not eff.hidden:
            self._notify(NodeUp(eff.peer))
        self.services.nodeup(eff.peer)

    def _on_peer_down(self, service: str, eff: m.PeerDown) -> None:
        self.log.info("nodedown", peer=eff.peer, reason=eff.reason)
        if not eff.hidden:
            self._notify(NodeDown(eff.peer, eff.reason))
        self.signals.nodedown(eff.peer, eff.reason)
        self.mailboxes.nodedown(eff.peer)
        self.services.nodedown(eff.peer, eff.reason)

    def _on_connect_done(self, service: str, eff: m.ConnectDone) -> None:
        reason = eff.reason
        if not eff.ok:
            self.channels.connect_failed(eff.peer)
        for fut in self._connect_waiters.pop(eff.peer, []):
            if not fut.done():
                fut.set_result((eff.ok, reason))

    def _on_pong(self, service: str, eff: m.Pong) -> None:
        pong = self._ping_waiters.get(eff.token)
        if pong is not None and not pong.done():
            pong.set_result(True)

    def _on_log(self, service: str, eff: Log) -> None:
        getattr(self.log, eff.level)(eff.event, **eff.fields)

    def _notify(self, event: NodeUp | NodeDown) -> None:
        for q in self._watchers:
            q.put_nowait(event)
