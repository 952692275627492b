"""fabric: Erlang/OTP-grade distribution for Python, over ZeroMQ.

Named nodes that form a full mesh, processes with mailboxes addressed the same way on any
node, monitors and links across nodes, and the tools built on them. See README.md.
"""

from fabric import rpc
from fabric.config import NodeConfig
from fabric.dsupervisor import DistributedChildSpec, DistributedSupervisor
from fabric.dynamic_supervisor import DynamicSupervisor
from fabric.errors import (
    AuthenticationError,
    BackpressureError,
    CallTimeout,
    ConfigError,
    ConsistencyError,
    FabricError,
    FabricTimeout,
    LocalProtocolError,
    MailboxFullError,
    NameConflictError,
    NodeDownError,
    NotExportedError,
    OutcomeUnknown,
    ProcessDeadError,
    ProtocolError,
    ReceiveTimeout,
    RemoteError,
    RemoteProtocolError,
    SpawnTimeout,
)
from fabric.exports import export
from fabric.genserver import NOREPLY, From, GenServer, call, cast, reply
from fabric.node import Node, NodeDown, NodeMonitor, NodeUp
from fabric.process import Down, Exit, Process, ProcessExit
from fabric.registry import Registry
from fabric.supervisor import ChildSpec, Supervisor
from fabric.sync import SyncMailbox, SyncNode
from fabric.types import GlobalName, NodeName, Pid, Ref, parse_node_name
from fabric.workers import Router

__all__ = [
    "AuthenticationError",
    "BackpressureError",
    "CallTimeout",
    "ChildSpec",
    "ConfigError",
    "ConsistencyError",
    "DistributedChildSpec",
    "DistributedSupervisor",
    "Down",
    "DynamicSupervisor",
    "Exit",
    "FabricError",
    "FabricTimeout",
    "From",
    "GenServer",
    "GlobalName",
    "LocalProtocolError",
    "MailboxFullError",
    "NOREPLY",
    "NameConflictError",
    "Node",
    "NodeConfig",
    "NodeDown",
    "NodeDownError",
    "NodeMonitor",
    "NodeName",
    "NodeUp",
    "NotExportedError",
    "OutcomeUnknown",
    "Pid",
    "Process",
    "ProcessDeadError",
    "ProcessExit",
    "ProtocolError",
    "ReceiveTimeout",
    "Ref",
    "Registry",
    "RemoteError",
    "RemoteProtocolError",
    "Router",
    "SpawnTimeout",
    "Supervisor",
    "SyncMailbox",
    "SyncNode",
    "call",
    "cast",
    "export",
    "parse_node_name",
    "reply",
    "rpc",
]
