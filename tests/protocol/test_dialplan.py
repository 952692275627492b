"""The dial plan (fabric.protocol.dialplan): what discovery dials, retries and drops."""

from __future__ import annotations

import pytest

from fabric.protocol.dialplan import Dial, DialPlan, Disconnect, Forgotten, Seen

ME = "me@h:1"
A, B = "a@h:2", "b@h:3"


def dials(effects: list[object]) -> list[str]:
    return [e.name for e in effects if isinstance(e, Dial)]


def test_new_names_are_seen_and_dialled_at_once_but_never_self() -> None:
    plan = DialPlan(ME)
    effects = plan.update("s", frozenset({ME, A, B}), 0.0)
    assert [e for e in effects if isinstance(e, Seen)] == [Seen(A, "s"), Seen(B, "s")]
    assert dials(effects) == [A, B]
    assert plan.wanted() == {A, B}
    assert plan.stats["seen"] == 2 and plan.stats["dialled"] == 2


def test_a_name_being_dialled_or_connected_is_not_dialled_again() -> None:
    plan = DialPlan(ME)
    assert dials(plan.update("s", frozenset({A}), 0.0)) == [A]
    assert dials(plan.update("s", frozenset({A}), 1.0)) == []
    assert dials(plan.dial_result(A, True, "ok", 1.0)) == []
    assert dials(plan.tick(100.0)) == []


def test_failures_back_off_doubling_up_to_the_cap() -> None:
    plan = DialPlan(ME, initial_backoff=0.1, max_backoff=0.5)
    plan.update("s", frozenset({A}), 0.0)
    now, waits = 0.0, []
    for _ in range(5):
        assert plan.dial_result(A, False, "connection_refused", now) == []
        due = plan.next_due()
        assert due is not None
        waits.append(round(due - now, 3))
        assert dials(plan.tick(due - 0.001)) == []
        now = due
        assert dials(plan.tick(now)) == [A]
    assert waits == [0.1, 0.2, 0.4, 0.5, 0.5]
    assert plan.stats["failed"] == 5


def test_a_permanent_refusal_waits_the_cap_at_once() -> None:
    plan = DialPlan(ME, max_backoff=4.0)
    plan.update("s", frozenset({A}), 0.0)
    plan.dial_result(A, False, "bad_cookie", 0.0)
    assert plan.next_due() == 4.0


def test_after_a_nodedown_the_mesh_gets_a_full_backoff_first() -> None:
    plan = DialPlan(ME, max_backoff=2.0)
    plan.update("s", frozenset({A}), 0.0)
    plan.dial_result(A, True, "ok", 0.0)
    plan.node_down(A, 10.0)
    assert dials(plan.tick(11.9)) == []
    assert dials(plan.tick(12.0)) == [A]  # still listed: discovery re-merges


def test_a_name_connected_by_the_mesh_is_not_dialled() -> None:
    plan = DialPlan(ME)
    plan.node_up(A)
    assert dials(plan.update("s", frozenset({A}), 0.0)) == []


@pytest.mark.parametrize("disconnect", [False, True])
def test_a_name_no_source_lists_is_forgotten_and_maybe_disconnected(disconnect: bool) -> None:
    plan = DialPlan(ME, disconnect=disconnect)
    plan.update("s1", frozenset({A, B}), 0.0)
    plan.update("s2", frozenset({A}), 0.0)
    plan.dial_result(A, True, "ok", 0.0)
    plan.dial_result(B, True, "ok", 0.0)
    assert plan.update("s1", frozenset(), 1.0) == (
        [Forgotten(B)] + ([Disconnect(B)] if disconnect else []))
    assert plan.wanted() == {A}  # s2 still lists it
    effects = plan.update("s2", frozenset(), 2.0)
    assert Forgotten(A) in effects and (Disconnect(A) in effects) == disconnect
    assert plan.next_due() is None


def test_a_result_for_a_forgotten_name_is_ignored() -> None:
    plan = DialPlan(ME)
    plan.update("s", frozenset({A}), 0.0)
    plan.update("s", frozenset(), 0.0)
    assert plan.dial_result(A, False, "timeout", 1.0) == []
    assert plan.next_due() is None


def test_bad_backoffs_are_refused() -> None:
    with pytest.raises(ValueError):
        DialPlan(ME, initial_backoff=2.0, max_backoff=1.0)
