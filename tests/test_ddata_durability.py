"""Durable replicated keys survive kill -9 of the node that acknowledged them."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fabric.testing import child_pythonpath, free_port

REPO = Path(__file__).resolve().parent.parent
ACKS_BEFORE_KILL = 30


def child(name: str, path: Path, mode: str, cwd: Path) -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONPATH=child_pythonpath(REPO))
    return subprocess.Popen([sys.executable, "-m", "tests._ddata_durable", name, str(path),
                             mode], cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


@pytest.mark.procs
@pytest.mark.io
def test_an_acknowledged_durable_write_survives_kill_9(tmp_path: Path) -> None:
    name = f"durable@127.0.0.1:{free_port()}"
    db = tmp_path / "ddata.sqlite"
    writer = child(name, db, "write", tmp_path)
    acked = -1
    try:
        assert writer.stdout is not None
        deadline = time.monotonic() + 30
        while acked < ACKS_BEFORE_KILL and time.monotonic() < deadline:
            line = writer.stdout.readline()
            if not line:
                break
            acked = int(line.split()[1])
        assert acked >= ACKS_BEFORE_KILL, f"only {acked + 1} acks\n{writer.stderr.read()}"
        os.kill(writer.pid, signal.SIGKILL)  # mid-stream: a write may be half done
        rest, _ = writer.communicate(timeout=10)
    finally:
        if writer.poll() is None:
            writer.kill()
            writer.wait(10)
    assert writer.returncode == -signal.SIGKILL
    for line in rest.splitlines():  # acks printed before the kill, still in the pipe
        acked = max(acked, int(line.split()[1]))

    # The same node name restarts (a new run, a new creation) on the same file.
    reader = child(name, db, "read", tmp_path)
    out, err = reader.communicate(timeout=30)
    assert reader.returncode == 0, err
    restored, after = (json.loads(line) for line in out.splitlines())
    # Every acknowledged increment and add is back (the one in flight at the kill may
    # be too: it was committed before its ack could be printed).
    assert restored["hits"] in (acked + 1, acked + 2), (acked, restored)
    assert set(range(acked + 1)) <= set(restored["seen"]), (acked, restored)
    assert len(restored["seen"]) in (acked + 1, acked + 2)
    # The new run writes its own slot beside the dead run's.
    assert after["hits"] == restored["hits"] + 1 and after["entries"] == 2
