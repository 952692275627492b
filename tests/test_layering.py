"""The node's package boundary: code outside ``fabric/node/`` uses only public names.

The node is composed of objects (``fabric/node/``: channels, process table, signals,
service host, reactor, effect executor, metrics). Their underscore names are theirs: the
rest of fabric, the tests and the benchmarks go through the public API of ``Node`` and
the documented low-level interface of its objects (ARCHITECTURE.md, "Low-level
interface"). This test parses every module outside the package and fails on an attribute
access ``x._name`` (``x`` not ``self`` or ``cls``) where ``_name`` is a private name the
package defines; and it checks that the old mixin modules are gone.
"""

from __future__ import annotations

import ast
from pathlib import Path

import fabric

PACKAGE = Path(fabric.__file__).parent
# The checkout (tests, bench, nodes): not PACKAGE.parent, which is site-packages when tox
# tests the installed fabric.
ROOT = Path(__file__).resolve().parent.parent
NODE_PACKAGE = PACKAGE / "node"


def _private_names_defined(path: Path) -> set[str]:
    """Underscore names a module defines on its classes: methods and ``self._x = ...``."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            name = node.name
            if name.startswith("_") and not name.startswith("__"):
                names.add(name)
        elif (isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store)
              and isinstance(node.value, ast.Name) and node.value.id == "self"
              and node.attr.startswith("_") and not node.attr.startswith("__")):
            names.add(node.attr)
    return names


NODE_PRIVATE = set().union(*(_private_names_defined(p) for p in NODE_PACKAGE.glob("*.py")))


def _private_uses(path: Path, private: set[str]) -> list[str]:
    """``line: expr`` for each ``x._name`` with ``_name`` in ``private`` and ``x`` not
    ``self``/``cls``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = []
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and node.attr in private
                and not (isinstance(node.value, ast.Name)
                         and node.value.id in ("self", "cls"))):
            found.append(f"{node.lineno}: {ast.unparse(node)}")
    return found


def _outside_files() -> list[Path]:
    # The protocol cores are left out: they cannot reach a node at all (test_api checks
    # that they import no runtime module), and their own underscore names may share a
    # spelling with the node package's (``_names``, ``_ctx``).
    protocol = PACKAGE / "protocol"
    files = [p for p in PACKAGE.rglob("*.py")
             if NODE_PACKAGE not in p.parents and protocol not in p.parents]
    for folder in ("tests", "bench", "nodes"):
        found = sorted((ROOT / folder).rglob("*.py"))
        assert found, f"no {folder}/ beside the tests: the scan would prove nothing"
        files += found
    return files


def test_the_node_package_defines_private_names_to_check() -> None:
    # The scanner must see the objects' state, or the boundary test below proves nothing.
    assert {"_procs", "_spawn_waiters", "_waiting", "_handlers", "_services"} <= NODE_PRIVATE


def test_nothing_outside_the_node_package_touches_its_private_names() -> None:
    # A private name of the node's objects that some other module happens to define too
    # (its own helper of the same name) is not a breach; list such names here with why.
    shared_by_coincidence = {
        "_run",  # Reader._run (transport), harness runners: their own methods
        "_log",  # the cores' own rate-limited logging
    }
    assert shared_by_coincidence <= NODE_PRIVATE, "stale entry: drop it"
    checked = NODE_PRIVATE - shared_by_coincidence
    breaches = {}
    for path in _outside_files():
        uses = _private_uses(path, checked)
        if uses and path.resolve() != Path(__file__).resolve():
            breaches[str(path)] = uses
    assert breaches == {}


def test_the_scanner_finds_a_private_access() -> None:
    source = "def f(node):\n    return node.signals._spawn_waiters, self._procs\n"
    tmp = ast.parse(source)
    found = [ast.unparse(n) for n in ast.walk(tmp)
             if isinstance(n, ast.Attribute) and n.attr in NODE_PRIVATE
             and not (isinstance(n.value, ast.Name) and n.value.id in ("self", "cls"))]
    assert found == ["node.signals._spawn_waiters"]


def test_the_mixin_modules_are_gone() -> None:
    for old in ("inputs", "runtime", "signals", "services"):
        assert not (PACKAGE / f"{old}.py").exists(), f"fabric/{old}.py came back"


def _effect_types_registered_in(folder: Path) -> set[str]:
    """Effect type names passed to ``executor.register(...)`` by modules of ``folder``."""
    found: set[str] = set()
    for path in folder.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr == "register" and node.args):
                first = node.args[0]
                name = first.attr if isinstance(first, ast.Attribute) else getattr(
                    first, "id", None)
                if name is not None:
                    found.add(name)
    return found


def test_every_shared_effect_is_run_by_an_object_of_the_node() -> None:
    # One executor, one table, filled by the node's own objects as they are wired: no
    # shared effect type (ExitProcess included) depends on a facade teaching it later.
    from typing import get_args

    from fabric.protocol import effects, mesh_effects, processes

    shared = {t.__name__ for t in get_args(effects.Effect)}
    shared |= {t.__name__ for t in get_args(processes.SignalEffect)}
    shared |= {name for name in mesh_effects.__all__ if name[0].isupper()}
    missing = shared - _effect_types_registered_in(NODE_PACKAGE)
    assert missing == set()


