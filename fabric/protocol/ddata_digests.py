"""Digests of the replicator's keys, for anti-entropy: a Merkle-style tree over key names.

Theory of operation
-------------------
Anti-entropy must find the keys two replicas disagree on at a cost that grows with the
number of differing keys, not the number of keys. Each key has a *key digest*: BLAKE2b
of its state's canonical wire form (equal states encode to equal bytes,
:func:`fabric.protocol.crdt.dump`), or a fixed digest for a deleted key. Each key also has
a 64-bit *leaf hash* of its name and key digest, and a 32-bit *position*: a hash of its
name alone, so both replicas place a key alike.

The positions are cut into a tree of fan-out 16 (:data:`FANOUT_BITS` bits per level):
the node ``(depth, prefix)`` holds every key whose position starts with the
``4 * depth`` bits ``prefix``; the root is ``(0, 0)``; the deepest level is
:data:`MAX_DEPTH`. A node's digest is the XOR of its keys' leaf hashes, kept with its key
count, so a changed key costs one update per level (``MAX_DEPTH + 1`` XORs), done lazily
(:meth:`DigestTree.forget` marks the key; the next question refreshes every marked key).
XOR is a sound set digest here: names are unique within a tree and the peers are
authenticated, so no one chooses names to collide; two different key sets get equal
64-bit digests with probability 2^-64.

A comparison walks down from the root and only into nodes whose digests differ
(:meth:`DigestTree.compare`): for each differing node it either *expands* (the next
message carries its children's digests, at most 16 rows) or, once the node holds few
keys on either side (:data:`LEAF_KEYS`) or is at the deepest level, *lists* its keys with
their key digests. Equal replicas cost one root digest per round; ``d`` differing keys
among ``n`` cost about ``d * 16 * log16(n / d)`` node rows plus the ``d`` keys' listings,
in ``log16(n)`` round trips. The replicator carries the rows in its ``digest`` and
``keys`` messages (see :mod:`fabric.protocol.replicator`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from typing import Any, Final

from fabric.errors import RemoteProtocolError
from fabric.protocol.codec import Codec

__all__ = ["DELETED_DIGEST", "FANOUT_BITS", "LEAF_KEYS", "MAX_DEPTH", "DigestTree"]

DELETED_DIGEST: Final = b"\x00deleted"
FANOUT_BITS: Final = 4  # 16 children per node
MAX_DEPTH: Final = 5  # 16**5 = 1M leaf nodes: a few keys each up to millions of keys
LEAF_KEYS: Final = 16  # a differing node with at most this many keys on each side is listed
_POSITION_BITS: Final = 32
_FANOUT: Final = 1 << FANOUT_BITS

NodeRow = list[int]  # [prefix, digest, count]


class DigestTree:
    """Key digests and the digest tree over them (see the module docstring).

    Args:
        state_of: ``state_of(name)`` is the key's dump form, or None if it is deleted.
            Every name ever passed to :meth:`forget` must stay answerable (the replicator
            never forgets a key: a deleted one keeps its tombstone).
    """

    def __init__(self, state_of: Callable[[str], Any]) -> None:
        self._state_of = state_of
        self._digests: dict[str, bytes] = {}  # name -> key digest (cached)
        self._leaves: dict[str, int] = {}  # name -> its leaf hash, as counted in the tree
        self._positions: dict[str, int] = {}
        self._dirty: set[str] = set()
        # depth -> prefix -> [digest, count]; only non-empty nodes are present.
        self._nodes: list[dict[int, list[int]]] = [{} for _ in range(MAX_DEPTH + 1)]
        self._names_at: dict[int, set[str]] = {}  # deepest-level prefix -> its names
        self._codec = Codec()

    # -- keeping it current ---------------------------------------------------------------

    def forget(self, name: str) -> None:
        """``name``'s state changed (or it is new): refreshed when next asked."""
        self._digests.pop(name, None)
        self._dirty.add(name)

    def of(self, name: str) -> bytes:
        """The key digest of ``name``."""
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

    def _refresh(self) -> None:
        dirty, self._dirty = self._dirty, set()
        for name in dirty:
            leaf = int.from_bytes(hashlib.blake2b(
                name.encode() + b"\x00" + self.of(name), digest_size=8).digest(), "big")
            old = self._leaves.get(name)
            if old == leaf:
                continue
            self._leaves[name] = leaf
            position = self.position(name)
            change = leaf if old is None else leaf ^ old
            for depth in range(MAX_DEPTH + 1):
                node = self._nodes[depth].setdefault(_prefix(position, depth), [0, 0])
                node[0] ^= change
                if old is None:
                    node[1] += 1
            if old is None:
                self._names_at.setdefault(_prefix(position, MAX_DEPTH), set()).add(name)

    def position(self, name: str) -> int:
        """The key's 32-bit place in the tree (a hash of its name only)."""
        p = self._positions.get(name)
        if p is None:
            p = int.from_bytes(hashlib.blake2b(name.encode(), digest_size=4).digest(), "big")
            self._positions[name] = p
        return p

    # -- the comparison -------------------------------------------------------------------

    def root(self) -> list[NodeRow]:
        """The rows a comparison starts with: the root, if there is any key."""
        self._refresh()
        node = self._nodes[0].get(0)
        return [] if node is None else [[0, node[0], node[1]]]

    def children(self, depth: int, parents: Iterable[int]) -> list[NodeRow]:
        """The non-empty children (at ``depth + 1``) of the nodes ``parents`` at ``depth``."""
        self._refresh()
        level = self._nodes[depth + 1]
        rows: list[NodeRow] = []
        for parent in parents:
            for child in range(parent << FANOUT_BITS, (parent + 1) << FANOUT_BITS):
                node = level.get(child)
                if node is not None:
                    rows.append([child, node[0], node[1]])
        return rows

    def compare(self, depth: Any, parents: Any, rows: Any) -> tuple[list[int], list[int]]:
        """Compare a peer's nodes with ours: ``(expand, listed)``, the differing nodes at
        ``depth`` to descend into and those whose keys are to be listed.

        ``rows`` are the peer's non-empty nodes at ``depth``: the root (``depth`` 0,
        ``parents`` empty) or every non-empty child of the nodes ``parents`` (at
        ``depth - 1``); a node of ours under those parents that the peer did not list is
        empty on its side.

        Raises:
            RemoteProtocolError: a malformed depth, prefix or row.
        """
        if type(depth) is not int or not 0 <= depth <= MAX_DEPTH:
            raise RemoteProtocolError("bad ddata digest depth")
        if not isinstance(parents, list) or not isinstance(rows, list):
            raise RemoteProtocolError("bad ddata digest rows")
        theirs: dict[int, tuple[int, int]] = {}
        for row in rows:
            if not (isinstance(row, list) and len(row) == 3
                    and all(type(x) is int for x in row)):
                raise RemoteProtocolError("bad ddata digest row")
            theirs[row[0]] = (row[1], row[2])
        self._refresh()
        mine = {0: self._nodes[0][0]} if depth == 0 and 0 in self._nodes[0] else {}
        if depth > 0:
            _check_prefixes(depth - 1, parents)
            mine = {row[0]: self._nodes[depth][row[0]] for row in self.children(depth - 1,
                                                                                parents)}
        _check_prefixes(depth, theirs)
        expand: list[int] = []
        listed: list[int] = []
        for prefix in sorted(set(mine) | set(theirs)):
            my_digest, my_count = mine.get(prefix, (0, 0))
            their_digest, their_count = theirs.get(prefix, (0, 0))
            if my_digest == their_digest and my_count == their_count:
                continue
            if depth == MAX_DEPTH or max(my_count, their_count) <= LEAF_KEYS:
                listed.append(prefix)
            else:
                expand.append(prefix)
        return expand, listed

    def names_under(self, depth: Any, prefixes: Any) -> list[str]:
        """Our keys in the nodes ``prefixes`` at ``depth``.

        Raises:
            RemoteProtocolError: a malformed depth or prefix.
        """
        if type(depth) is not int or not 0 <= depth <= MAX_DEPTH:
            raise RemoteProtocolError("bad ddata digest depth")
        _check_prefixes(depth, prefixes)
        self._refresh()
        names: list[str] = []
        stack = [(depth, p) for p in prefixes if p in self._nodes[depth]]
        while stack:  # bounded: only non-empty nodes, each visited once
            d, prefix = stack.pop()
            if d == MAX_DEPTH:
                names.extend(self._names_at.get(prefix, ()))
                continue
            level = self._nodes[d + 1]
            stack.extend((d + 1, child)
                         for child in range(prefix << FANOUT_BITS, (prefix + 1) << FANOUT_BITS)
                         if child in level)
        return sorted(names)


def _prefix(position: int, depth: int) -> int:
    return position >> (_POSITION_BITS - FANOUT_BITS * depth)


def _check_prefixes(depth: int, prefixes: Iterable[Any]) -> None:
    limit = _FANOUT ** depth
    if not isinstance(prefixes, (list, dict)) or not all(
            type(p) is int and 0 <= p < limit for p in prefixes):
        raise RemoteProtocolError("bad ddata digest prefix")
