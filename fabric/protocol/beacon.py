"""Gossip beacons: sealing and checking the datagrams that announce a node's full name.

Theory of operation
-------------------
A node that runs the gossip strategy multicasts a *beacon* every few seconds: its full
name, so that nodes of the same cluster can dial it (PROTOCOL.md §12). Anyone on the
network can send a datagram to the group, so a beacon is believed only when

1. its HMAC-SHA256 verifies under the *beacon key*, which is derived from the cluster's
   secret (the cookie by default) with a label of its own: the raw cookie never keys
   anything outside the handshake, and a beacon key that leaks does not give the cookie.
   A node of another cluster (another secret) or a forger fails here (``bad_mac``);
2. its wall-clock time is within ``window`` seconds of ours (``stale``): a beacon recorded
   and replayed later is refused even by a receiver that has never heard of its sender;
3. its ``(creation, counter)`` is newer than the last one accepted from that name
   (``replay``): within the window, a copy of a beacon already seen is refused. A sender
   counts up from 1 in each run; a new run (another ``creation``) starts again, and the
   receiver takes a different creation as a new run only if the beacon is fresh (2).

The memory of senders is bounded (``max_senders``): when full, the sender heard from least
recently is forgotten. Forgetting a sender lets a copy of one of its beacons from the last
``window`` seconds through once; that copy names a node of this cluster that really
announced itself moments ago, so the worst it does is one extra dial.

This module is pure: time (``now``, wall clock in seconds) and the beacons' contents are
arguments. Checking returns the name or the reason for the refusal; counting refusals is
the caller's business.
"""

from __future__ import annotations

import hashlib
import hmac
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Final

import msgpack  # type: ignore[import-untyped,unused-ignore]

__all__ = ["BEACON_MAGIC", "BEACON_VERSION", "BeaconCodec", "BeaconResult", "beacon_key"]

BEACON_MAGIC: Final = "fabric.beacon"
BEACON_VERSION: Final = 1
_KEY_LABEL: Final = b"fabric discovery beacon key v1"
_MAC_SIZE: Final = 32
_MAX_DATAGRAM: Final = 1024  # a beacon is ~100 bytes; anything far larger is not one

REFUSALS: Final = ("malformed", "bad_mac", "stale", "replay")


def beacon_key(secret: bytes) -> bytes:
    """The HMAC key of beacons, derived from the cluster's secret with its own label."""
    return hmac.new(secret, _KEY_LABEL, hashlib.sha256).digest()


@dataclass(frozen=True, slots=True)
class BeaconResult:
    """A checked beacon: ``name`` when accepted, else ``refused`` says why."""

    name: str | None
    refused: str | None = None


class BeaconCodec:
    """Seals this node's beacons and checks others'.

    Args:
        secret: the cluster's secret (the cookie unless configured otherwise).
        window: how far, in seconds, a beacon's time may be from ours.
        max_senders: how many senders' last ``(creation, counter)`` are remembered.
    """

    def __init__(self, secret: bytes, *, window: float = 30.0, max_senders: int = 4096) -> None:
        if window <= 0 or max_senders < 1:
            raise ValueError("window must be > 0 and max_senders >= 1")
        self._key = beacon_key(secret)
        self.window = window
        self.max_senders = max_senders
        self._last: OrderedDict[str, tuple[int, int]] = OrderedDict()
        self._counter = 0

    def seal(self, name: str, creation: int, now: float) -> bytes:
        """The next beacon announcing ``name`` (run ``creation``) at wall time ``now``."""
        self._counter += 1
        body = msgpack.packb([BEACON_MAGIC, BEACON_VERSION, name, creation, self._counter,
                              int(now * 1000)])
        mac = hmac.new(self._key, body, hashlib.sha256).digest()
        return msgpack.packb([body, mac])  # type: ignore[no-any-return]

    def check(self, datagram: bytes, now: float) -> BeaconResult:
        """Accept or refuse a received datagram; an accepted one updates the replay memory."""
        if len(datagram) > _MAX_DATAGRAM:
            return BeaconResult(None, "malformed")
        try:
            outer: Any = msgpack.unpackb(datagram)
        except Exception:  # msgpack raises several unrelated types on garbage
            return BeaconResult(None, "malformed")
        if (type(outer) is not list or len(outer) != 2 or type(outer[0]) is not bytes
                or type(outer[1]) is not bytes or len(outer[1]) != _MAC_SIZE):
            return BeaconResult(None, "malformed")
        body, mac = outer
        expected = hmac.new(self._key, body, hashlib.sha256).digest()
        if not hmac.compare_digest(expected, mac):
            return BeaconResult(None, "bad_mac")
        fields = _fields(body)
        if fields is None:
            return BeaconResult(None, "malformed")
        name, creation, counter, sent_ms = fields
        if abs(now - sent_ms / 1000) > self.window:
            return BeaconResult(None, "stale")
        last = self._last.get(name)
        if last is not None and last[0] == creation and counter <= last[1]:
            return BeaconResult(None, "replay")
        self._last[name] = (creation, counter)
        self._last.move_to_end(name)
        while len(self._last) > self.max_senders:
            self._last.popitem(last=False)
        return BeaconResult(name)


def _fields(body: bytes) -> tuple[str, int, int, int] | None:
    """The (name, creation, counter, sent_ms) of an authenticated body, or None."""
    try:
        inner: Any = msgpack.unpackb(body)
    except Exception:  # authenticated but undecodable: a peer with a bug
        return None
    if type(inner) is not list or len(inner) != 6:
        return None
    magic, version, name, creation, counter, sent_ms = inner
    if magic != BEACON_MAGIC or version != BEACON_VERSION or type(name) is not str:
        return None
    for value, bits in ((creation, 32), (counter, 64), (sent_ms, 64)):
        if type(value) is not int or not 0 <= value < 1 << bits:
            return None
    return name, creation, counter, sent_ms
