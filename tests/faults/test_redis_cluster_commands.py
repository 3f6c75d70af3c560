"""A node started with --redis-cluster on a real local Redis Cluster: every command goes
to its keys' master.  Names are claimed, rooms on three different masters joined, listed,
and their messages stored in each room's stream on its own master (read there with
XRANGE); with one master frozen (SIGSTOP), messages to rooms on the other masters are
stored at once while the frozen master's are held in its outbox, and stored once it
thaws."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

import pytest

from cli.redis_client import connect_redis
from cli.redis_cluster import LocalRedisCluster
from cli.run_node import discover_cluster, shard_url
from node import envelope as env
from node.keys import Keys
from node.server import ChatNode

from ..helpers import TIMEOUT, JsonClient, json_user, node_config, wait_until
from .redis_cluster import freeze, kill, local_cluster, names_on_each_master, wait_for_new_master

pytestmark = pytest.mark.redis_server

KEYS = Keys()


@contextlib.asynccontextmanager
async def cluster_node(cluster: LocalRedisCluster, node_id: str = "n1",
                       **overrides: Any) -> AsyncIterator[ChatNode]:
    """A ChatNode on the cluster, its shards found as ``hubbub node --redis-cluster``
    finds them; stopped on exit."""
    import asyncio

    config = node_config(node_id, redis_url=cluster.url, redis_cluster=True, **overrides)
    seed = connect_redis(config.redis_url, config.redis_timeout, config.redis_pool)
    topology = await discover_cluster(config, seed)
    node = ChatNode(config, topology)
    started: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(node.run(started=started.set_result))
    try:
        async with asyncio.timeout(TIMEOUT):
            await started
        yield node
    finally:
        node.stop()
        async with asyncio.timeout(TIMEOUT):
            await task
        await topology.aclose()
        await seed.aclose(close_connection_pool=True)


async def stored(cluster: LocalRedisCluster, port: int, room: str) -> list[str]:
    """The texts of the messages in ``room``'s stream, read on the master ``port``."""
    entries: Any = await cluster.node(port).client.xrange(KEYS.history(room))
    out = []
    for _, fields in entries:
        parsed = env.parse(fields.get("e") or fields[b"e"])
        if isinstance(parsed, env.RoomMsg):
            out.append(parsed.text)
    return out


async def join(client: JsonClient, room: str) -> None:
    await client.op("join", room=room, ref=f"j-{room}")
    await client.event("ack", ref=f"j-{room}")


def test_a_shard_url_keeps_the_credentials_and_database() -> None:
    assert shard_url("rediss://u:p@db.example:6379/0", "10.0.0.2", 7001) == \
        "rediss://u:p@10.0.0.2:7001/0"
    assert shard_url("redis://127.0.0.1:7000/0", "::1", 7002) == "redis://[::1]:7002/0"


async def test_names_rooms_and_messages_go_to_each_key_s_master() -> None:
    async with local_cluster(3, 0) as cluster:
        spread = await names_on_each_master(cluster, KEYS.members)
        rooms = {port: names[0] for port, names in spread.items()}
        assert len(rooms) == 3
        async with cluster_node(cluster, "n1") as a, cluster_node(cluster, "n2") as b:
            assert {s.name.rpartition(":")[2] for s in a.topology.shards} == \
                {str(p) for p in rooms}
            alice = await json_user(a.port or 0, "alice")
            bob = await json_user(b.port or 0, "bob")
            for room in rooms.values():
                await join(alice, room)
                await join(bob, room)
            for room in rooms.values():
                await alice.op("say", room=room, text=f"hi {room}", ref=f"s-{room}")
                await alice.event("ack", ref=f"s-{room}")
            for port, room in rooms.items():
                assert await stored(cluster, port, room) == [f"hi {room}"]
                assert {_text(n) for n in await cluster.node(port).client.hkeys(
                    KEYS.members(room))} == {"alice", "bob"}
            await bob.op("rooms", ref="r")
            listing = (await bob.event("rooms", ref="r"))["rooms"]
            assert {r["room"]: r["members"] for r in listing} == {
                "lobby": 2, **dict.fromkeys(rooms.values(), 2)}
            first = next(iter(rooms.values()))
            await bob.op("part", room=first, ref="p")
            await bob.event("ack", ref="p")
            await alice.op("who", room=first, ref="w")
            assert (await alice.event("who", ref="w"))["nicks"] == ["alice"]
            await alice.op("history", room=first, limit=5, ref="h")
            history = (await alice.event("history", ref="h"))["messages"]
            assert [m["text"] for m in history] == [f"hi {first}"]
            nicks_master = await cluster.master_of(KEYS.nicks)
            assert {_text(n) for n in await cluster.node(nicks_master).client.smembers(
                KEYS.nicks)} == {"alice", "bob"}


