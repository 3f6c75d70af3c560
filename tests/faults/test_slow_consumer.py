"""Case 8: a client that stops reading sits in a busy room.

The same room carries the same steady load three times on one node: without the slow
reader, with it, and without it again.  The slow reader must be disconnected (its send
queue overflows), the other members must keep their latency (p99 of the run with it
within 2x of the worse of the two runs without it: the bracketing absorbs the machine's
own noise) and lose nothing, and the node's memory must stay bounded (VmRSS from /proc).
"""

from __future__ import annotations

import asyncio
import gc
import time

import pytest

from ..helpers import LineClient, text_user
from ..integration.procs import redis_server
from .harness import (
    Member,
    base_args,
    close_all,
    members,
    percentile,
    rss_kib,
    start_nodes,
    stop_all,
)

pytestmark = pytest.mark.redis_server

RECEIVERS = 6
SENDERS = 2
MESSAGES = 900
"""Per sender in the run with the slow reader, 3.5 KB each: 6.3 MB in all, more than a
stalled reader's kernel buffers (~3.8 MiB here) plus its 1 MiB send queue."""
BASELINE = 600
"""Per sender in each run without it."""
RATE = 300.0
"""Lines per second each sender says: a steady load the node carries easily, so latency
measures the node's responsiveness, not a queue the test built up."""
PAD = "x" * 3500
JITTER = 0.002
"""Seconds of slack on top of "within 2x": at p99s of 1-4 ms a single scheduler hiccup of
this test process on a busy 2-core machine is as large as the figure itself."""


async def say_steadily(sender: Member, run: str, n: int) -> dict[int, float]:
    """Say ``n`` lines in room ``busy`` at RATE per second; returns their send times."""
    sent: dict[int, float] = {}
    start = time.monotonic()
    for seq in range(n):
        if (wait := start + seq / RATE - time.monotonic()) > 0:
            await asyncio.sleep(wait)  # the load's shape: one line every 1/RATE s
        sent[seq] = time.monotonic()
        sender.send("say", room="busy", text=f"{run} {seq} {PAD}", ref=f"{run}-{seq}")
        await sender.drain()
    return sent


async def burst(senders: list[Member], listeners: list[Member], run: str, n: int
                ) -> list[float]:
    """Every sender says ``n`` lines; returns every listener's latency for every line
    (arrival - send time, seconds), after checking that each got all, in order.

    The test process's own garbage collector is off meanwhile: a full collection of
    pytest's large heap stalls this process for tens of milliseconds, which would be
    counted as the node's latency."""
    gc.collect()
    gc.disable()
    try:
        sent = dict(zip((s.nick for s in senders), await asyncio.gather(
            *(say_steadily(s, run, n) for s in senders)), strict=True))
        for m in listeners:
            await m.until(lambda m=m: sum(1 for g in m.msgs.get("busy", [])
                                          if g.text.startswith(f"{run} "))
                          >= n * len(senders), 30)
    finally:
        gc.enable()
    latencies = []
    for m in listeners:
        for s in senders:
            got = [g for g in m.msgs["busy"] if g.sender == s.nick
                   and g.text.startswith(f"{run} ")]
            seqs = [int(g.text.split()[1]) for g in got]
            assert seqs == list(range(n)), f"{m.nick} lost or reordered lines"
            latencies += [g.at - sent[s.nick][q] for g, q in zip(got, seqs, strict=True)]
    return latencies


async def test_slow_consumer_disconnected_others_unaffected_memory_bounded() -> None:
    async with redis_server() as (url, _):
        nodes = await start_nodes(url, ["busy"], *base_args())
        [(node, port)] = nodes
        users: list[Member] = []
        try:
            users = await members(port, [f"s{i}" for i in range(SENDERS)]
                                  + [f"m{i}" for i in range(RECEIVERS)], rooms=["busy"])
            senders = users[:SENDERS]
            rss_start = rss_kib(node.proc.pid)
            before = await burst(senders, users, "a", BASELINE)
            rss_base = rss_kib(node.proc.pid)

            slow = await text_user(port, "sloth")
            await slow.send("/join busy")
            await slow.expect("* sloth joined busy")
            for m in users:
                await m.event("join", room="busy", nick="sloth")
            slow.writer.transport.pause_reading()  # type: ignore[attr-defined]
            slowed = await burst(senders, users, "b", MESSAGES)
            rss_slow = rss_kib(node.proc.pid)
            quit_ = await users[-1].event("quit", nick="sloth")
            dropped = await drained(slow)
            after = await burst(senders, users, "c", BASELINE)

            p50a, p99a = percentile(before, 50), percentile(before, 99)
            p50b, p99b = percentile(slowed, 50), percentile(slowed, 99)
            p50c, p99c = percentile(after, 50), percentile(after, 99)
            print(f"\nslow consumer: 3.5 KB lines at {SENDERS * RATE:.0f}/s to {len(users)} "
                  f"members; p50/p99 latency {p50a * 1000:.1f}/{p99a * 1000:.1f} ms before "
                  f"({SENDERS * BASELINE} lines), {p50b * 1000:.1f}/{p99b * 1000:.1f} ms with "
                  f"the slow reader ({SENDERS * MESSAGES} lines), "
                  f"{p50c * 1000:.1f}/{p99c * 1000:.1f} ms after it left; slow "
                  f"reader disconnected ({quit_.get('reason')!r}) after receiving "
                  f"{dropped / 2**20:.1f} MiB; node VmRSS {rss_start / 1024:.1f} MiB at "
                  f"start, {rss_base / 1024:.1f} MiB before the slow reader, "
                  f"{rss_slow / 1024:.1f} MiB after it; lost 0, reordered 0 for everyone "
                  f"else")
            assert quit_.get("reason") == "send queue exceeded"
            assert p99b <= 2 * max(p99a, p99c) + JITTER
            assert rss_slow - rss_base < 32 * 1024  # KiB: the 1 MiB queue, not the backlog
        finally:
            await close_all(users)
            await stop_all(p for p, _ in nodes)


async def drained(c: LineClient) -> int:
    """Read what the stalled client had been sent until the node's close; bytes read."""
    c.writer.transport.resume_reading()  # type: ignore[attr-defined]
    total = 0
    try:
        async with asyncio.timeout(10):
            while chunk := await c.reader.read(1 << 20):
                total += len(chunk)
    except ConnectionError:
        pass
    return total
