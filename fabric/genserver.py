"""GenServer: Erlang's gen_server behaviour on fabric processes.

Theory of operation
-------------------
A :class:`GenServer` is an object whose methods run inside one fabric process: the
process takes one message at a time from its mailbox and hands it to ``handle_call``,
``handle_cast`` or ``handle_info``, so the server's state needs no locks. Start one with
``pid = await MyServer.start(node, *args, name=..., link_to=...)``: the call returns once
``init`` has finished, and raises ``init``'s exception if it failed. Everything else a
server receives (``Down``, ``Exit`` with ``trap_exits``, plain sends) goes to
``handle_info``.

The caller's side (``call``, ``cast``, ``stop``, ``reply``) and the messages a server
receives are in :mod:`fabric.calls`; this module re-exports them, so
``from fabric.genserver import call`` keeps working.

Failure policy: when ``handle_call`` raises, the caller gets :class:`RemoteError` (type
name, message, formatted traceback) *and the server crashes* with the exception as its
exit reason, as in Erlang: state after an unexpected exception cannot be trusted, and a
supervisor or a link is the place to decide what happens next. ``terminate(reason)`` runs
on every exit except a brutal kill (reason ``"killed"``).
"""

from __future__ import annotations

import asyncio
import traceback
from typing import TYPE_CHECKING, Any, Final

from fabric.calls import (
    CALL,
    CAST,
    REPLY,
    STOP,
    From,
    Server,
    _current_node,
    call,
    cast,
    error_info,
    reply,
    send_reply,
    stop,
)
from fabric.errors import CallTimeout, ProcessDeadError
from fabric.process import KILLED, Exit, Process, ProcessExit, exception_reason
from fabric.timeouts import CALL_TIMEOUT
from fabric.types import Pid, Ref

if TYPE_CHECKING:
    from fabric.node import Node

__all__ = [
    "NOREPLY",
    "From",
    "GenServer",
    "Server",
    "call",
    "cast",
    "reply",
    "stop",
]


class _NoReply:
    """The type of :data:`NOREPLY` (a singleton)."""

    _instance: _NoReply | None = None

    def __new__(cls) -> _NoReply:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "NOREPLY"


NOREPLY: Final = _NoReply()
"""Return this from ``handle_call`` to reply later with :func:`reply` (Erlang's noreply)."""


class GenServer:
    """Base class of a server process. Override the ``handle_*`` methods you need.

    The instance is created with no arguments by :meth:`start`; set state up in
    :meth:`init`, which receives ``start``'s extra arguments. Inside the handlers,
    ``self.proc`` is the server's :class:`~fabric.Process` (``self.proc.trap_exits = True``
    turns linked exits into ``Exit`` messages for :meth:`handle_info`; ``self.proc.exit(
    reason)`` stops the server) and ``self.node`` its node.

    Example::

        class Counter(fabric.GenServer):
            async def init(self, start: int = 0) -> None:
                self.n = start

            async def handle_call(self, request, from_):
                if request == "get":
                    return self.n
                raise ValueError(f"unknown request {request!r}")

            async def handle_cast(self, request) -> None:
                self.n += request

        pid = await Counter.start(node, 10, name="counter")
        await fabric.call(node, "counter", "get")  # -> 10
    """

    proc: Process
    node: Node

    @property
    def pid(self) -> Pid:
        """The server's pid."""
        return self.proc.self

    async def init(self, *args: Any) -> None:
        """Set the server up; runs in the server's process before any message.

        Raising here makes :meth:`start` raise the same exception (and the process exit).
        """

    async def handle_call(self, request: Any, from_: From) -> Any:
        """Answer a :func:`call`: return the reply, or :data:`NOREPLY` and later call
        ``reply(from_, value)``. An exception is sent to the caller as
        :class:`RemoteError` and then crashes the server."""
        raise NotImplementedError(f"{type(self).__name__} does not handle calls")

    async def handle_cast(self, request: Any) -> None:
        """Handle a :func:`cast`. An exception crashes the server."""
        raise NotImplementedError(f"{type(self).__name__} does not handle casts")

    async def handle_info(self, message: Any) -> None:
        """Handle any other message (``Down``, ``Exit``, plain sends). The default logs
        and drops it, as Erlang's default does."""
        self.node.log.warning("genserver_unexpected_message", server=type(self).__name__,
                              pid=repr(self.pid), message=repr(message)[:200])

    async def terminate(self, reason: Any) -> None:
        """Clean up; called with the exit reason on every exit except a brutal kill."""

    @classmethod
    async def start(
        cls,
        node: Node,
        *args: Any,
        name: str | None = None,
        link_to: Process | None = None,
        timeout: float | None = CALL_TIMEOUT,
        mailbox_limit: int | None = None,
    ) -> Pid:
        """Spawn a server on ``node`` and wait until its :meth:`init` has returned.

        Args:
            node: the (local, running) node to start the server on.
            *args: passed to :meth:`init`.
            name: register the server under this local name before ``init`` runs
                (freed when it exits); then ``call(node, name, ...)`` and
                ``call(other_node, (name, node.name), ...)`` reach it.
            link_to: link the server to this process (Erlang's ``start_link``).
            timeout: seconds ``init`` may take; None waits forever.
            mailbox_limit: the bound of the server's mailbox (default: the node's
                ``mailbox_limit``); calls to a full one wait for room, within their
                timeout.

        Returns:
            The server's pid.

        Raises:
            NameConflictError: ``name`` is already registered.
            CallTimeout: ``init`` did not finish in time (the server is killed).
            ProcessDeadError: the server was killed during ``init``.
            Exception: whatever ``init`` raised.
        """
        server = cls()
        started: asyncio.Future[None] = node.loop.create_future()
        pid = node.spawn(_serve, server, args, name, started,
                         None if link_to is None else link_to.self, link_to=link_to,
                         mailbox_limit=mailbox_limit)
        try:
            await asyncio.wait_for(asyncio.shield(started), timeout)
        except asyncio.TimeoutError:
            if link_to is not None:
                link_to.unlink(pid)  # the starter learns of it by this exception only
            node.exit(pid, "kill")
            raise CallTimeout(f"{cls.__name__}.init did not finish within {timeout} s") \
                from None
        finally:
            # Nobody waits any more (timeout, or the starter was cancelled): the server
            # must not leave an exception in a future that no one will ever retrieve.
            started.cancel()
        return pid


