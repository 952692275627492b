"""The README's first command, ``python -m nodes.demo``, run as a user would run it."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.io
def test_demo_runs_every_step_and_exits_0() -> None:
    """The demo forms the mesh, round-trips hello/world, sees kill -9 as
    connection_closed everywhere, sees the restarted node come back, and exits 0."""
    env = dict(os.environ)
    env.pop("FABRIC_COOKIE", None)  # the demo makes its own cookie
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "nodes.demo"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=90)
    elapsed = time.monotonic() - start
    out = proc.stdout
    assert proc.returncode == 0, f"exit {proc.returncode}\n{out}\n{proc.stderr}"
    assert elapsed < 30, f"the demo took {elapsed:.1f} s\n{out}"

    # 1: the transitive mesh: n3 was seeded with n2 only, yet n1 and n3 meet.
    assert re.search(r"n3\s+nodeup\s+n1\s+transitively", out), out
    assert "full mesh" in out
    # 2: a process spawned on n2 answers from n2.
    assert re.search(r"got \('world', 'n2@127\.0\.0\.1:\d+'\)", out), out
    # 3: every survivor (n1, n2 and the hidden narrator) sees n3 down, connection_closed.
    for who in ("n1", "n2", "demo (hidden)"):
        assert re.search(rf"{re.escape(who)}\s+nodedown\s+n3\s+reason connection_closed",
                         out), out
    # 4: n3 is back with a new creation, and everyone sees its nodeup.
    assert re.search(r"n3 is listening again on port \d+, creation 0x[0-9a-f]+ \(was", out)
    for who in ("n1", "n2", "demo (hidden)"):
        assert re.search(rf"{re.escape(who)}\s+nodeup\s+n3\s+[\d.]+ ms after the restart",
                         out), out
    # 5: the summary table, every step ok.
    assert re.search(r"all \d+ steps passed", out), out
    assert "FAIL" not in out
