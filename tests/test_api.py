"""The public API surface (trio-style export checks) and the purity of the protocol cores.

* ``fabric.__all__`` is sorted, has no duplicates, and every name in it exists.
* Every exception fabric defines, anywhere in the package, is exported from ``fabric``.
* Everything the foundation modules list in their ``__all__`` is exported from ``fabric``,
  except the names in ``NOT_EXPORTED`` (each with its reason).
* Every top-level module is classified below, so a new module forces a decision.
* ``Node``'s surface is pinned: every public method and attribute is listed below as
  API (sync or async), low-level object, or deprecated; a new one fails until it is
  listed (and documented in docs/API.md). The async rule is pinned the same way for the
  other public classes and functions: async exactly when it may wait for another node or
  another process.
* No module under ``fabric/protocol`` imports asyncio, zmq, time, logging or structlog:
  the cores are sans-I/O (time is an argument, logging is a ``Log`` effect).
"""

from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
import re
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

import fabric
import fabric.errors

PACKAGE = Path(fabric.__file__).parent
API_PAGE = Path(__file__).resolve().parent.parent / "docs" / "API.md"  # the checkout's

# The foundation modules: every name in their __all__ is public API.
FOUNDATION = ["config", "errors", "exports", "node", "process", "types"]

# Names the foundation modules define for fabric's own use, and why they stay unexported.
NOT_EXPORTED = {
    "config": {"load_cookie": "Node(cookie=None) resolves the cookie itself"},
    "exports": {"resolve_export": "used by the runtime to run remote spawns"},
    "process": {"NORMAL": "the exit reason is the plain string 'normal'",
                "exception_reason": "builds exit reasons inside the runtime"},
}

# Top-level modules whose export decisions belong to the subsystems' owners (their names
# exist and they declare __all__; completeness is not enforced here yet), and internals.
SUBSYSTEMS = ["application", "cache", "calls", "ddata", "dsupervisor", "dynamic_supervisor",
              "genserver", "global_", "logs", "loop", "pg", "registry", "rpc", "singleton",
              "supervisor", "sync", "timeouts", "workers"]
# The documented low-level interface for service authors (as trio.lowlevel).
LOWLEVEL = ["lowlevel"]
# Programs: the console (interactive node) and the `fabric` command.
PROGRAMS = ["cli", "console"]
INTERNAL = ["outbound"]  # and the package fabric.node (its objects)

# Known gaps, each a strict xfail so that fixing it forces updating this list.
MISSING: dict[tuple[str, str], str] = {}

# What a sans-I/O core must not import.
FORBIDDEN = {"asyncio", "zmq", "time", "logging", "structlog"}


def _top_level_modules() -> list[str]:
    return sorted(m.name for m in pkgutil.iter_modules([str(PACKAGE)])
                  if not m.ispkg and not m.name.startswith("_"))


def _all_modules() -> list[ModuleType]:
    return [importlib.import_module(m.name)
            for m in pkgutil.walk_packages(fabric.__path__, "fabric.")]


# -- fabric.__all__ --------------------------------------------------------------------------


def test_all_is_sorted_and_unique() -> None:
    assert fabric.__all__ == sorted(fabric.__all__)
    assert len(set(fabric.__all__)) == len(fabric.__all__)


def test_every_name_in_all_exists() -> None:
    missing = [n for n in fabric.__all__ if not hasattr(fabric, n)]
    assert missing == []


def test_star_import_gives_exactly_all() -> None:
    ns: dict[str, object] = {}
    exec("from fabric import *", ns)
    assert sorted(k for k in ns if k != "__builtins__") == sorted(fabric.__all__)


def test_every_error_is_exported() -> None:
    assert set(fabric.errors.__all__) <= set(fabric.__all__)
    for name in fabric.errors.__all__:
        assert getattr(fabric, name) is getattr(fabric.errors, name)


def test_errors_module_lists_every_error_it_defines() -> None:
    defined = {name for name, obj in vars(fabric.errors).items()
               if inspect.isclass(obj) and issubclass(obj, BaseException)
               and obj.__module__ == "fabric.errors"}
    assert defined == set(fabric.errors.__all__)


def test_every_exception_defined_anywhere_in_fabric_is_exported() -> None:
    unexported = []
    for mod in _all_modules():
        for name, obj in vars(mod).items():
            if (inspect.isclass(obj) and issubclass(obj, BaseException)
                    and obj.__module__ == mod.__name__ and not name.startswith("_")
                    and getattr(fabric, name, None) is not obj):
                unexported.append(f"{mod.__name__}.{name}")
    assert unexported == []


