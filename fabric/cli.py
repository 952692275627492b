"""The ``fabric`` command: start an interactive node, or inspect a running cluster.

    fabric node --name n1@127.0.0.1:9100 [--connect PEER ...]   # as python -m nodes.node
    fabric ping n1@127.0.0.1:9100                                # pong / pang
    fabric status n1@127.0.0.1:9100 [--json]                     # what that node sees

``ping`` and ``status`` join the cluster as a short-lived *hidden* node (peers do not list
it and it does not connect to the rest of the mesh), with the cookie from ``--cookie``,
``FABRIC_COOKIE`` or ``~/.fabric.cookie``. ``status`` spawns :func:`report` on the target
(it is exported) and prints its answer: peers, processes, registered names, groups,
counters, drops by reason and traffic per peer (docs/METRICS.md).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from typing import Any

from fabric.errors import FabricError
from fabric.exports import export
from fabric.logs import configure_logging
from fabric.metrics import take_snapshot
from fabric.node import Node
from fabric.process import Process
from fabric.types import Pid, parse_node_name

__all__ = ["main", "report"]


@export
async def report(proc: Process, reply_to: Pid) -> None:
    """Send ``("fabric_status", {...})`` about this node to ``reply_to``."""
    node = proc.node
    snap = take_snapshot(node)
    info = {
        "name": node.name,
        "creation": node.creation,
        "nodes": node.nodes(),
        "hidden_nodes": node.hidden_nodes(),
        "processes": node.processes.count(),
        "registered": node.registered(),
        "groups": sorted(str(g) for g in node.pg.which_groups()),
        "metrics": dict(node.metrics),
        "refused": dict(node.mesh.stats.refused),
        "dropped": dict(snap.dropped),
        "traffic": {s.peer: {"up": s.up, "in": [s.messages_in, s.batches_in, s.bytes_in],
                             "out": [s.messages_out, s.batches_out, s.bytes_out],
                             "queued": s.queued, "refused": s.refused}
                    for s in snap.peer_samples},
    }
    proc.send(reply_to, ("fabric_status", info))


async def _with_probe(target: str, cookie: str | None, timeout: float,
                      body: Any) -> int:
    host = parse_node_name(target).host
    probe = Node(f"fabric-cli-{os.getpid()}@{host}", cookie=cookie, hidden=True,
                 port_range=(20000, 60000), reconnect_window=0)
    await probe.start()
    try:
        result: int = await body(probe)
        return result
    finally:
        await probe.stop()


async def _ping(args: argparse.Namespace) -> int:
    async def body(probe: Node) -> int:
        answer = await probe.ping(args.node, timeout=args.timeout)
        why = probe.last_connect_error(args.node) if answer == "pang" else None
        print(answer if why is None else f"{answer} ({why})")
        return 0 if answer == "pong" else 1

    return await _with_probe(args.node, args.cookie, args.timeout, body)


async def _status(args: argparse.Namespace) -> int:
    async def body(probe: Node) -> int:
        if not await probe.connect(args.node, timeout=args.timeout):
            print(f"cannot reach {args.node}: {probe.last_connect_error(args.node)}",
                  file=sys.stderr)
            return 1
        box = probe.new_mailbox()
        await probe.spawn_on(args.node, "fabric.cli:report", box.self, timeout=args.timeout)
        _, info = await box.receive(match=lambda m: type(m) is tuple and m[0] == "fabric_status",
                                    timeout=args.timeout)
        if args.json:
            print(json.dumps(info, indent=2, sort_keys=True))
        else:
            print(f"{info['name']}  (creation {info['creation']:#x})")
            print(f"  peers       {', '.join(info['nodes']) or '-'}")
            if info["hidden_nodes"]:
                print(f"  hidden      {', '.join(info['hidden_nodes'])}")
            print(f"  processes   {info['processes']}")
            print(f"  registered  {', '.join(info['registered']) or '-'}")
            print(f"  groups      {', '.join(info['groups']) or '-'}")
            counters = {**info["metrics"], **{f"refused.{k}": v
                                               for k, v in info["refused"].items()}}
            print("  counters    " + (", ".join(f"{k}={v}" for k, v in sorted(counters.items()))
                                      or "-"))
            print("  dropped     " + ", ".join(f"{k}={v}" for k, v in info["dropped"].items()))
            for peer, t in sorted(info["traffic"].items()):
                (m_in, b_in, by_in), (m_out, b_out, by_out) = t["in"], t["out"]
                print(f"  peer        {peer}{'' if t['up'] else ' (down)'}: in {m_in} msgs "
                      f"/ {b_in} batches / {by_in} B, out {m_out} msgs / {b_out} batches / "
                      f"{by_out} B, queued {t['queued']}, refused {t['refused']}")
        return 0

    return await _with_probe(args.node, args.cookie, args.timeout, body)


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
        p.add_argument("--cookie", help="default: $FABRIC_COOKIE, then ~/.fabric.cookie")
        p.add_argument("--timeout", type=float, default=5.0)
        if name == "status":
            p.add_argument("--json", action="store_true", help="machine-readable output")
    args = parser.parse_args(argv)
    configure_logging("warning")  # stdout is for the answer
    try:
        return asyncio.run(_ping(args) if args.command == "ping" else _status(args))
    except FabricError as exc:
        print(f"fabric: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
