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

:func:`stop_application` is the graceful end: every distributed supervisor member on the
node first hands its children over to the other members
(:func:`~fabric.dsupervisor.handoff_all`), then the root supervisor is stopped, which
stops the tree in reverse start order, each child within its shutdown. ``fabric node``
runs it on SIGTERM before the node stops.
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
    return await Supervisor.start(node, children, intensity=intensity, period=period,
                                  name=APP)


async def stop_application(node: Node, timeout: float = 30.0) -> bool:
    """Hand distributed children over, then stop the root supervisor and wait for its
    end, each step within ``timeout`` seconds (a hand-off that does not finish in time
    is logged and the stop goes on). True if the root ended (or was not running)."""
    await handoff_all(node, timeout)
    root = node.whereis(APP)
    if root is None:
        return True
    watcher = node.new_mailbox()
    try:
        ref = watcher.monitor(root)
        node.exit(root, "shutdown")
        down = await watcher.receive(lambda m: type(m) is Down and m.ref == ref,
                                     timeout=timeout, default=None)
        return down is not None
    finally:
        node.close_mailbox(watcher)