def test_errors_share_one_root() -> None:
    for name in fabric.errors.__all__:
        assert issubclass(getattr(fabric, name), fabric.FabricError), name


# -- completeness of the foundation modules --------------------------------------------------


def _foundation_names() -> list[tuple[str, str]]:
    pairs = []
    for module in FOUNDATION:
        mod = importlib.import_module(f"fabric.{module}")
        pairs += [(module, n) for n in mod.__all__ if n not in NOT_EXPORTED.get(module, {})]
    return pairs


def _param(module: str, name: str) -> object:
    reason = MISSING.get((module, name))
    marks = [pytest.mark.xfail(strict=True, reason=reason)] if reason else []
    return pytest.param(module, name, marks=marks, id=f"{module}.{name}")


@pytest.mark.parametrize("module, name", [_param(m, n) for m, n in _foundation_names()])
def test_foundation_name_is_exported(module: str, name: str) -> None:
    obj = getattr(importlib.import_module(f"fabric.{module}"), name)
    assert getattr(fabric, name, None) is obj, f"fabric.{module}.{name} is not in fabric"


def test_not_exported_names_exist_and_are_not_exported() -> None:
    for module, names in NOT_EXPORTED.items():
        mod = importlib.import_module(f"fabric.{module}")
        for name in names:
            assert name in mod.__all__, f"stale NOT_EXPORTED entry {module}.{name}"
            assert name not in fabric.__all__, f"{name} is exported: drop it from NOT_EXPORTED"


def test_every_top_level_module_is_classified() -> None:
    known = set(FOUNDATION) | set(SUBSYSTEMS) | set(INTERNAL) | set(PROGRAMS) | set(LOWLEVEL)
    unclassified = [m for m in _top_level_modules() if m not in known]
    assert unclassified == [], "classify these modules in tests/test_api.py"


@pytest.mark.parametrize("module", _top_level_modules())
def test_module_declares_all_and_every_name_exists(module: str) -> None:
    mod = importlib.import_module(f"fabric.{module}")
    assert isinstance(getattr(mod, "__all__", None), list), f"fabric.{module} has no __all__"
    assert [n for n in mod.__all__ if not hasattr(mod, n)] == []


# -- the Node's surface, pinned --------------------------------------------------------------

# Methods of the public API, by shape. Async exactly when the call may wait for another
# node or another process (docs/API.md, "The rule"); sync ones read local state or queue.
NODE_SYNC = {"nodes", "hidden_nodes", "disconnect", "learn", "last_connect_error",
             "get_cookie", "monitor_nodes", "make_ref", "is_local", "is_alive", "spawn",
             "new_mailbox", "close_mailbox", "register", "unregister", "whereis",
             "registered", "exit", "send", "send_after", "cancel_timer", "read_timer",
             "block", "unblock", "on_drain"}  # block/unblock: fault injection
NODE_ASYNC = {"start", "stop", "connect", "ping", "spawn_on", "send_wait"}
# Public attributes: identity, life cycle, configuration, the services every node runs.
NODE_ATTRIBUTES = {"name", "config", "creation", "started", "stopped", "loop", "log",
                   "metrics", "metrics_exporter", "pg", "global_", "discovery", "security",
                   "pub_port", "draining"}
# The node's objects: the documented low-level interface (ARCHITECTURE.md section 8,
# fabric.lowlevel), not the API promised to applications.
NODE_LOWLEVEL = {"mesh", "codec", "sockets", "channels", "signals", "services", "reactor",
                 "effects", "mailboxes", "processes", "refusals", "zap", "drain"}
# Old spellings kept for one release, each warning with its replacement (fabric.lowlevel).
NODE_DEPRECATED = {"add_service", "service", "on_topic", "on_effect", "expect",
                   "run_service", "ctx", "router", "pub", "sub", "hb_sub"}


def _node_instance_attributes() -> set[str]:
    """Public names ``Node``'s methods assign on ``self`` (read from the source, so the
    test needs no running node)."""
    tree = ast.parse((PACKAGE / "node" / "node.py").read_text(encoding="utf-8"))
    node_class = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Node")
    found = set()
    for sub in ast.walk(node_class):
        targets = (sub.targets if isinstance(sub, ast.Assign)
                   else [sub.target] if isinstance(sub, ast.AnnAssign) else [])
        for target in targets:
            for t in ast.walk(target):
                if (isinstance(t, ast.Attribute) and isinstance(t.value, ast.Name)
                        and t.value.id == "self" and not t.attr.startswith("_")):
                    found.add(t.attr)
    # Attributes declared in the class body and set by ``setattr`` (the standard services,
    # node.pg and node.global_, which the node creates without importing their facades).
    for stmt in node_class.body:
        if (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)
                and not stmt.target.id.startswith("_")):
            found.add(stmt.target.id)
    return found


