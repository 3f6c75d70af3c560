"""Cluster case 5: one shard (its master and replica) is SIGKILLed and restarted empty.

Three masters with a replica each; two nodes; a room on each master, talked in from both
nodes.  The shard restarted serves none of the names, so what it loses is its rooms'
keys: their members, their history.  Each node must notice by itself that this shard
lost its data (the epoch of each shard, read by the shard's canary round), rebuild the
room's membership there, and tell the room's members that history may be incomplete;
nobody is disconnected.  The other shards' rooms lose nothing, and every line said after
the notice reaches everyone, once, in order.
"""

from __future__ import annotations

import contextlib
import json
import time
from typing import Any

import pytest

from ..helpers import wait_until
from ..integration.procs import Proc
from .cluster_rooms import Spread, spread
from .harness import base_args, seqs_from, stop_all
from .redis_cluster import (
    cluster_client,
    local_cluster,
    master_serving,
    restart_empty,
    start_cluster_nodes,
)

pytestmark = [pytest.mark.redis_server, pytest.mark.timeout(120)]

DETECT = "redis lost its data"
"""How a node's log event on a data loss begins (it may go on to name the shard)."""
INCOMPLETE = "history before this point may be incomplete"
DETECT_WITHIN = 3.0


def is_data_loss(line: str) -> bool:
    with contextlib.suppress(ValueError, AttributeError):
        return str(json.loads(line).get("event", "")).startswith(DETECT)
    return False


async def lost_data_at(proc: Proc, after: float, timeout: float) -> float:
    """When the node logged that Redis (a shard of it) lost its data, at or after
    ``after`` (waiting for it)."""
    start = next((i for i, t in enumerate(proc.times) if t >= after), len(proc.times))
    line = await proc.wait_line(is_data_loss, timeout=timeout, start=start)
    return proc.times[proc.lines.index(line, start)]


def told(events: list[dict[str, Any]]) -> bool:
    return any(e.get("ev") == "notice" and INCOMPLETE in str(e.get("text", ""))
               for e in events)


async def test_a_shard_restarted_empty_is_noticed_and_its_rooms_rebuilt() -> None:
    async with local_cluster(3, 1) as cluster:
        nodes = await start_cluster_nodes(cluster, ["e1", "e2"], *base_args())
        sp: Spread | None = None
        try:
            sp = await spread(cluster, nodes)
            victim = await master_serving(cluster, "nicks", serving=False)
            sick = sp.room_on(victim)
            healthy = [room for room in sp.rooms.values() if room != sick]
            in_sick = [t.m for t in sp.talkers[sick]] + sp.receivers[sick]
            sp.start()
            await sp.flowing(10)

            killed = time.monotonic()
            back = await restart_empty(cluster, victim)
            detected = {}
            for proc, _ in nodes:
                at = await lost_data_at(proc, killed, DETECT_WITHIN + 2.0)
                detected[proc.proc.pid] = at - back
            for m in in_sick:
                await m.until(lambda m=m: told(m.events))
            noticed = time.monotonic()
            async with cluster_client(cluster) as r:  # the room's members are back

                async def rebuilt() -> bool:
                    return len(await r.hkeys(f"hubbub:{{room:{sick}}}:members")) == len(in_sick)

                await wait_until(rebuilt, timeout=10)
            mark = {t.m.nick: max(t.sent) + 1 for ts in sp.talkers.values() for t in ts}
            await sp.flowing(10)  # the chat goes on, in every room
            await sp.finish()

            counts = {room: sp.count(room, since=killed, until=noticed)
                      for room in sp.rooms.values()}
            lost_after = 0
            for t in sp.talkers[sick]:
                after = {s for s in t.acked() if s >= mark[t.m.nick]}
                for rcv in sp.receivers[sick]:
                    lost_after += len(after - set(seqs_from(rcv, sick, t.m.nick)))
            c = counts[sick]
            print(f"\nshard :{victim} (room {sick}) SIGKILLed and restarted empty: serving "
                  f"again {back - killed:.2f} s after the kill; each node noticed "
                  + ", ".join(f"{d:.2f} s" for d in detected.values())
                  + f" after it served; members of {sick} told history may be incomplete "
                  f"{noticed - killed:.2f} s after the kill; its lines said {c.said}, "
                  f"refused {c.refused} {sorted(c.codes)}, receiver-deliveries missing in the "
                  f"announced gap {c.lost - lost_after}, lost after the notice {lost_after}, "
                  f"duplicated {c.dups}, out of order {c.disorder}; other rooms: "
                  + ", ".join(f"{room} lost {counts[room].lost}, stall "
                              f"{counts[room].stall:.2f} s" for room in healthy))
            assert all(m.closed_at is None and not m.has("bye") for m in sp.members)
            assert max(detected.values()) < DETECT_WITHIN
            assert lost_after == 0
            assert c.dups == 0 and c.disorder == 0 and c.ghosts == 0 and c.undecided == 0
            assert c.codes <= {"relay-unavailable"}
            for room in healthy:
                count = counts[room]
                count.assert_whole()
        finally:
            if sp is not None:
                await sp.close()
            await stop_all(p for p, _ in nodes)
