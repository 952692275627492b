"""The caller's side of GenServer calls: call, cast, stop and reply, and their messages.

Theory of operation
-------------------
``call`` is Erlang's ``gen:call``: the caller *monitors* the server, sends the request
tagged with the monitor's ref, and waits for the first message that is either the reply
carrying that ref or the ``Down`` of that monitor. One monitor, one send, one selective
receive; the monitor is what turns a dead server into :class:`ProcessDeadError` and a
dead node into :class:`NodeDownError` at once instead of at the timeout. Across nodes the
monitor and the request travel as one ``K_CALL`` message, and a server that answers from
its loop drops the monitor as it replies (``released`` in the reply), so the caller needs
no ``demon`` message: one message each way, as Erlang's alias-based calls aim for. A
server given as ``(name, node)`` is monitored by name: its node resolves the name when
the call arrives, so the monitor and the request reach the same process. A caller not
yet connected to the server's node connects first, as in Erlang, so a request is never
queued for a session that comes up after the call gave up.

The ref is unique per node run and the monitor is removed (and its ``Down`` flushed) on
the way out, so a late reply can never be taken for the reply of a later call. A caller
outside any process gets a temporary mailbox for the call (``node.new_mailbox()``),
closed afterwards: a reply arriving after a :class:`CallTimeout` is then undeliverable
and simply dropped. A caller inside a process passes its ``proc``; the reply comes to its
own mailbox, so a late reply after a timeout stays there as a ``("$reply", ref, ...)``
tuple that no later call matches (a GenServer drops such strays; a plain process should
not match on them).

Messages, as a server's mailbox sees them (all tuples, which the codec keeps distinct
from lists):

    call:   ("$call", (caller_pid, ref), request)
    reply:  ("$reply", ref, True, value, released)
            ("$reply", ref, False, (type_name, message, formatted_traceback), released)
    cast:   ("$cast", request)
    stop:   ("$stop", reason)                  (see :func:`stop`)

``ref`` is the caller's monitor ref on the server. Across nodes a call and its reply
travel as the compact ``K_CALL`` and ``K_REPLY`` messages of
:mod:`fabric.protocol.messages` (the caller and the ref as integers) and are delivered
as these tuples.

A message that cannot be encoded (a set, an object...) is refused at the call site with
:class:`~fabric.errors.LocalProtocolError` when it is bound for another node, and a reply
that cannot be encoded reaches the caller as a ``RemoteError`` instead. A remote request
or reply is checked as it is queued (:meth:`fabric.outbound.Outbound.push_checked`): when
it is the first message of its loop turn, as a call's usually is, the check is the encode
of the frame it leaves in.
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
    NodeDrainingError,
    ProcessDeadError,
    ReceiveTimeout,
    RemoteError,
)
from fabric.process import NORMAL, Down, Process
from fabric.protocol.messages import CALL_TAG, REPLY_TAG
from fabric.timeouts import CALL_TIMEOUT
from fabric.types import GlobalName, Pid, Ref

if TYPE_CHECKING:
    from fabric.node import Node

__all__ = ["From", "Server", "call", "cast", "reply", "stop"]

T = TypeVar("T")

Server = Pid | str | tuple[str, str] | GlobalName
"""Where a server is: a pid, a name registered on the caller's node, ``(name, node)``, or a
:class:`~fabric.types.GlobalName` registered cluster-wide."""

CALL: Final = CALL_TAG
REPLY: Final = REPLY_TAG
CAST: Final = "$cast"
STOP: Final = "$stop"


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


# -- replies --------------------------------------------------------------------------------


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
        node.signals.send_reply(pid, ref, ok, value, released)
        return None
    except LocalProtocolError as exc:
        ok, value = False, ("LocalProtocolError", f"the reply cannot be sent: {exc}", "")
    except BackpressureError:
        return (REPLY, ref, ok, value, released)
    try:
        # Three strings always encode; a from_ that names no pid fails again, and raises.
        node.signals.send_reply(pid, ref, ok, value, released)
    except BackpressureError:
        return (REPLY, ref, ok, value, released)
    return None


# -- the public calls -----------------------------------------------------------------------


def reply(from_: tuple[Pid, Ref], value: Any, *, node: Node | Process | None = None) -> None:
    """Send ``value`` as the reply to the call ``from_`` (after ``handle_call`` returned
    :data:`fabric.genserver.NOREPLY`). Never blocks.

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
    node_or_proc: Node | Process, server: Server, request: Any, timeout: float | None = CALL_TIMEOUT
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
        NodeDrainingError: the server's node is stopping gracefully and refused the
            call before any process saw it (a ``NodeDownError``: call elsewhere).
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
            if node.mailboxes.congested and target in node.mailboxes.congested:
                # Its node reported its mailbox full: wait for room, within the timeout
                # (a local call waits the same way, in send_wait; DECISIONS D23).
                await asyncio.wait_for(node.mailboxes.wait_for_room(target),
                                       _left(loop, deadline))
            # The monitor and the request travel as one message (see fabric.node.signals),
            # checked for encodability as it is sent.
            ref, unsent = node.signals.call_send(proc, target, request)
            if unsent is not None:
                await asyncio.wait_for(node.channels.push_wait(where, unsent),
                                       _left(loop, deadline))
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
            node.signals.forget_monitor(proc, ref)  # the server's node dropped it already
        else:
            proc.demonitor(ref)  # also drops a Down that arrived meanwhile
    if type(answer) is Down:
        if answer.reason == "noconnection":
            raise NodeDownError(where, "noconnection")
        if answer.reason == "draining":  # its node is stopping: nothing was done
            raise NodeDrainingError(where)
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
    timeout: float | None = CALL_TIMEOUT,
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
