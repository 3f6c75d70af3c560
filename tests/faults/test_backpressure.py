"""A flooding-but-allowed sender (``--rate 0``) into a node whose Redis is slow.

The node reaches Redis through the fault proxy with latency added both ways, so each
publishing round takes tens of milliseconds.  One client writes 5,000 lines of ~1 KB
(5 MB, more than the loopback socket buffers hold) as fast as TCP takes them.  The node
must slow it through TCP — stop reading it while ``--max-inflight`` of its lines are
unanswered — rather than queue its lines until their deadline passes and refuse them:
every line acknowledged, in order, none refused, every line delivered to a listener, and
the node's memory bounded far below the size of the flood.
"""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest

from cli.cluster import free_port

from ..integration.procs import redis_server
from .harness import base_args, close_all, members, port_of, rss_kib, start_nodes, stop_all
from .proxy import FaultProxy

pytestmark = pytest.mark.redis_server

LINES = 5000
PAD = "x" * 1000
LATENCY = 0.01
"""Seconds the proxy adds to Redis traffic each way."""
MAX_INFLIGHT = 32
RSS_GROWTH_KIB = 4 * 1024
"""What the node's resident memory may grow by during the flood: a bound on its buffers
(two read-aheads of 64 KiB and the in-flight lines of the sender, the 1 MiB send queues
of the two members, what Python keeps of that) that is a small part of the 5 MB sent."""


async def counter(http_port: int, name: str) -> float:
    async with aiohttp.ClientSession() as http, \
            http.get(f"http://127.0.0.1:{http_port}/metrics",
                     timeout=aiohttp.ClientTimeout(total=5)) as resp:
        text = await resp.text()
    return next(float(line.split()[-1]) for line in text.splitlines()
                if line.startswith(name + " "))


async def test_a_flooding_sender_is_slowed_by_tcp_not_refused() -> None:
    async with redis_server() as (url, _), FaultProxy("127.0.0.1", port_of(url)) as link:
        link.latency = LATENCY
        http_port = free_port()
        nodes = await start_nodes(link.url(), ["bp"], *base_args(
            "--http-port", str(http_port), max_inflight=MAX_INFLIGHT))
        [(proc, port)] = nodes
        users = []
        try:
            users = await members(port, ["flood", "ear"])
            flood, ear = users
            rss_before = rss_kib(proc.proc.pid)
            peak = rss_before

            async def sample() -> None:  # the node's memory, while the flood lasts
                nonlocal peak
                while True:
                    peak = max(peak, rss_kib(proc.proc.pid))
                    await asyncio.sleep(0.02)

            sampler = asyncio.create_task(sample())
            started = time.monotonic()
            try:
                for i in range(LINES):
                    flood.send("say", text=f"{i} {PAD}", ref=i)
                await flood.drain()
                written = time.monotonic() - started
                await flood.until(lambda: len(flood.acks) + len(flood.errors) >= LINES, 120)
            finally:
                sampler.cancel()
            took = time.monotonic() - started
            await ear.until(lambda: len(ear.msgs.get("lobby", [])) >= LINES, 60)
            waits = await counter(http_port, "hubbub_inflight_waits_total")
            refused = await counter(http_port, "hubbub_publish_too_late_total")
            print(f"\n{LINES} lines of {len(PAD)} B flat out, Redis {LATENCY * 1000:.0f} ms "
                  f"away each way: written in {written:.1f} s, all answered in {took:.1f} s, "
                  f"{len(flood.errors)} refused, "
                  f"{int(waits)} pauses at --max-inflight {MAX_INFLIGHT}; node RSS "
                  f"{rss_before / 1024:.1f} MiB before, peak {peak / 1024:.1f} MiB")
            assert flood.errors == {} and refused == 0
            assert [flood.acks[i][0] is not None for i in range(LINES)] == [True] * LINES
            heard = [int(g.text.split()[0]) for g in ear.msgs["lobby"] if g.sender == "flood"]
            assert heard == list(range(LINES))
            assert waits > 0  # the sender was held back, not queued without bound
            assert peak - rss_before < RSS_GROWTH_KIB
        finally:
            await close_all(users)
            await stop_all(p for p, _ in nodes)
