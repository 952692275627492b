"""Processes: an async function with a pid, a mailbox, links and monitors.

Theory of operation
-------------------
A process is ``async def fn(proc, *args)`` run as an asyncio task by its node; ``proc`` is
the :class:`Process` handle. Its mailbox is a deque. ``receive(match=...)`` is Erlang's
selective receive: it takes the first message that ``match`` accepts and leaves the others
in order. Messages that arrive while a receive waits wake it once per delivery burst, and
the receive scans only the messages it has not seen, so a long mailbox is not rescanned.

The mailbox is bounded: ``mailbox_limit`` messages (NodeConfig default 10,000, or per
process at ``spawn``). The node enforces it on delivery (:mod:`fabric.node.mailboxes`): a
local send to a full mailbox raises ``MailboxFullError`` (``send_wait`` waits), a message
from another node is dropped, counted and reported to that node, which then refuses sends
to this process until it has room (DECISIONS D23). Signals (``Down``, ``Exit``) and call
replies are never refused. While a sender waits, ``receive`` tells the node once the
mailbox is down to ``watch_below`` messages.

A process ends with a reason: ``"normal"`` when its function returns, ``"killed"`` when
killed, the value given to :meth:`Process.exit`, or ``("error", type_name, message)``
when it raised (the traceback is logged). Monitors then receive ``Down(ref, pid, reason)``
and linked processes an exit signal: with ``trap_exits`` it arrives as an ``Exit(pid,
reason)`` message, otherwise an abnormal reason ends the linked process too.

Everything that crosses nodes (signals, monitors, spawn) goes through the node, which owns
the process table; this module holds per-process state only.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

from fabric.errors import ReceiveTimeout
from fabric.node.processes import ProcessHandles, use_process_handles
from fabric.protocol.flow import high_water
from fabric.protocol.processes import KILLED as KILLED  # re-exported: the runtime uses it
from fabric.protocol.processes import NORMAL, Down, Exit, ProcessState
from fabric.types import Pid, Ref

if TYPE_CHECKING:
    from fabric.node import Node

__all__ = ["Down", "Exit", "NORMAL", "Process", "ProcessExit", "exception_reason"]

_NO_DEFAULT: Final = object()


class ProcessExit(BaseException):
    """Raised inside a process to end it with ``reason`` (see :meth:`Process.exit`)."""

    def __init__(self, reason: Any) -> None:
        super().__init__(reason)
        self.reason = reason


def exception_reason(exc: BaseException) -> tuple[str, str, str]:
    """The exit reason of a process that raised ``exc``: msgpack-friendly."""
    return ("error", type(exc).__qualname__, str(exc))


class Process(ProcessState):
    """A running process's handle, passed to its function as the first argument.

    It is also the process's signal state in the node's :class:`~fabric.protocol.
    processes.ProcessCore` (``trap_exits``, ``links``, ``monitors``, ``monitored_by``,
    ``names``: see :class:`~fabric.protocol.processes.ProcessState`), kept once."""

    def __init__(self, node: Node, pid: Pid, mailbox_limit: int | None = None) -> None:
        ProcessState.__init__(self, pid)
        self.node = node
        self.self: Pid = pid  # Erlang's self()
        self.mailbox: deque[Any] = deque()
        # The bound of the mailbox (DECISIONS D23; the node's Mailboxes enforce it), and
        # its high-water mark, kept with it: a delivery from a peer compares with it.
        self.mailbox_limit = self.busy_at = 0
        self.set_mailbox_limit(node.config.mailbox_limit if mailbox_limit is None
                               else mailbox_limit)
        # While a sender waits for room (or a peer was told "busy"): the length at or
        # below which taking a message tells the node (node.mailboxes.drained). -1: none.
        self.watch_below = -1
        self._scanned = 0  # mailbox[:_scanned] were rejected by the current receive
        self._waiter: asyncio.Future[None] | None = None
        self.task: asyncio.Task[Any] | None = None
        self.exit_reason: Any = None  # set when the process has ended
        self.pending_kill: Any = None  # reason of an exit signal that is ending it

    # -- messaging ------------------------------------------------------------------------

    def deliver(self, message: Any) -> None:
        """Append ``message`` to the mailbox (called by the node)."""
        self.mailbox.append(message)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def receive(
        self,
        match: Callable[[Any], bool] | None = None,
        timeout: float | None = None,
        default: Any = _NO_DEFAULT,
    ) -> Any:
        """Take the first message ``match`` accepts (any message when ``match`` is None).

        Args:
            match: a predicate; rejected messages stay in the mailbox in order.
            timeout: seconds to wait; None waits forever, 0 only looks.
            default: returned on timeout instead of raising.

        Raises:
            ReceiveTimeout: nothing matched within ``timeout`` and no default was given.
        """
        box = self.mailbox
        if match is None and box:
            msg = box.popleft()
            if len(box) <= self.watch_below:
                self.node.mailboxes.drained(self)
            return msg
        self._scanned = 0
        deadline = None if timeout is None else self.node.loop.time() + timeout
        while True:
            if match is None:
                if box:
                    msg = box.popleft()
                    if len(box) <= self.watch_below:
                        self.node.mailboxes.drained(self)
                    return msg
            else:
                i = self._scanned
                n = len(box)
                while i < n:
                    msg = box[i]
                    if match(msg):
                        del box[i]
                        self._scanned = 0
                        if n <= self.watch_below + 1:
                            self.node.mailboxes.drained(self)
                        return msg
                    i += 1
                self._scanned = n
            loop = self.node.loop
            if deadline is not None and deadline - loop.time() <= 0:
                if default is not _NO_DEFAULT:
                    return default
                raise ReceiveTimeout(f"no matching message within {timeout} s")
            waiter = loop.create_future()
            self._waiter = waiter
            # A plain timer that wakes the waiter is much cheaper than wait_for, and a
            # call's reply pays for it on every receive with a timeout.
            timer = None if deadline is None else loop.call_at(deadline, _wake, waiter)
            try:
                await waiter
            finally:
                self._waiter = None
                if timer is not None:
                    timer.cancel()

    def set_mailbox_limit(self, limit: int) -> None:
        """Bound the mailbox to ``limit`` messages (read it as ``mailbox_limit``)."""
        self.mailbox_limit = limit
        self.busy_at = high_water(limit)

    def send(self, dest: Any, message: Any) -> None:
        """Send ``message`` to a pid, a local name or ``(name, node)``. Never blocks;
        raises :class:`~fabric.errors.BackpressureError` when the peer's buffer is full,
        :class:`~fabric.errors.MailboxFullError` when the destination's mailbox is."""
        self.node.send(dest, message)

    async def send_wait(self, dest: Any, message: Any) -> None:
        """Like :meth:`send`, but waits for room when the peer's buffer or the
        destination's mailbox is full."""
        await self.node.send_wait(dest, message)

    def send_after(self, dest: Any, message: Any, delay: float) -> Ref:
        """Send ``message`` to ``dest`` in ``delay`` seconds (``dest`` may be
        ``proc.self``: a timeout message to oneself); see :meth:`fabric.Node.send_after`."""
        return self.node.send_after(dest, message, delay)

    def cancel_timer(self, ref: Ref) -> float | None:
        """Cancel a timer; the seconds it had left, or None (see
        :meth:`fabric.Node.cancel_timer`)."""
        return self.node.cancel_timer(ref)

    # -- links and monitors ---------------------------------------------------------------

    def link(self, pid: Pid) -> None:
        """Link to ``pid``: an abnormal exit of either ends (or signals) the other."""
        self.node.signals.link(self, pid)

    def unlink(self, pid: Pid) -> None:
        self.node.signals.unlink(self, pid)

    def monitor(self, pid: Pid | tuple[str, str]) -> Ref:
        """Watch ``pid`` (or a registered ``(name, node)``, resolved by that node): one
        ``Down(ref, pid, reason)`` message arrives when it ends."""
        return self.node.signals.monitor(self, pid)

    def demonitor(self, ref: Ref) -> None:
        """Stop a monitor; a ``Down`` already in the mailbox is removed too."""
        self.node.signals.demonitor(self, ref)
        for i, msg in enumerate(self.mailbox):
            if type(msg) is Down and msg.ref == ref:
                del self.mailbox[i]
                break

    def register(self, name: str) -> None:
        """Register a local name for this process (freed when it ends)."""
        self.node.register(name, self.self)

    def exit(self, reason: Any = NORMAL) -> None:
        """End this process now with ``reason``; call it from inside the process."""
        raise ProcessExit(reason)

    @property
    def alive(self) -> bool:
        return self.exit_reason is None

    def __repr__(self) -> str:
        return f"<Process {self.self!r}>"


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


# The node makes processes with these; it does not import this module (D26).
use_process_handles(ProcessHandles(Process, ProcessExit, exception_reason))
