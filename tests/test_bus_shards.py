"""The bus over two shards (node.bus): one link per shard, on two fakeredis servers.

A fake topology splits the slots between two servers (``a`` serves slots below
:data:`SPLIT`, ``b`` the rest); the rooms are chosen on either side.  What one link goes
through (a dead connection, a deaf subscription) must leave the other link and its rooms
alone, and a channel whose slot moves must follow it."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import fakeredis
import pytest

from node import envelope as env
from node.bus import Bus, Link
from node.topology import SLOTS, Shard, Topology, slot_of

from .helpers import wait_until
from .relaykit import TIMEOUT, Sink, config, running

HOME = "n1:home"
EVERYONE = "everyone"
EPOCH = "epoch"
SPLIT = SLOTS // 2


def rooms_on(side: str, count: int = 2) -> list[str]:
    """Channel names whose slots the ``side`` shard serves at first."""
    found = []
    for i in range(1000):
        channel = f"{{room{i}}}:ch"
        if (slot_of(channel) < SPLIT) == (side == "a"):
            found.append(channel)
            if len(found) == count:
                return found
    raise AssertionError("no such rooms")


A_ROOMS, B_ROOMS = rooms_on("a"), rooms_on("b")


class TwoShards(Topology):
    """Two fake servers splitting the slots; :meth:`refresh` applies ``next_map``."""

    cluster = True

    def __init__(self, a: fakeredis.FakeAsyncRedis, b: fakeredis.FakeAsyncRedis) -> None:
        super().__init__(a)
        self.a, self.b = Shard("a", a), Shard("b", b)
        self._set([(0, SPLIT - 1, self.a), (SPLIT, SLOTS - 1, self.b)])
        self.next_map: list[tuple[int, int, Shard]] | None = None
        self.refreshes = 0
        self.stale_refreshes = 0
        """Refreshes that still read the old map (a node that has not heard yet)."""

    async def refresh(self) -> bool:
        self.refreshes += 1
        if self.next_map is None or self.refreshes <= self.stale_refreshes:
            return False
        self._set(self.next_map)
        self.next_map = None
        return True


@contextlib.asynccontextmanager
async def two_shards() -> AsyncIterator[tuple[TwoShards, fakeredis.FakeServer,
                                               fakeredis.FakeServer]]:
    servers = fakeredis.FakeServer(), fakeredis.FakeServer()
    a, b = (fakeredis.FakeAsyncRedis(server=s) for s in servers)
    try:
        yield TwoShards(a, b), servers[0], servers[1]
    finally:
        await a.aclose()
        await b.aclose()


def make_bus(topology: Topology, sink: Sink, **overrides: Any) -> Bus:
    return Bus(topology, config("n1", **overrides), sink, home=HOME, channels=(EVERYONE,),
               epoch_key=EPOCH)


def listening(bus: Bus) -> contextlib.AbstractAsyncContextManager[None]:
    return running(bus.listen, bus.canary_loop, ready=bus.wait_ready)


def link_of(bus: Bus, name: str) -> Link:
    (link,) = [link for link in bus.links if link.name == name]
    return link


async def subscribe_rooms(bus: Bus) -> None:
    """Subscribe every room of both shards."""
    for channel in A_ROOMS + B_ROOMS:
        await bus.subscribe(channel)


async def received(sink: Sink, client: Any, channel: str,
                   nick: str) -> None:
    """Publish a join on ``channel`` through ``client`` and wait until it came."""
    event = env.RoomJoin(channel, nick)
    await client.spublish(channel, event.serialize())
    await sink.wait_for(lambda: event in sink.envelopes)


def watched(bus: Bus, monkeypatch: pytest.MonkeyPatch) -> tuple[Link, Link, Canaries]:
    """The links of shards a and b, their canaries watched."""
    a, b = link_of(bus, "a"), link_of(bus, "b")
    canaries = Canaries(monkeypatch)
    canaries.watch(a, b)
    return a, b, canaries


class Canaries:
    """Each canary that comes back through the links watched, as it comes back."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self._monkeypatch = monkeypatch
        self._back: dict[Link, asyncio.Queue[int]] = {}

    def watch(self, *links: Link) -> None:
        for link in links:
            queue = self._back[link] = asyncio.Queue()
            real = link._canary_back

            def back(canary: env.Canary, real: Any = real, queue: Any = queue) -> None:
                real(canary)
                queue.put_nowait(canary.seq)

            self._monkeypatch.setattr(link, "_canary_back", back)

    async def each(self) -> None:
        """Until a canary sent from now on came back through every link watched."""
        for link in list(self._back):
            await self.next(link)

    async def next(self, link: Link) -> None:
        """Until a canary sent from now on came back through ``link``."""
        queue = self._back[link]
        seq = link._canary_seq
        async with asyncio.timeout(TIMEOUT):
            while await queue.get() <= seq:
                pass


