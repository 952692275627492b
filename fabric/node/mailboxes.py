"""Bounded mailboxes: delivery under the bound, and the senders waiting for room.

Theory of operation
-------------------
Every process's mailbox holds at most ``proc.mailbox_limit`` messages (NodeConfig
``mailbox_limit``, 10,000 by default, or per process at ``spawn``). This object delivers
every message a user sends, and enforces the bound where the message enters:

* A **local send** (:meth:`Mailboxes.send_local`) to a full mailbox raises
  :class:`~fabric.errors.MailboxFullError` (counted ``mailbox_refused``); the sender's
  ``send_wait`` waits in :meth:`Mailboxes.wait_for_room` until the process has taken
  enough messages to be down to half its limit (or has ended).
* A **message from another node** (:meth:`Mailboxes.deliver_remote`, called by the
  reactor for ``K_SEND``, ``K_SEND_TUPLE`` and ``K_REG_SEND``) is never refused by
  stopping to read: the node keeps reading its ROUTER for its other processes and its
  heartbeats. From three quarters of the limit on, the sending node is told ``busy``
  (once) and, at the limit, the message is dropped and counted (``mailbox_dropped``) for
  the ``room`` notice that will tell that node how many (:mod:`fabric.protocol.flow`).
* The sending node marks the destination congested (:class:`~fabric.protocol.flow.
  OutboundFlow`, read by ``Node.send`` on every remote send): a plain send to it raises
  ``MailboxFullError``, ``send_wait`` and remote calls wait for the ``room`` notice, the
  destination's end (its node says ``room`` then too) or the session's end. Drops its
  peers report are counted (``dropped_by_peers``) and logged.
* A **group broadcast** (``DeliverMany``, from pg) to a full mailbox is dropped and
  counted (``broadcast_dropped``): a fan-out has no single sender to tell.

Never refused: a call's reply and a GenServer stop request (:func:`~fabric.protocol.flow.
is_system`), and everything the node delivers itself (``Down``, ``Exit``, the call
requests that reach a server through ``K_CALL``, services' notifications), which go
through :meth:`fabric.process.Process.deliver` directly: each is bounded by what caused
it (a monitor, a link, a waiting caller).

A process that a sender waits on (or whose peers were told ``busy``) has
``watch_below`` set to its low-water mark; its ``receive`` calls :meth:`drained` when the
mailbox gets there, and the process table calls :meth:`released` when it ends.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from fabric.errors import MailboxFullError
from fabric.node.effects import EffectExecutor
from fabric.node.metrics import Metrics
from fabric.node.processes import ProcessTable
from fabric.protocol.effects import DeliverMany
from fabric.protocol.flow import (
    Congested,
    InboundFlow,
    OutboundFlow,
    Relieved,
    is_system,
    low_water,
)
from fabric.types import Pid

if TYPE_CHECKING:
    from fabric.process import Process
    from fabric.protocol.mesh import MeshCore

__all__ = ["Mailboxes"]


class Mailboxes:
    """Delivery under the mailbox bound and flow control with peers; see the module
    docstring. Low-level interface: :meth:`is_congested`, :meth:`wait_for_room`,
    :meth:`waiting_for_room`, :meth:`congested_dropped`, :meth:`send_local`,
    :meth:`deliver_remote`."""

    def __init__(self, table: ProcessTable, mesh: MeshCore, executor: EffectExecutor,
                 metrics: Metrics, log: Any, name: str, creation: int) -> None:
        self._table = table
        self._procs = table._procs  # the table's dict: read on every delivery
        self._names = table._names
        self._mesh = mesh
        self._run = executor.run
        self._metrics = metrics
        self._log = log
        self.name = name
        self.creation = creation
        self.inbound = InboundFlow()
        self.outbound = OutboundFlow()
        # dest -> drops reported: read by Node.send on every remote send (hot path)
        self.congested = self.outbound.congested
        self._local_room: dict[int, asyncio.Event] = {}  # pid id -> set once it has room
        self._remote_room: dict[Any, asyncio.Event] = {}  # dest key -> set on "room"
        self._waiters: dict[Any, int] = {}  # dest -> senders suspended in wait_for_room
        executor.register(DeliverMany, self._on_deliver_many)
        executor.register(Congested, self._on_congested)
        executor.register(Relieved, self._on_relieved)

    # -- delivery -------------------------------------------------------------------------

    def send_local(self, pid: Any, message: Any) -> None:
        """Deliver a local send to a process of this run (``undeliverable`` if none).

        Raises:
            MailboxFullError: its mailbox holds ``mailbox_limit`` messages.
        """
        # Hot path: index the pid tuple directly (its properties cost a Python call).
        if type(pid) is Pid and pid[2] == self.creation and pid[0] == self.name:
            proc = self._procs.get(pid[1])
            if proc is not None:
                if len(proc.mailbox) >= proc.mailbox_limit and not is_system(message):
                    self._metrics.mailbox_refused += 1
                    raise MailboxFullError(pid, self.name, len(proc.mailbox))
                proc.deliver(message)
                return
        self._metrics.undeliverable += 1

    def send_local_name(self, name: Any, message: Any) -> None:
        """:meth:`send_local` to a locally registered name."""
        pid = self._names.get(name) if type(name) is str else None
        if pid is None:
            self._metrics.undeliverable += 1
            return
        try:
            self.send_local(pid, message)
        except MailboxFullError as exc:
            exc.dest = name
            raise

    def deliver_remote(self, peer: str, pid: Any, message: Any) -> None:
        """Deliver a message from ``peer`` to a local pid: past the high-water mark the
        peer is told ``busy``; at the limit the message is dropped and counted."""
        if type(pid) is Pid and pid[2] == self.creation and pid[0] == self.name:
            proc = self._procs.get(pid[1])
            if proc is not None:
                if len(proc.mailbox) < proc.busy_at:
                    proc.deliver(message)
                else:
                    self._crowded(peer, proc, pid, message)
                return
        self._metrics.undeliverable += 1

    def deliver_remote_name(self, peer: str, name: Any, message: Any) -> None:
        """:meth:`deliver_remote` to a locally registered name (told by name)."""
        pid = self._names.get(name) if type(name) is str else None
        proc = self._procs.get(pid[1]) if pid is not None else None
        if proc is None:
            self._metrics.undeliverable += 1
        elif len(proc.mailbox) >= proc.busy_at:
            self._crowded(peer, proc, name, message)
        else:
            proc.deliver(message)

    def _crowded(self, peer: str, proc: Process, dest: Any, message: Any) -> None:
        if is_system(message):
            proc.deliver(message)
            return
        full = len(proc.mailbox) >= proc.mailbox_limit
        if full:
            self._metrics.mailbox_dropped += 1
        else:
            proc.deliver(message)
        effects = self.inbound.crowded(proc.self[1], peer, dest, full)
        if effects:
            self._metrics.busy_sent += 1
            self._watch(proc)
            self._run(effects)

    def _on_deliver_many(self, service: str, eff: DeliverMany) -> None:
        procs, message = self._procs, eff.message
        name, creation = self.name, self.creation
        for pid in eff.pids:
            proc = procs.get(pid[1]) if pid[0] == name and pid[2] == creation else None
            if proc is None:
                self._metrics.undeliverable += 1
            elif len(proc.mailbox) >= proc.mailbox_limit:
                self._metrics.broadcast_dropped += 1
            else:
                proc.deliver(message)

    # -- room -----------------------------------------------------------------------------

    def _watch(self, proc: Process) -> None:
        """Ask ``proc``'s receive to call :meth:`drained` at its low-water mark."""
        proc.watch_below = low_water(proc.mailbox_limit)

    def drained(self, proc: Process) -> None:
        """``proc`` is down to its low-water mark: tell the peers told ``busy`` and wake
        the local senders waiting for room (called by its ``receive``)."""
        proc.watch_below = -1
        pid_id = proc.self[1]
        self._run(self.inbound.drained(pid_id))
        room = self._local_room.pop(pid_id, None)
        if room is not None:
            room.set()

    def released(self, proc: Process) -> None:
        """``proc`` ended (called by the process table): its senders need not wait."""
        self.drained(proc)

    def nodedown(self, peer: str) -> None:
        """The session with ``peer`` ended: release what it reported congested and
        forget whom we told."""
        self.inbound.nodedown(peer)
        self._run(self.outbound.nodedown(peer))

    def on_notice(self, peer: str, msg: list[Any]) -> None:
        """A ``busy`` or ``room`` control message from ``peer`` (the reactor's K_CTRL).

        Raises:
            ValueError: malformed (the reactor counts it as bad input).
        """
        creation = self._mesh.creation_of(peer)
        self._run(self.outbound.on_notice(peer, creation if creation is not None else -1,
                                          msg))

    def _on_congested(self, service: str, eff: Congested) -> None:
        self._metrics.busy_received += 1
        self._metrics.dropped_by_peers += eff.dropped

    def _on_relieved(self, service: str, eff: Relieved) -> None:
        self._metrics.dropped_by_peers += eff.dropped
        if eff.total:
            self._log.warning("messages_dropped_at_full_mailbox", peer=eff.peer,
                              dest=repr(eff.dest), dropped=eff.total)
        room = self._remote_room.pop(eff.dest, None)
        if room is not None:
            room.set()

    # -- senders --------------------------------------------------------------------------

    def is_congested(self, dest: Any) -> bool:
        """True while a send to ``dest`` would raise :class:`MailboxFullError`: a remote
        destination its node reported busy, or a local process with a full mailbox."""
        if dest in self.congested:
            return True
        proc = self._local(dest)
        return proc is not None and len(proc.mailbox) >= proc.mailbox_limit

    def congested_dropped(self, dest: Any) -> int:
        """Messages to the remote ``dest`` its node reported dropped in the current
        congestion episode (0 when not congested)."""
        return self.outbound.dropped(dest)

    def refused(self, dest: Any) -> MailboxFullError:
        """The error for a send to a remote ``dest`` reported busy (counted)."""
        self._metrics.mailbox_refused += 1
        node = dest[0] if type(dest) is Pid else dest[1]
        return MailboxFullError(dest, node, -1, self.outbound.dropped(dest))

    async def wait_for_room(self, dest: Any) -> None:
        """Return once a send to ``dest`` may succeed again: its mailbox has room (down
        to half its limit), it ended, or, for a remote one, its node said ``room`` or
        went down. Returns at once if it is not congested."""
        self._waiters[dest] = self._waiters.get(dest, 0) + 1
        try:
            await self._room_for(dest)
        finally:
            left = self._waiters.pop(dest) - 1
            if left:
                self._waiters[dest] = left

    def waiting_for_room(self, dest: Any) -> int:
        """How many senders are suspended in :meth:`wait_for_room` for ``dest`` now (a
        test's proof that a send was refused and is waiting, not spinning)."""
        return self._waiters.get(dest, 0)

    async def _room_for(self, dest: Any) -> None:
        if dest in self.congested:
            remote = self._remote_room.get(dest)
            if remote is None:
                remote = self._remote_room[dest] = asyncio.Event()
            await remote.wait()
            return
        proc = self._local(dest)
        if proc is None or len(proc.mailbox) < proc.mailbox_limit:
            return
        pid_id = proc.self[1]
        room = self._local_room.get(pid_id)
        if room is None:
            room = self._local_room[pid_id] = asyncio.Event()
            if proc.watch_below < 0:
                self._watch(proc)
        await room.wait()

    def _local(self, dest: Any) -> Process | None:
        """The live local process ``dest`` names (a pid, a name, ``(name, this node)``)."""
        if type(dest) is tuple and len(dest) == 2 and dest[1] == self.name:
            dest = dest[0]
        if type(dest) is str:
            dest = self._names.get(dest)
        if type(dest) is not Pid:
            return None
        return self._table.get(dest)
