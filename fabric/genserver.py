"""GenServer: Erlang's gen_server behaviour on fabric processes, with call, cast and reply.

Theory of operation
-------------------
A :class:`GenServer` is an object whose methods run inside one fabric process: the
process takes one message at a time from its mailbox and hands it to ``handle_call``,
``handle_cast`` or ``handle_info``, so the server's state needs no locks. Start one with
``pid = await MyServer.start(node, *args, name=..., link_to=...)``: the call returns once
``init`` has finished, and raises ``init``'s exception if it failed.

``call`` is Erlang's ``gen:call``: the caller *monitors* the server, sends the request
tagged with the monitor's ref, and waits for the first message that is either the reply
carrying that ref or the ``Down`` of that monitor. One monitor, one send, one selective
receive; the monitor is what turns a dead server into :class:`ProcessDeadError` and a
dead node into :class:`NodeDownError` at once instead of at the timeout. Across nodes the
monitor and the request travel as one ``K_CALL`` message, and a server that answers from
its loop drops the monitor as it replies (``released`` in the reply), so the caller needs
no ``demon`` message: one message each way, as Erlang's alias-based calls aim for. A server given
as ``(name, node)`` is monitored by name: its node resolves the name when the monitor
request arrives, and the call follows it on the same ordered stream, so both reach the
same process. A caller not yet connected to the server's node connects first, as in
Erlang, so a request is never queued for a session that comes up after the call gave up.
The ref is
unique per node run and the monitor is removed (and its ``Down`` flushed) on the way out,
so a late reply can never be taken for the reply of a later call. A caller outside any
process gets a temporary mailbox for the call (``node.new_mailbox()``), closed afterwards:
a reply arriving after a :class:`CallTimeout` is then undeliverable and simply dropped. A
caller inside a process passes its ``proc``; the reply comes to its own mailbox, so a late
reply after a timeout stays there as a ``("$reply", ref, ...)`` tuple that no later call
matches (a GenServer drops such strays; a plain process should not match on them).

Failure policy: when ``handle_call`` raises, the caller gets :class:`RemoteError` (type
name, message, formatted traceback) *and the server crashes* with the exception as its
exit reason, as in Erlang: state after an unexpected exception cannot be trusted, and a
supervisor or a link is the place to decide what happens next. ``terminate(reason)`` runs
on every exit except a brutal kill (reason ``"killed"``).

Wire format (all tuples, which the codec keeps distinct from lists):

    call:   ("$call", (caller_pid, ref), request)
    reply:  ("$reply", ref, True, value, released)
            ("$reply", ref, False, (type_name, message, formatted_traceback), released)

(across nodes a call and a reply travel as the compact ``K_CALL`` and ``K_REPLY``
messages of :mod:`fabric.protocol.messages`, and are delivered as these tuples)
    cast:   ("$cast", request)
    stop:   ("$stop", reason)                  (see :func:`stop`)

``ref`` is the caller's monitor ref on the server. Everything else a server receives
(``Down``, ``Exit`` with ``trap_exits``, plain sends) goes to ``handle_info``.

A message that cannot be encoded (a set, an object...) is refused at the call site with
:class:`~fabric.errors.LocalProtocolError` when it is bound for another node: ``call`` and
``cast`` check the request, and a reply that cannot be encoded reaches the caller as a
``RemoteError`` instead. A remote request or reply is checked as it is queued
(:meth:`fabric.outbound.Outbound.push_checked`): when it is the first message of its loop
turn, as a call's usually is, the check is the encode of the frame it leaves in.
"""

from __future__ import annotations

import asyncio
import contextvars
import traceback
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Final, NamedTuple, TypeVar

from fabric.errors import (
    BackpressureError,
    CallTimeout,
    LocalProtocolError,
    NodeDownError,
    ProcessDeadError,
    ReceiveTimeout,
    RemoteError,
)
from fabric.process import KILLED, NORMAL, Down, Process, ProcessExit, exception_reason
from fabric.protocol.messages import CALL_TAG, REPLY_TAG
from fabric.types import GlobalName, Pid, Ref

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