async def test_each_channel_is_subscribed_on_the_link_of_its_shard(
        monkeypatch: pytest.MonkeyPatch) -> None:
    async with two_shards() as (topology, _, _):
        sink = Sink()
        bus = make_bus(topology, sink, canary_interval=0.05)
        a, b, canaries = watched(bus, monkeypatch)
        assert bus.links[0] is link_of(bus, topology.shard_of(HOME).name)  # the home link
        async with listening(bus):
            await subscribe_rooms(bus)
            assert set(A_ROOMS) <= a.channels and set(B_ROOMS) <= b.channels
            assert not set(B_ROOMS) & a.channels and not set(A_ROOMS) & b.channels
            assert topology.shard_of(a.canary_channel) is topology.a
            assert topology.shard_of(b.canary_channel) is topology.b
            # a room's messages come from its own shard only
            await received(sink, topology.a.client, A_ROOMS[0], "ann")
            await received(sink, topology.b.client, B_ROOMS[0], "bob")
            assert await topology.a.client.spublish(B_ROOMS[0], b"x") == 0
            await canaries.each()
            assert bus.is_ready() == (True, [])
            # each shard has an epoch key of its own, in a slot it serves
            assert await topology.a.client.get(bus.epoch_key_of(topology.a)) is not None
            assert await topology.b.client.get(bus.epoch_key_of(topology.b)) is not None
        assert sink.resubscribed == 0


