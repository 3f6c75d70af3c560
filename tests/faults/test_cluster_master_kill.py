"""Cluster case 2: a master is SIGKILLed while every room talks; its replica is promoted.

Three masters with a replica each; two nodes; a room on each master, talked in from both
nodes (:mod:`.cluster_rooms`).  The master killed is the one serving ``{nicks}``, so the
names and their leases must come through the failover too (the failover outlasts
``--lease-ttl``: the leases run out meanwhile and their nodes re-assert them, and nobody
is reaped for it).  Rooms on the two healthy
shards must lose nothing and never stall; the failed shard's rooms hold their lines in
the outbox (``--outbox-seconds`` 10, longer than the failover) and publish them, or
repair what their nodes missed from the rooms' streams, once the replica serves.  Nobody
is disconnected.  The stall of each shard's room is printed.
"""

from __future__ import annotations

import time

import pytest

from ..helpers import wait_until
from .cluster_rooms import Spread, spread
from .harness import base_args, node_options, stop_all
from .redis_cluster import (
    cluster_client,
    command,
    kill,
    local_cluster,
    master_serving,
    start_cluster_nodes,
    wait_for_new_master,
)

pytestmark = [pytest.mark.redis_server, pytest.mark.timeout(120)]

OUTBOX_SECONDS = 10.0
HEALTHY_STALL = 1.0
LEASES_BACK = 5.0
"""Seconds after the talk ended within which every name's lease must be held again
(re-asserted at the nodes' next renewals; the talk went on 1 s after the failover)."""
"""Seconds a room on a healthy shard may go without a delivery (its talkers say a line
every 50 ms; this allows for a loaded machine, far below a failover)."""


async def test_a_killed_master_stalls_only_its_rooms_and_nothing_is_lost() -> None:
    async with local_cluster(3, 1) as cluster:
        nodes = await start_cluster_nodes(cluster, ["k1", "k2"], *base_args(
            *node_options(outbox_seconds=OUTBOX_SECONDS, outbox_max=1000)))
        sp: Spread | None = None
        try:
            sp = await spread(cluster, nodes)
            victim = await master_serving(cluster, "nicks")
            sick = sp.room_on(victim)
            sp.start()
            await sp.flowing(10)
            async with cluster_client(cluster) as r:
                online_before = await r.smembers("hubbub:{nicks}")
            # the replica has every name claimed so far (it would, given a moment)
            await command(cluster.node(victim), "WAIT", 1, 2000)

            killed = time.monotonic()
            kill(cluster, victim)
            new, took = await wait_for_new_master(cluster, victim)
            await sp.flowing(20)  # talk goes on in every room once the replica serves
            ended = time.monotonic()
            await sp.finish()
            counts = {room: sp.count(room, since=killed, until=ended)
                      for room in sp.rooms.values()}

            async with cluster_client(cluster) as r:
                online = await r.smembers("hubbub:{nicks}")

                async def leases_held() -> dict[str, str | None] | None:
                    held = {n: await r.get(f"hubbub:{{nicks}}:lease:{n}") for n in online}
                    return held if all(held.values()) else None

                # the failover outlasts --lease-ttl (2 s): every lease ran out meanwhile,
                # and each node re-asserts its names at its next renewal once the
                # replica serves (every --lease-ttl / 3, after its slot map followed)
                try:
                    leases = await wait_until(leases_held, timeout=LEASES_BACK)
                except TimeoutError:
                    leases = {n: await r.get(f"hubbub:{{nicks}}:lease:{n}") for n in online}
            print(f"\nmaster :{victim} (serving {{nicks}}) SIGKILLed: replica :{new} served "
                  f"its slots {took:.2f} s later; per shard, stall / lines said / acked / "
                  f"refused / lost / duplicated / out of order: " + "; ".join(
                      f"{room} on :{c.master}{' (killed)' if room == sick else ''} "
                      f"{c.stall:.2f} s / {c.said} / {c.acked} / {c.refused} / {c.lost} / "
                      f"{c.dups} / {c.disorder}" for room, c in counts.items())
                  + f"; names online before {len(online_before)}, after {len(online)}, "
                  f"leases held {sum(1 for v in leases.values() if v)}")
            assert all(m.closed_at is None and not m.has("bye") for m in sp.members)
            assert online == online_before and all(leases.values())
            for room, c in counts.items():
                assert c.undecided == 0, room
                assert (c.lost, c.dups, c.disorder, c.ghosts) == (0, 0, 0, 0), (room, c)
                assert c.one_order, room
                assert c.refused == 0, (room, c.codes)  # held, not refused: outbox > failover
                if room != sick:
                    assert c.stall < HEALTHY_STALL, (room, c.stall)
        finally:
            if sp is not None:
                await sp.close()
            await stop_all(p for p, _ in nodes)
