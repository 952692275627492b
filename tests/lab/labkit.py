"""The lab harness: ``netlab.sh`` driven from Python, and fabric nodes inside its namespaces.

Theory of operation
-------------------
``netlab.sh`` (in ``../shared/netlab/`` beside the repository) builds N "machines", each a
network namespace with one veth into a bridge that lives in a hub namespace, and cuts,
heals and freezes them on demand (see its README). :class:`Lab` runs its commands under a
per-run ``NETLAB_PREFIX`` and a private ``NETLAB_NET`` (10.199.x), so that concurrent runs
cannot touch each other's namespaces.

:class:`LabNode` is a :class:`fabric.testing.NodeProcess` started with ``ip netns exec``:
node ``i`` runs in namespace ``i`` on the lab address ``NET.i``. The test drives and
observes it through its stdout (JSON events), stdin (a REPL when asked for) and status
file: pipes and files in ``/tmp`` do not cross the fabric network, so a partition never
blinds the test itself. Only lab addresses and loopback are ever used.

Every wait is bounded (:func:`fabric.testing.wait_until` deadlines, subprocess timeouts).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import subprocess
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from fabric.testing import NodeProcess, kill_leftovers, wait_until

REPO_ROOT = Path(__file__).resolve().parents[2]
# Beside the repository, or where FABRIC_NETLAB says (a worktree elsewhere).
NETLAB = Path(os.environ.get("FABRIC_NETLAB",
                             REPO_ROOT.parent / "shared" / "netlab" / "netlab.sh"))
N_NODES = 3
# Fast failure detection, so that a partition is noticed in well under a second and the
# whole suite stays short (the defaults are 0.2 / 1.0 s).
HEARTBEAT_INTERVAL = 0.1
HEARTBEAT_TIMEOUT = 0.6
# netlab commands are bounded by the script itself (teardown: <= 4 rounds of 0.5 s per
# namespace); this only guards against a hang we did not foresee.
NETLAB_TIMEOUT = 60.0


# -- can the lab run here? ----------------------------------------------------------------


def lab_unavailable(prefix: str) -> str | None:
    """Why the lab cannot run on this machine, or None when it can."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return "lab tests need root (network namespaces, nft, iptables)"
    if not NETLAB.is_file():
        return f"netlab.sh not found at {NETLAB}"
    for tool in ("ip", "nft", "iptables"):
        if shutil.which(tool) is None:
            return (f"{tool} missing: apt-get install -y nftables iptables iputils-ping "
                    f"(and iproute2)")
    # `ip netns list` works in many containers that still cannot create a namespace, so
    # probe by creating one (a name netlab never uses, deleted right away).
    probe = f"{prefix}probe"
    try:
        made = subprocess.run(["ip", "netns", "add", probe], capture_output=True,
                              text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"ip netns unusable: {exc}"
    if made.returncode != 0:
        return f"ip netns unusable: {made.stderr.strip() or made.returncode}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True, timeout=10)
    return None


@contextlib.contextmanager
def lab_of(n: int, tag: str, octet: int) -> Iterator[Lab]:
    """An ``n``-node lab under a random prefix starting with ``tag``, on a random
    ``10.{octet}.x`` /24, torn down whatever happens; skips the test if it cannot run."""
    # Random per run: concurrent runs (other checkouts, other tox environments) must never
    # share namespaces. The trailing letter keeps the prefix from being a prefix of another
    # run's, since netlab's teardown removes every namespace matching ^PREFIX(hub|[0-9]+)$;
    # and "v" + prefix + node number stays within the 15 characters of an interface name.
    prefix = f"{tag}{secrets.token_hex(3)}x"
    reason = lab_unavailable(prefix)
    if reason is not None:
        pytest.skip(reason)
    # A private /24 away from netlab's default 10.77.0: the bridge lives in the lab's own
    # namespaces anyway, but addresses that no other lab or network on the machine uses
    # keep logs unambiguous and rule out any mix-up.
    lab = Lab(prefix, f"10.{octet}.{secrets.randbelow(254) + 1}")
    try:
        lab.up(n)
        yield lab
    finally:
        lab.teardown()


# -- the lab ------------------------------------------------------------------------------


class Lab:
    """One netlab instance: ``netlab.sh`` commands under our prefix and network.

    Args:
        prefix: ``NETLAB_PREFIX``; namespaces are ``{prefix}1``.. and ``{prefix}hub``.
        net: ``NETLAB_NET``, the first three octets of the lab's private /24.
    """

    def __init__(self, prefix: str, net: str) -> None:
        self.prefix = prefix
        self.net = net
        self.env = {**os.environ, "NETLAB_PREFIX": prefix, "NETLAB_NET": net}
        self.is_up = False

    def run(self, *args: str, check: bool = True) -> str:
        """Run ``netlab.sh ARGS...``; returns its stdout.

        Raises:
            AssertionError: it failed (with ``check``), showing its stderr.
        """
        # Through bash: in CI the shared folder is a read-only copy that may have lost
        # the executable bit.
        done = subprocess.run(["bash", str(NETLAB), *args], env=self.env, capture_output=True,
                              text=True, timeout=NETLAB_TIMEOUT)
        if check and done.returncode != 0:
            raise AssertionError(f"netlab.sh {' '.join(args)} failed ({done.returncode}):\n"
                                 f"{done.stderr}")
        return done.stdout

    def up(self, n: int) -> None:
        self.is_up = True  # from here on, teardown must run even if `up` fails midway
        self.run("up", str(n))

    def teardown(self) -> None:
        if self.is_up:
            self.run("teardown", check=False)
            self.is_up = False

    def namespace(self, i: int) -> str:
        return f"{self.prefix}{i}"

    def addr(self, i: int) -> str:
        return f"{self.net}.{i}"

    # Faults, named as in netlab's README.
    def split(self, *groups: str) -> None:
        self.run("split", *groups)

    def oneway(self, a: int, *b: int) -> None:
        self.run("oneway", str(a), *map(str, b))

    def heal(self) -> None:
        self.run("heal")

    def freeze_node(self, i: int) -> None:
        self.run("freeze-node", str(i))

    def thaw_node(self, i: int) -> None:
        self.run("thaw-node", str(i))


class LabNode(NodeProcess):
    """A :class:`NodeProcess` whose child runs inside a lab namespace.

    ``ip netns exec`` switches namespace and then execs the command, so the child's pid is
    the node's own: :meth:`kill` and netlab's ``freeze-node`` reach the node itself.
    """

    def __init__(self, namespace: str, name: str, **options: Any) -> None:
        super().__init__(name, **options)
        self.namespace = namespace

    def command(self) -> list[str]:
        return ["ip", "netns", "exec", self.namespace, *super().command()]


@contextlib.contextmanager
def meshed_repl_nodes(lab: Lab, n: int, port: int) -> Iterator[list[LabNode]]:
    """``n`` nodes ``n1``.. with a REPL, one per namespace, on ``port``, seeded with ``n1``
    and waited for as a full mesh; afterwards the lab is healed and every node killed by
    pid, whatever happened."""
    started = [LabNode(lab.namespace(i), f"n{i}@{lab.addr(i)}:{port}",
                       connect=[] if i == 1 else [f"n1@{lab.addr(1)}:{port}"],
                       heartbeat_interval=HEARTBEAT_INTERVAL,
                       heartbeat_timeout=HEARTBEAT_TIMEOUT, repl=True)
               for i in range(1, n + 1)]
    try:
        for node in started:
            node.start()
        for node in started:
            node.wait_ready(15)
        wait_views(started, full_mesh(started), 20)
        yield started
    finally:
        heal_and_kill(lab, started)


def heal_and_kill(lab: Lab, nodes: Iterable[NodeProcess]) -> None:
    """A test's cleanup: heal every partition (if the lab is up) and kill every node by
    pid, whatever state they are in."""
    if lab.is_up:
        with contextlib.suppress(AssertionError, subprocess.TimeoutExpired):
            lab.heal()
    for node in nodes:
        node.kill()
        node.close()
    kill_leftovers()


# -- views of the cluster -----------------------------------------------------------------


def views(nodes: Sequence[NodeProcess]) -> dict[str, list[str]]:
    """Each node's ``nodes()`` (from its status file), keyed by its name."""
    return {n.name: n.nodes() for n in nodes}


def wait_views(nodes: Sequence[NodeProcess], expected: dict[str, Iterable[str]],
               timeout: float) -> float:
    """Wait until every node's ``nodes()`` is exactly its entry in ``expected``.

    Returns the seconds it took.

    Raises:
        AssertionError: not within ``timeout`` seconds (with every view and the stderr
            tails of the nodes).
    """
    want = {name: sorted(peers) for name, peers in expected.items()}
    t0 = time.monotonic()
    wait_until(lambda: views(nodes) == want, timeout, interval=0.02,
               message=lambda: (f"views == {want}, are {views(nodes)}\n"
                                + "\n".join(n.describe(8) for n in nodes)))
    return time.monotonic() - t0


def full_mesh(nodes: Sequence[NodeProcess]) -> dict[str, list[str]]:
    """The expected views of a full mesh of ``nodes``."""
    return {n.name: [m.name for m in nodes if m is not n] for n in nodes}


def session_events_settled(nodes: Sequence[NodeProcess]) -> bool:
    """Every node has printed a ``nodeup`` as its latest event about each of the others.

    A node's status file can show a peer before its ``nodeup`` line is printed (the
    status poll and the event pump are separate tasks): a test that marks the event
    stream must wait for this too, or that late ``nodeup`` would look like a flap.
    """
    for node in nodes:
        last: dict[str, str] = {}
        for e in node.events:
            if e["event"] in ("nodeup", "nodedown"):
                last[e["node"]] = e["event"]
        if any(last.get(peer.name) != "nodeup" for peer in nodes if peer is not node):
            return False
    return True


def events_since(node: NodeProcess, mark: int, kind: str,
                 peer: str | None = None) -> list[dict[str, Any]]:
    """``node``'s events of type ``kind`` (about ``peer``) from index ``mark`` on."""
    return [e for e in node.events[mark:]
            if e["event"] == kind and (peer is None or e.get("node") == peer)]