async def test_a_dead_link_is_repaired_without_touching_the_other(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Shard a goes away: its link retries and the node stays ready on b (the shard is
    down for everyone); once a is back, only a's rooms are reported for repair."""
    async with two_shards() as (topology, server_a, _):
        sink = Sink()
        bus = make_bus(topology, sink, canary_interval=0.05, ready_window=0.3,
                       reconnect_min=0.01, reconnect_max=0.05)
        a, b, canaries = watched(bus, monkeypatch)
        async with listening(bus):
            await subscribe_rooms(bus)
            await canaries.each()
            b_pubsub, a_pubsub = b.pubsub, a.pubsub
            assert a_pubsub is not None and a_pubsub.connection is not None
            server_a.connected = False  # a is gone: its link's connection breaks
            await a_pubsub.connection.disconnect()
            await wait_until(lambda: not a.answering(asyncio.get_running_loop().time()))
            ready, reasons = bus.is_ready()
            assert ready, reasons  # a shard down for every node keeps the node in
            assert reasons and all(r.startswith("shard a: ") for r in reasons)
            await received(sink, topology.b.client, B_ROOMS[1], "during")  # b never stopped
            server_a.connected = True
            await sink.wait_for(lambda: sink.resubscribed >= 1)
            await received(sink, topology.a.client, A_ROOMS[1], "after")
            await canaries.next(a)
            assert bus.is_ready() == (True, [])
            assert b.pubsub is b_pubsub and bus.stats.deaf_rebuilds == 0
        assert sink.resubscribed_which and all(
            which is not None and set(A_ROOMS) <= which and not which & set(B_ROOMS)
            for which in sink.resubscribed_which)


async def test_a_deaf_link_is_rebuilt_alone_and_takes_the_node_out_meanwhile(
        monkeypatch: pytest.MonkeyPatch) -> None:
    async with two_shards() as (topology, _, _):
        sink = Sink()
        bus = make_bus(topology, sink, canary_interval=0.05, ready_window=0.2,
                       reconnect_min=0.01, reconnect_max=0.02)
        a, b, canaries = watched(bus, monkeypatch)
        async with listening(bus):
            await subscribe_rooms(bus)
            await canaries.each()
            deaf, b_pubsub = b.pubsub, a.pubsub
            assert deaf is not None
            await deaf.sunsubscribe(b.canary_channel)  # no error: b's canaries stop coming
            await wait_until(lambda: not bus.is_ready()[0])
            ready, reasons = bus.is_ready()
            assert not ready  # b answers but its canaries do not come back: our fault
            assert "shard b: canary not coming back (deaf subscription)" in reasons
            await sink.wait_for(lambda: sink.resubscribed == 1)
            assert bus.stats.deaf_rebuilds == 1 and b.pubsub is not deaf
            assert a.pubsub is b_pubsub  # the other link was left alone
            await canaries.next(b)
            assert bus.is_ready() == (True, [])
            await received(sink, topology.b.client, B_ROOMS[0], "ann")
        (which,) = sink.resubscribed_which
        assert which is not None and set(B_ROOMS) <= which and not which & set(A_ROOMS)


@pytest.mark.parametrize(("pushed", "stale"), [(True, 0), (True, 2), (False, 0)],
                         ids=["sunsubscribe-push", "push-before-the-map", "periodic"])
async def test_a_channel_whose_slot_moved_follows_it(pushed: bool, stale: int) -> None:
    """The slot of one of a's rooms moves to b: Redis pushes a ``sunsubscribe`` (or the
    periodic refresh finds it; or the push comes before the map says so, and the map is
    read again until it does); the room is subscribed on b, confirmed, then reported for
    repair alone."""
    async with two_shards() as (topology, _, _):
        sink = Sink()
        bus = make_bus(topology, sink, canary_interval=0.05, reconnect_min=0.01,
                       topology_refresh=60.0 if pushed else 0.05)
        topology.stale_refreshes = stale
        a, b = link_of(bus, "a"), link_of(bus, "b")
        moving, staying = A_ROOMS
        async with listening(bus):
            await subscribe_rooms(bus)
            slot = slot_of(moving)
            topology.next_map = [(0, slot - 1, topology.a), (slot, slot, topology.b),
                                 (slot + 1, SPLIT - 1, topology.a),
                                 (SPLIT, SLOTS - 1, topology.b)]
            if pushed:  # as Redis does when the slot left: an unsubscribe nobody asked for
                pubsub = a.pubsub
                assert pubsub is not None
                await pubsub.execute_command("SUNSUBSCRIBE", moving)
            await sink.wait_for(lambda: sink.resubscribed == 1)
            assert moving in b.channels and moving not in a.channels
            assert staying in a.channels and bus.stats.moves == 1
            await received(sink, topology.b.client, moving, "moved")
            await received(sink, topology.a.client, staying, "stayed")
        assert sink.resubscribed_which == [frozenset({moving})]
        assert bus.channels >= {moving, staying, *B_ROOMS}


async def test_a_shard_that_serves_nothing_loses_its_link_and_a_new_one_gets_one(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A failover: every slot of a is now served by a third server (its promoted
    replica); a's rooms move to the new link, reported once it subscribed them."""
    async with two_shards() as (topology, _, _):
        server_c = fakeredis.FakeServer()
        c_client = fakeredis.FakeAsyncRedis(server=server_c)
        try:
            sink = Sink()
            bus = make_bus(topology, sink, canary_interval=0.05)
            async with listening(bus):
                await subscribe_rooms(bus)
                c = Shard("c", c_client)
                topology.next_map = [(0, SPLIT - 1, c), (SPLIT, SLOTS - 1, topology.b)]
                bus.suspect()
                await sink.wait_for(lambda: sink.resubscribed >= 1)
                assert {link.name for link in bus.links} == {"b", "c"}
                new = link_of(bus, "c")
                canaries = Canaries(monkeypatch)
                canaries.watch(new)
                assert set(A_ROOMS) <= new.channels
                await received(sink, c_client, A_ROOMS[0], "promoted")
                await canaries.next(new)
                assert bus.is_ready() == (True, [])
            reported = set().union(*(w or () for w in sink.resubscribed_which))
            assert reported - {HOME, EVERYONE} == set(A_ROOMS)
        finally:
            await c_client.aclose()


async def test_a_shard_that_lost_its_data_is_noticed_on_its_own(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Each shard has its own epoch key: b restarted empty is reported (once), though a
    kept everything."""
    async with two_shards() as (topology, _, _):
        sink = Sink()
        bus = make_bus(topology, sink, canary_interval=0.05)
        _, _, canaries = watched(bus, monkeypatch)
        async with listening(bus):
            for _ in range(2):  # a whole round after the first: both epochs are known
                await canaries.each()
            key_a, key_b = bus.epoch_key_of(topology.a), bus.epoch_key_of(topology.b)
            assert key_a != key_b
            kept = await topology.a.client.get(key_a)
            await topology.b.client.flushall()  # as a restart without persistence leaves it
            await sink.wait_for(lambda: sink.resets == 1)
            for _ in range(2):  # more rounds: nothing new to report
                await canaries.each()
        assert sink.resets == 1 and bus.stats.data_resets == 1
        assert await topology.a.client.get(key_a) == kept
        assert await topology.b.client.get(key_b) is not None
