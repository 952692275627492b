"""Mailbox flow control between nodes: the ``busy`` and ``room`` notices (sans-I/O).

Theory of operation
-------------------
Every process has a bounded mailbox (``mailbox_limit`` messages, NodeConfig default
10,000). A local sender is refused at once when the mailbox is full, so only messages
from other nodes need a protocol: the receiving node must keep reading its socket (one
slow process must not stall the node's other processes or its heartbeats), so it cannot
push back through TCP. Instead it tells the sending *node*, XON/XOFF style:

* A message from ``peer`` for a local process whose mailbox holds at least its
  :func:`high_water` mark (three quarters of the limit) makes :class:`InboundFlow` return
  one ``[K_CTRL, "busy", dest, dropped]`` notice for that peer, once per episode; ``dest``
  is the destination as the peer addressed it (a pid, or a registered name). Below the
  limit the message is still delivered: the quarter above the mark is the slack for what
  the peer had in flight when it heard. At the limit a message is dropped and counted
  against that ``(peer, dest)``.
* When the process has taken enough messages to be at or below its :func:`low_water`
  mark (half the limit), or when it ends, every peer told gets ``[K_CTRL, "room", dest,
  dropped]``: ``dropped`` is how many of that peer's messages to ``dest`` were dropped
  since the last notice (the first ``busy`` carries the drops before it: 1 or 0). While
  the mailbox stays full, every :data:`REPORT_EVERY` drops are reported in a repeated
  ``busy``, so the sender's node hears of them even if the process never reads again.
* The sending node's :class:`OutboundFlow` marks ``dest`` congested on ``busy`` and
  releases it on ``room`` or when the session ends: meanwhile a plain send to it is
  refused (``MailboxFullError``) and ``send_wait`` waits; every reported drop is counted
  there (``dropped_by_peers``), so nothing is dropped without the sender's node hearing
  of it. Destinations are keyed as the sender addresses them: a :class:`Pid`, or the
  plain tuple ``(name, node)`` of a registered name.

Some messages are never refused nor dropped by the bound (:func:`is_system`): a call's
reply and a GenServer stop request (one per waiting caller, each bounded by its caller),
and the signals the node delivers itself (``Down``, ``Exit``), which never pass here.

Both objects are pure bookkeeping: inputs are method calls, outputs lists of effects
(``Control`` to queue a notice on a peer's stream; ``Congested`` and ``Relieved`` for the
runtime to count, log and wake the senders waiting on a destination).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from fabric.protocol.mesh_effects import Control
from fabric.protocol.messages import K_CTRL, REPLY_TAG, STOP_TAG
from fabric.types import Pid

__all__ = [
    "BUSY",
    "FLOW_OPS",
    "MAX_CONGESTED_PER_PEER",
    "REPORT_EVERY",
    "ROOM",
    "Congested",
    "InboundFlow",
    "OutboundFlow",
    "Relieved",
    "high_water",
    "is_system",
    "low_water",
]

BUSY: Final = "busy"  # [K_CTRL, "busy", dest, dropped]: dest's mailbox is (nearly) full
ROOM: Final = "room"  # [K_CTRL, "room", dest, dropped]: dest has room again (or ended)
FLOW_OPS: Final = frozenset({BUSY, ROOM})
# A peer may declare at most this many of its destinations congested at once: what a
# peer can make this node hold stays bounded (beyond it, notices are malformed input).
MAX_CONGESTED_PER_PEER: Final = 100_000
# Drops are reported in the "room" notice, and in a repeated "busy" every this many, so a
# sender's node hears of them even while the process does not read at all.
REPORT_EVERY: Final = 1000
_MAX_COUNT: Final = (1 << 63) - 1
_SYSTEM_TAGS: Final = frozenset({REPLY_TAG, STOP_TAG})


def high_water(limit: int) -> int:
    """Mailbox length from which senders on other nodes are told ``busy`` (3/4)."""
    return limit - limit // 4


def low_water(limit: int) -> int:
    """Mailbox length at or below which they are told ``room`` again (1/2)."""
    return limit // 2


def is_system(message: Any) -> bool:
    """True for the messages the bound never refuses: a call's reply
    ``("$reply", ...)`` and a stop request ``("$stop", reason)``."""
    return type(message) is tuple and len(message) > 1 and message[0] in _SYSTEM_TAGS


@dataclass(frozen=True, slots=True)
class Congested:
    """``peer`` reported ``dest`` busy (``dropped`` of our messages to it dropped so
    far): sends to ``dest`` are refused until :class:`Relieved`."""

    peer: str
    dest: Any
    dropped: int


@dataclass(frozen=True, slots=True)
class Relieved:
    """``dest`` has room again (or ended, or its node went down): wake its senders.
    ``dropped``: drops reported by this notice; ``total``: in the whole episode."""

    peer: str
    dest: Any
    dropped: int
    total: int


class InboundFlow:
    """The receiving side: for each local process (by id) that crossed its high-water
    mark, the peers told ``busy`` and how many of their messages were dropped since."""

    def __init__(self, report_every: int = REPORT_EVERY) -> None:
        # pid id -> {(peer, dest as addressed): messages dropped since the last notice}
        self._told: dict[int, dict[tuple[str, Any], int]] = {}
        self._report_every = report_every

    def watching(self, pid_id: int) -> bool:
        """True while some peer was told that process ``pid_id`` is busy."""
        return pid_id in self._told

    def told(self, pid_id: int) -> list[tuple[str, Any]]:
        """The ``(peer, dest)`` pairs told that ``pid_id`` is busy."""
        return list(self._told.get(pid_id, ()))

    def crowded(self, pid_id: int, peer: str, dest: Any, dropped: bool) -> list[Control]:
        """A message from ``peer`` for ``dest`` (local process ``pid_id``) found the
        mailbox at or above its high-water mark; ``dropped``: it was full, so the
        message was dropped. Returns the ``busy`` notice if ``peer`` was not told yet."""
        told = self._told.get(pid_id)
        if told is None:
            told = self._told[pid_id] = {}
        key = (peer, dest)
        count = told.get(key)
        if count is None:
            told[key] = 0
            return [Control(peer, [K_CTRL, BUSY, dest, 1 if dropped else 0])]
        if not dropped:
            return []
        if count + 1 >= self._report_every:  # a full mailbox that never drains: report
            told[key] = 0
            return [Control(peer, [K_CTRL, BUSY, dest, count + 1])]
        told[key] = count + 1
        return []

    def drained(self, pid_id: int) -> list[Control]:
        """Process ``pid_id`` is at or below its low-water mark, or ended: a ``room``
        notice for every peer told, with its drops since the ``busy``."""
        told = self._told.pop(pid_id, None)
        if not told:
            return []
        return [Control(peer, [K_CTRL, ROOM, dest, dropped])
                for (peer, dest), dropped in told.items()]

    def nodedown(self, peer: str) -> None:
        """The session with ``peer`` ended: it needs no ``room`` notice (its node
        releases everything it held for us at its own nodedown)."""
        for pid_id in list(self._told):
            told = self._told[pid_id]
            for key in [k for k in told if k[0] == peer]:
                del told[key]
            if not told:
                del self._told[pid_id]


class OutboundFlow:
    """The sending side: the destinations on other nodes reported busy, each with the
    drops reported so far in its episode (:attr:`congested`, read on every send)."""

    def __init__(self, max_per_peer: int = MAX_CONGESTED_PER_PEER) -> None:
        self.congested: dict[Any, int] = {}  # dest key -> drops reported this episode
        self._by_peer: dict[str, set[Any]] = {}
        self._max_per_peer = max_per_peer

    def dropped(self, dest: Any) -> int:
        """Drops reported for ``dest`` in its current episode (0 if not congested)."""
        return self.congested.get(dest, 0)

    def on_notice(self, peer: str, creation: int,
                  msg: list[Any]) -> list[Congested | Relieved]:
        """``[K_CTRL, op, dest, dropped]`` from ``peer`` (whose run is ``creation``).

        Raises:
            ValueError: a malformed notice, a pid that is not the peer's (a peer may
                only speak for its own processes), or too many congested destinations.
        """
        if len(msg) != 4:
            raise ValueError("a flow notice is [K_CTRL, op, dest, dropped]")
        _, op, dest, dropped = msg
        if type(dropped) is not int or not 0 <= dropped <= _MAX_COUNT:
            raise ValueError("dropped must be a non-negative integer")
        if type(dest) is Pid:
            if dest[0] != peer or dest[2] != creation:
                raise ValueError("a flow notice about a pid of another node or run")
            key: Any = dest
        elif type(dest) is str:
            key = (dest, peer)
        else:
            raise ValueError("a flow notice's dest is a pid or a registered name")
        congested = self.congested
        if op == BUSY:
            keys = self._by_peer.setdefault(peer, set())
            if key not in keys and len(keys) >= self._max_per_peer:
                raise ValueError("too many congested destinations for one peer")
            keys.add(key)
            congested[key] = congested.get(key, 0) + dropped
            return [Congested(peer, key, dropped)]
        if op == ROOM:
            total = congested.pop(key, 0) + dropped
            held = self._by_peer.get(peer)
            if held is not None:
                held.discard(key)
                if not held:
                    del self._by_peer[peer]
            return [Relieved(peer, key, dropped, total)]
        raise ValueError(f"unknown flow op {op!r}")

    def nodedown(self, peer: str) -> list[Relieved]:
        """The session with ``peer`` ended: its destinations are released (a send to
        them now finds the node down, as any send does)."""
        out = []
        for key in self._by_peer.pop(peer, ()):
            out.append(Relieved(peer, key, 0, self.congested.pop(key, 0)))
        return out
