"""The supervisor's decisions (fabric.protocol.supervision), with a fake clock: each
strategy's stop and restart order, the restart types, the intensity, failed starts."""

from __future__ import annotations

import pytest

from fabric.protocol.effects import Log
from fabric.protocol.supervision import (
    BRUTAL_KILL,
    ONE_FOR_ALL,
    ONE_FOR_ONE,
    REST_FOR_ONE,
    StartChild,
    StopChild,
    StopSupervisor,
    SupervisorCore,
    SupervisorEffect,
    restarts_after,
)


def running(strategy: str, restarts: list[str] | None = None, intensity: int = 3,
            period: float = 5.0) -> SupervisorCore:
    """A core whose children a, b, c, d (restart types ``restarts``) run as pids
    "a1", "b1", ..."""
    core = SupervisorCore(strategy, intensity, period)
    for id, restart in zip("abcd", restarts or ["permanent"] * 4, strict=True):
        assert core.add(id, restart, shutdown=2) == StartChild(id)
        core.started(id, f"{id}1")
    return core


def actions(plan: list[SupervisorEffect]) -> list[tuple[str, str]]:
    """The plan without its logs, as ("stop" | "start", id)."""
    out = []
    for e in plan:
        if type(e) is StopChild:
            out.append(("stop", e.id))
        elif type(e) is StartChild:
            out.append(("start", e.id))
        elif type(e) is StopSupervisor:
            out.append(("exit", e.reason))
    return out


def pids(core: SupervisorCore) -> dict[str, object]:
    return {c.id: c.pid for c in core.children}


def test_one_for_one_restarts_only_the_child() -> None:
    core = running(ONE_FOR_ONE)
    plan = core.exited("b1", "boom", now=0)
    assert actions(plan) == [("start", "b")]
    assert [e for e in plan if type(e) is Log][0].event == "child_terminated"
    assert pids(core) == {"a": "a1", "b": None, "c": "c1", "d": "d1"}


def test_one_for_all_stops_the_others_in_reverse_then_starts_all_in_order() -> None:
    core = running(ONE_FOR_ALL)
    plan = core.exited("b1", "boom", now=0)
    assert actions(plan) == [("stop", "d"), ("stop", "c"), ("stop", "a"),
                             ("start", "a"), ("start", "b"), ("start", "c"), ("start", "d")]
    stop_d = next(e for e in plan if type(e) is StopChild)
    assert (stop_d.pid, stop_d.shutdown) == ("d1", 2.0)
    assert set(pids(core).values()) == {None}


def test_rest_for_one_restarts_the_child_and_the_later_ones() -> None:
    core = running(REST_FOR_ONE)
    assert actions(core.exited("b1", "boom", now=0)) == [
        ("stop", "d"), ("stop", "c"), ("start", "b"), ("start", "c"), ("start", "d")]
    assert pids(core)["a"] == "a1"


def test_transient_restarts_only_after_an_abnormal_exit() -> None:
    assert [restarts_after("transient", r) for r in
            ["normal", "shutdown", ("shutdown", "x"), "killed", ("error", "E", "m")]] == \
        [False, False, False, True, True]
    core = running(ONE_FOR_ONE, ["transient", "transient", "permanent", "temporary"])
    assert core.exited("a1", "normal", now=0) == []
    assert core.child("a") is not None and core.child("a").pid is None  # type: ignore[union-attr]
    assert actions(core.exited("b1", "killed", now=0)) == [("start", "b")]
    assert actions(core.exited("c1", "normal", now=0)) == [("start", "c")]  # permanent


def test_temporary_child_is_never_restarted_and_forgotten() -> None:
    core = running(ONE_FOR_ONE, ["permanent", "temporary", "permanent", "permanent"])
    assert core.exited("b1", ("error", "E", "m"), now=0) == []
    assert [c.id for c in core.children] == ["a", "c", "d"]


def test_temporary_child_stopped_by_one_for_all_is_dropped() -> None:
    core = running(ONE_FOR_ALL, ["permanent", "temporary", "permanent", "permanent"])
    assert actions(core.exited("c1", "boom", now=0)) == [
        ("stop", "d"), ("stop", "b"), ("stop", "a"), ("start", "a"), ("start", "c"),
        ("start", "d")]
    assert [c.id for c in core.children] == ["a", "c", "d"]


