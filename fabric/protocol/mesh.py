"""The mesh core: sessions with peers, from handshake to nodedown, and the full mesh.

Theory of operation
-------------------
One :class:`MeshCore` per node owns the table of peers. A peer moves through

    (none) --connect--> HELLO_SENT --CHALLENGE ok--> ANSWER_SENT --BIND ok--> UP
    (none) --HELLO-->   ACCEPTING  --ANSWER ok--> UP  (after opening our channel + BIND)
    UP --GOODBYE / channel closed / heartbeat silence / disconnect / RESET--> (none)

(the frames are described in :mod:`fabric.protocol.handshake`). Two nodes that connect to
each other at the same moment both see a HELLO while their own is in flight; the attempt
started by the node with the smaller name wins and the other side yields (``simultaneous``),
so one session results.

When a session comes up, both sides (unless either is hidden) send their list of visible
peers and connect to the ones they do not know: the mesh closes transitively. Names learned
that way, or from discovery through :meth:`MeshCore.learn`, are *automatic* attempts.

Names are unique per base name ``name@host`` (``_bases``): an attempt or session holds its
base, and a second node with the same base but another port is refused ``name_in_use``,
whether it dials us (HELLO, checked again at ANSWER) or we would dial it (``connect``,
``learn``, a retry), so a merge of two clusters that both hold a ``p@h`` keeps each node's
first holder and never lists two.

A peer lost abnormally (``heartbeat_timeout``, ``connection_closed``, ``peer_reset``: the
comment at :data:`PEER_RESET` says how the last two differ), or an automatic attempt that
failed, is retried on fresh sockets, so a healed partition does not wait out
TCP retransmission backoff on the old sockets. Retries never stop on their own (unless
``reconnect_give_up`` is set): during ``reconnect_window`` after the loss the pause between
attempts doubles from 50 ms up to ``reconnect_max_backoff``, afterwards up to
``reconnect_idle_backoff``, each pause drawn in [b/2, b] from the injected entropy so that
a whole island does not retry in step. A partition of any length therefore heals within one
capped pause (plus a handshake) of the network healing, and the peer lists that cross the
first restored session complete the mesh. A peer is forgotten only by :meth:`disconnect`,
a refusal that another attempt would meet again (``FORGET_REFUSALS``), its base name
being taken by another node, or ``reconnect_give_up``.

Fault injection (:meth:`MeshCore.block`): for a while, this node has no session with one
peer, as if the network between them were cut: an up session is torn down (reason
``blocked``; the peer is told ``not_connected`` and sees ``peer_reset``), every
attempt either way is refused (``blocked``: the peer keeps retrying, as after a lost
connection), peer lists that name it are not followed, and when the block ends this node
dials the peer at once. It models a clean, symmetric cut between two nodes, seen at the
same moment by both; not message loss, delay, one-way cuts or a silent network (no
heartbeat timeout is exercised), and it holds only while this node runs.

When this node tears a session down it also sends ``REFUSE not_connected`` to the peer's
channel, so a peer that was frozen learns on waking that it was dropped. A data batch
from an identity with no session gets the same answer.

Inputs are the methods below; each returns a list of effects (dataclasses in this module
plus :class:`~fabric.protocol.effects.Log`). Time is always an argument.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

from fabric.errors import ConfigError, RemoteProtocolError
from fabric.protocol import handshake as hs
from fabric.protocol.detector import FailureDetector
from fabric.protocol.effects import Log
from fabric.protocol.mesh_effects import (
    ChannelSend,
    CloseChannel,
    ConnectDone,
    Control,
    OpenChannel,
    PeerDown,
    PeerUp,
    Pong,
    PublishHeartbeat,
    RouterSend,
    SubConnect,
    SubDisconnect,
)
from fabric.protocol.messages import K_GOODBYE, K_GOODBYE_ACK, K_PEERS, K_PING, K_PONG
from fabric.types import NodeName, parse_node_name

__all__ = [
    "CONNECTION_CLOSED",
    "PEER_RESET",
    "ChannelSend",
    "CloseChannel",
    "ConnectDone",
    "Control",
    "MeshCore",
    "OpenChannel",
    "PeerDown",
    "PeerUp",
    "Pong",
    "PublishHeartbeat",
    "RouterSend",
    "SubConnect",
    "SubDisconnect",
]

HELLO_SENT: Final = "hello_sent"
ANSWER_SENT: Final = "answer_sent"
YIELDED: Final = "yielded"
ACCEPTING: Final = "accepting"
UP: Final = "up"

# Why a session ended abnormally. CONNECTION_CLOSED: the TCP connection under our DEALER
# closed (the peer's process died: the OS closed its sockets), or the peer came back as a
# new incarnation. PEER_RESET: the peer, still running, ended the session itself (it sent
# REFUSE on the up channel because it had dropped us, or opened a new session with the
# same incarnation, as after a simultaneous reconnect). Services that act on a death at
# once (singletons) must tell them apart: a reset is proof of life, not of death.
CONNECTION_CLOSED: Final = "connection_closed"
PEER_RESET: Final = "peer_reset"
# Abnormal ends after which the peer is retried; the others were meant.
RETRY_REASONS: Final = frozenset({"heartbeat_timeout", CONNECTION_CLOSED, PEER_RESET})
# Refusals that another attempt would meet again: never retried automatically.
FINAL_REFUSALS: Final = frozenset({"bad_cookie", "name_in_use", "version", "wrong_node",
                                   "bad_name", "stopping"})
# Refusals after which a peer we keep retrying is forgotten: the node there is not (or no
# longer) one we may have a session with. A stopping node may come back: keep trying it.
FORGET_REFUSALS: Final = FINAL_REFUSALS - {"stopping"}
# The first pause before a retry; it doubles per attempt up to the configured cap.
FIRST_BACKOFF: Final = 0.05
# A retry gives up sooner than a user's connect: a heal should be noticed by the next
# fresh attempt, not wait out a stale one.
RETRY_HANDSHAKE_TIMEOUT: Final = 1.0
# Cap on handshakes we accept concurrently: unauthenticated state must stay bounded.
MAX_PENDING_ACCEPTS: Final = 256
# And per source address (as the transport reports it): a host that can reach our
# handshake (its key admitted) cannot take every slot and starve the others.
MAX_ACCEPTS_PER_SOURCE: Final = 64
# Refusal reasons we count by name; anything else a stranger sends counts as "other".
KNOWN_REASONS: Final = frozenset({
    "bad_cookie", "name_in_use", "version", "simultaneous", "not_connected", "stopping",
    "bad_name", "busy", "wrong_node", "timeout", "connection_refused", "blocked",
    "key_refused", "security_mismatch",  # the transport's (transport_refused)
})
# What the transport reports of a failed ZeroMQ (CURVE/ZAP) handshake: transport_refused.
TRANSPORT_REFUSALS: Final = frozenset({"key_refused", "security_mismatch", "bad_cookie"})
# Warnings caused by strangers are rate-limited: at most this many per event per second.
LOG_BUDGET: Final = 5


@dataclass
class _Peer:
    name: str
    state: str
    deadline: float  # when the handshake gives up (unused once UP)
    out_identity: bytes | None = None  # routing id of our DEALER to the peer
    in_identity: bytes | None = None  # routing id of the peer's DEALER at our ROUTER
    my_challenge: bytes = b""
    their_challenge: bytes = b""
    creation: int = 0
    hidden: bool = False
    pub_endpoint: str = ""
    goodbye_acked: bool = False
    auto: bool = False  # started by the mesh itself (peer list, retry), not by a user
    source: str = ""  # an accept's: the address its HELLO came from ("" unknown)


@dataclass
class _Retry:
    next_at: float  # when the next attempt starts
    backoff: float  # the current cap of the pause, doubling per attempt
    lost_at: float  # when the peer was lost (or first failed): picks the phase


@dataclass
class MeshStats:
    """Counters the runtime exposes as metrics."""

    refused: dict[str, int] = field(default_factory=dict)
    bad_frames: int = 0
    unauthenticated_frames: int = 0


class MeshCore:
    """Sessions with peers: handshake, liveness, transitive mesh, reconnects.

    Args:
        name: this node's full name (with its ROUTER port).
        creation: this node run's creation number.
        cookie: the shared secret.
        pub_port: this node's PUB port, announced in the handshake.
        entropy: ``entropy(n) -> n random bytes`` (``os.urandom`` in production, a seeded
            source in the simulator).
        reconnect_window: for this long after a loss, retries pause at most
            ``reconnect_max_backoff``; 0 turns automatic reconnects off.
        reconnect_idle_backoff: the longest pause between retries after the window.
        reconnect_give_up: forget a lost peer after this long without a session
            (0: never).
    """

    def __init__(
        self,
        name: str,
        creation: int,
        cookie: bytes,
        pub_port: int,
        entropy: Callable[[int], bytes],
        *,
        hidden: bool = False,
        heartbeat_interval: float = 0.2,
        heartbeat_timeout: float = 1.0,
        handshake_timeout: float = 3.0,
        reconnect_window: float = 60.0,
        reconnect_max_backoff: float = 1.0,
        reconnect_idle_backoff: float = 5.0,
        reconnect_give_up: float = 0.0,
    ) -> None:
        self.name = name
        self.parsed: NodeName = parse_node_name(name)
        self.creation = creation
        self.hidden = hidden
        self._cookie = cookie  # never logged, never sent
        self._pub_port = pub_port
        self._entropy = entropy
        self.handshake_timeout = handshake_timeout
        self.reconnect_window = reconnect_window
        self.reconnect_max_backoff = reconnect_max_backoff
        self.reconnect_idle_backoff = reconnect_idle_backoff
        self.reconnect_give_up = reconnect_give_up
        self.detector = FailureDetector(heartbeat_interval, heartbeat_timeout)
        # full name -> session state of every peer we are connecting to or connected with
        self.peers: dict[str, _Peer] = {}
        # routing identity at our ROUTER -> peer name, for UP peers only (the hot path)
        self.authenticated: dict[bytes, str] = {}
        # routing identity -> handshake we accept that is not finished. Kept apart from
        # `peers` so that nothing a stranger sends before proving the cookie can change a
        # session or an attempt of ours.
        self._accepts: dict[bytes, _Peer] = {}
        # name@host -> full name of every entry in `peers` (unique per cluster)
        self._bases: dict[str, str] = {}
        # event -> (second, count): rate limit of warnings strangers can trigger
        self._log_window: dict[str, tuple[int, int]] = {}
        # peers lost abnormally that we keep trying to reach
        self._retry: dict[str, _Retry] = {}
        # peer -> until when no session with it is allowed (fault injection: block())
        self._blocked: dict[str, float] = {}
        # set by stop(): no new sessions, no retries
        self.stopping = False
        self.stats = MeshStats()

    # -- queries --------------------------------------------------------------------------

    def nodes(self) -> list[str]:
        """Visible peers whose session is up, sorted."""
        return sorted(p.name for p in self.peers.values() if p.state == UP and not p.hidden)

    def hidden_nodes(self) -> list[str]:
        return sorted(p.name for p in self.peers.values() if p.state == UP and p.hidden)

    def is_up(self, peer: str) -> bool:
        p = self.peers.get(peer)
        return p is not None and p.state == UP

    def knows(self, peer: str) -> bool:
        """We have a session with ``peer`` or an attempt of ours to reach it."""
        return peer in self.peers

    def creation_of(self, peer: str) -> int | None:
        """The run (creation) of ``peer`` in our session with it (None: no session)."""
        p = self.peers.get(peer)
        return None if p is None or p.state != UP else p.creation

    def identity_of(self, peer: str) -> bytes | None:
        """The ROUTER identity of ``peer``'s DEALER in our UP session with it."""
        p = self.peers.get(peer)
        return None if p is None or p.state != UP else p.in_identity

    def held(self) -> int:
        """Sessions, attempts and unfinished accepts held: what a flood of strangers'
        handshakes could make this core keep (bounded)."""
        return len(self.peers) + len(self._accepts)

    def negotiating(self, peer: str) -> bool:
        """A session with ``peer`` is being set up (ours or theirs), not yet up."""
        p = self.peers.get(peer)
        if p is not None:
            return p.state != UP
        return any(a.name == peer for a in self._accepts.values())

    def blocked(self, now: float) -> dict[str, float]:
        """Peers blocked by :meth:`block` at ``now``, each with the end of its block."""
        return {peer: until for peer, until in self._blocked.items() if until > now}

    def reconnecting(self) -> dict[str, float]:
        """Peers we keep trying to reach, each with the time of its next attempt."""
        return {name: r.next_at for name, r in self._retry.items()}

    def name_holder(self, peer: str) -> str | None:
        """The full name holding ``peer``'s base name here (an attempt, a session or this
        node), or None when it is free. ``peer`` may be connected to only when this is
        None or ``peer`` itself."""
        parsed = parse_node_name(peer)
        if parsed.base == self.parsed.base:
            return self.name
        return self._bases.get(parsed.base)

    def all_acked(self) -> bool:
        """During a graceful stop: every peer acknowledged our goodbye."""
        return all(p.goodbye_acked for p in self.peers.values() if p.state == UP)

    # -- local requests -------------------------------------------------------------------

    def connect(self, peer: str, now: float) -> list[Any]:
        """Start (or join) an attempt to reach ``peer``; ends in ``ConnectDone``.

        Raises:
            ConfigError: ``peer`` is not a full node name with a port.
        """
        parsed = _with_port(peer, "connect to")
        peer = str(parsed)
        if peer == self.name:
            return [ConnectDone(peer, True, "self")]
        existing = self.peers.get(peer)
        if existing is not None:
            return [ConnectDone(peer, True, "already_connected")] if existing.state == UP else []
        holder = self.name_holder(peer)
        if holder is not None:
            return self._refuse_here(peer, holder, now)
        if any(a.name == peer for a in self._accepts.values()):
            return []  # the peer is connecting to us: its session answers this connect
        if self.stopping:
            return [ConnectDone(peer, False, "stopping")]
        if self._is_blocked(peer, now):
            return [ConnectDone(peer, False, "blocked")]
        return self._initiate(peer, parsed, now)

    def learn(self, peer: str, now: float) -> list[Any]:
        """A node's name learned other than from a user: a peer list, or discovery.

        Connects unless ``peer`` is this node, already known, or already planned for a
        retry (learning it again then changes nothing, so discovery may hand over a name
        as often as it likes), as an automatic attempt: if it fails (``timeout``,
        ``connection_refused``...) it is retried like a lost peer, forever unless
        ``reconnect_give_up`` is set. Refusals and name conflicts (``name_in_use``) end
        it as they end :meth:`connect`. Discovery feeds names here (through
        ``Node.learn``); the mesh alone paces the attempts.

        Raises:
            ConfigError: ``peer`` is not a full node name with a port.
        """
        if peer == self.name or peer in self.peers or peer in self._retry:
            return []
        effects = self.connect(peer, now)
        attempt = self.peers.get(str(parse_node_name(peer)))
        if attempt is not None and attempt.state != UP:
            attempt.auto = True
        return effects

    def disconnect(self, peer: str, now: float) -> list[Any]:
        """Tear down the session with ``peer`` (reason ``disconnect``), or end an attempt
        to reach it; no retry (an automatic attempt ended here is not planned again)."""
        effects = self._down(peer, "disconnect", now) if peer in self.peers else []
        self._retry.pop(peer, None)
        return effects

    def block(self, peer: str, until: float, now: float) -> list[Any]:
        """Fault injection: no session with ``peer`` until ``until`` (see the module
        docstring for what it models); then dial it again. Blocking again moves the end.

        Raises:
            ConfigError: ``peer`` is not a full node name with a port.
        """
        peer = str(_with_port(peer, "block"))
        self._blocked[peer] = until
        for identity, accept in list(self._accepts.items()):
            if accept.name == peer:
                del self._accepts[identity]
        effects: list[Any] = []
        if peer in self.peers:
            effects = self._down(peer, "blocked", now)
        # The retry that ends the block (a lost peer is dialled again at once).
        self._retry[peer] = _Retry(until, FIRST_BACKOFF, until)
        return effects

    def unblock(self, peer: str, now: float) -> list[Any]:
        """End :meth:`block` of ``peer`` now (it is dialled at the next tick)."""
        peer = str(parse_node_name(peer))
        if self._blocked.pop(peer, None) is None:
            return []
        retry = self._retry.get(peer)
        if retry is not None:
            retry.next_at = min(retry.next_at, now)
            retry.lost_at = now
        return []

    def _is_blocked(self, peer: str, now: float) -> bool:
        until = self._blocked.get(peer)
        if until is None:
            return False
        if now >= until:
            del self._blocked[peer]
            return False
        return True

    def ping(self, peer: str, token: int) -> list[Any]:
        """Queue a ping; a ``Pong`` effect follows if the peer answers."""
        if not self.is_up(peer):
            return []
        return [Control(peer, [K_PING, token])]

    def stop(self, now: float) -> list[Any]:
        """Begin a graceful stop: say goodbye to every peer; poll :meth:`all_acked`."""
        self.stopping = True
        self._retry.clear()
        effects: list[Any] = []
        for peer in list(self.peers.values()):
            if peer.state == UP:
                effects.append(Control(peer.name, [K_GOODBYE, "shutdown"]))
            else:
                effects += self._drop_pending(peer.name, "stopping")
        return effects

    def close_all(self, now: float) -> list[Any]:
        """End every session now (after stop's drain, or on an abrupt close)."""
        effects: list[Any] = []
        for name in list(self.peers):
            effects += self._down(name, "shutdown", now, notify_peer=False)
        return effects

    # -- inputs from the transport --------------------------------------------------------

    def peer_of(self, identity: bytes) -> str | None:
        """The authenticated peer behind a ROUTER identity (None: not in a session)."""
        return self.authenticated.get(identity)

    def router_frame(self, identity: bytes, value: Any, now: float,
                     source: str = "") -> list[Any]:
        """A frame from an identity with no session: handshake, or refused. ``source``
        is the address it came from, if the transport knows it: pending accepts are
        bounded per source as well as in total."""
        if type(value) is list and value and type(value[0]) is list:
            # A batch from a stranger: a peer that we dropped while it was frozen, or
            # garbage. Tell it (rate is bounded by the peer's own sending).
            self.stats.unauthenticated_frames += 1
            return [RouterSend(identity, hs.Refuse("not_connected").frame())]
        try:
            frame = hs.parse_handshake(value)
        except RemoteProtocolError as exc:
            self.stats.bad_frames += 1
            return [Log("debug", "bad_handshake_frame", {"error": str(exc)})]
        if isinstance(frame, hs.Hello):
            return self._on_hello(identity, frame, now, source)
        if isinstance(frame, hs.Answer):
            return self._on_answer(identity, frame, now)
        if isinstance(frame, hs.Bind):
            return self._on_bind(identity, frame, now)
        if isinstance(frame, hs.Refuse):
            accept = self._accepts.pop(identity, None)
            if accept is None:
                return []
            self._count_refusal(frame.reason)
            return self._log(now, "warning", "handshake_refused_by_peer",
                             peer=accept.name, reason=self._reason(frame.reason))
        self.stats.bad_frames += 1
        return []

    def channel_frame(self, peer: str, value: Any, now: float) -> list[Any]:
        """A frame that arrived on our DEALER to ``peer`` (sent by its ROUTER)."""
        p = self.peers.get(peer)
        if p is None:
            return []
        try:
            frame = hs.parse_handshake(value)
        except RemoteProtocolError:
            self.stats.bad_frames += 1
            return []
        if isinstance(frame, hs.Refuse):
            if frame.reason == "simultaneous":
                if p.state != HELLO_SENT:
                    return []  # stale: we already yielded or accepted their attempt
                # The peer's attempt wins; our session arrives as its HELLO.
                p.state = YIELDED
                p.out_identity = None
                return [CloseChannel(peer)]
            if p.state == UP:
                # Its process answered: alive, but it no longer has this session.
                return self._down(peer, PEER_RESET, now, notify_peer=False)
            reason = self._reason(frame.reason)
            self._count_refusal(reason)
            effects = self._drop_pending(peer, reason, now=now)
            return effects + self._log(now, "warning", "connect_refused", peer=peer,
                                       reason=reason, detail=frame.detail[:200])
        if isinstance(frame, hs.Challenge) and p.state == HELLO_SENT:
            return self._on_challenge(p, frame, now)
        self.stats.bad_frames += 1
        return []

    def control(self, peer: str, message: list[Any], now: float) -> list[Any]:
        """A mesh control message from an UP peer's batch stream."""
        kind = message[0]
        p = self.peers.get(peer)
        if p is None or p.state != UP:
            return []  # late message from a session already torn down
        if kind == K_PEERS:
            if self.hidden or p.hidden or self.stopping or len(message) != 2:
                return []
            names = message[1]
            if type(names) is not list:
                return []
            effects: list[Any] = []
            for name in names[:4096]:
                if type(name) is not str:
                    self.stats.bad_frames += 1
                    continue
                try:
                    effects += self.learn(name, now)
                except ConfigError:
                    self.stats.bad_frames += 1
            return effects
        if kind == K_GOODBYE:
            effects = [Control(peer, [K_GOODBYE_ACK])]
            return effects + self._down(peer, "shutdown", now, notify_peer=False, flush=True)
        if kind == K_GOODBYE_ACK:
            p.goodbye_acked = True
            return []
        if kind == K_PING and len(message) == 2:
            return [Control(peer, [K_PONG, message[1]])]
        if kind == K_PONG and len(message) == 2 and type(message[1]) is int:
            return [Pong(peer, message[1])]
        self.stats.bad_frames += 1
        return []

    def heartbeat(self, name: str, creation: int, now: float) -> None:
        """A heartbeat from ``name`` arrived on the SUB socket."""
        p = self.peers.get(name)
        if p is not None and p.state == UP and p.creation == creation:
            self.detector.heard(name, now)

    def heard(self, peer: str, now: float) -> None:
        """Any frame from ``peer`` is a sign of life."""
        self.detector.heard(peer, now)

    def channel_closed(self, peer: str, now: float) -> list[Any]:
        """The TCP connection under our DEALER (or SUB) to ``peer`` closed."""
        p = self.peers.get(peer)
        if p is None:
            return []
        if p.state == UP:
            return self._down(peer, CONNECTION_CLOSED, now)
        return []

    def channel_refused(self, peer: str, now: float) -> list[Any]:
        """Connecting our DEALER to ``peer`` failed (nothing listens there)."""
        p = self.peers.get(peer)
        if p is None or p.state != HELLO_SENT:
            return []
        return self._drop_pending(peer, "connection_refused", now=now)

    def transport_refused(self, peer: str, reason: str, now: float) -> list[Any]:
        """ZeroMQ's own handshake (CURVE, ZAP) failed on our DEALER to ``peer``: one of
        ``TRANSPORT_REFUSALS``, as the transport names it.

        An attempt of ours fails at once with that reason. A session we accepted (this
        DEALER was our dial-back with BIND) ends without a retry, and the peer is told
        the reason on its own channel (``REFUSE``), so its connect fails with it too:
        the refusal is the one peer's, never guessed from an address.
        """
        p = self.peers.get(peer)
        if p is None:
            return []
        reason = reason if reason in TRANSPORT_REFUSALS else "other"
        self._count_refusal(reason)
        if p.state != UP:
            return self._drop_pending(peer, reason, now=now)
        effects: list[Any] = []
        if p.in_identity is not None:
            effects.append(RouterSend(p.in_identity, hs.Refuse(reason).frame()))
        self._retry.pop(peer, None)
        return effects + self._down(peer, "disconnect", now, notify_peer=False)

    def tick(self, now: float) -> list[Any]:
        """Heartbeats, silence, handshake deadlines and reconnects, at time ``now``."""
        effects: list[Any] = []
        if self.detector.beat_due(now):
            effects.append(PublishHeartbeat())
        for peer in self.detector.tick(now):
            effects += self._down(peer, "heartbeat_timeout", now)
        for p in list(self.peers.values()):
            if p.state != UP and now >= p.deadline:
                effects += self._drop_pending(p.name, "timeout", now=now)
        for identity, accept in list(self._accepts.items()):
            if now >= accept.deadline:
                del self._accepts[identity]
        if not self.stopping:
            for name, retry in list(self._retry.items()):
                if name not in self.peers and now >= retry.next_at:
                    effects += self._retry_now(name, retry, now)
        return effects

    def _retry_now(self, name: str, retry: _Retry, now: float) -> list[Any]:
        """Start the next attempt to reach a peer we keep retrying, or forget it."""
        if self._is_blocked(name, now):
            retry.next_at = self._blocked[name]
            return []
        if self.reconnect_give_up and now - retry.lost_at >= self.reconnect_give_up:
            del self._retry[name]
            return self._log(now, "warning", "reconnect_given_up", peer=name,
                             after=round(now - retry.lost_at, 3))
        holder = self.name_holder(name)
        if holder is not None:
            # Another node took its base name meanwhile: this one may not come back.
            del self._retry[name]
            self._count_refusal("name_in_use")
            return self._log(now, "warning", "reconnect_abandoned", peer=name,
                             reason="name_in_use", holder=holder)
        cap = (self.reconnect_max_backoff if now - retry.lost_at < self.reconnect_window
               else self.reconnect_idle_backoff)
        retry.backoff = min(retry.backoff * 2, cap)
        # Jitter in [b/2, b]: the nodes of one island, which lost the other at the same
        # moment, spread their attempts instead of all retrying in step.
        fraction = int.from_bytes(self._entropy(2), "big") / 0xFFFF
        retry.next_at = now + retry.backoff * (0.5 + 0.5 * fraction)
        effects = self._initiate(name, parse_node_name(name), now,
                                 min(self.handshake_timeout, RETRY_HANDSHAKE_TIMEOUT))
        self.peers[name].auto = True
        return effects

    # -- handshake steps ------------------------------------------------------------------

    def _initiate(self, peer: str, parsed: NodeName, now: float,
                  timeout: float | None = None) -> list[Any]:
        identity = self.parsed.base.encode() + b"\x00" + self._entropy(8)
        deadline = now + (self.handshake_timeout if timeout is None else timeout)
        p = _Peer(peer, HELLO_SENT, deadline, out_identity=identity,
                  my_challenge=self._entropy(hs.CHALLENGE_SIZE))
        self.peers[peer] = p
        self._bases[parsed.base] = peer
        hello = hs.Hello(hs.PROTOCOL_VERSION, self.name, self.creation,
                         hs.FLAG_HIDDEN if self.hidden else 0, self._pub_port, p.my_challenge)
        return [OpenChannel(peer, parsed.endpoint(), identity), ChannelSend(peer, hello.frame())]

    def _refuse_here(self, peer: str, holder: str, now: float) -> list[Any]:
        """We will not dial ``peer``: ``holder`` has its base name (the rule the accepting
        side applies to a HELLO, applied before dialling)."""
        self._count_refusal("name_in_use")
        self._retry.pop(peer, None)
        return [ConnectDone(peer, False, "name_in_use"),
                *self._log(now, "warning", "connect_refused_here", peer=peer,
                           reason="name_in_use", holder=holder)]

    def _refuse(self, identity: bytes, reason: str, now: float,
                detail: str = "") -> list[Any]:
        self._count_refusal(reason)
        return [RouterSend(identity, hs.Refuse(reason, detail).frame()),
                *self._log(now, "warning", "connect_refused_here", reason=reason,
                           detail=detail)]

    def _on_hello(self, identity: bytes, hello: hs.Hello, now: float,
                  source: str) -> list[Any]:
        if self.stopping:
            return self._refuse(identity, "stopping", now)
        if hello.version != hs.PROTOCOL_VERSION:
            return self._refuse(identity, "version", now,
                                f"we speak {hs.PROTOCOL_VERSION}, peer {hello.version}")
        try:
            parsed = parse_node_name(hello.name)
        except ConfigError:
            return self._refuse(identity, "bad_name", now)
        name = str(parsed)
        if parsed.port is None:
            return self._refuse(identity, "name_in_use", now, name)
        if self._is_blocked(name, now):
            return self._refuse(identity, "blocked", now, name)
        holder = self.name_holder(name)  # the same rule as before we dial (connect)
        if holder is not None and holder != name:
            return self._refuse(identity, "name_in_use", now, name)
        existing = self.peers.get(name)
        if existing is not None and (existing.state == ANSWER_SENT or (
                existing.state == HELLO_SENT and self.name < name)):
            # Simultaneous connect: the attempt of the smaller name wins. In ANSWER_SENT
            # the peer already accepted ours, so this HELLO crossed it.
            return self._refuse(identity, "simultaneous", now)
        # One pending accept per identity and per name: a newer HELLO replaces an older
        # one (a retry), which also bounds what one stranger can make us hold.
        self._accepts.pop(identity, None)
        for other_id, other in list(self._accepts.items()):
            if other.name == name:
                del self._accepts[other_id]
        if len(self._accepts) >= MAX_PENDING_ACCEPTS or (source and sum(
                a.source == source for a in self._accepts.values()) >= MAX_ACCEPTS_PER_SOURCE):
            return self._refuse(identity, "busy", now)
        p = _Peer(name, ACCEPTING, now + self.handshake_timeout, in_identity=identity,
                  source=source,
                  my_challenge=self._entropy(hs.CHALLENGE_SIZE),
                  their_challenge=hello.challenge, creation=hello.creation,
                  hidden=bool(hello.flags & hs.FLAG_HIDDEN),
                  pub_endpoint=parsed.endpoint(hello.pub_port))
        self._accepts[identity] = p
        challenge = hs.Challenge(
            hs.PROTOCOL_VERSION, self.name, self.creation, hs.FLAG_HIDDEN if self.hidden else 0,
            self._pub_port, p.my_challenge,
            hs.proof(self._cookie, "challenge", hello.challenge, self.name, name))
        return [RouterSend(identity, challenge.frame())]

    def _on_challenge(self, p: _Peer, ch: hs.Challenge, now: float) -> list[Any]:
        expected = hs.proof(self._cookie, "challenge", p.my_challenge, p.name, self.name)
        if ch.name != p.name or not hs.proofs_equal(expected, ch.proof):
            reason = "bad_cookie" if ch.name == p.name else "wrong_node"
            self._count_refusal(reason)
            effects: list[Any] = [ChannelSend(p.name, hs.Refuse(reason).frame())]
            return effects + self._drop_pending(p.name, reason, flush=True) + self._log(
                now, "warning", "handshake_failed", peer=p.name, reason=reason)
        p.state = ANSWER_SENT
        # The peer answered: the last step (our ANSWER, its BIND) gets time of its own. A
        # HELLO that waited in the DEALER through a network cut reaches the peer late in
        # the attempt's time; timing out now would drop the attempt the peer is already
        # binding, refuse its session as a stranger's, and make it flap (D36).
        p.deadline = max(p.deadline, now + min(self.handshake_timeout, RETRY_HANDSHAKE_TIMEOUT))
        p.their_challenge = ch.challenge
        p.creation = ch.creation
        p.hidden = bool(ch.flags & hs.FLAG_HIDDEN)
        p.pub_endpoint = parse_node_name(p.name).endpoint(ch.pub_port)
        answer = hs.Answer(hs.proof(self._cookie, "answer", ch.challenge, self.name, p.name))
        return [ChannelSend(p.name, answer.frame())]

    def _on_answer(self, identity: bytes, answer: hs.Answer, now: float) -> list[Any]:
        p = self._accepts.pop(identity, None)
        if p is None:
            self.stats.bad_frames += 1
            return []
        expected = hs.proof(self._cookie, "answer", p.my_challenge, p.name, self.name)
        if not hs.proofs_equal(expected, answer.proof):
            return self._refuse(identity, "bad_cookie", now) + self._log(
                now, "warning", "handshake_failed", peer=p.name, reason="bad_cookie")
        holder = self.name_holder(p.name)
        if holder is not None and holder != p.name:
            return self._refuse(identity, "name_in_use", now, p.name)
        # The peer proved the cookie: only now may it replace what we had with it.
        effects: list[Any] = []
        existing = self.peers.get(p.name)
        if existing is not None:
            if existing.state == UP:
                # It lost our session and comes again: the old session is over. A new
                # creation means the old process is gone (it restarted); the same one
                # means it lives and dropped us (we were frozen, or a reconnect race).
                reason = CONNECTION_CLOSED if p.creation != existing.creation else PEER_RESET
                effects += self._down(p.name, reason, now, notify_peer=False)
            elif existing.state == ANSWER_SENT and self.name < p.name:
                # Both attempts got this far at once: the smaller name's attempt wins on
                # both sides (the peer drops its own attempt when ours reaches it).
                return self._refuse(identity, "simultaneous", now)
            else:
                # Our own attempt yields to theirs; whoever waits for it is answered
                # by this session, and what was queued on it moves to the new channel.
                del self.peers[p.name]
                if existing.out_identity is not None:
                    effects.append(CloseChannel(p.name, handover=True))
        self.peers[p.name] = p
        self._bases[parse_node_name(p.name).base] = p.name
        out_identity = self.parsed.base.encode() + b"\x00" + self._entropy(8)
        p.out_identity = out_identity
        bind = hs.Bind(self.name, hs.proof(self._cookie, "bind",
                                           p.their_challenge + p.my_challenge,
                                           self.name, p.name, out_identity))
        effects += [
            OpenChannel(p.name, parse_node_name(p.name).endpoint(), out_identity),
            ChannelSend(p.name, bind.frame()),
        ]
        return effects + self._up(p, now)

    def _on_bind(self, identity: bytes, bind: hs.Bind, now: float) -> list[Any]:
        p = self.peers.get(bind.name)
        if p is None or p.state != ANSWER_SENT:
            self.stats.bad_frames += 1
            return []
        expected = hs.proof(self._cookie, "bind", p.my_challenge + p.their_challenge,
                            p.name, self.name, identity)
        if not hs.proofs_equal(expected, bind.proof):
            self.stats.bad_frames += 1
            return self._log(now, "warning", "bad_bind_proof", peer=p.name)
        p.in_identity = identity
        return self._up(p, now)

    def _up(self, p: _Peer, now: float) -> list[Any]:
        p.state = UP
        if p.in_identity is not None:
            self.authenticated[p.in_identity] = p.name
        self._retry.pop(p.name, None)
        self.detector.watch(p.name, now)
        effects: list[Any] = [
            PeerUp(p.name, p.creation, p.hidden),
            SubConnect(p.name, p.pub_endpoint),
            ConnectDone(p.name, True, "ok"),
        ]
        if not (self.hidden or p.hidden):
            others = [n for n in self.nodes() if n != p.name]
            effects.append(Control(p.name, [K_PEERS, others]))
        return effects

    # -- teardown -------------------------------------------------------------------------

    def _down(self, peer: str, reason: str, now: float, *, notify_peer: bool = True,
              flush: bool = False) -> list[Any]:
        p = self.peers.pop(peer, None)
        if p is None:
            return []
        if p.state != UP:
            self.peers[peer] = p
            return self._drop_pending(peer, reason)
        self._release_base(peer)
        effects: list[Any] = [PeerDown(peer, reason, p.hidden)]
        if p.in_identity is not None:
            self.authenticated.pop(p.in_identity, None)
            if notify_peer:
                effects.append(RouterSend(p.in_identity, hs.Refuse("not_connected").frame()))
        self.detector.forget(peer)
        effects.append(SubDisconnect(peer, p.pub_endpoint))
        effects.append(CloseChannel(peer, flush=flush))
        if reason in RETRY_REASONS and not self.stopping and self.reconnect_window > 0:
            self._retry[peer] = _Retry(now + FIRST_BACKOFF, FIRST_BACKOFF, now)
        return effects

    def _drop_pending(self, peer: str, reason: str, *, flush: bool = False,
                      now: float | None = None) -> list[Any]:
        p = self.peers.pop(peer, None)
        if p is None:
            return []
        self._release_base(peer)
        if reason in FORGET_REFUSALS:
            self._retry.pop(peer, None)
        elif (p.auto and reason not in FINAL_REFUSALS and not self.stopping
                and peer not in self._retry and self.reconnect_window > 0):
            # A peer we learned of must not stay missing because one attempt failed:
            # retry it as we retry a lost peer, or the mesh would stay incomplete.
            at = p.deadline if now is None else now
            self._retry[peer] = _Retry(at + FIRST_BACKOFF, FIRST_BACKOFF, at)
        effects: list[Any] = []
        if p.out_identity is not None:
            effects.append(CloseChannel(peer, flush=flush))
        effects.append(ConnectDone(peer, False, reason))
        return effects

    def _release_base(self, peer: str) -> None:
        """``peer`` no longer holds its base name (if it held it: never free another's)."""
        base = parse_node_name(peer).base
        if self._bases.get(base) == peer:
            del self._bases[base]

    def _count_refusal(self, reason: str) -> None:
        reason = self._reason(reason)
        self.stats.refused[reason] = self.stats.refused.get(reason, 0) + 1

    @staticmethod
    def _reason(reason: str) -> str:
        """A refusal reason as we record it: peers choose the text, we bound it."""
        return reason if reason in KNOWN_REASONS else "other"

    def _log(self, now: float, level: str, event: str, **fields: Any) -> list[Any]:
        """A Log effect, unless ``event`` was logged LOG_BUDGET times this second."""
        second = int(now)
        window, count = self._log_window.get(event, (second, 0))
        if window != second:
            window, count = second, 0
        self._log_window[event] = (window, count + 1)
        if count >= LOG_BUDGET:
            return []
        return [Log(level, event, fields)]


def _with_port(peer: str, verb: str) -> NodeName:
    """``peer`` parsed; ConfigError unless it is a full name with a port."""
    parsed = parse_node_name(peer)
    if parsed.port is None:
        raise ConfigError(f"cannot {verb} {peer!r}: the name needs a port")
    return parsed
