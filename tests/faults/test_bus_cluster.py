"""The bus on a real local Redis Cluster: one link per master, rooms subscribed where
their slots live, and a link that follows a master's promoted replica while the healthy
links go on as if nothing happened."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from cli.redis_cluster import LocalRedisCluster
from node import envelope as env
from node.bus import Bus, Link
from node.keys import Keys
from node.topology import ClusterTopology

from ..helpers import wait_until
from ..relaykit import TIMEOUT, Sink, config, running
from .redis_cluster import (
    kill,
    local_cluster,
    migrate_slot,
    names_on_each_master,
    wait_for_new_master,
)

pytestmark = pytest.mark.redis_server

KEYS = Keys()


def connect(host: str, port: int) -> Redis:
    return Redis(host=host, port=port, socket_timeout=2.0, socket_connect_timeout=2.0,
                 retry=Retry(NoBackoff(), 0))


def make_bus(topology: ClusterTopology, sink: Sink, topology_refresh: float = 0.5,
             **overrides: Any) -> Bus:
    cfg = config("n1", canary_interval=0.1, ready_window=1.0, reconnect_min=0.05,
                 reconnect_max=0.5, topology_refresh=topology_refresh, **overrides)
    return Bus(topology, cfg, sink, home=KEYS.node_channel("n1"), channels=(KEYS.events,),
               epoch_key=KEYS.epoch,
               canary_channel=lambda k: KEYS.canary_channel("n1", k),
               shard_epoch_key=KEYS.shard_epoch)


def link_named(bus: Bus, name: str) -> Link | None:
    return next((link for link in bus.links if link.name == name), None)


@contextlib.asynccontextmanager
async def rooms_on_a_cluster(shards: int, replicas: int) -> AsyncIterator[
        tuple[LocalRedisCluster, dict[int, str], ClusterTopology]]:
    """A local cluster, a room on each master (master port -> room) and the slot map as
    a node reads it."""
    async with local_cluster(shards, replicas) as cluster:
        rooms = {port: names[0] for port, names in
                 (await names_on_each_master(cluster, KEYS.room_channel)).items()}
        seed = connect("127.0.0.1", cluster.masters[0].port)
        topology = await ClusterTopology.discover(seed, connect)
        try:
            yield cluster, rooms, topology
        finally:
            await topology.aclose()
            await seed.aclose()


async def said(sink: Sink, client: Any, room: str, nick: str) -> None:
    """``nick`` joins ``room`` on the shard ``client`` talks to; waits until it came."""
    event = env.RoomJoin(room, nick)
    await client.spublish(KEYS.room_channel(room), event.serialize())
    async with asyncio.timeout(TIMEOUT):
        await sink.wait_for(lambda: event in sink.envelopes)


async def test_three_links_and_one_follows_a_failover() -> None:
    async with rooms_on_a_cluster(3, 1) as (cluster, rooms, topology):
        sink = Sink()
        bus = make_bus(topology, sink)
        assert {link.name for link in bus.links} == {f"127.0.0.1:{p}" for p in rooms}
        async with running(bus.listen, bus.canary_loop, ready=bus.wait_ready):
            for room in rooms.values():
                await bus.subscribe(KEYS.room_channel(room))
            for port, room in rooms.items():  # each on the link of its master
                link = link_named(bus, f"127.0.0.1:{port}")
                assert link is not None and KEYS.room_channel(room) in link.channels
                await said(sink, cluster.node(port).client, room, f"before{port}")
            await wait_until(lambda: bus.is_ready()[0])

            # the master of one room (not the seed's) dies; its replica takes over
            victim = next(p for p in rooms if p != cluster.masters[0].port)
            healthy = {p: link_named(bus, f"127.0.0.1:{p}") for p in rooms if p != victim}
            pubsubs = {p: link.pubsub for p, link in healthy.items() if link}
            kill(cluster, victim)
            for port in healthy:  # the other shards never stop delivering
                await said(sink, cluster.node(port).client, rooms[port], f"during{port}")
            new, _ = await wait_for_new_master(cluster, victim)
            moved = KEYS.room_channel(rooms[victim])
            await wait_until(lambda: (link := link_named(bus, f"127.0.0.1:{new}"))
                             is not None and moved in link.channels and link.ready,
                             timeout=30)
            await sink.wait_for(lambda: any(w and moved in w
                                            for w in sink.resubscribed_which))
            await said(sink, cluster.node(new).client, rooms[victim], "promoted")
            assert link_named(bus, f"127.0.0.1:{victim}") is None
            for port, link in healthy.items():
                assert link is not None and link.pubsub is pubsubs[port]
                await said(sink, cluster.node(port).client, rooms[port], f"after{port}")
            await wait_until(lambda: bus.is_ready()[0], timeout=10)
        # only the moved room was reported for repair, never the healthy shards' rooms
        reported = set().union(*(w or () for w in sink.resubscribed_which))
        assert moved in reported
        assert not reported & {KEYS.room_channel(rooms[p]) for p in healthy}


async def test_a_room_whose_slot_migrates_follows_it_on_the_push() -> None:
    """Redis 7 pushes ``sunsubscribe`` to the room's subscribers when its slot is given to
    another master: the bus moves the room to that master's link at once (the periodic
    refresh is an hour away), reports it for repair, and delivers from there."""
    async with rooms_on_a_cluster(3, 0) as (cluster, rooms, topology):
        sink = Sink()
        bus = make_bus(topology, sink, topology_refresh=3600.0)
        async with running(bus.listen, bus.canary_loop, ready=bus.wait_ready):
            for room in rooms.values():
                await bus.subscribe(KEYS.room_channel(room))
            source, target = list(rooms)[:2]
            room = rooms[source]
            channel = KEYS.room_channel(room)
            await said(sink, cluster.node(source).client, room, "before")
            await migrate_slot(cluster, await cluster.keyslot(channel), target)
            await sink.wait_for(lambda: any(w and channel in w
                                            for w in sink.resubscribed_which))
            moved_to = link_named(bus, f"127.0.0.1:{target}")
            assert moved_to is not None and channel in moved_to.channels
            await said(sink, cluster.node(target).client, room, "after")
            assert bus.stats.moves == 1
        assert sink.resubscribed_which == [frozenset({channel})]


async def test_the_upgrade_mode_hears_classic_publishes_and_follows_a_migration() -> None:
    """--bus-format 1 on a cluster: a room is subscribed classic too, on its shard's link,
    so a classic PUBLISH made on any master is heard (Redis broadcasts it); when the
    room's slot migrates, both halves move to the new master's link and the old link
    drops its classic half (else it would hear every later event once more)."""
    async with rooms_on_a_cluster(3, 0) as (cluster, rooms, topology):
        sink = Sink()
        bus = make_bus(topology, sink, topology_refresh=3600.0, bus_format=1)
        async with running(bus.listen, bus.canary_loop, ready=bus.wait_ready):
            for room in rooms.values():
                await bus.subscribe(KEYS.room_channel(room))
            source, target, other = list(rooms)
            room = rooms[source]
            channel = KEYS.room_channel(room)
            old = env.RoomJoin(room, "old")  # classic, from another master
            await cluster.node(other).client.publish(channel, old.serialize())
            async with asyncio.timeout(TIMEOUT):
                await sink.wait_for(lambda: old in sink.envelopes)
            await migrate_slot(cluster, await cluster.keyslot(channel), target)
            await sink.wait_for(lambda: any(w and channel in w
                                            for w in sink.resubscribed_which))
            moved_to = link_named(bus, f"127.0.0.1:{target}")
            left = link_named(bus, f"127.0.0.1:{source}")
            assert moved_to is not None and left is not None
            assert channel in moved_to.channels and channel not in left.channels
            await said(sink, cluster.node(target).client, room, "after")
            later = env.RoomJoin(room, "old again")
            await cluster.node(other).client.publish(channel, later.serialize())
            async with asyncio.timeout(TIMEOUT):
                await sink.wait_for(lambda: later in sink.envelopes)
            pubsub = left.pubsub
            assert pubsub is not None
            await wait_until(lambda: channel.encode() not in pubsub.channels
                             and channel not in pubsub.channels)
            target_pubsub = moved_to.pubsub
            assert target_pubsub is not None
            assert channel.encode() in target_pubsub.channels
            assert channel.encode() in target_pubsub.shard_channels
