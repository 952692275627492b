"""What users get from ``pip install``: build the wheel, install it in a fresh venv, and use
it from a folder outside the checkout.

    python .ci/check_wheel.py CHECKOUT

Checks, each failing the run with a message:
1. every module of the source tree's ``fabric`` package is in the wheel and imports there
   (a subpackage without ``__init__.py`` is left out by ``packages = find:``);
2. the README's Python example runs and prints what the README says;
3. ``fabric node`` (the installed console script) starts a node and ``fabric ping`` gets
   ``pong`` from it.
Nothing here imports the checkout: the venv's Python runs from a temporary folder.
Every wait is bounded (subprocess timeouts, a deadline for the node's readiness).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import venv
from pathlib import Path

TIMEOUT = 600  # pip may fetch pyzmq, msgpack and structlog from the package index


def run(argv: list[str], cwd: Path, env: dict[str, str], timeout: float = TIMEOUT) -> str:
    done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)
    if done.returncode != 0:
        sys.exit(f"FAILED: {' '.join(argv)} (exit {done.returncode})\n"
                 f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return done.stdout


def source_modules(checkout: Path) -> list[str]:
    """Every module under the checkout's fabric/, as a dotted name."""
    names = []
    for path in sorted((checkout / "fabric").rglob("*.py")):
        parts = list(path.relative_to(checkout).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        names.append(".".join(parts))
    return names


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> None:
    checkout = Path(sys.argv[1]).resolve()
    with tempfile.TemporaryDirectory(prefix="fabric-wheel-") as tmp_name:
        tmp = Path(tmp_name)
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
        env["HOME"] = str(tmp)  # no ~/.fabric.cookie of the developer's is read or written

        # Built from a clean copy: setuptools reuses a checkout's build/ folder, whose stale
        # files would hide a package the current tree leaves out.
        source = tmp / "source"
        shutil.copytree(checkout, source, ignore=shutil.ignore_patterns(
            ".git", ".tox", "build", "dist", "*.egg-info", "__pycache__", ".*_cache"))
        wheels = tmp / "wheels"
        run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(wheels),
             str(source)], cwd=tmp, env=env)
        wheel = next(wheels.glob("*.whl"))
        print(f"built {wheel.name}")

        venv.create(tmp / "venv", with_pip=True)
        bindir = tmp / "venv" / "bin"
        python = str(bindir / "python")
        run([python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
             str(wheel)], cwd=tmp, env=env)

        work = tmp / "elsewhere"  # no fabric/ here: imports must come from the venv
        work.mkdir()
        modules = source_modules(checkout)
        # fabric.testing.plugin imports pytest, which users of the plugin have and this
        # venv has not: it must be in the wheel and registered as pytest11 all the same.
        probe = ("import importlib, importlib.metadata, pathlib, sys\n"
                 "for name in sys.argv[1:]:\n"
                 "    try:\n"
                 "        mod = importlib.import_module(name)\n"
                 "    except ModuleNotFoundError as exc:\n"
                 "        assert name == 'fabric.testing.plugin' and exc.name == 'pytest', exc\n"
                 "        continue\n"
                 "    assert 'site-packages' in str(pathlib.Path(mod.__file__)), mod.__file__\n"
                 "plugins = importlib.metadata.entry_points(group='pytest11')\n"
                 "assert [p.value for p in plugins if p.name == 'fabric'] == "
                 "['fabric.testing.plugin'], plugins\n"
                 "print(len(sys.argv) - 1)\n")
        count = run([python, "-c", probe, *modules], cwd=work, env=env).strip()
        print(f"imported {count} modules from the installed wheel")

        readme = (checkout / "README.md").read_text()
        example = readme.split("```python\n", 1)[1].split("```", 1)[0]
        (work / "example.py").write_text(example)
        out = run([python, "example.py"], cwd=work, env=env, timeout=120)
        for expected in ("pong", "('world', 'b@127.0.0.1:9101')", "reason='shutdown'"):
            if expected not in out:
                sys.exit(f"FAILED: the README example did not print {expected!r}:\n{out}")
        print("the README example runs")

        name = f"wheel@127.0.0.1:{free_port()}"
        node_env = dict(env, FABRIC_COOKIE="wheel-check-cookie")
        node = subprocess.Popen([str(bindir / "fabric"), "node", "--name", name, "--no-repl"],
                                cwd=work, env=node_env, stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + 60
            answer = ""
            while time.monotonic() < deadline and node.poll() is None:
                done = subprocess.run([str(bindir / "fabric"), "ping", name, "--timeout", "2"],
                                      cwd=work, env=node_env, capture_output=True, text=True,
                                      timeout=60)
                answer = done.stdout.strip()
                if answer == "pong":
                    break
                time.sleep(0.2)  # the node is still binding its ports: ask again
            if answer != "pong":
                node.kill()
                _, err = node.communicate(timeout=10)
                sys.exit(f"FAILED: fabric ping answered {answer!r}\n{err[-3000:]}")
            print(f"fabric node runs and fabric ping {name} says pong")
        finally:
            if node.poll() is None:
                node.terminate()
                try:
                    node.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    node.kill()
                    node.wait(timeout=10)


if __name__ == "__main__":
    main()
