"""The requester side of ``global``: one :class:`Txn` per request in progress.

A transaction goes through phases::

    lock ──all granted──▶ ack ──all acked──▶ done        (register)
      ├──all granted──▶ clear ──all acked──▶ ack ──▶ done (re_register)
      │                   (unregister starts in ack)
      ├──all granted──▶ done                              (lock: "hold" sent, True)
      └──denied──▶ backoff ──timer──▶ lock (next attempt, same priority)

Each attempt has its own request id ``rid = (node, txn number, attempt)``, so a late
answer to an aborted attempt is recognised and ignored; the priority ``prio`` is fixed
for the life of the transaction, which is what makes wait-die starvation-free.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from fabric.protocol.global_locks import Prio, Rid
from fabric.types import Pid

__all__ = ["Phase", "Txn", "TxnKind"]

TxnKind = Literal["register", "re_register", "lock", "unregister"]
Phase = Literal["lock", "clear", "ack", "backoff", "done"]


@dataclass(slots=True, eq=False)
class Txn:
    """A request this node started and has not completed."""

    # This node's number for the transaction (the timer key and part of every rid).
    tid: int
    kind: TxnKind
    # ("n", name) or ("l", resource): what is locked.
    key: Any
    # Age for wait-die; kept across attempts.
    prio: Prio
    # The runtime's token, completed at the end (or an internal marker).
    token: Any
    # The pid that will hold the name or lock (None for unregister).
    pid: Pid | None
    # Registration only: resolver method and meta to store with the claim.
    method: str | None = None
    meta: Any = None
    # The current attempt's request id (None before the first attempt).
    rid: Rid | None = None
    phase: Phase = "lock"
    # Nodes the current attempt asked (the ones to release on abort).
    asked: set[str] = field(default_factory=set)
    # Nodes whose grant (lock phase) or ack (ack phase) is still missing.
    waiting: set[str] = field(default_factory=set)
    # Unregister: owners that have not confirmed their retract yet.
    owners: set[str] = field(default_factory=set)
    # Register: some granter sees a claim on the name, so the answer is "no".
    taken: bool = False
    # Extra information from the grants of the current attempt (see GlobalCore hooks).
    extras: list[Any] = field(default_factory=list)
    # Attempts refused because the lock was held, and how many are allowed.
    refusals: int = 0
    retries: int = 0
    # What to complete with when the ack phase ends.
    result: Any = None
    # Attempt counter (third part of rid).
    attempts: int = 0

    def next_attempt(self, node: str, ask: set[str]) -> Rid:
        """Start a new attempt that asks ``ask``; returns its request id."""
        self.attempts += 1
        self.rid = (node, self.tid, self.attempts)
        self.phase = "lock"
        self.asked = set(ask)
        self.waiting = set(ask)
        self.taken = False
        self.extras = []
        return self.rid
