"""Case 9: one client floods messages, one address floods connections; the others (from
another address) must not notice.  Flooders connect from 127.0.0.2, everyone else from
127.0.0.3 (both loopback), so the per-address caps tell them apart."""

from __future__ import annotations

import asyncio
import gc
import time

import pytest

from ..integration.procs import redis_server
from .harness import (
    Member,
    Talker,
    base_args,
    claim,
    close_all,
    connect,
    heard_last,
    members,
    node_flags,
    percentile,
    start_nodes,
    stop_all,
)

pytestmark = pytest.mark.redis_server

FLOODER = "127.0.0.2"
OTHERS = "127.0.0.3"
LIMITS = {"rate": 50, "burst": 20, "flood_disconnect": 50,
          "max_per_ip": 20, "conn_rate_per_ip": 10, "conn_burst_per_ip": 20}
"""Small enough for a flood to hit them within a second (defaults: 5/s, bursts of 20,
disconnect after 100 delayed; 50 connections per address, 20/s, bursts of 40)."""
FLOOD_LINES = 2000
JITTER_MS = 2.0
"""Slack on top of "within 2x" (ms): at p99s of 1-5 ms one scheduler hiccup of this test
process on a busy 2-core machine is as large as the figure itself."""
CONN_FLOOD = 200


def missing(*flags: str) -> list[str]:
    have = node_flags()
    return [f for f in flags if f not in have]


NEEDED = ["--rate", "--burst", "--flood-disconnect", "--max-per-ip", "--conn-rate-per-ip",
          "--conn-burst-per-ip"]


def latencies(listeners: list[Member], talkers: list[Talker], since: float, until: float
              ) -> list[float]:
    """Arrival minus send time of every talker line said in [since, until), at every
    listener other than its sender."""
    out = []
    for m in listeners:
        for g in m.msgs.get("lobby", []):
            nick, _, sent_at = g.text.split()
            if nick != m.nick and since <= float(sent_at) < until:
                out.append(g.at - float(sent_at))
    return out


@pytest.mark.xfail(bool(missing(*NEEDED)), strict=True,
                   reason=f"flood and connection caps not in this build: {missing(*NEEDED)}")
async def test_message_and_connection_floods_leave_others_unaffected() -> None:
    async with redis_server() as (url, _):
        nodes = await start_nodes(url, ["gate"], *base_args(**LIMITS))
        [(_, port)] = nodes
        users: list[Member] = []
        talkers: list[Talker] = []
        try:
            users = await members(port, ["ann", "ben", "cat", "dan"], src=OTHERS)
            [flooder] = await members(port, ["flood"], src=FLOODER)
            users.append(flooder)
            talkers = [Talker(u, interval=0.04).start() for u in users[:4]]
            gc.collect()
            gc.disable()  # this process's collector would stall it and count as latency
            try:
                await asyncio.sleep(1.0)  # a second of ordinary chat: the baseline
                flood_at = time.monotonic()
                for i in range(FLOOD_LINES):
                    flooder.send("say", text=f"flood {i} 0", ref=i)
                await flooder.drain()
                await flooder.closed(timeout=10)
                flood_end = time.monotonic()
                await asyncio.sleep(1.0)  # and a second after it
                for t in talkers:
                    await t.stop()
            finally:
                gc.enable()
            for t in talkers:
                await t.m.until(t.settled)
            await heard_last(talkers, users[:4], "lobby")
            relayed = max(sum(1 for g in m.msgs.get("lobby", []) if g.sender == "flood")
                          for m in users[:4])
            reason = next((e for e in flooder.events if e.get("ev") == "error"), {})
            quit_ = await users[0].event("quit", nick="flood")
            lost = sum(len(set(t.acked()) - {int(g.text.split()[1]) for g in m.msgs["lobby"]
                                              if g.sender == t.m.nick})
                       for t in talkers for m in users[:4] if m is not t.m)
            refused = sum(len(t.refused()) for t in talkers)
            before = latencies(users[:4], talkers, flood_at - 1.0, flood_at)
            during = latencies(users[:4], talkers, flood_at, flood_end)
            after = latencies(users[:4], talkers, flood_end, flood_end + 1.0)
            p99 = [percentile(x, 99) * 1000 for x in (before, during, after)]

            # -- a connection flood from one address, while others keep arriving
            flood_conns: list[Member] = []
            conn_at = time.monotonic()
            for _ in range(CONN_FLOOD):
                flood_conns.append(Member(await connect(port, FLOODER), "x").start())
            newcomers, outcomes = await claim(port, [f"new{i}" for i in range(10)],
                                              src=OTHERS)
            for m in flood_conns:
                await m.until(lambda m=m: bool(m.events) or m.closed_at is not None)
            conn_took = time.monotonic() - conn_at
            admitted = sum(1 for m in flood_conns
                           if m.events[0].get("text", "").startswith("* welcome to hubbub"))
            capped = sum(1 for m in flood_conns
                         if m.events[0].get("text", "").startswith("! too-many-connections"))
            users += flood_conns + newcomers
            print(f"\nmessage flood: {FLOOD_LINES} lines at once from {FLOODER}; "
                  f"{relayed} relayed, then {reason.get('code')!r} and disconnected after "
                  f"{flood_end - flood_at:.2f} s ({quit_.get('reason')!r}); 4 others on "
                  f"{OTHERS} talking 25 lines/s each: {refused} refused, lost {lost}, p99 "
                  f"latency {p99[0]:.1f} ms before / {p99[1]:.1f} ms during / {p99[2]:.1f} ms "
                  f"after.  Connection flood: {CONN_FLOOD} connections from {FLOODER} in "
                  f"{conn_took:.2f} s: {admitted} admitted, {capped} refused with "
                  f"too-many-connections; 10 newcomers from {OTHERS}: "
                  f"{sum(o == 'welcome' for o in outcomes.values())} registered")
            assert reason.get("code") == "rate-limited" and quit_.get("reason") == "flooding"
            # the burst, then the rate for as long as the flood lasted (+2: timer slack)
            assert relayed <= LIMITS["burst"] + LIMITS["rate"] * (flood_end - flood_at) + 2
            assert refused == 0 and lost == 0
            assert p99[1] <= 2 * max(p99[0], p99[2]) + JITTER_MS
            assert admitted + capped == CONN_FLOOD and admitted <= LIMITS["max_per_ip"]
            assert set(outcomes.values()) == {"welcome"}
        finally:
            for t in talkers:
                await t.stop()
            await close_all(users)
            await stop_all(p for p, _ in nodes)