T = TypeVar("T")

Server = Pid | str | tuple[str, str] | GlobalName
"""Where a server is: a pid, a name registered on the caller's node, ``(name, node)``, or a
:class:`~fabric.types.GlobalName` registered cluster-wide."""

CALL: Final = CALL_TAG
REPLY: Final = REPLY_TAG
CAST: Final = "$cast"
STOP: Final = "$stop"


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


class From(NamedTuple):
    """Who is waiting for a call's reply: hand it to :func:`reply`.

    A plain 2-tuple on the wire, so a server may pass it to another process (on any node)
    that replies in its place.
    """

    pid: Pid
    ref: Ref


# The node a GenServer runs on, set in its task (and inherited by tasks it creates), so
# that ``reply(from_, value)`` needs no node argument where it is normally called.
_current_node: contextvars.ContextVar[Node | None] = contextvars.ContextVar(
    "fabric_genserver_node", default=None
)


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
        timeout: float | None = 5.0,
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
                         None if link_to is None else link_to.self, link_to=link_to)
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
        await _loop(proc, server)
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


async def _loop(proc: Process, server: GenServer) -> None:
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
        await server.handle_info(msg)


def error_info(exc: BaseException) -> tuple[str, str, str]:
    """``(type_name, message, formatted_traceback)`` of ``exc``: an error reply's value."""
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return (type(exc).__qualname__, str(exc), tb)


# Values of these types always encode: no need to try.
_PLAIN: Final = frozenset({int, float, str, bytes, bool, type(None)})


def check_encodable(node: Node, value: Any) -> None:
    """Encode ``value`` once to refuse it here, with a clear error, if it cannot travel.

    Why: a message is encoded when its batch is flushed, on the event loop, where an
    encoding error can no longer be reported to whoever sent it.

    Raises:
        LocalProtocolError: ``value`` holds something the codec refuses.
    """
    if type(value) not in _PLAIN:
        node.codec.encode(value)


def send_reply(node: Node, from_: tuple[Pid, Ref], ok: bool, value: Any,
               released: bool = False) -> tuple[Any, ...] | None:
    """Send the reply to the call ``from_``; an error reply if ``value`` cannot travel.

    ``released``: the server's node dropped the call's monitor (the caller need not). A
    plain function, so a server's loop pays no coroutine per reply.

    Returns:
        None once sent, or the reply message when the caller's buffer is full: send it
        with ``node.send_wait(from_[0], message)``.
    """
    pid, ref = from_
    try:
        node._send_reply(pid, ref, ok, value, released)
        return None
    except LocalProtocolError as exc:
        ok, value = False, ("LocalProtocolError", f"the reply cannot be sent: {exc}", "")
    except BackpressureError:
        return (REPLY, ref, ok, value, released)
    try:
        node._send_reply(pid, ref, ok, value, released)  # three strings: always encodable
    except BackpressureError:
        return (REPLY, ref, ok, value, released)
    return None


def _reply_now(proc: Process, from_: From, ok: bool, value: Any) -> tuple[Any, ...] | None:
    """The server ``proc`` answers ``from_``, releasing the call's monitor (see
    :func:`send_reply`)."""
    node = proc.node
    return send_reply(node, from_, ok, value, node._release_call(proc, *from_))


# -- the client side ------------------------------------------------------------------------


def reply(from_: tuple[Pid, Ref], value: Any, *, node: Node | Process | None = None) -> None:
    """Send ``value`` as the reply to the call ``from_`` (after ``handle_call`` returned
    :data:`NOREPLY`). Never blocks.

    Args:
        from_: the :class:`From` given to ``handle_call``.
        value: the reply.
        node: the node (or a process) to send from; default: the node of the GenServer
            whose task (or a task it created) is running. Pass it when replying from
            another process.

    Raises:
        LocalProtocolError: no node given and not called from a GenServer.
        BackpressureError: the outbound buffer to the caller's node is full.
    """
    n = _node_of(node) if node is not None else _current_node.get()
    if n is None:
        raise LocalProtocolError("reply() called outside a GenServer: pass node=")
    if send_reply(n, from_, True, value) is not None:
        raise BackpressureError(from_[0].node, n.config.outbound_limit)


