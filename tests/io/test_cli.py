"""The ``fabric`` command against a real node process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from fabric.metrics import DROP_REASONS
from fabric.testing.cluster import DEFAULT_COOKIE, NodeProcess, child_pythonpath, wait_until


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
        reports = json.loads(status.stdout)
        assert list(reports) == [node.name]  # a lone node; the probe is not a member
        info = reports[node.name]
        assert "echo" in info["registered"]
        assert info["nodes"] == []  # the probe is hidden...
        assert info["hidden_nodes"] == []  # ...and not listed as a hidden peer either
        # Every "dropped and counted" case has its reason. Traffic is shown for peers with
        # a session up, not for the asking probe (nor the earlier ping's, gone).
        assert set(info["dropped"]) == set(DROP_REASONS)
        assert {"stray_batches", "bad_mesh_frames", "unknown_kind",
                "not_a_message"} <= set(info["metrics"])
        assert info["traffic"] == {}
        text = fabric_cli("status", node.name)
        assert text.returncode == 0 and "registered  echo" in text.stdout
        assert "dropped     undeliverable=" in text.stdout
        assert "fabric-cli-" not in text.stdout


@pytest.mark.procs
@pytest.mark.io
def test_status_shows_every_node_of_the_cluster() -> None:
    with NodeProcess("st1", extra_args=["--run", "_exported:start_kv"]) as one:
        one.wait_ready()
        with NodeProcess("st2", connect=[one.name]) as two:
            two.wait_ready()
            wait_until(lambda: (two.status() or {}).get("nodes") == [one.name],
                       timeout=10, message="st2 meshed with st1")

            def synced() -> dict[str, Any] | None:
                # st2 learns st1's global name by the sync that follows their nodeup.
                status = fabric_cli("status", two.name, "--json")
                assert status.returncode == 0, status.stderr
                reports: dict[str, Any] = json.loads(status.stdout)
                return reports if reports[two.name]["global_names"] else None

            reports = wait_until(synced, timeout=20, message="st2 sees kv_primary")
            assert sorted(reports) == sorted([one.name, two.name])
            first, second = reports[one.name], reports[two.name]
            assert (first["nodes"], second["nodes"]) == ([two.name], [one.name])
            assert first["groups"] == ["stores"] and "kv" in first["registered"]
            assert first["global_names"] == second["global_names"] == ["kv_primary"]
            assert first["hidden_nodes"] == second["hidden_nodes"] == []
            assert first["processes"] >= 1
            # Traffic per peer: st1 heard st2 (at least their sync batches).
            msgs_in, batches_in, bytes_in = first["traffic"][two.name]["in"]
            assert msgs_in >= 1 and batches_in >= 1 and bytes_in > 0
            text = fabric_cli("status", two.name).stdout
            assert text.count("  peers ") == 2 and "global      kv_primary" in text


@pytest.mark.procs
@pytest.mark.io
def test_a_client_without_any_cookie_fails_and_creates_none(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "FABRIC_COOKIE"}
    env.update(HOME=str(tmp_path), PYTHONPATH=child_pythonpath())
    for command in ("ping", "status"):
        done = subprocess.run([sys.executable, "-m", "fabric.cli", command,
                               "n@127.0.0.1:9"], env=env, capture_output=True, text=True,
                              timeout=60)
        assert done.returncode == 2, done
        assert "no cookie" in done.stderr and "--cookie" in done.stderr
        assert done.stdout == ""
    assert not (tmp_path / ".fabric.cookie").exists()


@pytest.mark.procs
@pytest.mark.io
def test_ping_nobody_is_pang() -> None:
    with NodeProcess("cli2") as node:  # only to learn a port that is certainly closed after
        node.wait_ready()
        name = node.name
    result = fabric_cli("ping", name)
    assert result.returncode == 1 and result.stdout.startswith("pang"), result
