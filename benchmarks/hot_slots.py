"""How far one hash slot goes: the cluster-wide keys that a Redis Cluster cannot spread.

Every nickname lives under ``{nicks}`` and every join or part writes the room index under
``{rooms}``, so on a Redis Cluster each of them sits on one master however many shards
there are.  This measures, on a redis-server of its own and with the node's own scripts
(node.scripts, called with the keys and arguments the node gives them), what Redis spends
per operation on those slots (``INFO commandstats`` ``usec_per_call``), and turns it into
what one Redis core could carry:

* CLAIM: a name taken (registration, reconnection) -> claims/s;
* RENEW: a node's renewal of its names, in chunks of 500 as the node sends them -> the
  cost per name, and the names online one slot carries when every name is renewed every
  ``lease_ttl / 3`` seconds;
* ROOM_EVENT (a join or part in a room that stays live) -> joins/s when one slot carries
  every room change, as on a standalone Redis today; and the ``{rooms}`` index's own
  share (the one HSET a change in a live room costs it), what that slot pays per join once
  the room and the index are written by separate single-slot commands.

    python benchmarks/hot_slots.py [--names 50000] [--joins 50000] [--lease-ttl 15]

Figures are Redis's own CPU time at 100 % of one core; leave headroom (a busy Redis also
fans messages out).  The client (Python) is not what is measured.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
from typing import Any

import redis.asyncio as aioredis

from cli.cluster import free_port, start_redis_server
from node import envelope as env
from node import scripts
from node.keys import Keys

K = Keys()
BATCH = 256
RENEW_CHUNK = 500
NODES = 10
ROOMS = 200
DAY_MS, WEEK_MS = 86_400_000, 604_800_000


async def usec_per_call(r: aioredis.Redis, name: str = "evalsha") -> float:
    stats = await r.info("commandstats")
    return float(stats[f"cmdstat_{name}"]["usec_per_call"])


async def claims(r: aioredis.Redis, names: int, ttl_ms: int) -> tuple[float, dict[str, str]]:
    """Claim ``names`` names over NODES nodes; Redis's µs per claim, and the tokens."""
    sha = await r.script_load(scripts.CLAIM)
    tokens: dict[str, str] = {}
    await r.config_resetstat()
    for start in range(0, names, BATCH):
        pipe = r.pipeline(transaction=False)
        for i in range(start, min(names, start + BATCH)):
            node, folded = f"node{i % NODES}", f"user{i}"
            token = tokens[folded] = f"{node}/{i:032x}"
            info = json.dumps({"nick": f"User{i}", "token": token, "node": node,
                               "rooms": ["lobby"]})
            keys = [K.nicks, K.lease(folded), K.info, K.owned(node), K.nodes, K.alive(node)]
            pipe.evalsha(sha, len(keys), *keys, folded, token, ttl_ms, info, node)
        await pipe.execute()
    return await usec_per_call(r), tokens


async def renewals(r: aioredis.Redis, tokens: dict[str, str], ttl_ms: int,
                   rounds: int) -> float:
    """Each node renews its names ``rounds`` times; Redis's µs per name renewed."""
    sha = await r.script_load(scripts.RENEW)
    held: dict[str, list[tuple[str, str]]] = {}
    for folded, token in tokens.items():
        held.setdefault(token.split("/", 1)[0], []).append((folded, token))
    await r.config_resetstat()
    for _ in range(rounds):
        pipe = r.pipeline(transaction=False)
        for node, names in held.items():
            for i in range(0, len(names), RENEW_CHUNK):
                chunk = names[i:i + RENEW_CHUNK]
                keys = [K.alive(node), K.nodes, *(K.lease(f) for f, _ in chunk)]
                pipe.evalsha(sha, len(keys), *keys, node, ttl_ms, *(t for _, t in chunk))
        lost = await pipe.execute()
        assert not any(lost), "a renewal found a lease that was not its own"
    stats = await r.info("commandstats")
    total = float(stats["cmdstat_evalsha"]["usec"])
    return total / (rounds * len(tokens))