def test_exit_of_an_unknown_or_replaced_pid_is_ignored() -> None:
    core = running(ONE_FOR_ONE)
    core.exited("a1", "boom", now=0)
    core.started("a", "a2")
    assert core.exited("a1", "boom", now=0) == []  # the old incarnation
    assert core.exited("zz", "boom", now=0) == []


def test_more_than_intensity_restarts_within_period_stop_the_supervisor() -> None:
    core = running(REST_FOR_ONE, intensity=2, period=10)
    for n, now in enumerate([0.0, 1.0], start=2):
        core.exited(f"d{n - 1}", "boom", now=now)
        core.started("d", f"d{n}")
    plan = core.exited("d3", "boom", now=9.9)  # the third within 10 s
    assert actions(plan) == [("stop", "c"), ("stop", "b"), ("stop", "a"),
                             ("exit", "shutdown")]
    assert any(type(e) is Log and e.event == "reached_max_restart_intensity" for e in plan)


def test_restarts_older_than_the_period_are_forgotten() -> None:
    core = running(ONE_FOR_ONE, intensity=1, period=5)
    core.exited("a1", "boom", now=0)
    core.started("a", "a2")
    assert actions(core.exited("a2", "boom", now=5.5)) == [("start", "a")]  # 0 has aged out
    core.started("a", "a3")
    assert actions(core.exited("a3", "boom", now=6.0))[-1] == ("exit", "shutdown")


def test_intensity_zero_stops_at_the_first_restart() -> None:
    core = running(ONE_FOR_ONE, intensity=0)
    assert actions(core.exited("c1", "boom", now=0)) == [
        ("stop", "d"), ("stop", "b"), ("stop", "a"), ("exit", "shutdown")]


def test_a_failed_start_is_retried_with_the_strategy_and_counts_as_a_restart() -> None:
    core = running(REST_FOR_ONE, intensity=2)
    plan = core.exited("b1", "boom", now=0)
    assert actions(plan) == [("stop", "d"), ("stop", "c"), ("start", "b"), ("start", "c"),
                             ("start", "d")]
    core.started("b", "b2")
    # c fails to start: the rest of the plan (start d) is replaced by a retry from c.
    assert actions(core.start_failed("c", "bad init", now=1)) == [("start", "c"),
                                                                  ("start", "d")]
    assert actions(core.start_failed("c", "bad init", now=2))[-2:] == [
        ("stop", "a"), ("exit", "shutdown")]
    assert pids(core) == {"a": None, "b": None, "c": None, "d": None}


def test_one_for_all_failed_start_stops_those_already_restarted() -> None:
    core = running(ONE_FOR_ALL)
    core.exited("a1", "boom", now=0)
    core.started("a", "a2")
    core.started("b", "b2")
    assert actions(core.start_failed("c", "bad", now=0)) == [
        ("stop", "b"), ("stop", "a"), ("start", "a"), ("start", "b"), ("start", "c"),
        ("start", "d")]


def test_terminate_stop_all_and_delete() -> None:
    core = running(ONE_FOR_ONE, ["permanent", "temporary", "permanent", "permanent"])
    assert core.terminate("a") == [StopChild("a", "a1", 2.0)]
    assert core.terminate("a") == []  # not running: nothing to do
    assert core.terminate("b") == [StopChild("b", "b1", 2.0)]
    assert core.child("b") is None  # temporary: forgotten
    with pytest.raises(ValueError):
        core.delete("c")  # running
    core.delete("a")
    assert [(e.id, e.pid) for e in core.stop_all() if type(e) is StopChild] == [
        ("d", "d1"), ("c", "c1")]
    with pytest.raises(KeyError):
        core.terminate("a")


def test_invalid_arguments_are_refused() -> None:
    with pytest.raises(ValueError):
        SupervisorCore("one_for_some")
    with pytest.raises(ValueError):
        SupervisorCore(intensity=-1)
    with pytest.raises(ValueError):
        SupervisorCore(period=0)
    core = SupervisorCore()
    core.add("a", shutdown=BRUTAL_KILL)
    for bad in [dict(id="a"), dict(id="b", restart="sometimes"), dict(id="b", shutdown=-1),
                dict(id="b", shutdown="later")]:
        with pytest.raises(ValueError):
            core.add(**bad)  # type: ignore[arg-type]


