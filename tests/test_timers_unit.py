"""The node's message timers (fabric.node.timers.Timers) on a fake loop whose clock does
not move: the seconds left that cancel_timer and read_timer report never exceed the
delay asked for, even where the float deadline ``now + delay`` minus ``now`` rounds above
it (30.00000000000003 at now = 232.28189861418534)."""

from __future__ import annotations

from typing import Any

from fabric.node.metrics import Metrics
from fabric.node.timers import Timers
from fabric.types import Ref

NOW = 232.28189861418534  # (NOW + 30.0) - NOW == 30.00000000000003


class FakeHandle:
    def __init__(self, when: float) -> None:
        self._when = when
        self.cancelled = False

    def when(self) -> float:
        return self._when

    def cancel(self) -> None:
        self.cancelled = True


class FrozenLoop:
    def time(self) -> float:
        return NOW

    def call_later(self, delay: float, *args: Any) -> FakeHandle:
        return FakeHandle(NOW + delay)


def timers() -> Timers:
    refs = iter(range(1, 100))
    return Timers(FrozenLoop(), lambda dest, msg: None,  # type: ignore[arg-type]
                  lambda: Ref("n@h:1", 1, next(refs)), log=None, metrics=Metrics())


def test_the_time_left_never_exceeds_the_delay() -> None:
    assert (NOW + 30.0) - NOW > 30.0  # the rounding this test is about
    t = timers()
    ref = t.send_after("dest", "msg", 30.0)
    left = t.read(ref)
    assert left is not None and 0.0 <= left <= 30.0
    left = t.cancel(ref)
    assert left is not None and 0.0 <= left <= 30.0
    assert t.cancel(ref) is None and t.pending() == 0
