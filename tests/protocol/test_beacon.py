"""Gossip beacons (fabric.protocol.beacon): authentication, freshness, replay memory."""

from __future__ import annotations

import hashlib
import hmac

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from fabric.protocol.beacon import BeaconCodec, beacon_key

NAME = "a@10.0.0.1:9100"
NOW = 1_800_000_000.0


def test_a_sealed_beacon_is_accepted_once() -> None:
    sender, receiver = BeaconCodec(b"cookie"), BeaconCodec(b"cookie")
    beacon = sender.seal(NAME, 7, NOW)
    assert receiver.check(beacon, NOW + 0.5).name == NAME
    assert receiver.check(beacon, NOW + 0.6).refused == "replay"
    assert receiver.check(sender.seal(NAME, 7, NOW + 1), NOW + 1).name == NAME


def test_another_clusters_beacon_fails_its_mac() -> None:
    assert BeaconCodec(b"other").check(BeaconCodec(b"cookie").seal(NAME, 1, NOW),
                                       NOW).refused == "bad_mac"


def test_a_tampered_name_fails_the_mac() -> None:
    body, mac = msgpack.unpackb(BeaconCodec(b"cookie").seal(NAME, 1, NOW))
    forged_body = body.replace(b"10.0.0.1", b"10.6.6.6")
    assert forged_body != body
    forged = msgpack.packb([forged_body, mac])
    assert BeaconCodec(b"cookie").check(forged, NOW).refused == "bad_mac"


def test_the_key_is_derived_never_the_raw_cookie() -> None:
    assert beacon_key(b"cookie") != b"cookie"
    body, mac = msgpack.unpackb(BeaconCodec(b"cookie").seal(NAME, 1, NOW))
    assert mac != hmac.new(b"cookie", body, hashlib.sha256).digest()
    assert mac == hmac.new(beacon_key(b"cookie"), body, hashlib.sha256).digest()


@pytest.mark.parametrize("skew", [-31.0, 31.0, 3600.0])
def test_a_beacon_outside_the_window_is_stale(skew: float) -> None:
    beacon = BeaconCodec(b"cookie").seal(NAME, 1, NOW)
    assert BeaconCodec(b"cookie", window=30).check(beacon, NOW + skew).refused == "stale"


def test_an_older_counter_of_the_same_run_is_a_replay() -> None:
    sender, receiver = BeaconCodec(b"cookie"), BeaconCodec(b"cookie")
    first, second = sender.seal(NAME, 5, NOW), sender.seal(NAME, 5, NOW)
    assert receiver.check(second, NOW).name == NAME
    assert receiver.check(first, NOW).refused == "replay"


def test_a_new_run_of_the_sender_starts_its_counter_again() -> None:
    receiver = BeaconCodec(b"cookie")
    old_run = BeaconCodec(b"cookie")
    for _ in range(3):
        assert receiver.check(old_run.seal(NAME, 1, NOW), NOW).name == NAME
    assert receiver.check(BeaconCodec(b"cookie").seal(NAME, 2, NOW), NOW).name == NAME


@pytest.mark.parametrize("datagram", [
    b"", b"\xc1", msgpack.packb([b"x"]), msgpack.packb([b"x", b"short"]),
    msgpack.packb("text"), b"x" * 2000,
])
def test_garbage_is_malformed(datagram: bytes) -> None:
    assert BeaconCodec(b"cookie").check(datagram, NOW).refused == "malformed"


@pytest.mark.parametrize("body", [
    ["fabric.beacon", 2, NAME, 1, 1, int(NOW * 1000)],      # unknown version
    ["other", 1, NAME, 1, 1, int(NOW * 1000)],              # not a beacon
    ["fabric.beacon", 1, 42, 1, 1, int(NOW * 1000)],        # name not a str
    ["fabric.beacon", 1, NAME, -1, 1, int(NOW * 1000)],     # creation out of range
    ["fabric.beacon", 1, NAME, 1, 1],                       # missing field
])
def test_an_authentic_but_invalid_body_is_malformed(body: list[object]) -> None:
    raw = msgpack.packb(body)
    mac = hmac.new(beacon_key(b"cookie"), raw, hashlib.sha256).digest()
    assert BeaconCodec(b"cookie").check(msgpack.packb([raw, mac]), NOW).refused == "malformed"


def test_the_sender_memory_is_bounded() -> None:
    receiver = BeaconCodec(b"cookie", max_senders=3)
    sender = BeaconCodec(b"cookie")
    first = sender.seal("n0@h:1", 1, NOW)
    assert receiver.check(first, NOW).name == "n0@h:1"
    for i in range(1, 4):
        assert receiver.check(sender.seal(f"n{i}@h:1", 1, NOW), NOW).name == f"n{i}@h:1"
    # n0 was forgotten (least recently heard): its old beacon passes once more, no more.
    assert receiver.check(first, NOW).name == "n0@h:1"
    assert receiver.check(first, NOW).refused == "replay"


def test_the_example_in_protocol_md() -> None:
    assert beacon_key(b"cookie").hex() == (
        "9acdd723040e507217d314c606cf2ab3f24f4871151a67b5a33a6e60427debb8")
    assert BeaconCodec(b"cookie").seal("a@10.0.0.1:9100", 7, 1_800_000_000.0).hex() == (
        "92c42b96ad6661627269632e626561636f6e01af614031302e302e302e313a393130300701cf"
        "000001a3185c5000c4205ed7b9a0ebf2860c79b8c37bf69243930f4e4d7fd0d3e35e605a3e26b2"
        "b8f2e6")


@given(st.binary(max_size=1100))
def test_any_datagram_is_checked_without_raising(datagram: bytes) -> None:
    result = BeaconCodec(b"cookie").check(datagram, NOW)
    assert result.name is None and result.refused in ("malformed", "bad_mac")


@given(st.integers(0, 200), st.integers(0, 7))
def test_any_single_bit_flip_is_refused(index: int, bit: int) -> None:
    beacon = bytearray(BeaconCodec(b"cookie").seal(NAME, 1, NOW))
    beacon[index % len(beacon)] ^= 1 << bit
    assert BeaconCodec(b"cookie").check(bytes(beacon), NOW).name is None
