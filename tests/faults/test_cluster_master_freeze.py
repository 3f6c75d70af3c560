"""Cluster case 3: one master frozen (SIGSTOP) for 10 s while every room talks.

Three masters with a replica each, ``cluster-node-timeout`` 20 s here so that no replica
takes over: this is the freeze of a shard, not a failover (case 2).  The master frozen
serves none of the names (``{nicks}``).  Only its room's lines may be held or refused,
by the outbox rules of the standalone freeze case (``--outbox-seconds`` 5), shown as
there by two users of that room with nothing else on their way: the "early" one's line,
said 1 s into the freeze, is refused (``relay-unavailable``) and reaches nobody; the
"late" one's lines, said in its last seconds, are held and published, in order, after
SIGCONT.  (The room's talkers cannot show the rule line by line: a session reads a
client's next line once the lines it read before are answered, so a talker's lines wait
in its socket behind its first held line, and the outbox's time for each starts when it
is read.)  The rooms on the
other shards lose nothing, never stall, and their p99 latency during the freeze stays
within twice what it was before (with a floor of 10 ms for the "before", so that the
jitter of a loaded machine on a millisecond p99 is not read as a regression).
"""

from __future__ import annotations

import asyncio
import time

import pytest

from .cluster_rooms import Spread, spread
from .harness import Member, base_args, close_all, member, node_options, percentile, stop_all
from .redis_cluster import freeze, local_cluster, master_serving, start_cluster_nodes

pytestmark = [pytest.mark.redis_server, pytest.mark.timeout(120)]

STOP = 10.0
OUTBOX_SECONDS = 5.0
HEALTHY_STALL = 1.0
P99_FLOOR = 0.010
EARLY_AT = 1.0
"""Seconds into the freeze at which the "early" user says one line: longer than the
outbox bound before SIGCONT, so its sender must be told ``relay-unavailable``."""
LATE_AT = STOP - 2.5
"""Seconds into the freeze at which the "late" user says three lines: inside the outbox
bound before SIGCONT, so they must be published, in order, once the master thaws."""


def latencies(sp: Spread, room: str, since: float, until: float) -> list[float]:
    """Send-to-receipt seconds of the room's lines said in [since, until), as each of its
    receivers got them (a Talker line's text carries its send time)."""
    out = []
    for r in sp.receivers[room]:
        for g in r.msgs.get(room, []):
            sent = float(g.text.split()[2])
            if since <= sent < until:
                out.append(g.at - sent)
    return out


async def test_a_frozen_master_holds_only_its_rooms_lines() -> None:
    async with local_cluster(3, 1, node_timeout_ms=20_000) as cluster:
        nodes = await start_cluster_nodes(cluster, ["z1", "z2"], *base_args(
            *node_options(outbox_seconds=OUTBOX_SECONDS, outbox_max=1000)))
        sp: Spread | None = None
        users: list[Member] = []
        try:
            sp = await spread(cluster, nodes, interval=0.15)
            victim = await master_serving(cluster, "nicks", serving=False)
            sick = sp.room_on(victim)
            healthy = [room for room in sp.rooms.values() if room != sick]
            early = await member(nodes[0][1], "early", [sick])
            late = await member(nodes[1][1], "late", [sick])
            users = [early, late]
            for m in sp.receivers[sick]:
                await m.event("join", room=sick, nick="late")
            sp.start()
            began = time.monotonic()
            await sp.flowing(15)
            with freeze(cluster, victim):
                stopped = time.monotonic()
                # the passing of time is the scenario: the master stays frozen STOP s
                # while the talkers go on, and two users speak at fixed points of it
                await asyncio.sleep(max(0.0, stopped + EARLY_AT - time.monotonic()))
                early.send("say", text="early", ref=0)
                await asyncio.sleep(max(0.0, stopped + LATE_AT - time.monotonic()))
                for i in range(3):
                    late.send("say", text=f"late {i}", ref=i)
                await asyncio.sleep(max(0.0, stopped + STOP - time.monotonic()))
                resumed = time.monotonic()
            await sp.flowing(10)  # every room, the thawed one too, talks again
            ended = time.monotonic()
            await sp.finish()
            for m, refs in ((early, [0]), (late, [0, 1, 2])):
                await m.until(lambda m=m, refs=refs: all(
                    r in m.acks or r in m.errors for r in refs), timeout=15)
            late_ids = [late.acks[i][0] for i in range(3) if i in late.acks]
            for r in sp.receivers[sick]:
                await r.until(lambda r=r: set(late_ids) <= set(r.ids(sick)), timeout=15)
            early_outcome = early.errors[0][0] if 0 in early.errors else "ack"
            late_outcomes = [late.errors[i][0] if i in late.errors else "ack"
                             for i in range(3)]
            heard = [[g.text for g in r.msgs.get(sick, []) if g.sender in ("early", "late")]
                     for r in sp.receivers[sick]]

            counts = {room: sp.count(room, since=stopped, until=resumed)
                      for room in sp.rooms.values()}
            before = [x for room in healthy for x in latencies(sp, room, began, stopped)]
            during = [x for room in healthy for x in latencies(sp, room, stopped, resumed)]
            p99_before, p99_during = percentile(before, 99), percentile(during, 99)
            c = counts[sick]
            print(f"\nmaster :{victim} SIGSTOPped {STOP:.0f} s (room {sick}): its lines "
                  f"said {c.said}, acked {c.acked}, refused {c.refused} {sorted(c.codes)}, "
                  f"lost {c.lost}, duplicated {c.dups}, out of order {c.disorder}, "
                  f"delivered although refused {c.ghosts}; a line said {EARLY_AT:.0f} s into "
                  f"the freeze: {early_outcome}; three said {STOP - LATE_AT:.1f} s before "
                  f"its end: {late_outcomes}; "
                  f"other rooms: p99 {1000 * p99_before:.1f} ms before, "
                  f"{1000 * p99_during:.1f} ms during; stall " + ", ".join(
                      f"{room} {counts[room].stall:.2f} s" for room in healthy)
                  + f"; the whole run {ended - began:.1f} s")
            assert all(m.closed_at is None and not m.has("bye") for m in sp.members)
            for room, count in counts.items():
                assert count.undecided == 0, room
                assert (count.lost, count.dups, count.disorder, count.ghosts) == (0, 0, 0, 0), (
                    room, count)
                assert count.one_order, room
            for room in healthy:
                assert counts[room].refused == 0, (room, counts[room].codes)
                assert counts[room].stall < HEALTHY_STALL, (room, counts[room].stall)
            assert p99_during <= 2 * max(p99_before, P99_FLOOR), (p99_before, p99_during)
            assert early_outcome == "relay-unavailable"
            assert late_outcomes == ["ack"] * 3
            # the refused line reached nobody; the held ones came through once, in order
            assert heard == [[f"late {i}" for i in range(3)]] * len(heard)
        finally:
            await close_all(users)
            if sp is not None:
                await sp.close()
            await stop_all(p for p, _ in nodes)
