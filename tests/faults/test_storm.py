"""Case 11: a reconnect storm -- 2,000 clients connect to one node within about a second,
register, then all quit; nothing may be left behind in Redis."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import pytest

from ..integration.procs import is_event, redis_server
from .harness import (
    Member,
    base_args,
    close_all,
    connect,
    hello_outcome,
    node_options,
    raise_nofile,
    redis_client,
    start_nodes,
    stop_all,
)

pytestmark = pytest.mark.redis_server

CLIENTS = 2000
SOURCES = [f"127.0.0.{i}" for i in range(2, 10)]
"""Eight loopback addresses: 250 clients each."""
ROOMS = 200
"""Each client rejoins one of 200 rooms of 10 (one lobby of 2,000 would make the storm
about 2 million join notices instead of about 20,000)."""

async def test_reconnect_storm_all_registered_no_leaked_names() -> None:
    soft, hard = raise_nofile()
    assert soft >= 2 * CLIENTS + 200, f"open-file limit {soft} too small for the storm"
    # with per-address caps in this build, generous ones (250 per address arrive at once)
    caps = node_options(max_per_ip=400, conn_rate_per_ip=2000, conn_burst_per_ip=400)
    async with redis_server() as (url, _), redis_client(url) as r:
        nodes = await start_nodes(url, ["storm"], *base_args(*caps))
        [(node, port)] = nodes
        users: list[Member] = []
        try:
            started = time.monotonic()

            async def arrive(i: int) -> Member:
                m = Member(await connect(port, SOURCES[i % len(SOURCES)]),
                           f"s{i:04d}").start()
                m.send("hello", nick=m.nick, rooms=[f"r{i % ROOMS}"], ref="hello")
                return m

            users = list(await asyncio.gather(*(arrive(i) for i in range(CLIENTS))))
            connected = time.monotonic() - started
            for m in users:
                await m.until(lambda m=m: hello_outcome(m) is not None, timeout=30)
            settled = time.monotonic() - started
            outcomes = Counter(hello_outcome(m) for m in users)
            online = await r.scard("hubbub:{nicks}")

            for m in users:
                m.send("quit")
            for m in users:
                await m.closed(timeout=30)
            # a departure Redis could not take at once is finished in the background:
            # wait for each to be done before looking for leftovers
            deferred = sum(1 for line in node.lines if is_event(
                "could not release name now; retrying in the background")(line))
            after = 0
            for _ in range(deferred):
                line = await node.wait_line(is_event("deferred departure done"), timeout=30,
                                            start=after)
                after = node.lines.index(line, after) + 1
            left = await r.scard("hubbub:{nicks}")
            owned = await r.scard("hubbub:{nicks}:owned:storm")
            members = sum([await r.hlen(f"hubbub:{{room:r{i}}}:members") for i in range(ROOMS)])
            refused = sum(1 for line in node.lines if is_event("connections refused")(line))
            print(f"\nreconnect storm: {CLIENTS} clients from {len(SOURCES)} addresses "
                  f"connected in {connected:.2f} s, all answered {settled:.2f} s after the "
                  f"first: {dict(outcomes)}; {online} names online; after all quit: {left} "
                  f"names left, {owned} owned, {members} room members ({deferred} departures "
                  f"finished in the background), {refused} refusal events; open-file limit "
                  f"{soft}/{hard}; per-address options passed: {caps or 'none in this build'}")
            assert outcomes == Counter({"welcome": CLIENTS}) and online == CLIENTS
            assert (left, owned, members) == (0, 0, 0)
            assert connected < 3.0
        finally:
            await close_all(users)
            await stop_all(p for p, _ in nodes)

