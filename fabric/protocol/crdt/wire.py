"""Bytes on the wire for CRDT values: fabric's msgpack codec around :func:`dump`.

Theory of operation
-------------------
:func:`to_bytes` packs ``[tag, data]`` (see :mod:`fabric.protocol.crdt.base`) with the
same codec as every fabric frame, so tuples stay tuples (set elements and map keys may be
tuples) and pids and refs may be elements; nothing is pickled. :func:`from_bytes` refuses
anything malformed with ``RemoteProtocolError``. The replicator does not call these: its
messages embed :func:`dump`'s plain form and the node's codec packs the whole message.
"""

from __future__ import annotations

from fabric.protocol.codec import Codec
from fabric.protocol.crdt.base import Crdt, dump, load

__all__ = ["from_bytes", "to_bytes"]

_codec = Codec()


def to_bytes(value: Crdt) -> bytes:
    """The msgpack bytes of ``value``'s state (its pending delta excluded)."""
    return _codec.encode(dump(value))


def from_bytes(data: bytes) -> Crdt:
    """Inverse of :func:`to_bytes`.

    Raises:
        RemoteProtocolError: malformed bytes or CRDT.
    """
    return load(_codec.decode(data))
