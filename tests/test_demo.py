"""The README's first command, ``python -m nodes.demo``, run as a user would run it."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from fabric.testing import child_pythonpath

REPO = Path(__file__).resolve().parent.parent
PID = r"<(n\d)\.\d+>"  # a pid as the narration shows it; group 1 is its node


@pytest.mark.procs
@pytest.mark.io
def test_demo_runs_every_step_and_exits_0(tmp_path: Path) -> None:
    """The demo forms the mesh, round-trips hello/world, calls a GenServer across nodes
    (and sees its RemoteError), fans out to a process group, sees kill -9 as
    connection_closed everywhere (and the group shrink), sees the restarted node come
    back, writes a replicated counter and set on both sides of a partition and sees them
    converge after the heal, serves a distributed cache through a kill -9 and a join,
    restarts a crashed supervised worker in place, restarts a distributed supervisor's
    children on survivors after kill -9, elects a leader and a new one with a higher term
    after its node is killed, keeps a singleton through kill -9 and a graceful stop, and
    exits 0."""
    env = dict(os.environ)
    env.pop("FABRIC_COOKIE", None)  # the demo makes its own cookie
    # nodes.demo from this checkout, fabric as this test run imports it (installed, in tox)
    env["PYTHONPATH"] = child_pythonpath(REPO)
    # Bounded (a hung demo fails), but not timed: how long it takes depends on the load.
    proc = subprocess.run([sys.executable, "-m", "nodes.demo"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=90)
    out = proc.stdout
    assert proc.returncode == 0, f"exit {proc.returncode}\n{out}\n{proc.stderr}"

    # 1: the transitive mesh: n3 was seeded with n2 only, yet n1 and n3 meet.
    assert re.search(r"n3\s+nodeup\s+n1\s+transitively", out), out
    assert "full mesh" in out
    # 2: a process spawned on n2 answers from n2.
    assert re.search(r"got \('world', 'n2@127\.0\.0\.1:\d+'\)", out), out

    # 3: the counter on n1 answers the narrator and a process on n2, in order; ('div', 0)
    # comes back as a RemoteError naming the remote type, and the server crashed.
    for value in (5, 10, 15):
        assert re.search(rf"narrator call\(\('counter', n1\), \('incr', 5\)\) -> {value}\s+in",
                         out), out
    assert re.search(r"n2\s+call\(\('counter', n1\), \('incr', 5\)\) -> 20\s+in", out), out
    assert re.search(r"\('div', 0\)\)\s+-> RemoteError, remote type ZeroDivisionError", out), out
    assert "raised at nodes/demo_member.py:" in out, out
    assert "Down reason ('error', 'ZeroDivisionError'" in out, out

    # 4: 3 subscribers on each of the 3 members; the narrator sees all 9; the reliable
    # broadcast reaches all 9; local_first from n2 stays on n2; hashing a key is stable.
    assert "9 processes join 'events' (n1 x3, n2 x3, n3 x3)" in out, out
    assert re.search(r"get_members\('events'\): [\d ]*\b9 pids .* all 9 after", out), out
    assert re.search(r"broadcast_reliable \('event', 1\): 9/9 reported it", out), out
    assert re.search(r"broadcast \('event', 2\):\s+\d/9 reported it \(best effort", out), out
    assert re.search(r"local_first from n2 -> <n2\.\d+>", out), out
    assert re.search(rf"key 'user:42' from the narrator, twice -> {PID} both times", out), out

    # 5: every survivor (n1, n2 and the hidden narrator) sees n3 down, connection_closed,
    # and n3's 3 subscribers leave the group in the narrator's view.
    for who in ("n1", "n2", "demo (hidden)"):
        assert re.search(rf"{re.escape(who)}\s+nodedown\s+n3\s+reason connection_closed",
                         out), out
    assert "group 'events' in the narrator's view: 9 -> 6 members (n1 x3, n2 x3)" in out, out

    # 6: n3 is back with a new creation, and everyone sees its nodeup.
    assert re.search(r"n3 is listening again on port \d+, creation 0x[0-9a-f]+ \(was", out)
    for who in ("n1", "n2", "demo (hidden)"):
        assert re.search(rf"{re.escape(who)}\s+nodeup\s+n3\s+[\d.]+ ms after the restart",
                         out), out

    # CRDTs: n1 is cut off from n2 and n3 (both sides see it), both sides write, a majority
    # write fails on n1 and succeeds on n2, each side reads its own writes, and after the
    # heal all three hold the exact sum 3 + 5 + 30 + 200 and all four elements.
    assert re.search(r"n1 nodedown n2 reason blocked", out), out
    assert re.search(r"n2 nodedown n1 reason peer_reset", out), out
    assert re.search(r"n1 add 'kiwi@n1' write='majority' -> ConsistencyError: unreachable", out)
    assert re.search(r"n2 add 'pear@n2' write='majority' -> \['pear@n2'\]", out), out
    assert "during the partition: n1 reads 8, n3 reads 233" in out, out
    for member in ("n1", "n2", "n3"):
        assert re.search(rf"{member} counter = 238, set = \['apple@n1', 'kiwi@n1', 'pear@n2', "
                         r"'plum@n3'\]\s+\d+ ms after the heal", out), out
    assert re.search(r"all 3 agree on 238 and 4 elements", out), out
    # Supervision: every member's tree has a worker; n2's crashes and is restarted in
    # place; the distributed supervisor's jobs all answer from survivors after kill -9.
    for n in ("n1", "n2", "n3"):
        assert re.search(rf"{n}'s tree: worker <{n}\.\d+> registered as 'worker' on {n}",
                         out), out
    assert re.search(r"restarted in place: <n2\.\d+> on n2 answers as 'worker'", out), out
    placed = re.search(r"start_child x9 from n1: placed by the hash ring on (.*); each", out)
    assert placed, out
    assert sum(int(c) for c in re.findall(r"n\d x(\d+)", placed.group(1))) == 9, out
    killed = re.search(r"kill -9 (n\d) \(pid \d+\), which holds (\d+): ", out)
    assert killed and int(killed.group(2)) > 0, out
    assert re.search(r"all 9 jobs answer again [\d.]+ ms after the kill", out), out
    moved = re.findall(r"job-\d+ -> (n\d)", out)
    assert len(moved) == int(killed.group(2)) and killed.group(1) not in moved, out
    assert f"{killed.group(1)} restarted (its tree too) and rejoined the mesh" in out, out

    # 7: the three candidates agree on one leader; its node is the one killed; the two
    # survivors agree on a new leader, elsewhere, with a higher term.
    first = re.search(rf"all 3 told \('leader_elected', 'scheduler', {PID}, (\d+)\)", out)
    assert first, out
    leader_node, term = first.group(1), int(first.group(2))
    assert re.search(rf"kill -9 {leader_node} \(pid \d+\), the leader's node", out), out
    again = re.search(rf"new leader {PID} on (n\d), higher term (\d+) > (\d+)", out)
    assert again, out
    assert again.group(1) == again.group(2) != leader_node, out
    assert int(again.group(3)) > term == int(again.group(4)), out
    told = re.findall(rf"told \('leader_elected', 'scheduler', {PID}, (\d+)\)\s+[\d.]+ ms "
                      "after the kill", out)
    assert len(told) == 2 and set(told) == {(again.group(1), again.group(3))}, out

    # 8: three more nodes, started with gossip discovery and no names, form a full mesh.
    assert re.search(r"full mesh of the 3 by gossip \d+ ms after the last start", out), out
    assert "3 nodes, no names given: full mesh by gossip" in out, out

    # The cache: put on n1, get on n2; a TTL expires; after kill -9 n3 every key is served
    # from the replicas; a fourth owner receives about a quarter of the copies.
    assert re.search(r"n1 put_many 1000 keys; n2 get\('user:42'\) -> 42", out), out
    assert "n3 get -> 'token-1'; 0.6 s later -> None" in out, out
    assert "n1 get_many of the 1000 keys -> 1000 found, served from the replicas" in out, out
    moved = re.search(r"a fourth owner joined: ([\d.]+)% of the 2000 copies moved", out)
    assert moved and 25 / 1.2 <= float(moved.group(1)) <= 25 * 1.2, out
    # 9: a singleton on one of three more nodes; kill -9 its node: a survivor answers;
    # SIGTERM that one while four callers call: none fails, the numbers go on.
    killed = re.search(r"one instance, on (s\d): call\('next'\) x3 -> \[1, 2, 3\]", out)
    assert killed, out
    moved = re.search(rf"(s\d) saw {killed.group(1)} down after [\d.]+ ms and answers", out)
    assert moved and moved.group(1) != killed.group(1), out
    graceful = re.search(r"(\d+) calls, (\d+) failed; now on (s\d); ticket numbers "
                         r"\d+\.\.\d+ without a gap or a repeat", out)
    assert graceful and graceful.group(2) == "0", out
    assert graceful.group(3) not in (killed.group(1), moved.group(1)), out

    # The summary table, every step ok.
    assert re.search(r"all \d+ steps passed", out), out
    assert "FAIL" not in out
