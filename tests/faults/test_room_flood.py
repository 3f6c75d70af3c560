"""Room floods: clients from several addresses create rooms and say the longest lines they
may, as fast as the default limits allow, for a minute.  Redis must stay under what the
configured caps imply: the test computes that bound from the caps (keys, and bytes) and
samples Redis every second.

Every per-client limit is at its default (5 commands a second, bursts of 20, 10 new
rooms per address per minute, 50 rooms per session, 50 connections per address); the
cluster's caps are set small (``--max-rooms``, ``--history-max``, ``--room-idle-ttl``) so
that they are reached within the minute and the bound is tight enough to mean something.
Each attacker joins a new room, says three lines of 4000 characters in it and leaves it
(so rooms go idle and expire), and when it may not create one, does the same in a room
that exists.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import random
import time
from dataclasses import dataclass, field

import pytest

from ..integration.procs import redis_server
from .harness import Member, base_args, close_all, connect, redis_client, start_nodes, stop_all

pytestmark = pytest.mark.redis_server

DURATION = float(os.environ.get("HUBBUB_ROOM_FLOOD_SECONDS", "60"))
"""Seconds of flood (``HUBBUB_ROOM_FLOOD_SECONDS`` to shorten it on a laptop)."""
ADDRESSES = [f"127.0.0.{i}" for i in range(2, 10)]
"""Eight client addresses (all of 127/8 is loopback)."""
PER_ADDRESS = 3
NODES = 2
CAPS = {"max_rooms": 30, "history_max": 20, "room_idle_ttl": 5}
DEFAULTS = {"rate": 5.0, "burst": 20, "max_per_ip": 50, "conn_rate_per_ip": 20.0,
            "list_rate": 1.0, "room_create_rate": 10, "max_rooms_per_user": 50}
"""The per-client limits at their defaults (the suite turns them off elsewhere)."""
MAX_LINE = 4096
LINE = 4000
"""Characters per line said: with its JSON framing, just under ``--max-line``."""
INTERVAL = 1 / DEFAULTS["rate"]
"""Seconds between two commands of one attacker: the sustained rate, never over it."""
ONCE_TTL = 5 + 2 * 1 + 5
"""Seconds a message's once-key lives (outbox 5 s + 2 x the suite's 1 s Redis timeout +
5 s: node/publisher.py)."""
PREFIX = "hubbub:"


@dataclass
class Tally:
    created: set[str] = field(default_factory=set)
    joined: int = 0
    said: int = 0
    refused: dict[str, int] = field(default_factory=dict)


def key_bound(clients: int) -> int:
    """Keys the caps allow at most: every room's members, stream and topic; the room index;
    one lease per name and the names' own keys per node; one creation counter per address;
    and the once-keys of the messages of the last ``ONCE_TTL`` seconds (each session
    publishes its burst and then its rate)."""
    rooms = 3 * CAPS["max_rooms"] + 3
    names = clients + 4 + 2 * NODES
    quota = len(ADDRESSES)
    once = clients * (DEFAULTS["burst"] + DEFAULTS["rate"] * ONCE_TTL)
    return int(rooms + names + quota + once)


def memory_bound(baseline: int, clients: int) -> int:
    """Bytes the caps allow on top of what Redis used before the flood: each room's stream
    (``history_max`` entries of the longest line, plus the one stream node that an
    approximate trim may leave beyond it), members and index entries; the names; the
    once-keys; and 8 MiB for Redis's client buffers and allocator slack."""
    entry = MAX_LINE + 512  # the envelope around the longest text, and the entry's own
    stream = CAPS["history_max"] * entry + max(4096, entry) + 4096
    rooms = CAPS["max_rooms"] * (stream + clients * 128 + 512)
    names = clients * 2048
    once = (key_bound(clients) - 3 * CAPS["max_rooms"]) * 256
    return baseline + rooms + names + once + 8 * 1024 * 1024


async def outcome(m: Member, ref: str, timeout: float = 10.0) -> str:
    """``ok`` or the error code of the command sent with ``ref``."""
    await m.until(lambda: ref in m.acks or ref in m.errors, timeout)
    return "ok" if ref in m.acks else m.errors[ref][0]


