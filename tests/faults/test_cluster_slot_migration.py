"""Cluster case 4: a busy room's slot is moved to another master while its members talk.

Three masters with a replica each; two nodes; a room on each master, talked in from both
nodes every 20 ms.  The slot of one room moves as ``redis-cli --cluster reshard`` moves
it (``CLUSTER SETSLOT … IMPORTING/MIGRATING``, ``MIGRATE`` key by key, talk going on
between keys, then ``SETSLOT … NODE``): commands meet ``ASK``, ``TRYAGAIN`` (a script
whose keys are split between the two masters) and then ``MOVED``, and the subscribers
of its channel are told it moved (a ``sunsubscribe`` push).  Nothing may be lost,
doubled or reordered, in that room or any other.

From ``MIGRATING`` to ``SETSLOT … NODE`` the room's lines cannot be stored anywhere: a
publishing script declares a fresh once-key (and its channel), and Redis 7.0 runs a
multi-key command on a slot being moved only where every key exists (the source answers
``TRYAGAIN`` while it has some of them, ``ASK`` once it has none; the target
``TRYAGAIN``).  So the room's lines are held in its shard's outbox until the slot is
settled, and the talk between moved keys is lines *said*, not acknowledged; the outbox
is given longer than this deliberately slow move (one key per step) takes, as an
operator gives it longer than a failover.
"""

from __future__ import annotations

import time

import pytest

from .cluster_rooms import Spread, spread
from .harness import base_args, node_options, stop_all
from .redis_cluster import (
    local_cluster,
    master_serving,
    migrate_slot,
    room_key,
    start_cluster_nodes,
)

pytestmark = [pytest.mark.redis_server, pytest.mark.timeout(120)]

OUTBOX_SECONDS = 30
"""Longer than the move takes (a key per step, each after more talk in the room)."""


async def test_a_busy_rooms_slot_moves_while_its_members_talk() -> None:
    async with local_cluster(3, 1) as cluster:
        nodes = await start_cluster_nodes(cluster, ["m1", "m2"], *base_args(
            *node_options(outbox_seconds=OUTBOX_SECONDS)))
        sp: Spread | None = None
        try:
            sp = await spread(cluster, nodes, interval=0.02)
            source = await master_serving(cluster, "nicks", serving=False)
            busy = sp.room_on(source)
            slot = await cluster.keyslot(room_key(busy))
            target = await master_serving(cluster, "nicks")
            sp.start()
            await sp.flowing(20)

            steps = 0

            async def between() -> None:  # each key moved while the room talks
                nonlocal steps
                steps += 1
                await sp.talking(1, rooms=[busy])

            began = time.monotonic()
            moved = await migrate_slot(cluster, slot, target, batch=1, between=between)
            done = time.monotonic()
            await sp.flowing(20)  # and after the move
            await sp.finish()
            counts = {room: sp.count(room, since=began, until=done)
                      for room in sp.rooms.values()}
            c = counts[busy]
            print(f"\nslot {slot} of room {busy} moved from :{source} to :{target} "
                  f"({moved} keys, one at a time, in {done - began:.2f} s): its lines said "
                  f"{c.said}, acked {c.acked}, refused {c.refused}, lost {c.lost}, "
                  f"duplicated {c.dups}, out of order {c.disorder}, one order "
                  f"{'yes' if c.one_order else 'no'}, longest stall {c.stall:.2f} s; other "
                  "rooms: " + ", ".join(f"{room} lost {counts[room].lost}, stall "
                                        f"{counts[room].stall:.2f} s"
                                        for room in counts if room != busy))
            assert moved >= 1 and steps == moved
            assert await cluster.master_of(room_key(busy)) == target
            assert all(m.closed_at is None and not m.has("bye") for m in sp.members)
            for count in counts.values():
                count.assert_whole()
        finally:
            if sp is not None:
                await sp.close()
            await stop_all(p for p, _ in nodes)