def test_a_restart_exactly_one_period_later_still_counts() -> None:
    core = running(ONE_FOR_ONE, intensity=1, period=5)
    core.exited("a1", "boom", now=0)
    core.started("a", "a2")
    assert actions(core.exited("a2", "boom", now=5.0))[-1] == ("exit", "shutdown")


def test_any_significant_child_ending_by_itself_ends_the_supervisor() -> None:
    core = SupervisorCore(ONE_FOR_ONE, auto_shutdown="any_significant")
    for id, restart, significant in [("a", "permanent", False), ("b", "transient", True),
                                     ("c", "temporary", True)]:
        core.add(id, restart, shutdown=1, significant=significant)
        core.started(id, f"{id}1")
    assert actions(core.exited("b1", "killed", now=0)) == [("start", "b")]  # restarted
    core.started("b", "b2")
    assert core.terminate("c") == [StopChild("c", "c1", 1.0)]  # on request: no shutdown
    plan = core.exited("b2", "normal", now=0)
    assert actions(plan) == [("stop", "a"), ("exit", "shutdown")]
    assert any(type(e) is Log and e.event == "auto_shutdown" for e in plan)


def test_all_significant_waits_for_the_last_significant_child() -> None:
    core = SupervisorCore(REST_FOR_ONE, auto_shutdown="all_significant")
    for id in "abc":
        core.add(id, "temporary" if id != "a" else "permanent", shutdown=1,
                 significant=id != "a")
        core.started(id, f"{id}1")
    assert core.exited("b1", "normal", now=0) == []
    assert actions(core.exited("c1", ("error", "E", "m"), now=0)) == [
        ("stop", "a"), ("exit", "shutdown")]


def test_only_transient_or_temporary_children_of_an_auto_shutdown_core_are_significant() -> None:
    with pytest.raises(ValueError):
        SupervisorCore(auto_shutdown="sometimes")
    with pytest.raises(ValueError):
        SupervisorCore().add("a", "transient", significant=True)  # auto_shutdown never
    with pytest.raises(ValueError):
        SupervisorCore(auto_shutdown="any_significant").add("a", "permanent",
                                                            significant=True)


def test_exits_during_a_restart_plan_are_ignored_or_restart_again_within_intensity() -> None:
    core = running(ONE_FOR_ALL, intensity=2)
    plan = core.exited("b1", "boom", now=0)
    assert actions(plan)[:3] == [("stop", "d"), ("stop", "c"), ("stop", "a")]
    # The stopped children's exits arrive while the plan runs: already accounted for.
    for pid in ("d1", "c1", "a1"):
        assert core.exited(pid, "shutdown", now=0) == []
    core.started("a", "a2")
    core.started("b", "b2")
    # a is killed right after its restart, before c and d are started again: the next
    # plan stops the ones already running again and starts all, counted as a restart.
    assert actions(core.exited("a2", "killed", now=1)) == [
        ("stop", "b"), ("start", "a"), ("start", "b"), ("start", "c"), ("start", "d")]
    for id in "abcd":
        core.started(id, f"{id}3")
    assert actions(core.exited("c3", "killed", now=2))[-1] == ("exit", "shutdown")  # third


def test_a_nested_supervisor_giving_up_is_restarted_by_its_parent() -> None:
    parent = SupervisorCore(ONE_FOR_ONE, intensity=1)
    parent.add("inner", "permanent", shutdown="infinity")
    parent.started("inner", "inner1")
    inner = running(ONE_FOR_ONE, intensity=0)
    escalation = inner.exited("a1", "boom", now=0)
    assert actions(escalation)[-1] == ("exit", "shutdown")
    exit_reason = next(e.reason for e in escalation if type(e) is StopSupervisor)
    # The inner supervisor's exit reaches the parent as its child's exit.
    assert actions(parent.exited("inner1", exit_reason, now=0)) == [("start", "inner")]
    parent.started("inner", "inner2")
    # Too often: the parent gives up in turn, and so on up the tree.
    assert actions(parent.exited("inner2", exit_reason, now=1)) == [("exit", "shutdown")]