def test_the_node_surface_is_exactly_what_is_listed() -> None:
    listed = NODE_SYNC | NODE_ASYNC | NODE_ATTRIBUTES | NODE_LOWLEVEL | NODE_DEPRECATED
    groups = [NODE_SYNC, NODE_ASYNC, NODE_ATTRIBUTES, NODE_LOWLEVEL, NODE_DEPRECATED]
    assert sum(map(len, groups)) == len(listed), "a name is listed twice"
    on_class = {n for n in dir(fabric.Node) if not n.startswith("_")}
    surface = on_class | _node_instance_attributes()
    assert sorted(surface - listed) == [], "new public names on Node: list them here"
    assert sorted(listed - surface) == [], "stale names in the lists"


def _named_in_api_page() -> set[str]:
    """Every identifier inside a code span of docs/API.md."""
    spans = re.findall(r"`([^`]*)`", API_PAGE.read_text(encoding="utf-8"))
    return set(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", " ".join(spans)))


def test_api_page_names_every_export_but_the_errors() -> None:
    """docs/API.md is the surface on one page; the errors have their reference page."""
    named = _named_in_api_page()
    exports = [n for n in fabric.__all__ if not (
        isinstance(getattr(fabric, n), type) and issubclass(getattr(fabric, n), BaseException))]
    assert [n for n in exports if n not in named] == []
    lowlevel = importlib.import_module("fabric.lowlevel")
    assert [n for n in lowlevel.__all__ if n not in named] == []


def test_api_page_names_every_public_name_of_node() -> None:
    listed = NODE_SYNC | NODE_ASYNC | NODE_ATTRIBUTES | NODE_LOWLEVEL | NODE_DEPRECATED
    assert sorted(listed - _named_in_api_page()) == []


def test_node_methods_are_async_exactly_when_listed() -> None:
    for name in NODE_SYNC | NODE_ASYNC:
        fn = getattr(fabric.Node, name)
        assert inspect.iscoroutinefunction(fn) == (name in NODE_ASYNC), name


def test_the_scanner_sees_attributes_assigned_in_start() -> None:
    assert {"name", "mesh", "pg", "loop"} <= _node_instance_attributes()


# The other public classes and functions: which are async (the rest are sync).
ASYNC_METHODS: dict[str, set[str]] = {
    "fabric.process:Process": {"receive", "send_wait"},
    "fabric.pg:Groups": set(),
    "fabric.global_:Global": {"register_name", "re_register_name", "unregister_name",
                              "call", "set_lock", "trans"},
    "fabric.registry:Registry": {"call"},
    "fabric.workers:Router": {"call"},
    "fabric.ddata:Replicator": {"update", "get", "delete"},
    "fabric.node:NodeMonitor": {"next"},
    "fabric.sync:SyncNode": set(),  # the blocking mirror: nothing to await
    "fabric.sync:SyncMailbox": set(),
    "fabric.genserver:GenServer": {"start", "init", "handle_call", "handle_cast",
                                   "handle_info", "terminate"},
    "fabric.supervisor:Supervisor": {"start", "which_children", "terminate_child",
                                     "restart_child", "start_child", "delete_child"},
}
ASYNC_FUNCTIONS: dict[str, set[str]] = {
    "fabric.calls": {"call", "stop"},
    "fabric.rpc": {"call", "multicall", "worker"},
}


@pytest.mark.parametrize("where", sorted(ASYNC_METHODS))
def test_public_methods_are_async_exactly_when_listed(where: str) -> None:
    module, name = where.split(":")
    cls = getattr(importlib.import_module(module), name)
    found = {n for n, fn in inspect.getmembers(cls, inspect.isfunction)
             if not n.startswith("_") and inspect.iscoroutinefunction(fn)}
    found |= {n for n, fn in vars(cls).items()
              if isinstance(fn, (classmethod, staticmethod))
              and inspect.iscoroutinefunction(fn.__func__)}
    assert found == ASYNC_METHODS[where]


@pytest.mark.parametrize("module", sorted(ASYNC_FUNCTIONS))
def test_public_functions_are_async_exactly_when_listed(module: str) -> None:
    mod = importlib.import_module(module)
    found = {n for n in mod.__all__ if inspect.iscoroutinefunction(getattr(mod, n))}
    assert found == ASYNC_FUNCTIONS[module]


# -- the protocol cores are sans-I/O ---------------------------------------------------------


def imported_roots(source: str) -> set[str]:
    """Top-level package names a module imports (absolute imports, any nesting)."""
    roots: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
        elif (isinstance(node, ast.Call) and node.args
              and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)
              and ((isinstance(node.func, ast.Name) and node.func.id == "__import__")
                   or (isinstance(node.func, ast.Attribute)
                       and node.func.attr == "import_module"))):
            roots.add(node.args[0].value.split(".")[0])
    return roots


