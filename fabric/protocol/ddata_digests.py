"""Digests of the replicator's keys, for anti-entropy: one per key, one per bucket of keys.

Theory of operation
-------------------
Two replicas compare their keys in two steps (see :mod:`fabric.protocol.replicator`):
first one 8-byte digest per *bucket* (a key's bucket is a hash of its name modulo the
bucket count, so both sides bucket alike), then, for the buckets that differ, one 12-byte
digest per key. A key's digest is BLAKE2b of its state's canonical wire form (equal states
encode to equal bytes, :func:`fabric.protocol.crdt.dump`); a deleted key has a fixed
digest. Key digests and name hashes are cached: the replicator calls :meth:`forget` when a
key changes, so a round costs hashing only what changed since the last one, plus one pass
over the names.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from typing import Any, Final

from fabric.errors import RemoteProtocolError
from fabric.protocol.codec import Codec

__all__ = ["DELETED_DIGEST", "MAX_BUCKETS", "KeyDigests"]

DELETED_DIGEST: Final = b"\x00deleted"
MAX_BUCKETS: Final = 65536
_KEYS_PER_BUCKET: Final = 8


class KeyDigests:
    """Cached digests of keys.

    Args:
        state_of: ``state_of(name)`` is the key's dump form, or None if it is deleted.
    """

    def __init__(self, state_of: Callable[[str], Any]) -> None:
        self._state_of = state_of
        self._digests: dict[str, bytes] = {}
        self._name_hashes: dict[str, int] = {}
        self._codec = Codec()

    def forget(self, name: str) -> None:
        """``name``'s state changed: its digest is computed afresh when next asked."""
        self._digests.pop(name, None)

    def of(self, name: str) -> bytes:
        digest = self._digests.get(name)
        if digest is None:
            digest = self.of_state(self._state_of(name))
            self._digests[name] = digest
        return digest

    def of_state(self, state: Any) -> bytes:
        """The digest of a dump form (None: deleted)."""
        if state is None:
            return DELETED_DIGEST
        return hashlib.blake2b(self._codec.encode(state), digest_size=12).digest()

    @staticmethod
    def bucket_count(keys: int) -> int:
        """Buckets for ``keys`` keys: about 8 per bucket, a power of two from 16 to
        65536, so bucket digests cost ~1 byte per key and a differing bucket ~8 key
        digests."""
        count = 16
        while count < MAX_BUCKETS and count * _KEYS_PER_BUCKET < keys:
            count *= 2
        return count

    def by_bucket(self, names: Iterable[str], count: int,
                  only: set[int] | None = None) -> dict[int, list[str]]:
        """``names`` grouped by bucket (only the buckets in ``only``, if given)."""
        buckets: dict[int, list[str]] = {}
        for name in names:
            b = self._hash_of(name) % count
            if only is None or b in only:
                buckets.setdefault(b, []).append(name)
        return buckets

    def bucket_digests(self, names: Iterable[str], count: int) -> bytes:
        """One 8-byte digest per bucket (zeros for an empty one), concatenated."""
        out = bytearray(8 * count)
        for b, members in self.by_bucket(names, count).items():
            h = hashlib.blake2b(digest_size=8)
            for name in sorted(members):
                h.update(name.encode() + b"\x00" + self.of(name))
            out[8 * b:8 * b + 8] = h.digest()
        return bytes(out)

    def differing_buckets(self, names: Iterable[str], count: Any, theirs: Any) -> list[int]:
        """The buckets whose digests differ from a peer's ``theirs``.

        Raises:
            RemoteProtocolError: ``count`` or ``theirs`` is malformed.
        """
        check_count(count)
        if not isinstance(theirs, bytes) or len(theirs) != 8 * count:
            raise RemoteProtocolError("bad ddata bucket digests")
        mine = self.bucket_digests(names, count)
        return [b for b in range(count) if mine[8 * b:8 * b + 8] != theirs[8 * b:8 * b + 8]]

    def _hash_of(self, name: str) -> int:
        h = self._name_hashes.get(name)
        if h is None:
            h = int.from_bytes(hashlib.blake2b(name.encode(), digest_size=4).digest(), "big")
            self._name_hashes[name] = h
        return h


def check_count(count: Any) -> None:
    """Raise RemoteProtocolError unless ``count`` is a valid bucket count."""
    if type(count) is not int or not 1 <= count <= MAX_BUCKETS:
        raise RemoteProtocolError("bad ddata bucket count")
