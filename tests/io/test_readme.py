"""The README's example runs as printed (so the first thing users try cannot rot)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from fabric.testing import child_pythonpath

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.procs
@pytest.mark.io
def test_readme_example_runs(tmp_path: Path) -> None:
    readme = (ROOT / "README.md").read_text()
    example = readme.split("```python\n", 1)[1].split("```", 1)[0]
    script = tmp_path / "example.py"
    script.write_text(example)
    env = {**os.environ, "PYTHONPATH": child_pythonpath()}
    done = subprocess.run([sys.executable, str(script)], env=env, capture_output=True,
                          text=True, timeout=60, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.splitlines()
    # A library prints nothing by default: stdout holds the example's 3 results only.
    assert len(lines) == 3, done.stdout
    assert lines[0] == "['b@127.0.0.1:9101'] pong"
    assert lines[1] == "('world', 'b@127.0.0.1:9101')"
    assert lines[2].startswith("NodeDown(") and "reason='shutdown'" in lines[2]
    assert done.stderr == "", done.stderr
