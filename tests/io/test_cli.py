"""The ``fabric`` command against a real node process."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from fabric.metrics import DROP_REASONS
from fabric.testing.cluster import DEFAULT_COOKIE, NodeProcess, child_pythonpath


def fabric_cli(*args: str, cookie: str = DEFAULT_COOKIE) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "FABRIC_COOKIE": cookie, "PYTHONPATH": child_pythonpath()}
    return subprocess.run([sys.executable, "-m", "fabric.cli", *args], env=env,
                          capture_output=True, text=True, timeout=60)


@pytest.mark.procs
@pytest.mark.io
def test_ping_and_status() -> None:
    with NodeProcess("cli1", spawn_echo=True) as node:
        node.wait_ready()
        pong = fabric_cli("ping", node.name)
        assert (pong.returncode, pong.stdout.strip()) == (0, "pong"), pong.stderr
        bad = fabric_cli("ping", node.name, cookie="not-the-cookie")
        assert (bad.returncode, bad.stdout.strip()) == (1, "pang (bad_cookie)"), bad.stderr
        status = fabric_cli("status", node.name, "--json")
        assert status.returncode == 0, status.stderr
        info = json.loads(status.stdout)
        assert info["name"] == node.name
        assert "echo" in info["registered"]
        assert info["nodes"] == []  # the probe is hidden
        assert len(info["hidden_nodes"]) == 1
        # Every "dropped and counted" case has its reason; the probe's traffic is shown
        # (at least the spawn request it sent came in).
        assert set(info["dropped"]) == set(DROP_REASONS)
        assert {"stray_batches", "bad_handshake_frames", "unknown_kind",
                "not_a_message"} <= set(info["metrics"])
        probe_in = info["traffic"][info["hidden_nodes"][0]]["in"]
        assert probe_in[0] >= 1 and probe_in[1] >= 1 and probe_in[2] > 0
        text = fabric_cli("status", node.name)
        assert text.returncode == 0 and "registered  echo" in text.stdout
        assert "dropped     undeliverable=" in text.stdout and "  peer        " in text.stdout


@pytest.mark.procs
@pytest.mark.io
def test_ping_nobody_is_pang() -> None:
    with NodeProcess("cli2") as node:  # only to learn a port that is certainly closed after
        node.wait_ready()
        name = node.name
    result = fabric_cli("ping", name)
    assert result.returncode == 1 and result.stdout.startswith("pang"), result
