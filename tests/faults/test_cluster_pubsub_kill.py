"""Cluster variant of the pub/sub case: every node's links to every master are killed
(``CLIENT KILL TYPE pubsub`` on each master) three times while every room talks; each
node reconnects each shard's link and repairs what it missed from the rooms' streams.

A node holds one subscription connection per master, never one per client or per room:
each master sees exactly one per node before each kill, and again after it.
"""

from __future__ import annotations

import time

import pytest

from ..helpers import wait_until
from .cluster_rooms import Spread, spread
from .harness import base_args, stop_all
from .redis_cluster import local_cluster, pubsub_links, start_cluster_nodes

pytestmark = [pytest.mark.redis_server, pytest.mark.timeout(120)]

KILLS = 3
RELINK = 3.0
"""Seconds within which every node's link to every master is back."""


async def test_every_shard_link_killed_relinked_and_gaps_repaired() -> None:
    async with local_cluster(3, 0) as cluster:
        nodes = await start_cluster_nodes(cluster, ["q1", "q2"], *base_args())
        sp: Spread | None = None
        try:
            sp = await spread(cluster, nodes, interval=0.02)
            masters = [m.port for m in cluster.masters]
            sp.start()
            relinked: list[float] = []
            for _ in range(KILLS):
                await sp.flowing(30)
                links = await pubsub_links(cluster)
                assert links == {port: len(nodes) for port in masters}, links
                killed_at = time.monotonic()
                for port in masters:
                    await cluster.node(port).client.client_kill_filter(_type="pubsub")

                async def back() -> bool:  # the servers' view: no event to await
                    return await pubsub_links(cluster) == {p: len(nodes) for p in masters}

                await wait_until(back, timeout=RELINK)
                relinked.append(time.monotonic() - killed_at)
            await sp.flowing(30)
            await sp.finish()
            counts = {room: sp.count(room) for room in sp.rooms.values()}
            print(f"\npub/sub links of {len(nodes)} nodes to {len(masters)} masters killed "
                  f"{KILLS} times while every room talked: back after "
                  + ", ".join(f"{s:.2f} s" for s in relinked) + "; per room said / lost / "
                  "duplicated / out of order: " + "; ".join(
                      f"{room} {c.said} / {c.lost} / {c.dups} / {c.disorder}"
                      for room, c in counts.items()))
            for c in counts.values():
                c.assert_whole()
        finally:
            if sp is not None:
                await sp.close()
            await stop_all(p for p, _ in nodes)