def _node_of(node_or_proc: Node | Process) -> Node:
    return node_or_proc.node if isinstance(node_or_proc, Process) else node_or_proc


def _target(node: Node, server: Server) -> tuple[Pid | tuple[str, str] | None, str]:
    """What to monitor and send to for ``server``, and its node. None: a local name that
    is not registered."""
    if (type(server) is tuple and len(server) == 2 and type(server[0]) is str
            and type(server[1]) is str and server[1] != node.name):
        return server, server[1]  # (name, node) elsewhere: the common remote spelling
    if isinstance(server, Pid):
        return server, server.node
    if type(server) is GlobalName:
        pid = node.global_.whereis_name(server.name)
        return pid, pid.node if pid is not None else node.name
    if isinstance(server, str):
        return node.whereis(server), node.name
    if isinstance(server, tuple) and len(server) == 2:
        name, where = server
        if type(name) is str and type(where) is str:
            if where == node.name:
                return node.whereis(name), where
            return (name, where), where
    raise LocalProtocolError(f"{server!r} is not a pid, a name or (name, node)")


async def ensure_connected(node: Node, peer: str, timeout: float | None) -> None:
    # Like Erlang, a call to a node we are not connected to connects first. Without this
    # the request would be queued for a session that may come up after we gave up.
    if (peer != node.name and not node.mesh.is_up(peer)
            and not await node.connect(peer, timeout)):
        raise NodeDownError(peer, node.last_connect_error(peer) or "noconnection")


async def call(
    node_or_proc: Node | Process, server: Server, request: Any, timeout: float | None = 5.0
) -> Any:
    """Send ``request`` to a GenServer and wait for its reply.

    Args:
        node_or_proc: the calling process (the reply comes to its mailbox), or a node
            (the call gets a temporary mailbox: use this outside processes).
        server: a pid, a name registered on the caller's node, or ``(name, node)``.
        request: any encodable value.
        timeout: seconds to wait for the reply; None waits forever.

    Returns:
        The value ``handle_call`` returned (or passed to :func:`reply`).

    Raises:
        CallTimeout: no reply within ``timeout``.
        NodeDownError: the server's node is unreachable or went down during the call.
        ProcessDeadError: the server does not exist or exited before replying
            (``.reason`` is its exit reason, ``"noproc"`` if it did not exist).
        RemoteError: ``handle_call`` raised; carries the type name, message and
            formatted traceback (the server has crashed).
        LocalProtocolError: ``server`` is malformed, the caller calls itself, or the
            request cannot be encoded for another node.
    """
    if not isinstance(node_or_proc, Process):
        return await _as_process(node_or_proc, call, server, request, timeout)
    # The body is here rather than in a helper: one coroutine less per call.
    proc = node_or_proc
    node = proc.node
    loop = node.loop
    deadline = None if timeout is None else loop.time() + timeout
    target, where = _target(node, server)
    if target is None:
        raise ProcessDeadError(server, "noproc")
    answer: Any = None
    ref: Ref | None = None
    try:
        if where != node.name:
            if not node.mesh.is_up(where):
                await ensure_connected(node, where, timeout)
            # The monitor and the request travel as one message (see fabric.signals),
            # checked for encodability as it is sent.
            ref, unsent = node._call_send(proc, target, request)
            if unsent is not None:
                await asyncio.wait_for(node._push_wait(where, unsent), _left(loop, deadline))
        else:
            if target == proc.self:
                raise LocalProtocolError(f"{proc.self!r} called itself: that would deadlock")
            ref = proc.monitor(target)
            msg = (CALL, (proc.self, ref), request)
            try:
                node.send(target, msg)
            except BackpressureError:
                await asyncio.wait_for(node.send_wait(target, msg), _left(loop, deadline))

        def match(m: Any) -> bool:
            t = type(m)
            if t is tuple:
                return len(m) == 5 and m[1] == ref and m[0] == REPLY
            return t is Down and m.ref == ref

        answer = await proc.receive(match, _left(loop, deadline))
    except (ReceiveTimeout, asyncio.TimeoutError):
        raise CallTimeout(f"no reply from {server!r} within {timeout} s") from None
    finally:
        if ref is None:
            pass  # refused before anything was sent
        elif type(answer) is tuple and answer[4]:
            node._forget_monitor(proc, ref)  # the server's node dropped it already
        else:
            proc.demonitor(ref)  # also drops a Down that arrived meanwhile
    if type(answer) is Down:
        if answer.reason == "noconnection":
            raise NodeDownError(where, "noconnection")
        raise ProcessDeadError(server, answer.reason)
    if answer[2]:
        return answer[3]
    raise remote_error(answer[3])


