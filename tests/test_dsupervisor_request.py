"""DistributedSupervisor's requests, without sockets: a request forwarded between members
(while their views of the ring disagree) shares one deadline, ``timeout``, over all its
hops, instead of granting each hop the whole of it. The member's answers are scripted by
replacing ``fabric.dsupervisor.call``; time is a fake clock each answer advances."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import fabric
import fabric.dsupervisor
from fabric.dsupervisor import DistributedSupervisor


class FakeLoop:
    def __init__(self) -> None:
        self.now = 100.0

    def time(self) -> float:
        return self.now


class FakeNode:
    def __init__(self) -> None:
        self.loop = FakeLoop()


def scripted(node: FakeNode, answers: list[tuple[float, Any]],
             seen: list[tuple[Any, float | None]]) -> Any:
    """A ``call`` that answers from ``answers`` ((seconds it takes, answer), in order)."""

    async def call(caller: Any, server: Any, request: Any, timeout: float | None) -> Any:
        seen.append((server, timeout))
        took, answer = answers.pop(0)
        if timeout is not None and took > timeout:  # as fabric.call: no answer in time
            node.loop.now += timeout
            raise fabric.CallTimeout(f"no answer within {timeout} s")
        node.loop.now += took
        return answer

    return call


def test_forwards_share_one_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    node, seen = FakeNode(), []  # type: ignore[var-annotated]
    answers = [(4.0, (False, ("forward", "b@h:1"))),
               (4.0, (False, ("forward", "c@h:1"))),
               (4.0, (True, ("c@h:1", "pid")))]
    monkeypatch.setattr(fabric.dsupervisor, "call", scripted(node, answers, seen))
    sup = DistributedSupervisor(node, "jobs")  # type: ignore[arg-type]
    with pytest.raises(fabric.FabricTimeout):
        asyncio.run(sup.terminate_child("k", timeout=10.0))
    assert seen == [("jobs", 10.0), (("jobs", "b@h:1"), 6.0), (("jobs", "c@h:1"), 2.0)]
    assert node.loop.now == 110.0  # the caller waited its timeout, not three of them


def test_an_answer_within_the_deadline_after_forwards_is_returned(
        monkeypatch: pytest.MonkeyPatch) -> None:
    node, seen = FakeNode(), []  # type: ignore[var-annotated]
    answers = [(1.0, (False, ("forward", "b@h:1"))), (1.0, (True, None))]
    monkeypatch.setattr(fabric.dsupervisor, "call", scripted(node, answers, seen))
    sup = DistributedSupervisor(node, "jobs")  # type: ignore[arg-type]
    asyncio.run(sup.terminate_child("k", timeout=10.0))
    assert seen == [("jobs", 10.0), (("jobs", "b@h:1"), 9.0)] and answers == []
