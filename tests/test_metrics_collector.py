"""The metrics pipeline without sockets: per-peer traffic in ``node.metrics``, the
Prometheus collector over a snapshot, the documented names, and the configuration."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from fabric.config import NodeConfig, parse_address
from fabric.console import node_options, parse_args
from fabric.errors import ConfigError
from fabric.metrics import DROP_REASONS, NodeSnapshot, PeerSample
from fabric.metrics.prometheus import NodeCollector, families
from fabric.node.metrics import Metrics
from fabric.outbound import Outbound
from fabric.protocol.codec import Codec

METRICS_MD = Path(__file__).resolve().parent.parent / "docs" / "METRICS.md"

PEER = "b@127.0.0.1:9101"


def _snapshot() -> NodeSnapshot:
    return NodeSnapshot(
        node="a@127.0.0.1:9100", creation=0xBEEF, peers=1, hidden_peers=1, processes=4,
        registered_names=1, mailbox_messages=9, mailbox_max=7,
        registered_mailboxes={"parked": 7},
        dropped={reason: i for i, reason in enumerate(DROP_REASONS)},
        handshakes_refused={"bad_cookie": 2}, topic_messages_in=5,
        peer_samples=(
            PeerSample(peer=PEER, up=True, batches_in=3, messages_in=30, bytes_in=900,
                       batches_out=2, messages_out=20, bytes_out=600, refused=1, queued=4,
                       heartbeat_age=0.125, rtt=0.0005),
            PeerSample(peer="gone@127.0.0.1:9102", up=False, batches_in=1, messages_in=1,
                       bytes_in=10, batches_out=0, messages_out=0, bytes_out=0, refused=0,
                       queued=0, heartbeat_age=None, rtt=None),
        ),
        caches={"sessions": {"hits": 10, "misses": 3, "evictions": 2, "expirations": 1,
                             "tombstones": 4, "handoffs": 7, "repairs": 1, "entries": 50,
                             "bytes": 5000, "handoff_pending": 0, "near_hits": 6,
                             "near_entries": 8},
                "plain": {"hits": 1, "entries": 2}},
    )


def _scrape(read: Callable[[], NodeSnapshot | None]) -> dict[str, Any]:
    """Expose through a registry, as the HTTP server does, and parse it back."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(NodeCollector(read))
    text = generate_latest(registry).decode()
    out: dict[str, Any] = {}
    for family in text_string_to_metric_families(text):
        out[family.name] = family
    return out


def _value(family: Any, sample: str, /, **labels: str) -> float:
    found = [s.value for s in family.samples if s.name == sample and s.labels == labels]
    assert len(found) == 1, (sample, labels, family.samples)
    return float(found[0])


def test_the_collector_exposes_a_snapshot_with_prometheus_names_types_and_labels() -> None:
    got = _scrape(_snapshot)
    assert _value(got["fabric_up"], "fabric_up") == 1
    assert _value(got["fabric_node_info"], "fabric_node_info",
                  node="a@127.0.0.1:9100", creation=str(0xBEEF)) == 1
    assert _value(got["fabric_peers"], "fabric_peers", hidden="false") == 1
    assert _value(got["fabric_peers"], "fabric_peers", hidden="true") == 1
    assert _value(got["fabric_mailbox_max_messages"], "fabric_mailbox_max_messages") == 7
    assert _value(got["fabric_registered_mailbox_messages"],
                  "fabric_registered_mailbox_messages", name="parked") == 7
    sent = got["fabric_peer_sent_messages"]  # the parser names a counter without _total
    assert sent.type == "counter"
    assert _value(sent, "fabric_peer_sent_messages_total", peer=PEER) == 20
    assert _value(got["fabric_peer_received_bytes"], "fabric_peer_received_bytes_total",
                  peer=PEER) == 900
    assert _value(got["fabric_peer_sends_refused"], "fabric_peer_sends_refused_total",
                  peer=PEER) == 1
    assert got["fabric_peer_queued_messages"].type == "gauge"
    assert _value(got["fabric_peer_rtt_seconds"], "fabric_peer_rtt_seconds",
                  peer=PEER) == 0.0005
    # A peer without a session: its counters stay, its unknown gauges are left out.
    assert _value(got["fabric_peer_up"], "fabric_peer_up", peer="gone@127.0.0.1:9102") == 0
    assert [s.labels["peer"] for s in got["fabric_peer_rtt_seconds"].samples] == [PEER]
    dropped = got["fabric_dropped"]
    assert {s.labels["reason"]: s.value for s in dropped.samples
            if s.name == "fabric_dropped_total"} == {r: i for i, r in enumerate(DROP_REASONS)}
    assert _value(got["fabric_handshakes_refused"], "fabric_handshakes_refused_total",
                  reason="bad_cookie") == 2


