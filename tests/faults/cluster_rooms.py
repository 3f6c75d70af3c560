"""Rooms spread over every shard of a Redis Cluster, talked in from two nodes: the set-up
and the arithmetic the cluster fault cases share.

Each room sits on its own master (:func:`names_on_each_master`).  In each, one
:class:`Talker` on each node says a numbered line every ``interval`` seconds, and one
listener on each node records everything; so every line crosses nodes, and every room
is seen from both nodes.  :meth:`Spread.finish` stops the talk, waits (bounded) until
every line has its outcome and every receiver has each talker's last acknowledged line,
and :meth:`Spread.count` says per room what was lost, duplicated or out of order, whether
the receivers saw one order, and how long the room went without a delivery (its stall).
"""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass, field

from cli.redis_cluster import LocalRedisCluster

from ..integration.procs import Proc
from .harness import Member, Talker, close_all, heard_last, member, out_of_order, seqs_from
from .redis_cluster import names_on_each_master, room_key

__all__ = ["RoomCount", "Spread", "spread"]


@dataclass(slots=True)
class RoomCount:
    """What the receivers of one room got of its talkers' lines."""

    room: str
    master: int
    said: int
    acked: int
    refused: int
    codes: set[str]
    undecided: int
    lost: int
    dups: int
    disorder: int
    ghosts: int
    """Receiver-deliveries of lines whose sender was told they were refused."""
    one_order: bool
    stall: float
    """The longest time (s) one receiver went without a line of the other node's
    talker, over the window counted."""

    def assert_whole(self) -> None:
        """Every line answered and none refused; none lost, doubled or out of order; one
        order seen by every receiver."""
        assert self.undecided == 0 and self.refused == 0, (self.room, self.codes)
        assert (self.lost, self.dups, self.disorder) == (0, 0, 0), self
        assert self.one_order, self.room


@dataclass(eq=False)
class Spread:
    cluster: LocalRedisCluster
    rooms: dict[int, str]
    """Master port -> the room on it (as the cluster stood at the start)."""
    talkers: dict[str, list[Talker]] = field(default_factory=dict)
    receivers: dict[str, list[Member]] = field(default_factory=dict)

    @property
    def members(self) -> list[Member]:
        return [t.m for ts in self.talkers.values() for t in ts] + [
            m for ms in self.receivers.values() for m in ms]

    def room_on(self, master: int) -> str:
        return self.rooms[master]

    def start(self) -> None:
        for t in itertools.chain.from_iterable(self.talkers.values()):
            t.start()

    async def flowing(self, lines: int, rooms: list[str] | None = None,
                      timeout: float = 15.0) -> None:
        """Until every talker (of ``rooms``, default all) has ``lines`` more acks than
        it had when called."""
        talkers = [t for room in rooms or list(self.talkers) for t in self.talkers[room]]
        have = [len(t.acked()) for t in talkers]
        for t, n in zip(talkers, have, strict=True):
            await t.m.until(lambda t=t, n=n: len(t.acked()) >= n + lines, timeout)

    async def talking(self, lines: int, rooms: list[str] | None = None,
                      timeout: float = 15.0) -> None:
        """Until every talker (of ``rooms``, default all) has said ``lines`` more lines,
        acknowledged or not."""
        talkers = [t for room in rooms or list(self.talkers) for t in self.talkers[room]]
        await asyncio.gather(*(t.saying(lines, timeout) for t in talkers))

    async def finish(self, timeout: float = 30.0) -> None:
        """Stop talking; wait until every line has its outcome and every receiver has
        each talker's last acknowledged line."""
        talkers = list(itertools.chain.from_iterable(self.talkers.values()))
        for t in talkers:
            await t.stop()
        for t in talkers:
            await t.m.until(t.settled, timeout)
        for room, ts in self.talkers.items():
            await heard_last(ts, self.receivers[room], room, timeout)

    def count(self, room: str, since: float = 0.0, until: float = float("inf")
              ) -> RoomCount:
        """The room's figures; the stall is counted over [``since``, ``until``]."""
        master = next(p for p, r in self.rooms.items() if r == room)
        talkers, receivers = self.talkers[room], self.receivers[room]
        lost = dups = disorder = ghosts = 0
        for t in talkers:
            acked, refused = t.acked(), t.refused()
            for r in receivers:
                got = seqs_from(r, room, t.m.nick)
                lost += len(set(acked) - set(got))
                dups += len(got) - len(set(got))
                disorder += out_of_order(got)
                ghosts += len(set(refused) & set(got))
        orders = {tuple(r.ids(room)) for r in receivers}
        stall = 0.0
        for r in receivers:  # the talker of the other node: its lines crossed the bus
            same_node = {t.m.nick for t in talkers if t.m.nick[-1] == r.nick[-1]}
            times = [g.at for g in r.msgs.get(room, [])
                     if g.sender not in same_node and since <= g.at <= until]
            points = ([since] if since > 0 else []) + times + (
                [until] if until != float("inf") else [])
            stall = max([stall, *(b - a for a, b in itertools.pairwise(points))])
        return RoomCount(
            room=room, master=master,
            said=sum(len(t.sent) for t in talkers),
            acked=sum(len(t.acked()) for t in talkers),
            refused=sum(len(t.refused()) for t in talkers),
            codes={c for t in talkers for c in t.refused().values()},
            undecided=sum(1 for t in talkers for s in t.sent
                          if s not in t.m.acks and s not in t.m.errors),
            lost=lost, dups=dups, disorder=disorder, ghosts=ghosts,
            one_order=len(orders) == 1, stall=stall)

    async def close(self) -> None:
        for ts in self.talkers.values():
            for t in ts:
                await t.stop()
        await close_all(self.members)


async def spread(cluster: LocalRedisCluster, nodes: list[tuple[Proc, int]],
                 interval: float = 0.05) -> Spread:
    """A room on each master; in each, a talker and a listener on each of the first two
    nodes (nicknames end in the node's number: ``t0a1`` talks in room0 on node 1).
    Returns once every member is in its room; the talkers are not started."""
    (_, port1), (_, port2) = nodes[:2]
    rooms = {port: names[0] for port, names in
             (await names_on_each_master(cluster, room_key)).items()}
    out = Spread(cluster, rooms)
    for i, room in enumerate(rooms.values()):
        for n, port in ((1, port1), (2, port2)):
            talker = await member(port, f"t{i}a{n}", [room])
            listener = await member(port, f"r{i}a{n}", [room])
            out.talkers.setdefault(room, []).append(Talker(talker, room, interval))
            out.receivers.setdefault(room, []).append(listener)
        last = out.receivers[room][-1].nick
        for m in [t.m for t in out.talkers[room]] + out.receivers[room]:
            await m.event("join", room=room, nick=last)  # everyone is in before talk
    return out
