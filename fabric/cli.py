"""The ``fabric`` command: start an interactive node, or inspect a running cluster.

    fabric node --name n1@127.0.0.1:9100 [--connect PEER ...]   # as python -m nodes.node
    fabric ping n1@127.0.0.1:9100                                # pong / pang
    fabric status n1@127.0.0.1:9100 [--json]                     # every node of its cluster
    fabric discover 'dns:name=app.svc,basename=app,port=9100'    # what a strategy finds

``ping`` and ``status`` join the cluster as a short-lived *hidden* node (peers do not list
it and it does not connect to the rest of the mesh), with the cookie from ``--cookie``,
``FABRIC_COOKIE`` or an existing ``~/.fabric.cookie``; with none of them they fail (a
client must use the cluster's cookie: a new random one could never match). ``status``
spawns :func:`report` (it is exported) on the target and on each of its peers, and prints
what each node sees: its peers, process count, locally registered and global names, groups,
counters, drops by reason and traffic per peer (docs/METRICS.md). The probe itself is left
out of the nodes' hidden peers.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

from fabric.cache import caches_of
from fabric.config import load_cookie
from fabric.discovery import watch
from fabric.errors import ConfigError, FabricError
from fabric.exports import export
from fabric.logs import configure_logging
from fabric.metrics import take_snapshot
from fabric.node import Node
from fabric.process import Process
from fabric.types import Pid, parse_node_name

__all__ = ["client_cookie", "main", "report"]


@export
async def report(proc: Process, reply_to: Pid) -> None:
    """Send ``("fabric_status", {...})`` about this node to ``reply_to``.

    The asking node (``reply_to``'s, the CLI's probe) is not listed among the hidden peers.
    """
    node = proc.node
    snap = take_snapshot(node)
    info = {
        "name": node.name,
        "creation": node.creation,
        "nodes": node.nodes(),
        "hidden_nodes": [n for n in node.hidden_nodes() if n != reply_to.node],
        "processes": node.processes.count(),
        "registered": node.registered(),
        "global_names": sorted(str(n) for n in node.global_.registered_names()),
        "groups": sorted(str(g) for g in node.pg.which_groups()),
        "caches": caches_of(node),
        "metrics": {**node.metrics, **{f"discovery.{k}": v for k, v in (
            node.discovery.metrics.items() if node.discovery is not None else ())}},
        "refused": dict(node.mesh.stats.refused),
        "dropped": dict(snap.dropped),
        "traffic": {s.peer: {"up": s.up, "in": [s.messages_in, s.batches_in, s.bytes_in],
                             "out": [s.messages_out, s.batches_out, s.bytes_out],
                             "queued": s.queued, "refused": s.refused}
                    # Peers with a session up, but not the asking probe: the traffic of
                    # earlier sessions (gone probes, say) is history, kept by Prometheus.
                    for s in snap.peer_samples if s.up and s.peer != reply_to.node},
    }
    proc.send(reply_to, ("fabric_status", info))


def client_cookie(cookie: str | None, *, home: Path | None = None) -> str | bytes:
    """The cookie a client command uses: ``--cookie``, ``FABRIC_COOKIE`` or an existing
    ``~/.fabric.cookie``. Never a new one: a random cookie cannot match the cluster's.

    Raises:
        ConfigError: none of the three is there (or the file is unsafe or empty).
    """
    if cookie is not None:
        return cookie
    if "FABRIC_COOKIE" in os.environ:
        return os.environ["FABRIC_COOKIE"]
    path = (home or Path.home()) / ".fabric.cookie"
    if not path.exists():
        raise ConfigError(
            "no cookie: pass --cookie, set FABRIC_COOKIE or put the cluster's cookie in "
            f"{path} (a client must use the cookie of the nodes it talks to)")
    return load_cookie(None, home=home)


async def _with_probe(target: str, cookie: str | bytes, body: Any) -> int:
    host = parse_node_name(target).host
    probe = Node(f"fabric-cli-{os.getpid()}@{host}", cookie=cookie, hidden=True,
                 port_range=(20000, 60000), reconnect_window=0,
                 # Not the node's own settings from its environment (a pod's probe shares
                 # it): its PUB port is taken, and a probe discovers nothing.
                 pub_port=0, discovery="")
    await probe.start()
    try:
        result: int = await body(probe)
        return result
    finally:
        await probe.stop()


async def _ping(args: argparse.Namespace, cookie: str | bytes) -> int:
    async def body(probe: Node) -> int:
        answer = await probe.ping(args.node, timeout=args.timeout)
        why = probe.last_connect_error(args.node) if answer == "pang" else None
        print(answer if why is None else f"{answer} ({why})")
        return 0 if answer == "pong" else 1

    return await _with_probe(args.node, cookie, body)


async def _report_of(probe: Node, node: str, timeout: float) -> dict[str, Any]:
    """What :func:`report` says on ``node``; ``{"name", "error"}`` if it cannot answer."""
    if not await probe.connect(node, timeout=timeout):
        return {"name": node, "error": f"unreachable ({probe.last_connect_error(node)})"}
    box = probe.new_mailbox()
    try:
        await probe.spawn_on(node, "fabric.cli:report", box.self, timeout=timeout)
        _, info = await box.receive(
            match=lambda m: type(m) is tuple and m[0] == "fabric_status", timeout=timeout)
    except FabricError as exc:
        return {"name": node, "error": str(exc)}
    finally:
        probe.close_mailbox(box)
    return dict(info)


def _print_report(info: dict[str, Any]) -> None:
    if "error" in info:
        print(f"{info['name']}  {info['error']}")
        return
    print(f"{info['name']}  (creation {info['creation']:#x})")
    print(f"  peers       {', '.join(info['nodes']) or '-'}")
    if info["hidden_nodes"]:
        print(f"  hidden      {', '.join(info['hidden_nodes'])}")
    print(f"  processes   {info['processes']}")
    print(f"  registered  {', '.join(info['registered']) or '-'}")
    print(f"  global      {', '.join(info['global_names']) or '-'}")
    print(f"  groups      {', '.join(info['groups']) or '-'}")
    counters = {**info["metrics"], **{f"refused.{k}": v for k, v in info["refused"].items()}}
    print("  counters    " + (", ".join(f"{k}={v}" for k, v in sorted(counters.items()))
                              or "-"))
    for name, numbers in info.get("caches", {}).items():
        print(f"  cache       {name}: " + ", ".join(f"{k}={v}" for k, v in numbers.items()))
    print("  dropped     " + (", ".join(f"{k}={v}" for k, v in info["dropped"].items()) or "-"))
    for peer, t in sorted(info["traffic"].items()):
        (m_in, b_in, by_in), (m_out, b_out, by_out) = t["in"], t["out"]
        print(f"  peer        {peer}{'' if t['up'] else ' (down)'}: in {m_in} msgs "
              f"/ {b_in} batches / {by_in} B, out {m_out} msgs / {b_out} batches / "
              f"{by_out} B, queued {t['queued']}, refused {t['refused']}")


async def _status(args: argparse.Namespace, cookie: str | bytes) -> int:
    async def body(probe: Node) -> int:
        first = await _report_of(probe, args.node, args.timeout)
        if "error" in first:
            print(f"cannot reach {args.node}: {first['error']}", file=sys.stderr)
            return 1
        reports = [first] + [await _report_of(probe, peer, args.timeout)
                             for peer in first["nodes"]]
        if args.json:
            print(json.dumps({r["name"]: r for r in reports}, indent=2, sort_keys=True))
        else:
            for i, info in enumerate(reports):
                if i:
                    print()
                _print_report(info)
        return 0 if all("error" not in r for r in reports) else 1

    return await _with_probe(args.node, cookie, body)


async def _discover(args: argparse.Namespace) -> int:
    """Print each strategy's list whenever it changes, for ``--duration`` seconds."""
    counters: dict[str, int] = {}

    def on_change(label: str, names: frozenset[str]) -> None:
        print(f"{label}: {' '.join(sorted(names)) or '-'}", flush=True)

    cookie = client_cookie(args.cookie)
    secret = cookie.encode() if isinstance(cookie, str) else cookie  # as a node's (UTF-8)
    try:
        await asyncio.wait_for(watch(args.spec, secret, on_change,
                                     counters), args.duration)
    except asyncio.TimeoutError:
        pass
    if counters:
        print("counters: " + ", ".join(f"{k}={v}" for k, v in sorted(counters.items())))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``fabric`` console script."""
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "node":
        from fabric.console import main as node_main

        return node_main(argv[1:])
    parser = argparse.ArgumentParser(prog="fabric", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("node", help="start a node (see `fabric node --help`)")
    for name, helptext in (("ping", "pong if the node answers, else pang"),
                           ("status", "what a running node sees")):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("node", help="the node's full name, name@host:port")
        p.add_argument("--cookie", help="default: $FABRIC_COOKIE, then ~/.fabric.cookie "
                                        "(one of them is required)")
        p.add_argument("--timeout", type=float, default=5.0)
        if name == "status":
            p.add_argument("--json", action="store_true", help="machine-readable output")
    p = sub.add_parser("discover", help="what a discovery strategy finds (gossip only "
                                        "listens)")
    p.add_argument("spec", help="e.g. gossip, dns:name=N,basename=B,port=P, hosts:path=F")
    p.add_argument("--cookie", help="the gossip secret's default: $FABRIC_COOKIE, then "
                                    "~/.fabric.cookie")
    p.add_argument("--duration", type=float, default=3.0, metavar="S",
                   help="how long to watch (default 3)")
    args = parser.parse_args(argv)
    configure_logging("warning")  # stdout is for the answer
    try:
        if args.command == "discover":
            return asyncio.run(_discover(args))
        cookie = client_cookie(args.cookie)
        return asyncio.run(_ping(args, cookie) if args.command == "ping"
                           else _status(args, cookie))
    except FabricError as exc:
        print(f"fabric: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
