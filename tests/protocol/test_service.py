"""The ServiceCore contract: a host drives any core through it, and only through it.

A toy core (not pg, not global) checks what the simulator does for every core: replies
come back to the caller, publications reach a core only under the prefix it declared,
and ``ExitProcess`` exits the process whatever core asked for it.
"""

from __future__ import annotations

from typing import Any

from fabric.protocol.effects import Effect, ExitProcess, Publish, Reply, Subscribe
from fabric.protocol.service import ServiceCore, reply_of
from fabric.testing import ServiceSim
from fabric.types import Pid

A, B = NAMES = ["a@h:1", "b@h:2"]


class Toy:
    """Publishes under its prefix; counts what it is fed; kills on request."""

    service = "toy"

    def __init__(self, prefix: bytes | None) -> None:
        self.topic_prefix = prefix
        self.published: list[Any] = []
        self.exits: list[tuple[Pid, Any]] = []

    def shout(self, topic: bytes, payload: Any, now: float) -> list[Effect]:
        return [Reply(len(payload)), Publish(topic, payload)]

    def listen(self, topic: bytes, now: float) -> list[Effect]:
        return [Subscribe(topic)]

    def kill(self, pid: Pid, now: float) -> list[Effect]:
        return [ExitProcess(pid, "kill")]

    def on_nodeup(self, peer: str, now: float) -> list[Effect]:
        return []

    def on_nodedown(self, peer: str, reason: str, now: float) -> list[Effect]:
        return []

    def on_message(self, peer: str, payload: Any, now: float) -> list[Effect]:
        return []

    def on_publish(self, payload: Any, now: float) -> list[Effect]:
        self.published.append(payload)
        return []

    def on_timer(self, key: Any, now: float) -> list[Effect]:
        return []

    def on_process_exit(self, pid: Pid, reason: Any, now: float) -> list[Effect]:
        self.exits.append((pid, reason))
        return []


def make_sim(prefixes: dict[str, bytes | None]) -> ServiceSim:
    def build(name: str, creation: int) -> ServiceCore:
        return Toy(prefixes[name])

    return ServiceSim(build, NAMES)


def test_reply_is_returned_to_the_caller_and_nothing_else() -> None:
    sim = make_sim({A: b"t", B: b"t"})
    assert sim.call(A, "shout", b"t1", "abc") == 3
    assert sim.call(A, "listen", b"t") is None  # no Reply: None
    assert reply_of([Subscribe(b"x")]) is None


def test_publication_reaches_a_core_only_under_its_declared_prefix() -> None:
    sim = make_sim({A: b"t", B: b"t"})
    sim.call(B, "listen", b"")  # B's SUB takes every topic
    sim.call(A, "shout", b"t1", "in")
    sim.call(A, "shout", b"u1", "out")  # subscribed, but not under B's prefix
    sim.run()
    assert sim.core(B).published == ["in"]


def test_a_core_without_a_prefix_is_never_given_a_publication() -> None:
    sim = make_sim({A: b"t", B: None})
    sim.call(B, "listen", b"")
    sim.call(A, "shout", b"t1", "x")
    sim.run()
    assert sim.core(B).published == []
    assert [(src, topic) for src, topic, _ in sim.published] == [(A, b"t1")]


def test_exit_process_from_any_core_exits_the_process() -> None:
    sim = make_sim({A: None, B: None})
    pid = sim.spawn(A)
    sim.call(A, "kill", pid)
    sim.run()
    assert sim.exited == [(pid, "kill")]
    assert sim.core(A).exits == [(pid, "kill")]
    assert pid not in sim.mailboxes
