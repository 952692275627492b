"""Applications: the supervision tree a node program starts with, and stops first.

Theory of operation
-------------------
As in OTP, a program's long-lived processes hang under one root supervisor, the
*application*: started once the node runs, stopped before it goes. ``fabric node --app
myapp:children`` (or :func:`start_application` from code) imports ``children``, calls
``children(node)`` (awaited if it is a coroutine function) and starts a ``one_for_one``
root :class:`~fabric.Supervisor` registered as :data:`APP` over the child specs it
returns: a list of :class:`~fabric.ChildSpec` (nested supervisors from
:meth:`~fabric.Supervisor.child_spec`, distributed supervisor members from
:meth:`~fabric.dsupervisor.DistributedSupervisor.child_spec`, GenServers, processes).
A child that fails to start fails the program's start.

The graceful end is part of the node's drain (``node.stop()``, SIGTERM to ``fabric
node``): the distributed supervisor members hand their children over at its hand-off
step, and :func:`start_application` registers a drain hook that stops the root
supervisor once the calls from other nodes were answered, so the tree stops in reverse
start order, each child within its shutdown, while the node is still connected; only
then are the remaining processes killed. As in OTP, a process started after the
servers it calls (a later sibling, a later subtree) is stopped before them, so its call
in flight is abandoned by its caller rather than cut by the server's end.
:func:`stop_application` does the same from code, before a stop (the hook then finds
nothing to stop).
"""

from __future__ import annotations

import importlib
import inspect
import os
import sys
from typing import TYPE_CHECKING, Any, Final

from fabric.dsupervisor import handoff_all
from fabric.process import Down
from fabric.supervisor import ChildSpec, Supervisor
from fabric.types import Pid

if TYPE_CHECKING:
    from fabric.node import Node

__all__ = ["APP", "start_application", "stop_application"]

#: The local name of the application's root supervisor.
APP: Final = "app"


async def start_application(node: Node, spec: str, *, intensity: int = 3,
                            period: float = 5.0) -> Pid:
    """Start the application ``"module:function"`` on ``node``; returns the root's pid.

    Raises:
        ValueError: ``spec`` is not ``module:function``, or it returned no child specs.
        Exception: what importing or calling it raised, or a child's start error.
    """
    module_name, sep, function_name = spec.partition(":")
    if not sep or not module_name or not function_name:
        raise ValueError(f"an application is 'module:function', not {spec!r}")
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # as ``python -m`` would
    function = getattr(importlib.import_module(module_name), function_name)
    children: Any = function(node)
    if inspect.isawaitable(children):
        children = await children
    if isinstance(children, ChildSpec):
        children = [children]
    if not isinstance(children, (list, tuple)) or \
            not all(isinstance(c, ChildSpec) for c in children):
        raise ValueError(f"{spec} must return a list of ChildSpec, not {children!r:.200}")
    root = await Supervisor.start(node, children, intensity=intensity, period=period,
                                  name=APP)

    async def stop_tree() -> None:
        # The drain bounds it (stop_grace); the root is gone if stop_application ran.
        if node.whereis(APP) == root:
            await _stop_root(node, root, timeout=None)

    node.on_drain(stop_tree)
    return root


async def stop_application(node: Node, timeout: float = 30.0) -> bool:
    """Hand distributed children over, then stop the root supervisor and wait for its
    end, each step within ``timeout`` seconds (a hand-off that does not finish in time
    is logged and the stop goes on). True if the root ended (or was not running)."""
    await handoff_all(node, timeout)
    root = node.whereis(APP)
    if root is None:
        return True
    return await _stop_root(node, root, timeout)


async def _stop_root(node: Node, root: Pid, timeout: float | None) -> bool:
    watcher = node.new_mailbox()
    try:
        ref = watcher.monitor(root)
        node.exit(root, "shutdown")
        down = await watcher.receive(lambda m: type(m) is Down and m.ref == ref,
                                     timeout=timeout, default=None)
        return down is not None
    finally:
        node.close_mailbox(watcher)
