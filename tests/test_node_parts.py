"""The node's parts that need no sockets: its counters and its one effect executor."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from fabric.errors import ConfigError
from fabric.node.effects import EffectExecutor
from fabric.node.metrics import Metrics


def test_metrics_declare_every_counter_and_read_as_a_mapping() -> None:
    metrics = Metrics()
    metrics.undeliverable += 2
    as_dict = dict(metrics)
    assert as_dict["undeliverable"] == 2 and metrics.get("undeliverable") == 2
    assert {"dropped_on_down", "bad_input", "unknown_kind", "not_a_message",
            "publish_dropped", "topic_in", "bad_mesh_frames", "stray_batches"} <= set(
        as_dict)
    with pytest.raises(AttributeError):
        metrics.typo = 1  # type: ignore[attr-defined]  # slots: no counter made on first use
    assert metrics.get("typo") is None


@dataclass(frozen=True)
class Ping:
    n: int


@dataclass(frozen=True)
class Pong:
    n: int


def test_the_executor_runs_each_effect_by_its_type_in_order_with_its_service() -> None:
    ran: list[Any] = []
    executor = EffectExecutor()
    executor.register(Ping, lambda service, eff: ran.append(("ping", service, eff.n)))
    executor.register(Pong, lambda service, eff: ran.append(("pong", service, eff.n)))
    executor.run([Ping(1), Pong(2), Ping(3)], "pg")
    assert ran == [("ping", "pg", 1), ("pong", "pg", 2), ("ping", "pg", 3)]
    assert executor.handles(Ping) and not executor.handles(int)


def test_the_executor_refuses_a_second_handler_and_an_unknown_effect() -> None:
    executor = EffectExecutor()
    executor.register(Ping, lambda service, eff: None)
    with pytest.raises(ConfigError):
        executor.register(Ping, lambda service, eff: None)
    executor.register(Ping, lambda service, eff: None, replace=True)  # said on purpose
    with pytest.raises(TypeError):
        executor.run([Pong(1)])
