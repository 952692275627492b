"""fabric: Erlang/OTP-grade distribution for Python, over ZeroMQ.

Named nodes that form a full mesh, processes with mailboxes addressed the same way on any
node, monitors and links across nodes, and the tools built on them. See README.md.
"""

# Registered when imported (D26): the services every node runs, node.pg and
# node.global_ (the node never imports them), and the check of NodeConfig.discovery
# (fabric.config never imports discovery).
import fabric.discovery.config  # noqa: F401
import fabric.global_  # noqa: F401
import fabric.pg  # noqa: F401
from fabric import rpc
from fabric.config import NodeConfig
from fabric.dsupervisor import DistributedChildSpec, DistributedSupervisor
from fabric.dynamic_supervisor import DynamicSupervisor
from fabric.errors import (
    AuthenticationError,
    BackpressureError,
    CacheError,
    CacheUnavailableError,
    CacheValueError,
    CallTimeout,
    ConfigError,
    ConsistencyError,
    FabricError,
    FabricTimeout,
    LocalProtocolError,
    MailboxFullError,
    NameConflictError,
    NodeDownError,
    NodeDrainingError,
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
from fabric.protocol.events import (
    DataChanged,
    DataDeleted,
    GlobalNameConflict,
    LeaderElected,
    LeaderLost,
    PgJoin,
    PgLeave,
)
from fabric.protocol.singleton import SplitBrainPolicy
from fabric.registry import Registry
from fabric.singleton import Singleton, SingletonServer
from fabric.supervisor import ChildSpec, Supervisor
from fabric.sync import SyncMailbox, SyncNode
from fabric.types import Answer, GlobalName, NodeName, Pid, Ref, parse_node_name
from fabric.workers import Router

__all__ = [
    "Answer",
    "AuthenticationError",
    "BackpressureError",
    "CacheError",
    "CacheUnavailableError",
    "CacheValueError",
    "CallTimeout",
    "ChildSpec",
    "ConfigError",
    "ConsistencyError",
    "DataChanged",
    "DataDeleted",
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
    "GlobalNameConflict",
    "LeaderElected",
    "LeaderLost",
    "LocalProtocolError",
    "MailboxFullError",
    "NOREPLY",
    "NameConflictError",
    "Node",
    "NodeConfig",
    "NodeDown",
    "NodeDownError",
    "NodeDrainingError",
    "NodeMonitor",
    "NodeName",
    "NodeUp",
    "NotExportedError",
    "OutcomeUnknown",
    "PgJoin",
    "PgLeave",
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
    "Singleton",
    "SingletonServer",
    "SpawnTimeout",
    "SplitBrainPolicy",
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