PROTOCOL_FILES = sorted((PACKAGE / "protocol").rglob("*.py"))


def test_there_are_protocol_modules_to_check() -> None:
    names = {p.name for p in PROTOCOL_FILES}
    assert {"codec.py", "handshake.py", "mesh.py", "detector.py", "effects.py",
            "messages.py", "processes.py"} <= names


@pytest.mark.parametrize("path", PROTOCOL_FILES, ids=lambda p: p.name)
def test_protocol_module_imports_no_io(path: Path) -> None:
    bad = imported_roots(path.read_text(encoding="utf-8")) & FORBIDDEN
    assert bad == set(), f"{path.relative_to(PACKAGE.parent)} imports {sorted(bad)}"


@pytest.mark.parametrize("source, found", [
    ("import asyncio", {"asyncio"}),
    ("import zmq.asyncio as z", {"zmq"}),
    ("from time import monotonic", {"time"}),
    ("def f():\n    import logging\n", {"logging"}),
    ("if True:\n    from structlog import get_logger\n", {"structlog"}),
    ("__import__('time')", {"time"}),
    ("importlib.import_module('zmq.utils')", {"zmq"}),
    ("from . import time", set()),  # a sibling module of that name is fine
    ("from fabric.protocol import codec", {"fabric"}),
    ("timeout = 1", set()),
])
def test_import_scanner_finds_what_it_must(source: str, found: set[str]) -> None:
    assert imported_roots(source) & (FORBIDDEN | {"fabric", "importlib"}) == found


# -- timeout defaults ------------------------------------------------------------------------

# docs/API.md, "Timeouts": one default per kind of wait. A ``timeout`` parameter of the
# public surface defaults to CALL_TIMEOUT, CLUSTER_TIMEOUT or None, or is listed here (and
# in that table) with its own reason.
OWN_TIMEOUT_DEFAULTS = {
    "dsupervisor.DistributedSupervisor.start_child": 10.0,  # a start, then every member's ack
    "dsupervisor.DistributedSupervisor.terminate_child": 10.0,  # a stop within its shutdown
    "singleton.Singleton.stop": 10.0,  # a hand-over to the next candidate
}


def _timeout_defaults() -> dict[str, Any]:
    found: dict[str, Any] = {}
    seen: set[int] = set()

    def scan(where: str, fn: Any) -> None:
        try:
            parameters = inspect.signature(fn).parameters
        except (TypeError, ValueError):
            return
        if "timeout" in parameters:
            found[where] = parameters["timeout"].default

    for module in [*FOUNDATION, *SUBSYSTEMS]:
        mod = importlib.import_module(f"fabric.{module}")
        for name in mod.__all__:
            obj = getattr(mod, name)
            if id(obj) in seen:
                continue
            seen.add(id(obj))
            if inspect.isclass(obj):
                for attr, value in vars(obj).items():
                    if not attr.startswith("_"):
                        scan(f"{module}.{name}.{attr}", getattr(value, "__func__", value))
            elif callable(obj):
                scan(f"{module}.{name}", obj)
    return found


def test_timeout_defaults_are_the_documented_kinds() -> None:
    from fabric.timeouts import CALL_TIMEOUT, CLUSTER_TIMEOUT

    defaults = _timeout_defaults()
    assert "calls.call" in defaults and "node.Node.ping" in defaults  # the scan sees them
    own = {where: default for where, default in defaults.items()
           if default not in (CALL_TIMEOUT, CLUSTER_TIMEOUT, None, inspect.Parameter.empty)}
    assert own == OWN_TIMEOUT_DEFAULTS