# -- the server process ---------------------------------------------------------------------


async def _serve(
    proc: Process,
    server: GenServer,
    args: tuple[Any, ...],
    name: str | None,
    started: asyncio.Future[None],
    link_to: Pid | None,
) -> None:
    _current_node.set(proc.node)
    server.proc = proc
    server.node = proc.node
    try:
        if name is not None:
            proc.register(name)
        await server.init(*args)
    except asyncio.CancelledError:
        if not started.done():
            started.set_exception(ProcessDeadError(proc.self, proc.pending_kill or KILLED))
        raise
    except ProcessExit as exc:  # init chose to stop: Erlang's {stop, Reason}
        if link_to is not None:
            proc.unlink(link_to)
        if not started.done():
            started.set_exception(ProcessDeadError(proc.self, exc.reason))
        raise
    except Exception as exc:
        # The starter gets the exception itself; unlinking first spares it a second,
        # redundant notice as an exit signal (which would kill it unless trapping).
        if link_to is not None:
            proc.unlink(link_to)
        if not started.done():
            started.set_exception(exc)
        raise ProcessExit(exception_reason(exc)) from None
    if not started.done():
        started.set_result(None)
    try:
        await _loop(proc, server, link_to)
    except ProcessExit as exc:
        await _terminate(server, exc.reason)
        raise
    except asyncio.CancelledError:
        reason = proc.pending_kill if proc.pending_kill is not None else KILLED
        if reason != KILLED:
            await _terminate(server, reason)
        raise
    except Exception as exc:
        await _terminate(server, exception_reason(exc))
        raise


async def _terminate(server: GenServer, reason: Any) -> None:
    try:
        await server.terminate(reason)
    except Exception as exc:  # the exit reason stays the original one
        server.node.log.error("genserver_terminate_failed", pid=repr(server.pid),
                              error=repr(exc), traceback=traceback.format_exc())


async def _loop(proc: Process, server: GenServer, parent: Pid | None) -> None:
    node = proc.node
    receive = proc.receive
    while True:
        msg = await receive()
        if type(msg) is tuple and msg:
            tag = msg[0]
            if tag == CALL and len(msg) == 3:
                caller = msg[1]
                if type(caller) is tuple and len(caller) == 2 and type(caller[0]) is Pid:
                    from_ = tuple.__new__(From, caller)  # From's own __new__ runs in Python
                    try:
                        result = await server.handle_call(msg[2], from_)
                    except Exception as exc:
                        unsent = _reply_now(proc, from_, False, error_info(exc))
                        if unsent is not None:
                            await node.send_wait(from_[0], unsent)
                        raise
                    if result is not NOREPLY:
                        unsent = _reply_now(proc, from_, True, result)
                        if unsent is not None:  # a server slows down rather than drop it
                            await node.send_wait(from_[0], unsent)
                    continue
            elif tag == CAST and len(msg) == 2:
                await server.handle_cast(msg[1])
                continue
            elif tag == STOP and len(msg) == 2:
                raise ProcessExit(msg[1])
            elif tag == REPLY and len(msg) == 5 and type(msg[1]) is Ref:
                # A reply that came after its call timed out (this server called another
                # one from a handler). Its call is over; nobody can want it.
                continue
        elif type(msg) is Exit and msg.pid == parent and proc.trap_exits:
            # OTP: a server trapping exits ends with its parent's reason when the parent
            # (the process it was started linked to) exits; terminate/1 runs.
            raise ProcessExit(msg.reason)
        await server.handle_info(msg)


def _reply_now(proc: Process, from_: From, ok: bool, value: Any) -> tuple[Any, ...] | None:
    """The server ``proc`` answers ``from_``, releasing the call's monitor (see
    :func:`send_reply`). A reply that has to wait for room in the caller's buffer keeps
    the monitor (it is returned with ``released`` False), so that a server killed while
    it waits still sends the caller its ``Down``."""
    node = proc.node
    caller, ref = from_
    if not node.signals.release_call(proc, caller, ref):
        return send_reply(node, from_, ok, value)
    unsent = send_reply(node, from_, ok, value, True)
    if unsent is None:
        return None
    node.signals.hold_call(proc, caller, ref)
    return (*unsent[:4], False)