SIMULATORS = [PACKAGE / "testing" / f"{m}.py" for m in ("meshsim", "servicesim", "processsim")]
SIM_PRIVATE = set().union(*(_private_names_defined(p) for p in SIMULATORS))


def test_protocol_tests_observe_the_simulators_through_their_public_api() -> None:
    # The simulators' per-node records (``sim.nodes[n]``), underscore names and instance
    # dicts are theirs: tests read is_up, live_nodes, creation, subscriptions, processes,
    # nodedown_pending, execute, schedule...
    assert {"_exec", "_after", "_closing"} <= SIM_PRIVATE
    breaches = {}
    assert (ROOT / "tests" / "protocol").is_dir()
    for path in sorted((ROOT / "tests" / "protocol").glob("*.py")):
        found = _private_uses(path, SIM_PRIVATE)
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.Attribute):
                continue
            owner = node.value
            sim_like = (isinstance(owner, ast.Name) and owner.id in ("s", "sim")) or (
                isinstance(owner, ast.Attribute) and owner.attr == "sim")
            if (sim_like and node.attr == "nodes") or node.attr == "__dict__":
                found.append(f"{node.lineno}: {ast.unparse(node)}")
        if found:
            breaches[path.name] = found
    assert breaches == {}


CORES = sorted((PACKAGE / "protocol").rglob("*.py"))
CORE_PRIVATE = set().union(*(_private_names_defined(p) for p in CORES))


def test_tests_observe_the_protocol_cores_through_their_public_api() -> None:
    # A core's underscore names (``_views``, ``_members``...) are its state: tests read
    # it through the core's reads (get_members, fan_out, leader, host...), so a core can
    # change how it keeps its state without breaking a test that checks behaviour.
    assert {"_views", "_candidates", "_evaluate"} <= CORE_PRIVATE
    breaches = {}
    for path in sorted((ROOT / "tests").rglob("*.py")):
        found = _private_uses(path, CORE_PRIVATE)
        if found and path.resolve() != Path(__file__).resolve():
            breaches[str(path.relative_to(ROOT))] = found
    assert breaches == {}


FACADES = ("fabric.global_", "fabric.pg", "fabric.calls", "fabric.process", "fabric.genserver")


def _runtime_imports(path: Path) -> list[str]:
    """Modules ``path`` imports when it runs (anywhere, functions included), leaving out
    ``if TYPE_CHECKING:`` blocks (annotations only)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and ast.unparse(node.test) in (
                "TYPE_CHECKING", "typing.TYPE_CHECKING"):
            skipped |= {id(n) for stmt in node.body for n in ast.walk(stmt)}
    found = []
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.append(node.module)
            found += [f"{node.module}.{alias.name}" for alias in node.names]
    return found


def _imports_of(path: Path, prefixes: tuple[str, ...]) -> list[str]:
    return sorted({m for m in _runtime_imports(path)
                   if any(m == p or m.startswith(p + ".") for p in prefixes)})


def test_the_node_imports_no_facade() -> None:
    # The facades (pg, global, calls, process handles, GenServer) depend on the node; the
    # node gets what it needs of them by injection (standard_service, use_process_handles).
    uses = {p.name: _imports_of(p, FACADES) for p in sorted(NODE_PACKAGE.glob("*.py"))}
    assert {name: found for name, found in uses.items() if found} == {}


def test_the_configuration_does_not_depend_on_discovery() -> None:
    # Discovery checks its own field of NodeConfig (add_field_check), not the reverse.
    assert _imports_of(PACKAGE / "config.py", ("fabric.discovery",)) == []


def test_the_import_scanner_sees_function_imports_and_skips_type_checking(
        tmp_path: Path) -> None:
    path = tmp_path / "probe.py"
    path.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import fabric.pg\n"
                    "def f():\n    from fabric.global_ import Global\n", encoding="utf-8")
    assert _imports_of(path, FACADES) == ["fabric.global_", "fabric.global_.Global"]


# The services built on fabric.lowlevel (its docstring names them): nothing of the node
# package at run time, but the decorator that makes pg and global standard services.
SERVICE_FACADES = ("pg", "global_", "ddata", "registry", "cache")
NODE_OBJECTS = ("channels", "effects", "mailboxes", "processes", "reactor", "services",
                "signals")


def test_the_service_facades_are_built_on_the_low_level_interface() -> None:
    for name in SERVICE_FACADES:
        path = PACKAGE / f"{name}.py"
        imported = set(_imports_of(path, ("fabric.node",)))
        assert imported <= {"fabric.node.services", "fabric.node.services.standard_service"}, name
        touched = {n.attr for n in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
                   if isinstance(n, ast.Attribute) and n.attr in NODE_OBJECTS
                   and isinstance(n.value, ast.Attribute | ast.Name)
                   and (n.value.attr if isinstance(n.value, ast.Attribute)
                        else n.value.id) == "node"}
        assert touched == set(), f"{name} reaches into node.{touched}"
