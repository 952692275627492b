"""The fabric demo: a local 3-node cluster forms, works, loses members to kill -9, and heals.

Among the steps: the seed's "Partition-Tolerant Writes with CRDTs", a replicated counter
and set written on both sides of a partition made with ``Node.block`` (fault injection:
members are plain processes on 127.0.0.1, without network namespaces), converging after
the heal to the exact sum.

Run ``python -m nodes.demo`` from the checkout. It exits 0 after a short summary, or
non-zero with the step that failed and why. It takes a few seconds (30 s at most).

Theory of operation
-------------------
Two parts: members, and the narrator that drives them.

* **Members** (``python -m nodes.demo --member NAME [--seed PEER]``, the code is in
  :mod:`nodes.demo_member`): each runs a fabric node that connects to its one seed and
  reports ``started`` / ``nodeup`` / ``nodedown`` as JSON lines on stdout, with
  ``time.monotonic()`` stamps (system-wide, so comparable with the narrator's). They also
  export the process functions the steps spawn on them (hello/world, a counter GenServer,
  group subscribers, a replicated-data worker, election candidates), which report to the
  narrator over fabric.

* **The narrator** (no arguments): launches the members, reads their reports on one
  thread per member, and joins the cluster itself as a *hidden* node, so it can spawn
  processes there, call them and watch nodeup/nodedown without becoming a member (members
  do not list it in ``nodes()`` and do not connect to it transitively); that is
  :class:`nodes.demo_cluster.Demo`. It runs the steps in :data:`STEPS` in order; each is
  an async function (in :mod:`nodes.demo_steps`) that narrates and returns a one-line
  result for the summary table, which this module prints. To add a part to the
  walkthrough, write a step function and append it to :data:`STEPS`. Steps share the
  cluster, so a step that kills a member either restarts it or comes last (the leader
  election does).

The cookie is random per run and reaches the members through ``FABRIC_COOKIE``: argv is
visible to every user of the machine (``ps``), the environment is not.

Every wait has a deadline (:data:`nodes.demo_member.WAIT`, and the whole run
:data:`nodes.demo_cluster.BUDGET`); members are terminated by pid in a ``finally``
(SIGTERM, then SIGKILL after a grace period).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import time
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import fabric
from nodes.demo_cluster import BUDGET, MEMBERS, Demo, StepFailed
from nodes.demo_member import HOST, member_main
from nodes.demo_steps import (
    step_cache,
    step_crdt,
    step_dsupervisor,
    step_genserver,
    step_gossip,
    step_groups,
    step_kill,
    step_leader,
    step_mesh,
    step_restart,
    step_singleton,
    step_spawn,
    step_supervision,
)


@dataclass
class Step:
    """One part of the walkthrough: a title and an async function returning a result."""

    title: str
    run: Callable[[Demo], Awaitable[str]]


STEPS: list[Step] = [
    Step("mesh forms: 3 members, one seed each", step_mesh),
    Step("processes across nodes: spawn_on + send", step_spawn),
    Step("GenServer across nodes: call, RemoteError", step_genserver),
    Step("process groups: subscribers on every node", step_groups),
    Step("kill -9 n3: NodeDown, the group shrinks", step_kill),
    Step("restart n3: NodeUp everywhere", step_restart),
    Step("CRDTs: writes on both sides of a partition", step_crdt),
    Step("distributed cache: replicas, TTL, kill -9 n3, a 4th owner", step_cache),
    Step("supervision trees: a crash restarted in place", step_supervision),
    Step("distributed supervisor: kill -9 a member", step_dsupervisor),
    Step("leader election: kill -9 the leader's node", step_leader),
    Step("discovery: 3 nodes find each other by gossip", step_gossip),
    Step("cluster singleton: kill -9 its node, then a graceful stop", step_singleton),
]


# -- the run ----------------------------------------------------------------------------------


async def run(demo: Demo) -> int:
    """Run every step; print the summary; return the exit code."""
    demo.begin()
    print(f"fabric demo: {MEMBERS} member nodes as OS processes on {HOST}; a random "
          "cookie in FABRIC_COOKIE; this narrator joins as a hidden node", flush=True)
    failed: str | None = None
    try:
        for i, step in enumerate(STEPS, 1):
            print(f"\n== {i}/{len(STEPS)} {step.title} ==", flush=True)
            start = time.monotonic()
            try:
                # A step's own waits have deadlines; this one caps the whole run.
                result = await asyncio.wait_for(step.run(demo),
                                                max(0.0, demo.deadline - start))
            except Exception as exc:
                elapsed = time.monotonic() - start
                if isinstance(exc, asyncio.TimeoutError):
                    why = f"the demo's {BUDGET:.0f} s budget ran out"
                elif isinstance(exc, (StepFailed, fabric.FabricError)):
                    why = str(exc) or type(exc).__name__
                else:  # a bug here or in fabric: the traceback is the useful part
                    traceback.print_exc()
                    why = f"{type(exc).__name__}: {exc}"
                failed = f"step {i} ({step.title}) failed: {why}"
                demo.results.append((f"{i} {step.title}", "FAIL", why, elapsed))
                break
            demo.results.append((f"{i} {step.title}", "ok", result,
                                 time.monotonic() - start))
    finally:
        if demo.node is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(demo.node.stop(), 5.0)
    summary(demo.results)
    if failed is not None:
        print(f"\nFAILED: {failed}", flush=True)
        demo.show_logs()
        return 1
    print(f"\nall {len(STEPS)} steps passed in {time.monotonic() - demo.t0:.2f} s",
          flush=True)
    return 0


def summary(results: list[tuple[str, str, str, float]]) -> None:
    """The table: step, status, result, time."""
    w_step = max(len(s) for s, *_ in results) if results else 4
    print(f"\n{'step':<{w_step}}  {'':4}  {'time':>7}  result", flush=True)
    print(f"{'-' * w_step}  {'-' * 4}  {'-' * 7}  {'-' * 50}")
    for step, status, result, elapsed in results:
        print(f"{step:<{w_step}}  {status:<4}  {elapsed:6.2f}s  {result}")
    sys.stdout.flush()


# -- entry point ------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m nodes.demo", description=__doc__.split("\n")[0])
    p.add_argument("--member", metavar="NAME", help=argparse.SUPPRESS)
    p.add_argument("--seed", metavar="PEER", help=argparse.SUPPRESS)
    p.add_argument("--pub-port", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--lifetime", type=float, default=120.0, help=argparse.SUPPRESS)
    p.add_argument("--parent", type=int, default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the demo (no arguments) or one member (``--member``, used by the demo)."""
    args = parse_args(argv)
    if args.member:
        return asyncio.run(member_main(args.member, args.seed, args.pub_port, args.lifetime,
                                       args.parent))
    demo = Demo()
    try:
        return asyncio.run(run(demo))
    except KeyboardInterrupt:
        print("\ninterrupted", flush=True)
        return 130
    finally:
        demo.cleanup()


if __name__ == "__main__":
    sys.exit(main())
