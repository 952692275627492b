"""Anti-entropy between two owners of a cache: a digest of the copies they share.

Theory of operation
-------------------
When an owner change settles at a node (see :mod:`fabric.protocol.cache`), the node
checks, with every other live owner, that they hold the same copies of the keys they
both own. Hand-off alone cannot promise it: the owner that keeps a moving key stands by
for its sender only until the change settles *here*, so a sender whose hand-off outlasts
``handoff_grace`` and then dies would leave the key's new owner without it.

* **A digest per peer.** :func:`shared_copies` lists, for one peer, the keys this node
  holds that both co-own, with their versions (tombstones included: a delete must reach
  both). :func:`digest` folds them into ``(XOR of a 64-bit hash of each (key, version),
  count)``: order-free, and two nodes holding the same copies get the same pair. One
  message per peer per settle when nothing differs.
* **On a mismatch, a key list.** The peer that received a digest unlike its own answers
  with its shared ``(key, version)`` list (in chunks); the digest's sender then sends,
  through the ordinary hand-off batches, every copy the peer lacks or holds older
  (:func:`lacking`). Each side sends its own digest when its change settles, so copies
  missing on either side are found by the side that has them.

The cost is a pass over the store per settle (as the hand-off plan already makes), and a
key list only between owners whose copies differ.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from hashlib import blake2b
from typing import Any

from fabric.protocol.cache_placement import Placement
from fabric.protocol.cache_store import Version
from fabric.protocol.hashring import key_bytes

__all__ = ["digest", "lacking", "shared_copies"]

_PERSON = b"fabric.cachedig"


def shared_copies(me: str, placement: Placement, held: Iterable[tuple[Any, Version]]
                  ) -> dict[str, dict[Any, Version]]:
    """Per other owner, the copies among ``held`` (key, version) that both co-own."""
    shared: dict[str, dict[Any, Version]] = {}
    for key, version in held:
        owners = placement.owners(key)
        if me in owners:
            for owner in owners:
                if owner != me:
                    shared.setdefault(owner, {})[key] = version
    return shared


def digest(copies: Mapping[Any, Version]) -> tuple[int, int]:
    """``(XOR of the copies' 64-bit hashes, count)``: equal for equal sets of copies."""
    folded = 0
    for key, (counter, node) in copies.items():
        data = b"%s\0%d\0%s" % (key_bytes(key), counter, node.encode())
        folded ^= int.from_bytes(blake2b(data, digest_size=8, person=_PERSON).digest(), "big")
    return folded, len(copies)


def lacking(mine: Mapping[Any, Version], theirs: Mapping[Any, Version]) -> list[Any]:
    """The keys of ``mine`` that ``theirs`` lacks or holds with an older version."""
    return [key for key, version in mine.items()
            if key not in theirs or theirs[key] < version]
