"""rpc: run an exported function on another node and get its result (Erlang's ``rpc``).

Theory of operation
-------------------
``rpc.call(node, target, "module:function", args)`` remote-spawns :func:`worker` (an
exported fabric function) on ``target`` with a reply-to pid and a tag. The worker resolves
the named function with :func:`fabric.exports.resolve_export` under the *target's* rules
(``@fabric.export`` or its ``allow_remote_spawn``), runs it (awaiting it if it is a
coroutine function), and sends ``("$reply", tag, ok, value, False)`` back, in the same shape as a
GenServer reply. The caller monitors the worker once its pid is known: the reply is sent
before the worker exits and travels on the same ordered stream as the ``Down``, so a
``Down`` matched first means the worker really died without answering.

Why a process per call instead of a registered rpc server: there is nothing to start on
every node beforehand, calls run concurrently (a slow function does not hold up the
next), and a crash takes down one call only. The price is a spawn (one small control
message and a task) per call.

Functions run on the target node's event loop: a sync function blocks that node while it
runs, so keep them short or make them async (``await asyncio.to_thread(...)`` inside).
They take plain arguments (not a ``proc``); their result must be encodable. A function
that needs its node (to send, spawn, read ``node.pg``...) asks :func:`current_node`: the
worker sets a context variable before calling it, which tasks it creates inherit (as
``asyncio.to_thread`` does); GenServer handlers see the same variable.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, Final

from fabric.calls import (
    REPLY,
    _current_node,
    ensure_connected,
    error_info,
    remote_error,
    send_reply,
)
from fabric.errors import (
    CallTimeout,
    LocalProtocolError,
    NodeDownError,
    NotExportedError,
    ProcessDeadError,
    ReceiveTimeout,
    RemoteError,
    SpawnTimeout,
)
from fabric.exports import export, resolve_export
from fabric.process import Down, Process
from fabric.timeouts import CALL_TIMEOUT
from fabric.types import Pid, Ref

if TYPE_CHECKING:
    from fabric.node import Node

__all__ = ["call", "current_node", "multicall", "worker"]

WORKER: Final = "fabric.rpc:worker"


@export
async def worker(proc: Process, reply_to: Pid, tag: Ref, spec: str, args: list[Any]) -> None:
    """The process an rpc runs in (spawned remotely by :func:`call`; not for direct use)."""
    node = proc.node
    _current_node.set(node)
    try:
        fn = resolve_export(spec, node.config.allow_remote_spawn)
        result = fn(*args)
        if inspect.isawaitable(result):
            result = await result
        ok, value = True, result
    except NotExportedError as exc:
        ok, value = False, ("NotExportedError", str(exc), "")
    except Exception as exc:
        ok, value = False, error_info(exc)
    unsent = send_reply(node, (reply_to, tag), ok, value)
    if unsent is not None:
        await node.send_wait(reply_to, unsent)


def current_node() -> Node:
    """The node the calling code runs on: inside a function run by :func:`call` (or
    :func:`multicall`), a GenServer's handlers, and the tasks they create.

    Raises:
        LocalProtocolError: called anywhere else (a plain process has ``proc.node``).
    """
    node = _current_node.get()
    if node is None:
        raise LocalProtocolError("current_node() is set only inside an rpc function or a "
                                 "GenServer (a process has proc.node)")
    return node


async def call(
    node: Node,
    target: str,
    spec: str,
    args: Sequence[Any] = (),
    timeout: float | None = CALL_TIMEOUT,
) -> Any:
    """Run the exported function ``spec`` (``"module:function"``) on node ``target``.

    Args:
        node: the calling (local, running) node.
        target: the full name of the node to run on (may be ``node.name`` itself).
        spec: ``"package.module:function"``; exported on ``target``.
        args: positional arguments, encodable.
        timeout: seconds for the whole call, connecting included; None waits forever.

    Returns:
        The function's return value (awaited if it was a coroutine).

    Raises:
        NotExportedError: ``target`` does not export ``spec`` (or cannot find it).
        RemoteError: the function raised; carries type name, message and traceback.
        NodeDownError: ``target`` is unreachable or went down during the call.
        ProcessDeadError: the worker was killed before it answered.
        CallTimeout: no answer within ``timeout``.
    """
    loop = node.loop
    deadline = None if timeout is None else loop.time() + timeout

    def remaining() -> float | None:
        return None if deadline is None else max(0.0, deadline - loop.time())

    await ensure_connected(node, target, timeout)
    mailbox = node.new_mailbox()
    tag = node.make_ref()
    ref: Ref | None = None
    try:
        spawn_timeout = remaining()
        try:
            pid = await node.spawn_on(target, WORKER, mailbox.self, tag, spec, list(args),
                                      timeout=1e9 if spawn_timeout is None else spawn_timeout)
        except SpawnTimeout:
            raise CallTimeout(f"rpc {spec} on {target}: no answer within {timeout} s") \
                from None
        ref = mailbox.monitor(pid)
        monitor_ref = ref

        def match(m: Any) -> bool:
            t = type(m)
            if t is tuple:
                return len(m) == 5 and m[0] == REPLY and m[1] == tag
            return t is Down and m.ref == monitor_ref

        try:
            answer = await mailbox.receive(match, remaining())
        except ReceiveTimeout:
            raise CallTimeout(f"rpc {spec} on {target}: no answer within {timeout} s") \
                from None
    finally:
        if ref is not None:
            mailbox.demonitor(ref)
        node.close_mailbox(mailbox)
    if type(answer) is Down:
        if answer.reason in ("noconnection", "shutdown"):
            raise NodeDownError(target, answer.reason)
        raise ProcessDeadError(answer.pid, answer.reason)
    if answer[2]:
        return answer[3]
    error = remote_error(answer[3])
    if error.type_name == "NotExportedError":
        raise NotExportedError(error.message)
    raise error


async def multicall(
    node: Node,
    nodes: Iterable[str],
    spec: str,
    args: Sequence[Any] = (),
    timeout: float | None = CALL_TIMEOUT,
) -> tuple[dict[str, Any], list[str]]:
    """Run ``spec`` on every node of ``nodes`` at once; Erlang's ``rpc:multicall``.

    Returns:
        ``(results, bad_nodes)``: ``results`` maps each node that answered to the
        function's return value, or to the exception it answered with
        (:class:`RemoteError`, :class:`NotExportedError`, :class:`ProcessDeadError`);
        ``bad_nodes`` lists, in the given order, the nodes that were down, went down, or
        did not answer within ``timeout``.
    """
    targets = list(dict.fromkeys(nodes))  # once per node, in order

    async def one(target: str) -> tuple[bool, Any]:
        try:
            return True, await call(node, target, spec, args, timeout)
        except (NodeDownError, CallTimeout):
            return False, None
        except (RemoteError, NotExportedError, ProcessDeadError) as exc:
            return True, exc

    answers = await asyncio.gather(*(one(t) for t in targets))
    results = {t: value for t, (ok, value) in zip(targets, answers, strict=True) if ok}
    bad = [t for t, (ok, _) in zip(targets, answers, strict=True) if not ok]
    return results, bad
