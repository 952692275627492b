"""The data plane's message kinds, declared in one place (as zyre declares its wire).

Theory of operation
-------------------
Once a session is up, every frame a node sends to a peer over its DEALER is a *batch*: a
msgpack array of messages, each an array ``[kind, field...]``. Batching is how fabric pays
the per-frame cost (syscalls, ZeroMQ queueing, one decode call) once for many messages.
Messages from one node to another travel in one ordered stream, so messages from one
process to another arrive in the order sent.

Heartbeats and group broadcasts travel separately on the PUB/SUB plane: a two-frame
message ``[topic, payload]`` where ``payload`` is msgpack.
"""

from __future__ import annotations

from typing import Any, Final

import msgpack  # type: ignore[import-untyped,unused-ignore]

__all__ = [
    "CALL_TAG",
    "HEARTBEAT_TOPIC",
    "PG_TOPIC_PREFIX",
    "K_CALL",
    "K_CTRL",
    "K_GOODBYE",
    "K_GOODBYE_ACK",
    "K_PEERS",
    "K_PING",
    "K_PONG",
    "K_REG_SEND",
    "K_REPLY",
    "K_SEND",
    "K_SEND_TUPLE",
    "K_SERVICE",
    "MESH_KINDS",
    "REPLY_TAG",
    "STOP_TAG",
    "decode_heartbeat",
    "encode_heartbeat",
]

# Process traffic (handled by the process layer).
K_SEND: Final = 1  # [1, to_pid, message]
# [5, to_pid, item...]: a message that is a tuple, flattened into the envelope. Tuples are
# the common message shape and a nested tuple costs an ext encode and decode per message.
K_SEND_TUPLE: Final = 5
K_REG_SEND: Final = 2  # [2, to_name, message]
K_SERVICE: Final = 3  # [3, service_name, payload]  (pg, global, ...)
K_CTRL: Final = 4  # [4, op, args...]  links, monitors, exits, spawn (see fabric.process)
# [6, to_pid_or_name, creation, caller_id, ref_id, request]: a GenServer call in one
# message. The caller and its monitor ref live on the sending node, so they travel as
# integers (node: the sender; creation: its run) instead of two pid/ref exts. The
# receiving node installs the caller's monitor on the target and delivers
# (CALL_TAG, (caller_pid, ref), request) to it, as a "mon" control op followed by a send
# would, at the cost of one small message instead of two with nested tuples.
K_CALL: Final = 6
# [7, creation, pid_id, ref_id, ok, value, released]: a call's reply to a process of the
# receiving node: (REPLY_TAG, ref, ok, value, released) with the pid and ref rebuilt from
# the receiver's own name (a reply to another creation reaches nothing).
K_REPLY: Final = 7

# The first item of the tuples GenServer calls and replies travel as (fabric.calls).
CALL_TAG: Final = "$call"
REPLY_TAG: Final = "$reply"
# A GenServer stop request ("$stop", reason) (fabric.calls.STOP): like a reply, never
# refused by a mailbox's bound (fabric.protocol.flow.is_system).
STOP_TAG: Final = "$stop"

# Mesh control (handled by the mesh core).
K_PEERS: Final = 10  # [10, [full node names]]  transitive connect
K_GOODBYE: Final = 11  # [11, reason]  the sender is stopping gracefully
K_GOODBYE_ACK: Final = 12  # [12]  everything before this was processed
K_PING: Final = 13  # [13, token]
K_PONG: Final = 14  # [14, token]

MESH_KINDS: Final = frozenset({K_PEERS, K_GOODBYE, K_GOODBYE_ACK, K_PING, K_PONG})

# Topics on the PUB/SUB plane. Topics are prefix-matched by ZeroMQ, so every topic
# starts with a distinct type byte and ends with a terminator.
# Heartbeat: the payload is [name: str, creation: int] (msgpack, see encode_heartbeat):
# "this run of this node is alive". Sent every heartbeat_interval on the PUB; any data
# frame from a peer counts as well.
HEARTBEAT_TOPIC: Final = b"h\x00"

# Group broadcasts: the topic is this prefix followed by the scope and the group
# (fabric.protocol.pg builds the rest); a node subscribes per group it has members of.
PG_TOPIC_PREFIX: Final = b"g\x00"


def encode_heartbeat(name: str, creation: int) -> bytes:
    """The payload of a heartbeat on :data:`HEARTBEAT_TOPIC`."""
    data: bytes = msgpack.packb([name, creation])
    return data


def decode_heartbeat(data: bytes) -> tuple[str, int]:
    """``(name, creation)`` of a heartbeat payload.

    Raises:
        ValueError: the payload is not a heartbeat (any decoding error is turned into this).
    """
    try:
        value: Any = msgpack.unpackb(data)
    except Exception as exc:
        raise ValueError(f"undecodable heartbeat: {exc}") from None
    if (type(value) is not list or len(value) != 2 or type(value[0]) is not str
            or type(value[1]) is not int):
        raise ValueError("a heartbeat is [name, creation]")
    return value[0], value[1]
