"""Case 7: the same nickname claimed at the same moment on two nodes, 1,000 times."""

from __future__ import annotations

import time
from typing import Any

import pytest

from ..helpers import wait_until
from ..integration.procs import redis_server
from .harness import (
    Member,
    base_args,
    close_all,
    connect,
    hello_outcome,
    redis_client,
    start_nodes,
    stop_all,
)

pytestmark = pytest.mark.redis_server

RACES = 1000
BATCH = 40
"""Races run concurrently: 80 hellos in flight, 40 per node (each node's Redis client
refuses past 100 concurrent commands; see case 11)."""


async def test_simultaneous_claims_exactly_one_winner_each() -> None:
    async with redis_server() as (url, _), redis_client(url) as r:
        nodes = await start_nodes(url, ["ra", "rb"], *base_args())
        (_, port1), (_, port2) = nodes
        results: dict[str, tuple[str, str]] = {}
        wins = {"ra": 0, "rb": 0}
        started = time.monotonic()
        try:
            for first in range(0, RACES, BATCH):
                pairs: list[tuple[Member, Member]] = []
                for i in range(first, min(first + BATCH, RACES)):
                    a = Member(await connect(port1), f"race{i}").start()
                    b = Member(await connect(port2), f"race{i}").start()
                    pairs.append((a, b))
                for a, b in pairs:  # both hellos leave in the same loop iteration
                    for m in (a, b):
                        m.send("hello", nick=m.nick, ref="hello")
                for a, b in pairs:
                    await a.drain()
                    await b.drain()
                for a, b in pairs:
                    for m in (a, b):
                        await m.until(lambda m=m: hello_outcome(m) is not None)
                    results[a.nick] = (hello_outcome(a) or "", hello_outcome(b) or "")
                    if hello_outcome(a) == "welcome":
                        wins["ra"] += 1
                    if hello_outcome(b) == "welcome":
                        wins["rb"] += 1
                await close_all(m for pair in pairs for m in pair)
            took = time.monotonic() - started
            # every winner left: the names come free (each release is the node's to do)
            await wait_until(lambda: _empty(r), timeout=10)
            one_winner = sum(1 for o in results.values()
                             if sorted(o) == ["nick-taken", "welcome"])
            print(f"\n{RACES} simultaneous claims of one name on two nodes ({BATCH} races "
                  f"at a time) in {took:.1f} s: exactly one winner {one_winner} times "
                  f"(node ra won {wins['ra']}, rb {wins['rb']}), two winners "
                  f"{sum(1 for o in results.values() if o == ('welcome', 'welcome'))}, "
                  f"none {sum(1 for o in results.values() if 'welcome' not in o)}; "
                  f"names left in Redis after all quit: 0")
            assert len(results) == RACES and one_winner == RACES
        finally:
            await stop_all(p for p, _ in nodes)


async def _empty(r: Any) -> bool:
    return bool(await r.scard("hubbub:{nicks}") == 0)
