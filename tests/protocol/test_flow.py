"""Mailbox flow control (fabric.protocol.flow): the busy/room bookkeeping of both sides,
pure, and a model of two nodes exchanging notices over a delayed ordered stream."""

from __future__ import annotations

from collections import deque
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fabric.calls import REPLY, STOP
from fabric.protocol.flow import (
    BUSY,
    REPORT_EVERY,
    ROOM,
    Congested,
    InboundFlow,
    OutboundFlow,
    Relieved,
    high_water,
    is_system,
    low_water,
)
from fabric.protocol.mesh_effects import Control
from fabric.protocol.messages import K_CTRL
from fabric.types import Pid

A = "a@127.0.0.1:9100"
B = "b@127.0.0.1:9101"
P = Pid(B, 5, 2)


def test_watermarks() -> None:
    assert (high_water(10_000), low_water(10_000)) == (7_500, 5_000)
    assert (high_water(1), low_water(1)) == (1, 0)
    assert (high_water(4), low_water(4)) == (3, 2)
    for limit in range(1, 200):
        assert low_water(limit) < high_water(limit) <= limit


def test_system_messages_are_replies_and_stops() -> None:
    assert is_system((REPLY, "ref", True, 1, True))
    assert is_system((STOP, "normal"))
    assert not is_system(("$call", ("from",), "req"))
    assert not is_system((REPLY,))  # a bare tag is not a reply
    assert not is_system([REPLY, "ref"])  # a list: a user's message
    assert not is_system("$reply")


def test_inbound_tells_each_peer_once_and_counts_its_drops() -> None:
    flow = InboundFlow()
    assert not flow.watching(5)
    assert flow.crowded(5, A, P, dropped=False) == [Control(A, [K_CTRL, BUSY, P, 0])]
    assert flow.crowded(5, A, P, dropped=True) == []
    assert flow.crowded(5, A, P, dropped=True) == []
    # Another peer, and the same peer addressing it by name, are told separately.
    assert flow.crowded(5, "c@h:1", P, dropped=True) == [Control("c@h:1", [K_CTRL, BUSY, P, 1])]
    assert flow.crowded(5, A, "cache", dropped=False) == [Control(A, [K_CTRL, BUSY, "cache", 0])]
    assert flow.watching(5)
    assert sorted(flow.told(5), key=repr) == sorted(
        [(A, P), ("c@h:1", P), (A, "cache")], key=repr)
    room = flow.drained(5)
    assert sorted(room, key=repr) == sorted([
        Control(A, [K_CTRL, ROOM, P, 2]),
        Control("c@h:1", [K_CTRL, ROOM, P, 0]),
        Control(A, [K_CTRL, ROOM, "cache", 0]),
    ], key=repr)
    assert not flow.watching(5) and flow.drained(5) == []
    # A new episode starts with a new busy notice.
    assert flow.crowded(5, A, P, dropped=True) == [Control(A, [K_CTRL, BUSY, P, 1])]


def test_inbound_reports_drops_every_so_often_while_the_mailbox_stays_full() -> None:
    flow = InboundFlow()
    assert flow.crowded(5, A, P, dropped=True) == [Control(A, [K_CTRL, BUSY, P, 1])]
    for _ in range(REPORT_EVERY - 1):
        assert flow.crowded(5, A, P, dropped=True) == []
    assert flow.crowded(5, A, P, dropped=True) == [Control(A, [K_CTRL, BUSY, P, REPORT_EVERY])]
    assert flow.crowded(5, A, P, dropped=True) == []
    assert flow.crowded(5, A, P, dropped=False) == []  # admitted: nothing to report
    assert flow.drained(5) == [Control(A, [K_CTRL, ROOM, P, 1])]
    # The sending side adds a repeated busy to the episode's count.
    out = OutboundFlow()
    out.on_notice(B, 2, [K_CTRL, BUSY, P, 1])
    assert out.on_notice(B, 2, [K_CTRL, BUSY, P, REPORT_EVERY]) == [
        Congested(B, P, REPORT_EVERY)]
    assert out.dropped(P) == REPORT_EVERY + 1
    assert out.on_notice(B, 2, [K_CTRL, ROOM, P, 1]) == [
        Relieved(B, P, 1, REPORT_EVERY + 2)]


def test_inbound_forgets_a_peer_at_nodedown() -> None:
    flow = InboundFlow()
    flow.crowded(5, A, P, dropped=True)
    flow.crowded(6, A, P, dropped=True)
    flow.crowded(6, "c@h:1", P, dropped=True)
    flow.nodedown(A)
    assert not flow.watching(5)
    assert flow.drained(6) == [Control("c@h:1", [K_CTRL, ROOM, P, 0])]


def test_outbound_marks_and_releases_a_destination() -> None:
    flow = OutboundFlow()
    assert flow.on_notice(B, 2, [K_CTRL, BUSY, P, 1]) == [Congested(B, P, 1)]
    assert P in flow.congested and flow.dropped(P) == 1
    assert flow.on_notice(B, 2, [K_CTRL, BUSY, "cache", 0]) == [Congested(B, ("cache", B), 0)]
    assert ("cache", B) in flow.congested
    assert flow.on_notice(B, 2, [K_CTRL, ROOM, P, 40]) == [Relieved(B, P, 40, 41)]
    assert P not in flow.congested and flow.dropped(P) == 0
    assert flow.nodedown(B) == [Relieved(B, ("cache", B), 0, 0)]
    assert flow.congested == {}
    assert flow.nodedown(B) == []