async def a_room_per_master(cluster: LocalRedisCluster) -> tuple[dict[int, str], int]:
    """A room on each master (master port -> room), and a master that holds rooms only:
    not ``{nicks}``, not the room index, not the one the URL names."""
    spread = await names_on_each_master(cluster, KEYS.members)
    rooms = {port: names[0] for port, names in spread.items()}
    busy = {await cluster.master_of(KEYS.nicks), await cluster.master_of(KEYS.rooms_live),
            urlsplit(cluster.url).port}
    return rooms, next(p for p in rooms if p not in busy)


async def two_in_every_room(node: ChatNode, rooms: dict[int, str]
                            ) -> tuple[JsonClient, JsonClient]:
    """alice and bob on ``node``, both in every room of ``rooms``."""
    alice = await json_user(node.port or 0, "alice")
    bob = await json_user(node.port or 0, "bob")
    for room in rooms.values():
        await join(alice, room)
        await join(bob, room)
    return alice, bob


async def test_a_frozen_master_holds_only_its_own_rooms_messages() -> None:
    async with local_cluster(3, 0) as cluster:
        rooms, frozen = await a_room_per_master(cluster)
        async with cluster_node(cluster, "n1", outbox_seconds=20.0) as node:
            alice, bob = await two_in_every_room(node, rooms)
            with freeze(cluster, frozen):
                await alice.op("say", room=rooms[frozen], text="held", ref="held")
                await wait_until(lambda: node.relay.publisher.held, timeout=TIMEOUT)
                for port, room in rooms.items():
                    if port == frozen:
                        continue
                    await bob.op("say", room=room, text=f"flowing {room}", ref=f"f-{room}")
                    await bob.event("ack", ref=f"f-{room}")
                    assert await stored(cluster, port, room) == [f"flowing {room}"]
                assert node.relay.publisher.held == {f"127.0.0.1:{frozen}": 1}
            ack = await alice.event("ack", ref="held", timeout=TIMEOUT * 3)
            assert ack.get("id")
            assert await stored(cluster, frozen, rooms[frozen]) == ["held"]
            await wait_until(lambda: not node.relay.publisher.held)
            assert dataclasses.asdict(node.relay.publisher.stats)["outbox_expired"] == 0


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


async def test_a_killed_master_s_rooms_are_held_then_stored_on_its_promoted_replica(
        ) -> None:
    async with local_cluster(3, 1) as cluster:
        rooms, victim = await a_room_per_master(cluster)
        async with cluster_node(cluster, "n1", outbox_seconds=30.0) as node:
            alice, bob = await two_in_every_room(node, rooms)
            kill(cluster, victim)
            await alice.op("say", room=rooms[victim], text="held", ref="held")
            await wait_until(lambda: node.relay.publisher.held, timeout=TIMEOUT)
            for port, room in rooms.items():
                if port != victim:  # the other shards' rooms flow meanwhile
                    await bob.op("say", room=room, text=f"flowing {room}", ref=f"f-{room}")
                    await bob.event("ack", ref=f"f-{room}")
                    assert await stored(cluster, port, room) == [f"flowing {room}"]
            new, _ = await wait_for_new_master(cluster, victim)
            # the promoted replica has no scripts: loaded there on first use (NOSCRIPT)
            ack = await alice.event("ack", ref="held", timeout=TIMEOUT * 6)
            assert ack.get("id")
            assert await stored(cluster, new, rooms[victim]) == ["held"]
            carol = await json_user(node.port or 0, "carol")
            await join(carol, rooms[victim])
            await alice.op("who", room=rooms[victim], ref="w")
            assert (await alice.event("who", ref="w"))["nicks"] == ["alice", "bob", "carol"]


async def test_the_account_command_finds_the_accounts_master_of_a_cluster() -> None:
    from node.security import Account, AccountStore

    from ..integration.procs import hubbub_exit

    async with local_cluster(3, 0) as cluster:
        config = node_config("n1", redis_url=cluster.url, redis_cluster=True)
        seed = connect_redis(config.redis_url, config.redis_timeout, config.redis_pool)
        topology = await discover_cluster(config, seed)
        try:
            store = AccountStore(topology, KEYS)
            assert await store.create("zoe", Account("Zoe", "$argon2id$x", 1.7e9))
            code, out = await hubbub_exit("account", "list", "--redis-url", cluster.url)
            assert code == 0 and out.startswith("Zoe\t"), out
            code, out = await hubbub_exit("account", "delete", "Zoe", "--redis-url",
                                          cluster.url)
            assert code == 0, out
            assert await store.get("zoe") is None
        finally:
            await topology.aclose()
            await seed.aclose(close_connection_pool=True)
