"""What every part of one node's ``global`` core shares: the input being handled.

Theory of operation
-------------------
``global`` is composed of parts with one job each (:mod:`.global_names`,
:mod:`.global_locks`, :mod:`.global_heal`, :mod:`.global_txn`, wired together by
:mod:`.global_`). They share one :class:`GlobalContext`: this node's identity, the set of
connected peers, the Lamport clock that ages requests and claims, the seeded randomness
of backoffs, the current input's time, and the two outputs of an input: the effects for
the runtime and the messages to this node itself.

A node is one of the nodes it locks, so it sends messages to itself. They go to a local
queue (:attr:`GlobalContext.inbox`) that the core drains before the current input
returns, so a self-message takes exactly the same code path as a remote one, without
re-entrancy. Parts never keep effects of their own: everything goes through
:meth:`GlobalContext.send`, :meth:`~GlobalContext.broadcast`, :meth:`~GlobalContext.emit`
and :meth:`~GlobalContext.log`, and the core hands the collected effects out at the end.
"""

from __future__ import annotations

import random
from collections import deque
from typing import Any

from fabric.errors import LocalProtocolError
from fabric.protocol.effects import Effect, Log, Send
from fabric.types import Pid

__all__ = ["GlobalContext"]


class GlobalContext:
    """The shared state of one input of one node's ``global`` core.

    Args:
        node: this node's full name.
        creation: this node run's creation (pids of earlier runs are refused).
        seed: seeds the backoff jitter, so simulations are reproducible.
    """

    def __init__(self, node: str, creation: int, seed: int) -> None:
        self.node = node
        self.creation = creation
        # Backoff jitter only; correctness never depends on it.
        self.rng = random.Random(seed)
        # Connected peers (full names): the nodes every transaction locks besides us.
        self.peers: set[str] = set()
        # Lamport clock: ages of requests and claims (see :meth:`see` and :meth:`tick`).
        self.lamport = 0
        # Messages to ourselves, handled before the current input returns.
        self.inbox: deque[Any] = deque()
        # Effects of the input being handled.
        self.out: list[Effect] = []
        # The current input's time.
        self.now = 0.0

    def check_local(self, name: Any, pid: Pid) -> None:
        """Refuse a request for a pid that is not of this node run, or a bad name.

        Raises:
            LocalProtocolError: ``pid`` is remote or of an earlier run; ``name`` is not
                hashable.
        """
        if not isinstance(pid, Pid) or pid.node != self.node:
            raise LocalProtocolError(f"global: {pid!r} is not a pid of this node")
        if pid.creation != self.creation:
            raise LocalProtocolError(f"global: {pid!r} is from an earlier run of this node")
        try:
            hash(name)
        except TypeError:
            raise LocalProtocolError(f"global: {name!r} is not hashable") from None

    def see(self, lamport: int) -> None:
        """Advance the clock past a time seen in a claim or a request."""
        self.lamport = max(self.lamport, lamport)

    def tick(self) -> int:
        """A new, later Lamport time."""
        self.lamport += 1
        return self.lamport

    def send(self, peer: str, payload: Any) -> None:
        """Send to ``global`` on ``peer`` (this node: the local queue)."""
        if peer == self.node:
            self.inbox.append(payload)
        else:
            self.out.append(Send(peer, payload))

    def broadcast(self, payload: Any) -> None:
        """Send to every connected peer (not to this node)."""
        for peer in sorted(self.peers):
            self.out.append(Send(peer, payload))

    def emit(self, effect: Effect) -> None:
        """An effect for the runtime (a delivery, a timer, a completion, ...)."""
        self.out.append(effect)

    def log(self, level: str, event: str, **fields: Any) -> None:
        self.out.append(Log(level, event, {"node": self.node, **fields}))

    def take(self) -> list[Effect]:
        """The effects of the input that ends, leaving none behind."""
        out, self.out = self.out, []
        return out

    def discard(self) -> None:
        """Forget the outputs of an input that failed (misuse raises before any change)."""
        self.inbox.clear()
        self.out = []