@pytest.mark.parametrize("msg", [
    [K_CTRL, BUSY, Pid(A, 5, 2), 0],  # a pid of another node: a peer speaks for its own
    [K_CTRL, BUSY, Pid(B, 5, 3), 0],  # a pid of another run of the peer
    [K_CTRL, BUSY, P, -1],
    [K_CTRL, BUSY, P, True],
    [K_CTRL, BUSY, P, 1 << 64],
    [K_CTRL, BUSY, ("cache", B), 0],
    [K_CTRL, BUSY, P],
    [K_CTRL, "nope", P, 0],
])
def test_outbound_refuses_malformed_notices(msg: list[Any]) -> None:
    flow = OutboundFlow()
    with pytest.raises(ValueError):
        flow.on_notice(B, 2, msg)
    assert flow.congested == {}


def test_outbound_bounds_what_one_peer_can_make_it_hold() -> None:
    flow = OutboundFlow(max_per_peer=3)
    for i in range(3):
        flow.on_notice(B, 2, [K_CTRL, BUSY, Pid(B, i, 2), 0])
    flow.on_notice(B, 2, [K_CTRL, BUSY, Pid(B, 0, 2), 1])  # one already held: fine
    with pytest.raises(ValueError):
        flow.on_notice(B, 2, [K_CTRL, BUSY, Pid(B, 9, 2), 0])
    flow.on_notice("c@h:1", 7, [K_CTRL, BUSY, "x", 0])  # other peers have their own room
    assert len(flow.congested) == 4


# -- a model of two nodes ---------------------------------------------------------------------


class Model:
    """Sender node A (one process sending flat out) and receiver node B (one process
    with a bounded mailbox that reads in bursts), joined by an ordered stream each way
    with a delay in steps. B runs InboundFlow, A runs OutboundFlow, exactly as the nodes
    do (fabric.node.mailboxes)."""

    def __init__(self, limit: int, delay: int, report_every: int) -> None:
        self.limit = limit
        self.delay = delay
        self.to_b: deque[tuple[int, int]] = deque()  # (arrival step, message number)
        self.to_a: deque[tuple[int, list[Any]]] = deque()
        self.inbound = InboundFlow(report_every)
        self.outbound = OutboundFlow()
        self.mailbox: deque[int] = deque()
        self.received: list[int] = []
        self.dropped_at_b = 0
        self.told_to_a = 0
        self.refused_at_a = 0
        self.next = 0
        self.step = 0
        self.watching = False
        self.peak = 0

    def send(self) -> None:
        if P in self.outbound.congested:
            self.refused_at_a += 1
            return
        self.to_b.append((self.step + self.delay, self.next))
        self.next += 1

    def deliver_at_b(self) -> None:
        while self.to_b and self.to_b[0][0] <= self.step:
            _, n = self.to_b.popleft()
            if len(self.mailbox) >= high_water(self.limit):
                full = len(self.mailbox) >= self.limit
                if full:
                    self.dropped_at_b += 1
                else:
                    self.mailbox.append(n)
                for eff in self.inbound.crowded(5, A, P, full):
                    self.to_a.append((self.step + self.delay, eff.message))
                    self.watching = True
            else:
                self.mailbox.append(n)
            self.peak = max(self.peak, len(self.mailbox))

    def read_at_b(self, count: int) -> None:
        for _ in range(min(count, len(self.mailbox))):
            self.received.append(self.mailbox.popleft())
            if self.watching and len(self.mailbox) <= low_water(self.limit):
                self.watching = False
                for eff in self.inbound.drained(5):
                    self.to_a.append((self.step + self.delay, eff.message))

    def deliver_at_a(self) -> None:
        while self.to_a and self.to_a[0][0] <= self.step:
            _, msg = self.to_a.popleft()
            for eff in self.outbound.on_notice(B, 2, msg):
                self.told_to_a += eff.dropped


@settings(max_examples=60, deadline=None)
@given(limit=st.integers(1, 50), delay=st.integers(0, 8), report_every=st.integers(1, 20),
       script=st.lists(st.tuples(st.integers(0, 12), st.integers(0, 12)), min_size=1,
                       max_size=80))
def test_model_bound_holds_and_every_message_is_accounted_for(
        limit: int, delay: int, report_every: int, script: list[tuple[int, int]]) -> None:
    """Whatever the rates and the delay: the mailbox never exceeds its limit, and once
    the streams are quiet every message sent is received or dropped, and every drop was
    reported to the sender's node; refused sends never left."""
    model = Model(limit, delay, report_every)
    for sends, reads in script:
        for _ in range(sends):
            model.send()
        model.deliver_at_b()
        model.read_at_b(reads)
        model.deliver_at_a()
        model.step += 1
        assert len(model.mailbox) <= limit
    for _ in range(4 * delay + 2 * limit + 10):  # drain: B reads everything, notices land
        model.deliver_at_b()
        model.read_at_b(limit)
        model.deliver_at_a()
        model.step += 1
    assert not model.to_b and not model.to_a and not model.mailbox
    assert model.received == sorted(model.received)  # drops make gaps, never reorder
    assert len(model.received) + model.dropped_at_b == model.next
    assert model.told_to_a == model.dropped_at_b
    assert model.outbound.congested == {}  # every busy was followed by a room
    assert model.peak <= limit