def _left(loop: asyncio.AbstractEventLoop, deadline: float | None) -> float | None:
    """Seconds until ``deadline`` (None: no deadline), never negative."""
    return None if deadline is None else max(0.0, deadline - loop.time())


def remote_error(info: Any) -> RemoteError:
    """The :class:`RemoteError` for an error reply's ``(type_name, message, traceback)``."""
    if type(info) in (tuple, list) and len(info) == 3 and all(type(x) is str for x in info):
        return RemoteError(info[0], info[1], info[2])
    return RemoteError("RemoteError", repr(info)[:1000])


def cast(node_or_proc: Node | Process, server: Server, request: Any) -> None:
    """Send ``request`` to a GenServer's ``handle_cast``; never waits, never reports.

    A cast to a dead server or an unknown name is dropped, as in Erlang.

    Raises:
        BackpressureError: the outbound buffer to the server's node is full.
        LocalProtocolError: ``server`` is malformed, or the request cannot be encoded
            for another node.
    """
    node = _node_of(node_or_proc)
    if isinstance(server, Pid):
        where = server.node
    elif isinstance(server, tuple) and len(server) == 2:
        where = server[1]
    else:
        where = node.name
    if where != node.name:
        check_encodable(node, request)
    node.send(server, (CAST, request))


async def stop(
    node_or_proc: Node | Process, server: Server, reason: Any = NORMAL,
    timeout: float | None = 5.0,
) -> None:
    """Stop a GenServer with ``reason`` (its ``terminate`` runs) and wait until it is gone.

    Raises:
        ProcessDeadError: the server does not exist.
        NodeDownError: its node is unreachable or went down.
        CallTimeout: it did not exit within ``timeout``.
    """
    await _as_process(node_or_proc, _stop, server, reason, timeout)


async def _as_process(node_or_proc: Node | Process,
                      fn: Callable[..., Awaitable[T]], *args: Any) -> T:
    """Run ``fn(proc, *args)`` in the given process, or in a temporary mailbox of the
    given node (closed afterwards, so a late reply to it is simply dropped)."""
    if isinstance(node_or_proc, Process):
        return await fn(node_or_proc, *args)
    proc = node_or_proc.new_mailbox()
    try:
        return await fn(proc, *args)
    finally:
        node_or_proc.close_mailbox(proc)


async def _stop(proc: Process, server: Server, reason: Any, timeout: float | None) -> None:
    node = proc.node
    target, where = _target(node, server)
    if target is None:
        raise ProcessDeadError(server, "noproc")
    await ensure_connected(node, where, timeout)
    ref = proc.monitor(target)
    try:
        node.send(target, (STOP, reason))
        down = await proc.receive(lambda m: type(m) is Down and m.ref == ref, timeout)
    except ReceiveTimeout:
        raise CallTimeout(f"{server!r} did not stop within {timeout} s") from None
    finally:
        proc.demonitor(ref)
    if down.reason == "noconnection":
        raise NodeDownError(where, "noconnection")
    if down.reason == "noproc":
        raise ProcessDeadError(server, "noproc")
