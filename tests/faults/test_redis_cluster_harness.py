"""The local Redis Cluster the cluster fault cases run on: it starts with every slot
served and every replica following, its faults do what they say, and nothing of it is
left running afterwards."""

from __future__ import annotations

import asyncio
import itertools
import socket

import pytest
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import TimeoutError as RedisTimeoutError

from cli.redis_cluster import SLOTS, cluster_ports, slot_ranges

from ..helpers import wait_until
from .redis_cluster import (
    cluster_client,
    command,
    freeze,
    kill,
    local_cluster,
    master_serving,
    migrate_slot,
    names_on_each_master,
    pubsub_links,
    restart_empty,
    wait_for_new_master,
)

pytestmark = pytest.mark.redis_server


def room_key(name: str) -> str:
    return f"hubbub:{{room:{name}}}:hist"


def test_slot_ranges_cover_every_slot_once() -> None:
    for shards in (1, 2, 3, 5, 7):
        ranges = slot_ranges(shards)
        assert ranges[0][0] == 0 and ranges[-1][1] == SLOTS - 1
        assert all(a[1] + 1 == b[0] for a, b in itertools.pairwise(ranges))


def test_cluster_ports_leave_room_for_the_bus() -> None:
    ports = cluster_ports(6)
    assert len(set(ports)) == 6
    assert all(port + 10000 < 32768 for port in ports)


async def test_a_cluster_starts_serving_every_slot_and_stops_leaving_nothing() -> None:
    async with local_cluster(3, 1) as cluster:
        nodes = list(cluster.nodes)
        owners = await cluster.slot_owners()
        assert sorted(owners) == slot_ranges(3)
        assert sorted(set(owners.values())) == sorted(m.port for m in cluster.masters)
        for master in cluster.masters:
            (replica,) = cluster.replicas_of(master.port)
            info = await replica.client.info("replication")
            assert info["role"] == "slave" and info["master_port"] == master.port
        assert await cluster.node(nodes[0].port).client.config_get("maxmemory-policy") == {
            "maxmemory-policy": "noeviction"}
    for node in nodes:
        assert node.proc.poll() is not None
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as redis-server does
            s.bind(("127.0.0.1", node.port))  # free again


async def test_rooms_land_on_every_shard_and_a_cluster_client_reaches_them() -> None:
    async with local_cluster(3, 0) as cluster:
        spread = await names_on_each_master(cluster, room_key, per_master=2)
        assert len(spread) == 3
        client = RedisCluster.from_url(cluster.url)
        try:
            for port, names in spread.items():
                for name in names:
                    await client.xadd(room_key(name), {"m": name})
                    node = cluster.node(port).client
                    assert await node.xlen(room_key(name)) == 1  # stored on that master
        finally:
            await client.aclose()


async def test_a_killed_master_is_replaced_by_its_replica_with_its_data() -> None:
    async with local_cluster(3, 1, node_timeout_ms=1000) as cluster:
        spread = await names_on_each_master(cluster, room_key)
        victim = cluster.masters[1].port
        (name,) = spread[victim]
        master = cluster.node(victim).client
        await master.xadd(room_key(name), {"m": "before"})
        await command(cluster.node(victim), "WAIT", 1, 2000)  # the replica has it
        kill(cluster, victim)
        new, took = await wait_for_new_master(cluster, victim)
        assert new == cluster.replicas_of(victim)[0].port
        assert await cluster.master_of(room_key(name)) == new
        assert await cluster.node(new).client.xlen(room_key(name)) == 1
        assert took < 15, took


async def test_a_frozen_master_answers_nothing_until_thawed() -> None:
    async with local_cluster(2, 0, node_timeout_ms=5000) as cluster:
        port = cluster.masters[0].port
        probe = cluster.node(port).client
        with freeze(cluster, port), pytest.raises((TimeoutError, RedisTimeoutError)):
            async with asyncio.timeout(1.0):
                await probe.ping()
        await probe.connection_pool.disconnect()
        assert await probe.ping()
        await cluster.wait_ok()


async def test_a_slot_moves_with_its_keys_while_the_cluster_serves() -> None:
    async with local_cluster(2, 0) as cluster:
        key = room_key("busy")
        client = RedisCluster.from_url(cluster.url)
        try:
            for i in range(25):
                await client.xadd(key, {"n": str(i)})
            slot = await cluster.keyslot(key)
            source = await cluster.master_of_slot(slot)
            target = next(m.port for m in cluster.masters if m.port != source)
            writes = 0

            async def talk() -> None:  # a writer mid-move: ASK/MOVED are followed
                nonlocal writes
                await client.xadd(key, {"n": f"during{writes}"})
                writes += 1

            moved = await migrate_slot(cluster, slot, target, batch=1, between=talk)
            assert moved >= 1
            assert await cluster.master_of(key) == target
            await client.xadd(key, {"n": "after"})
            assert await cluster.node(target).client.xlen(key) == 25 + writes + 1
            assert await command(cluster.node(source), "CLUSTER", "COUNTKEYSINSLOT",
                                                     slot) == 0
        finally:
            await client.aclose()


async def test_a_shard_restarted_empty_serves_its_slots_again_with_no_data() -> None:
    async with local_cluster(3, 1) as cluster:
        victim = await master_serving(cluster, None, serving=False)
        (name,) = (await names_on_each_master(cluster, room_key))[victim]
        other = next(m.port for m in cluster.masters if m.port != victim)
        (kept,) = (await names_on_each_master(cluster, room_key))[other]
        async with cluster_client(cluster) as client:
            await client.xadd(room_key(name), {"m": "before"})
            await client.xadd(room_key(kept), {"m": "before"})
            before = await cluster.slot_owners()
            await restart_empty(cluster, victim)
            assert await cluster.slot_owners() == before  # same masters, same slots
            for replica in cluster.replicas_of(victim):
                info = await replica.client.info("replication")
                assert info["role"] == "slave" and info["master_port"] == victim
            assert await cluster.node(victim).client.exists(room_key(name)) == 0
            assert await client.xlen(room_key(kept)) == 1  # the other shards kept theirs
            await client.xadd(room_key(name), {"m": "after"})
            assert await client.xlen(room_key(name)) == 1


async def test_the_cluster_wide_keys_masters_and_the_pubsub_links_on_each() -> None:
    async with local_cluster(3, 0) as cluster:
        nicks = await master_serving(cluster, "nicks")
        assert nicks == await cluster.master_of("hubbub:{nicks}:lease:alice")
        quiet = await master_serving(cluster, "nicks", serving=False)
        assert quiet != nicks
        masters = {m.port for m in cluster.masters}
        assert set(await pubsub_links(cluster)) == masters
        listener = cluster.node(quiet).client.pubsub()
        try:
            (name,) = (await names_on_each_master(cluster, room_key))[quiet]
            await listener.execute_command("SSUBSCRIBE", room_key(name))

            async def subscribed() -> bool:  # the server's view: no event to await
                return (await pubsub_links(cluster))[quiet] == 1

            await wait_until(subscribed, timeout=5)
        finally:
            await listener.aclose()  # type: ignore[no-untyped-call]
        assert all(n == 0 for p, n in (await pubsub_links(cluster)).items() if p != quiet)