async def joins(r: aioredis.Redis, calls: int) -> tuple[float, float]:
    """Joins and parts in rooms that keep a resident member: Redis's µs per ROOM_EVENT
    (the room's slot), and per ROOM_INDEX (the index's step, on the ``{rooms}`` slot)."""
    sha = await r.script_load(scripts.ROOM_EVENT)

    def event(room: str, notice: str, *change: str) -> tuple[list[str], list[Any]]:
        keys = [K.members(room), K.history(room), K.room_channel(room), K.topic(room),
                K.ops(room)]
        return keys, [notice, 1000, WEEK_MS, DAY_MS, "", 2, *change]

    for n in range(ROOMS):
        keys, args = event(f"r{n}", "", "set", "resident", "Resident")
        await r.evalsha(sha, len(keys), *keys, *args)
    await r.config_resetstat()
    for start in range(0, calls, BATCH):
        pipe = r.pipeline(transaction=False)
        for i in range(start, min(calls, start + BATCH)):
            room = f"r{i % ROOMS}"
            joining = (i // ROOMS) % 2 == 0
            who = i if joining else i - ROOMS
            notice = (env.RoomJoin(room, f"U{who}") if joining
                      else env.RoomPart(room, f"U{who}")).serialize()
            change = ("set", f"u{who}", f"U{who}") if joining else ("del", f"u{who}")
            keys, args = event(room, notice, *change)
            pipe.evalsha(sha, len(keys), *keys, *args)
        await pipe.execute()
    script = await usec_per_call(r)
    await r.config_resetstat()
    index = await r.script_load(scripts.ROOM_INDEX)
    keys = [K.rooms_live, K.rooms_count, K.rooms_idle]
    for start in range(0, calls, BATCH):
        pipe = r.pipeline(transaction=False)
        for i in range(start, min(calls, start + BATCH)):
            pipe.evalsha(index, len(keys), *keys, f"r{i % ROOMS}", 2 + i % 2, 0)
        await pipe.execute()
    return script, await usec_per_call(r)


async def run(url: str, opts: argparse.Namespace) -> None:
    r = aioredis.Redis.from_url(url)
    ttl_ms = int(opts.lease_ttl * 1000)
    try:
        claim_us, tokens = await claims(r, opts.names, ttl_ms)
        renew_us = await renewals(r, tokens, ttl_ms, opts.rounds)
        join_us, index_us = await joins(r, opts.joins)
    finally:
        await r.aclose()
    interval = opts.lease_ttl / 3
    online = 1e6 / renew_us * interval
    print(f"{{nicks}} CLAIM: {claim_us:.2f} us per claim in Redis -> at most "
          f"{1e6 / claim_us:,.0f} claims/s on one slot ({opts.names:,} names)")
    print(f"{{nicks}} RENEW: {renew_us:.3f} us per name renewed (chunks of {RENEW_CHUNK}, "
          f"{NODES} nodes) -> one slot renews {1e6 / renew_us:,.0f} names/s; renewed every "
          f"{interval:g} s (lease TTL {opts.lease_ttl:g} s) that is {online:,.0f} names "
          f"online at 100 % of a core, {online / 4:,.0f} at 25 %")
    print(f"ROOM_EVENT (join/part, live room): {join_us:.2f} us per call -> "
          f"{1e6 / join_us:,.0f} joins/s when one slot carries every room change")
    print(f"{{rooms}} ROOM_INDEX (the index's step): {index_us:.2f} us per join -> "
          f"{1e6 / index_us:,.0f} joins/s on the {{rooms}} slot once split out")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--names", type=int, default=50_000)
    parser.add_argument("--joins", type=int, default=50_000)
    parser.add_argument("--rounds", type=int, default=5, help="renewal rounds")
    parser.add_argument("--lease-ttl", type=float, default=15.0)
    opts = parser.parse_args()
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is not on PATH")
    port = free_port()
    with start_redis_server(binary, port):
        asyncio.run(run(f"redis://127.0.0.1:{port}/0", opts))


if __name__ == "__main__":
    main()
