"""Case 1: steady state -- 3 nodes, 20 JSON clients in 2 rooms, nothing lost or doubled.

On a standalone Redis, node s3 reaches Redis through the fault proxy with 1 ms added
each way, so the three nodes do not see the bus in lock-step; every member of a room
must still see one order.  On a Redis Cluster (three masters with a replica each; the
nodes reach every master directly, so there is no proxy) the rooms are three, one on
each master, and 21 clients: the same figures, spread over every shard.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import pytest

from ..integration.procs import Proc, redis_server
from .harness import base_args, delivery, members, start_nodes, stop_all
from .proxy import FaultProxy
from .redis_cluster import local_cluster, names_on_each_master, room_key, start_cluster_nodes

pytestmark = pytest.mark.redis_server

CLIENTS = 20
MESSAGES = 10_000
ROOMS = ("red", "blue")


@pytest.mark.parametrize("topology", ["standalone", "cluster"])
async def test_steady_state_nothing_lost_nothing_doubled_one_order(topology: str) -> None:
    if topology == "cluster":
        async with local_cluster(3, 1) as cluster:
            rooms = [names[0] for names in
                     (await names_on_each_master(cluster, room_key)).values()]
            nodes = await start_cluster_nodes(cluster, ["s1", "s2", "s3"], *base_args())
            await steady(nodes, rooms, 21, "3 nodes on a Redis Cluster of 3 masters")
        return
    async with redis_server() as (url, _), \
            FaultProxy("127.0.0.1", int(url.rsplit(":", 1)[1].split("/")[0])) as slow_link:
        slow_link.latency = 0.001
        nodes = await start_nodes(url, ["s1", "s2", "s3"], *base_args(),
                                  urls=[url, url, slow_link.url()])
        await steady(nodes, ROOMS, CLIENTS, "3 nodes")


async def steady(nodes: list[tuple[Proc, int]], rooms: Sequence[str], clients: int,
                 where: str) -> None:
    """Every client says its share of MESSAGES in its room at once; then count."""
    try:
        users = []
        for i in range(clients):  # every room spread over all three nodes
            room = rooms[i % len(rooms)]
            users += await members(nodes[i % 3][1], [f"u{i:02d}"], [room])
        room_of = {u.nick: rooms[i % len(rooms)] for i, u in enumerate(users)}
        per_user = MESSAGES // clients
        per_room = per_user * clients // len(rooms)
        started = time.monotonic()
        for u in users:
            for seq in range(per_user):
                u.send("say", text=f"{u.nick} {seq}", ref=seq)
        for u in users:
            await u.drain()
        for u in users:
            await u.until(lambda u=u: len(u.acks) == per_user
                          and len(u.msgs.get(room_of[u.nick], [])) >= per_room,
                          timeout=90)
        took = time.monotonic() - started

        lost = dups = disorder = 0
        for room in rooms:
            senders = [u for u in users if room_of[u.nick] == room]
            acked = [i for u in senders for i, _ in u.acks.values() if i]
            assert len(set(acked)) == per_room
            orders = set()
            for u in senders:
                d = delivery(acked, u.ids(room))
                lost += d.lost
                dups += d.duplicated
                disorder += d.out_of_order
                orders.add(tuple(u.ids(room)))
                # each sender's own messages arrive in the order it said them
                for s in senders:
                    seqs = [int(g.text.split()[1]) for g in u.msgs[room]
                            if g.sender == s.nick]
                    assert seqs == list(range(per_user)), (u.nick, s.nick)
                # and every ack names the id the room gave that very message
                mine = {g.text: g.id for g in u.msgs[room] if g.sender == u.nick}
                assert all(mine[f"{u.nick} {seq}"] == u.acks[seq][0]
                           for seq in range(per_user))
            assert len(orders) == 1, f"members of {room} saw different orders"
        deliveries = sum(len(u.msgs.get(room_of[u.nick], [])) for u in users)
        print(f"\nsteady state: {per_user * clients} messages from {clients} clients on "
              f"{where} in {len(rooms)} rooms, {deliveries} deliveries in {took:.2f} s "
              f"({per_user * clients / took:.0f} msg/s); lost {lost}, duplicated {dups}, "
              f"out of order {disorder}; one order per room: yes")
        assert (lost, dups, disorder) == (0, 0, 0)
    finally:
        await stop_all(p for p, _ in nodes)
