"""Cases 5 and 6: a node dies (SIGKILL) or is stopped (SIGTERM) with users online."""

from __future__ import annotations

import asyncio
import signal
import time

import pytest

from ..helpers import LineClient, text_user
from ..integration.procs import redis_server
from .harness import (
    TTL,
    Member,
    base_args,
    claim,
    close_all,
    member,
    members,
    redis_client,
    start_nodes,
    stop_all,
)

pytestmark = pytest.mark.redis_server

VICTIMS = 100


async def test_sigkilled_node_names_free_within_two_ttl_no_orphans() -> None:
    async with redis_server() as (url, _), redis_client(url) as r:
        nodes = await start_nodes(url, ["dead", "alive"], *base_args())
        (dead, port1), (_, port2) = nodes
        users: list[Member] = []
        try:
            nicks = [f"victim{i:03d}" for i in range(VICTIMS)]
            users = await members(port1, nicks)
            watcher = await member(port2, "watcher")
            users.append(watcher)
            for i in range(0, VICTIMS, 10):  # a tenth of them in a second room, too
                users[i].send("join", room="side", ref="side")
            for i in range(0, VICTIMS, 10):
                await users[i].event("join", room="side", nick=nicks[i])
            assert await r.scard("hubbub:{nicks}:owned:dead") == VICTIMS

            killed = time.monotonic()
            dead.signal(signal.SIGKILL)
            async with asyncio.timeout(5):
                await dead.proc.wait()
            # every name is announced gone once, by exactly one surviving node
            await watcher.until(lambda: sum(e.get("ev") == "quit" for e in watcher.events)
                                >= VICTIMS, timeout=2 * TTL + 2)
            announced = time.monotonic() - killed
            # and every name can be claimed again, at once (50 hellos in flight at a time:
            # the node's Redis pool refuses past 100 concurrent commands, see case 11)
            again, outcomes = await claim(port2, nicks, batch=50)
            users += again
            claimable = time.monotonic() - killed
            refused = {n: o for n, o in outcomes.items() if o != "welcome"}
            quits = [e["nick"] for e in watcher.events if e.get("ev") == "quit"]
            assert sorted(quits) == nicks  # once each
            assert all(e.get("reason") == "connection lost"
                       for e in watcher.events if e.get("ev") == "quit")

            keys = set(await r.keys("hubbub:*"))
            orphans = sorted(k for k in keys if k.endswith((":dead", "{node:dead}:ch")))
            info = await r.hgetall("hubbub:{nicks}:info")
            owners = {v.split('"node":"')[1].split('"')[0] for v in info.values()}
            side = await r.hkeys("hubbub:{room:side}:members")
            nodes_set = await r.smembers("hubbub:{nicks}:nodes")
            print(f"\nnode SIGKILL with {VICTIMS} users (TTL {TTL:.0f} s): {len(quits)} quits "
                  f"announced (once each) within {announced:.2f} s, every name claimed again "
                  f"{claimable:.2f} s after the kill; orphan keys of the dead node: "
                  f"{len(orphans)}; info entries owned by it: "
                  f"{sum(o == 'dead' for o in owners)}")
            assert refused == {} and claimable < 2 * TTL
            assert orphans == [] and owners == {"alive"} and "dead" not in nodes_set
            assert side == []  # its members were removed from every room they were in
        finally:
            await close_all(users)
            await stop_all(p for p, _ in nodes)


async def test_sigterm_tells_every_client_and_frees_names_in_under_a_second() -> None:
    async with redis_server() as (url, _), redis_client(url) as r:
        nodes = await start_nodes(url, ["going", "staying"], *base_args())
        (going, port1), (_, port2) = nodes
        users: list[Member] = []
        try:
            texts = [await text_user(port1, f"text{i}") for i in range(5)]
            users = await members(port1, [f"json{i}" for i in range(5)])
            watcher = await member(port2, "watcher")
            users.append(watcher)
            nicks = [f"text{i}" for i in range(5)] + [f"json{i}" for i in range(5)]

            stopped = time.monotonic()
            going.signal(signal.SIGTERM)
            # every client is told, then the connection closes (its name released before)
            told: list[list[str]] = []
            ended: list[float] = []
            for c in texts:
                got = await read_to_end(c)
                told.append(got)
                ended.append(time.monotonic() - stopped)
            for m in users[:5]:
                await m.closed()
                ended.append(m.closed_at - stopped if m.closed_at else -1.0)
            released = max(ended)
            free = await r.smembers("hubbub:{nicks}")
            again, outcomes = await claim(port2, nicks)
            users += again
            claimable = time.monotonic() - stopped
            assert set(outcomes.values()) == {"welcome"}
            async with asyncio.timeout(10):
                exit_code = await going.proc.wait()
            print(f"\nnode SIGTERM with 10 users: every client told and closed within "
                  f"{released:.2f} s; names still held then: {sorted(free & set(nicks))}; "
                  f"all 10 claimed on the other node {claimable:.2f} s after the signal; "
                  f"exit code {exit_code}")
            for got in told:
                assert got[-2:] == ["* node shutting down — reconnect to another node",
                                    "* bye: node shutting down"]
            for m in users[:5]:
                assert m.has("notice", text="node shutting down — reconnect to another node")
                assert m.has("bye", reason="node shutting down", reconnect=True)
            assert not free & set(nicks)
            assert released < 1.0 and claimable < 1.5 and exit_code == 0
            quits = sorted(e["nick"] for e in watcher.events if e.get("ev") == "quit")
            assert quits == sorted(nicks)
        finally:
            await close_all(users)
            await stop_all(p for p, _ in nodes)


async def read_to_end(c: LineClient, timeout: float = 5.0) -> list[str]:
    """Every line until the node closes the connection."""
    out = []
    async with asyncio.timeout(timeout):
        while raw := await c.reader.readline():
            out.append(raw.decode().rstrip("\n"))
    return out
