"""The node's service host forgets a completion token whose waiter gave up (cancelled, or
failed by a facade's timeout), so answers that never come hold nothing."""

from __future__ import annotations

import asyncio

import pytest

from fabric import FabricTimeout, lowlevel
from fabric.testing import LocalCluster

pytestmark = pytest.mark.io  # an in-process node on 127.0.0.1


def test_a_token_whose_waiter_gave_up_is_forgotten() -> None:
    async def main() -> None:
        async with LocalCluster(1) as (node,):
            host = node.services
            before = host.awaiting()
            cancelled = lowlevel.expect(node, ("test", 1))
            timed_out = lowlevel.expect(node, ("test", 2))
            kept = lowlevel.expect(node, ("test", 3))
            assert host.awaiting() == before + 3
            cancelled.cancel()
            timed_out.set_exception(FabricTimeout("no answer"))  # as a facade's timer does
            await asyncio.sleep(0)  # done callbacks run on the next loop turn
            assert host.awaiting() == before + 1  # only the one still waited for
            assert not kept.done()
            kept.cancel()
            with pytest.raises(FabricTimeout):
                timed_out.result()

    asyncio.run(main())
