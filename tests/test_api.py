"""The public API surface (trio-style export checks) and the purity of the protocol cores.

* ``fabric.__all__`` is sorted, has no duplicates, and every name in it exists.
* Every exception fabric defines, anywhere in the package, is exported from ``fabric``.
* Everything the foundation modules list in their ``__all__`` is exported from ``fabric``,
  except the names in ``NOT_EXPORTED`` (each with its reason).
* Every top-level module is classified below, so a new module forces a decision.
* No module under ``fabric/protocol`` imports asyncio, zmq, time, logging or structlog:
  the cores are sans-I/O (time is an argument, logging is a ``Log`` effect).
"""

from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
from pathlib import Path
from types import ModuleType

import pytest

import fabric
import fabric.errors

PACKAGE = Path(fabric.__file__).parent

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
SUBSYSTEMS = ["application", "calls", "ddata", "dsupervisor", "dynamic_supervisor",
              "genserver", "global_", "logs", "pg", "registry", "rpc", "supervisor", "sync",
              "workers"]
# Programs: the console (interactive node) and the `fabric` command.
PROGRAMS = ["cli", "console"]
INTERNAL = ["outbound", "timeouts"]  # and the package fabric.node (its objects)

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
    known = set(FOUNDATION) | set(SUBSYSTEMS) | set(INTERNAL) | set(PROGRAMS)
    unclassified = [m for m in _top_level_modules() if m not in known]
    assert unclassified == [], "classify these modules in tests/test_api.py"


@pytest.mark.parametrize("module", _top_level_modules())
def test_module_declares_all_and_every_name_exists(module: str) -> None:
    mod = importlib.import_module(f"fabric.{module}")
    assert isinstance(getattr(mod, "__all__", None), list), f"fabric.{module} has no __all__"
    assert [n for n in mod.__all__ if not hasattr(mod, n)] == []


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
