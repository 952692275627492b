"""A dynamic supervisor: children started at run time, found by pid (Elixir's
``DynamicSupervisor``, Erlang's ``simple_one_for_one``).

Theory of operation
-------------------
A :class:`DynamicSupervisor` starts empty; :meth:`DynamicSupervisor.start_child` adds and
starts one child at a time and answers its pid. It is a :mod:`fabric.supervisor`
supervisor (same process, same :class:`~fabric.protocol.supervision.SupervisorCore`,
same restarts, shutdowns and restart intensity) with the ``one_for_one`` strategy and
ids it makes itself, so children are known by their pid (a restarted child gets a new
one; :meth:`DynamicSupervisor.which_children` lists them in start order).

* ``max_children`` bounds the children it keeps (running, or stopped but kept): a start
  beyond it fails with ``ValueError``, as Elixir's ``{:error, :max_children}``.
* With a ``template`` (a :class:`~fabric.ChildSpec` whose ``id`` is ignored), a start
  request carries only extra arguments, appended to the template's: the request holds
  no function, so other nodes can make it (Erlang's ``simple_one_for_one``). Without one,
  a start request carries a whole spec (same node only: a spec holds a function).

A child that ends for good (a temporary one, or a transient one that ended normally) is
forgotten, so the supervisor does not grow with ended children.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from fabric.calls import Server, call
from fabric.genserver import From
from fabric.process import Exit, Process
from fabric.protocol.supervision import ONE_FOR_ONE, SupervisorCore
from fabric.supervisor import ChildSpec, SupervisorServer, check_answer
from fabric.types import Pid

if TYPE_CHECKING:
    from fabric.node import Node

__all__ = ["DynamicSupervisor"]


class DynamicSupervisor:
    """Start dynamic supervisors and make requests to them (all static)."""

    @staticmethod
    async def start(node: Node, *, template: ChildSpec | None = None,
                    max_children: int | None = None, intensity: int = 3,
                    period: float = 5.0, name: str | None = None,
                    link_to: Process | None = None) -> Pid:
        """Start an empty dynamic supervisor on ``node``; returns its pid.

        Raises:
            ValueError: invalid intensity, period or ``max_children`` (an int >= 0).
        """
        SupervisorCore(ONE_FOR_ONE, intensity, period)  # validates before spawning
        if max_children is not None and (isinstance(max_children, bool)
                                         or not isinstance(max_children, int)
                                         or max_children < 0):
            raise ValueError(f"max_children must be an int >= 0 or None, not {max_children!r}")
        return await _DynamicServer.start(node, template, max_children, intensity, period,
                                          None if link_to is None else link_to.self,
                                          name=name, link_to=link_to)

    @staticmethod
    async def start_child(node_or_proc: Node | Process, sup: Server,
                          spec_or_args: ChildSpec | tuple[Any, ...] = ()) -> Pid:
        """Start a child: a whole :class:`~fabric.ChildSpec` (no template), or the extra
        arguments for the template. Returns its pid.

        Raises:
            ValueError: ``max_children`` reached, or a spec where the template expects
                arguments (or the reverse).
            RuntimeError: it failed to start (the message gives the reason).
        """
        pid: Pid = check_answer(await call(node_or_proc, sup, ("start_dynamic", spec_or_args),
                                     timeout=None))
        return pid

    @staticmethod
    async def terminate_child(node_or_proc: Node | Process, sup: Server, pid: Pid) -> None:
        """Stop the child running as ``pid`` (within its shutdown) and forget it.
        Raises KeyError if no child runs as ``pid``."""
        check_answer(await call(node_or_proc, sup, ("terminate_pid", pid), timeout=None))

    @staticmethod
    async def which_children(node_or_proc: Node | Process, sup: Server) -> list[Pid]:
        """The pids of the running children, in start order."""
        return [pid for pid in await call(node_or_proc, sup, ("which_pids",))]

    @staticmethod
    async def count_children(node_or_proc: Node | Process, sup: Server) -> int:
        """How many children it keeps (what ``max_children`` bounds)."""
        count: int = await call(node_or_proc, sup, ("count_children",))
        return count


class _DynamicServer(SupervisorServer):
    """The dynamic supervisor's process."""

    template: ChildSpec | None
    max_children: int | None
    next_id: int

    async def init(self, template: ChildSpec | None,  # type: ignore[override]
                   max_children: int | None, intensity: int, period: float,
                   parent: Pid | None) -> None:
        await super().init(SupervisorCore(ONE_FOR_ONE, intensity, period), (), parent)
        self.template, self.max_children, self.next_id = template, max_children, 0

    async def handle_info(self, message: Any) -> None:
        await super().handle_info(message)
        if type(message) is Exit:  # forget the ones that ended for good
            for c in list(self.core.children):
                if c.pid is None:
                    self._forget(c.id)

    async def handle_call(self, request: Any, from_: From) -> Any:
        op = request[0]
        if op == "which_pids":
            return [c.pid for c in self.core.children if c.pid is not None]
        if op == "count_children":
            return len(self.core.children)
        if op == "terminate_pid":
            child = next((c for c in self.core.children if c.pid == request[1]), None)
            if child is None:
                return (False, ("not_found", f"no child runs as {request[1]!r}"))
            await self._carry_out(self.core.terminate(child.id))
            self._forget(child.id)
            return (True, None)
        if op == "start_dynamic":
            return await self._start_dynamic(request[1])
        return await super().handle_call(request, from_)

    async def _start_dynamic(self, spec_or_args: Any) -> Any:
        if self.max_children is not None and len(self.core.children) >= self.max_children:
            return (False, ("invalid", f"max_children ({self.max_children}) reached"))
        self.next_id += 1
        id = str(self.next_id)
        if self.template is not None:
            if isinstance(spec_or_args, ChildSpec):
                return (False, ("invalid", "this supervisor has a template: start_child "
                                           "takes the extra arguments"))
            spec = dataclasses.replace(self.template, id=id,
                                       args=(*self.template.args, *spec_or_args))
        elif isinstance(spec_or_args, ChildSpec):
            spec = dataclasses.replace(spec_or_args, id=id)
        else:
            return (False, ("invalid", "no template: start_child takes a ChildSpec"))
        try:
            self.core.add(id, spec.restart, spec.shutdown, spec.significant)
        except ValueError as exc:
            return (False, ("invalid", str(exc)))
        self.specs[id] = spec
        try:
            return (True, await self._start_now(id))
        except SupervisorServer.StartFailed as exc:
            self._forget(id)
            return (False, ("start_failed", str(exc)))