def test_a_scrape_without_a_snapshot_says_only_that_the_node_did_not_answer() -> None:
    got = _scrape(lambda: None)
    assert list(got) == ["fabric_up"]
    assert _value(got["fabric_up"], "fabric_up") == 0


def test_the_cache_counters_are_exposed_by_cache_name() -> None:
    got = _scrape(_snapshot)
    hits = got["fabric_cache_hits"]
    assert hits.type == "counter"
    assert _value(hits, "fabric_cache_hits_total", cache="sessions") == 10
    assert _value(hits, "fabric_cache_hits_total", cache="plain") == 1
    assert got["fabric_cache_bytes"].type == "gauge"
    assert _value(got["fabric_cache_bytes"], "fabric_cache_bytes", cache="sessions") == 5000
    assert _value(got["fabric_cache_tombstones"], "fabric_cache_tombstones",
                  cache="sessions") == 4
    near = got["fabric_cache_near_entries"]  # only caches that have a near cache
    assert [s.labels for s in near.samples] == [{"cache": "sessions"}]


def test_every_metric_is_documented_and_every_documented_metric_exists() -> None:
    exposed = {f.name + ("_total" if f.type == "counter" else "")
               for f in families(_snapshot())}
    documented = set(re.findall(r"^\| `(fabric_[a-z_]+)`", METRICS_MD.read_text(), re.M))
    assert exposed == documented
    for reason in DROP_REASONS:
        assert f"`{reason}`" in METRICS_MD.read_text()


class _Loop:
    def call_soon(self, fn: Callable[[], None]) -> None:
        pass


class _Socket:
    def send(self, frame: bytes, flags: int = 0) -> None:
        pass


def test_peer_traffic_adds_received_batches_and_outlives_closed_channels() -> None:
    metrics = Metrics()
    entry = metrics.received_from(PEER)
    entry.batches_in += 1
    entry.messages_in += 3
    codec = Codec()
    out = Outbound(_Loop(), PEER, _Socket(), codec.encode,  # type: ignore[arg-type]
                   100, on_sent=lambda: None)
    out.open = True
    out.push([1, "x", 1])  # first of the turn: sent at once, a batch of one
    assert (out.sent_frames, out.sent_messages) == (1, 1)
    assert out.sent_bytes == len(codec.encode([[1, "x", 1]]))
    live = metrics.traffic_with(PEER, out)
    assert (live.batches_in, live.messages_in, live.messages_out) == (1, 3, 1)
    assert metrics.traffic_with(PEER).messages_out == 0  # without the open channel's
    metrics.channel_closed(PEER, out)
    after = metrics.traffic_with(PEER)
    assert (after.batches_out, after.messages_out, after.bytes_out) == (
        1, 1, out.sent_bytes)
    assert "traffic" not in dict(metrics)  # the mapping stays counters only


def test_metrics_address_is_validated_and_read_from_env_and_command_line() -> None:
    assert NodeConfig().metrics_address == ""  # off by default
    assert parse_address("127.0.0.1:9400") == ("127.0.0.1", 9400)
    assert parse_address("[::1]:0") == ("::1", 0)
    for bad in ("9400", "host:", ":9400", "host:70000", "host:port"):
        with pytest.raises(ConfigError):
            NodeConfig(metrics_address=bad)
    with pytest.raises(ConfigError):
        NodeConfig(metrics_address=9400)  # type: ignore[arg-type]
    env = {"FABRIC_METRICS_ADDRESS": "0.0.0.0:9400"}
    assert NodeConfig.from_env(env).metrics_address == "0.0.0.0:9400"
    args = parse_args(["--name", "n1@127.0.0.1:9100", "--metrics-address", "127.0.0.1:9401"])
    assert node_options(args)["metrics_address"] == "127.0.0.1:9401"
    assert "metrics_address" not in node_options(parse_args(["--name", "n1@127.0.0.1:9100"]))