async def attack(m: Member, tally: Tally, stop: asyncio.Event) -> None:
    refs = itertools.count()
    text = "x" * LINE
    while not stop.is_set() and m.closed_at is None:
        room = f"{m.nick}-{next(refs)}".lower()
        ref = f"j{next(refs)}"
        m.send("join", room=room, ref=ref)
        await asyncio.sleep(INTERVAL)
        got = await outcome(m, ref)
        if got != "ok":
            tally.refused[got] = tally.refused.get(got, 0) + 1
            if not tally.created:
                continue
            room = random.choice(sorted(tally.created))  # one that exists (or did lately)
            ref = f"j{next(refs)}"
            m.send("join", room=room, ref=ref)
            await asyncio.sleep(INTERVAL)
            got = await outcome(m, ref)
            if got != "ok":
                tally.refused[got] = tally.refused.get(got, 0) + 1
                continue
        else:
            tally.created.add(room)
        tally.joined += 1
        for _ in range(3):
            m.send("say", room=room, text=text, ref=f"s{next(refs)}")
            tally.said += 1
            await asyncio.sleep(INTERVAL)
        m.send("part", room=room, ref=f"p{next(refs)}")
        await asyncio.sleep(INTERVAL)


async def sample(url: str, stop: asyncio.Event, keys: list[int], used: list[int]) -> None:
    """Every second: the keys under the prefix (SCAN drops expired ones as it goes, so an
    expired key not yet collected is not counted) and ``used_memory``."""
    async with redis_client(url) as r:
        while not stop.is_set():
            count = 0
            async for _ in r.scan_iter(match=f"{PREFIX}*", count=1000):
                count += 1
            keys.append(count)
            used.append(int((await r.info("memory"))["used_memory"]))
            await asyncio.sleep(1.0)


@pytest.mark.timeout(DURATION + 90)
async def test_a_room_flood_from_many_addresses_stays_under_the_caps() -> None:
    async with redis_server() as (url, _):
        nodes = await start_nodes(url, [f"rf{i}" for i in range(NODES)],
                                  *base_args(**DEFAULTS, **CAPS))
        attackers: list[Member] = []
        tasks: list[asyncio.Task[None]] = []
        stop = asyncio.Event()
        keys: list[int] = []
        used: list[int] = []
        try:
            async with redis_client(url) as r:
                baseline = int((await r.info("memory"))["used_memory"])
            for a, address in enumerate(ADDRESSES):
                for c in range(PER_ADDRESS):
                    port = nodes[(a * PER_ADDRESS + c) % NODES][1]
                    m = Member(await connect(port, address), f"a{a}c{c}").start()
                    m.send("hello", nick=m.nick, rooms=[], ref="hello")
                    attackers.append(m)
            for m in attackers:
                await m.drain()
                await m.event("welcome")
            clients = len(attackers)
            tally = Tally()
            sampler = asyncio.create_task(sample(url, stop, keys, used))
            started = time.monotonic()
            tasks = [asyncio.create_task(attack(m, tally, stop)) for m in attackers]
            await asyncio.sleep(DURATION)
            stop.set()
            took = time.monotonic() - started
            await asyncio.gather(*tasks, return_exceptions=True)
            await sampler
            alive = [p.proc.returncode is None for p, _ in nodes]
            dropped = [m.nick for m in attackers if m.closed_at is not None]
            max_keys, max_used = max(keys), max(used)
            kb, mb = key_bound(clients), memory_bound(baseline, clients)
            print(f"\nroom flood: {clients} clients from {len(ADDRESSES)} addresses on "
                  f"{NODES} nodes for {took:.0f} s at the default limits, caps {CAPS}: "
                  f"{len(tally.created)} rooms created, {tally.joined} joins, {tally.said} "
                  f"lines of {LINE} characters, refused {tally.refused}; Redis at most "
                  f"{max_keys} keys (bound {kb}) and {max_used / 2**20:.1f} MiB used "
                  f"(bound {mb / 2**20:.1f} MiB, {baseline / 2**20:.1f} MiB before)")
            assert all(alive) and not dropped, (alive, dropped)
            assert max_keys <= kb
            assert max_used <= mb
            # the caps were reached, so the bound was put to the test
            assert tally.refused.get("rooms-full", 0) + \
                tally.refused.get("room-create-throttled", 0) > 0
            assert len(tally.created) >= CAPS["max_rooms"]
        finally:
            stop.set()
            for task in tasks:
                task.cancel()
            await close_all(attackers)
            await stop_all(p for p, _ in nodes)
