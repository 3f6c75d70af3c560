"""The cluster variant of docs/SECURITY.md's Redis user: both ``ACL SETUSER hubbub``
lines, run on every node of a real local cluster, let a cluster client store and read
hubbub's keys on every shard, publish and receive on sharded channels, and follow a slot
move, and let hubbub nodes run on the cluster as that user (chat in a room on every
master, and across a slot move), with nothing refused in any node's ``ACL LOG``."""

from __future__ import annotations

import asyncio
import re
import shlex
from pathlib import Path

import pytest
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from cli.redis_cluster import LocalRedisCluster

from ..helpers import text_user
from .harness import base_args, stop_all
from .redis_cluster import (
    command,
    local_cluster,
    migrate_slot,
    names_on_each_master,
    start_cluster_nodes,
)

pytestmark = pytest.mark.redis_server

DOC = Path(__file__).resolve().parents[2] / "docs" / "SECURITY.md"
PASSWORD = "cluster-acl-password"


def acl_lines() -> list[list[str]]:
    """Each ``ACL SETUSER hubbub …`` line of the document, as arguments."""
    lines = re.findall(r"^ACL SETUSER hubbub .*$", DOC.read_text(), re.M)
    assert len(lines) == 2, "docs/SECURITY.md should have the rules and the cluster variant"
    return [[a.replace(">CHANGE-ME", f">{PASSWORD}") for a in shlex.split(line)]
            for line in lines]


async def create_user(cluster: LocalRedisCluster) -> None:
    for node in cluster.nodes:
        for line in acl_lines():
            await command(node, *line)
        await command(node, "ACL", "LOG", "RESET")


async def refusals(cluster: LocalRedisCluster) -> list[str]:
    found = []
    for node in cluster.nodes:
        for entry in await command(node, "ACL", "LOG"):
            if entry.get("username") == "hubbub":
                found.append(f"{node.address}: {entry['reason']} {entry['object']}")
    return found


def room_key(name: str) -> str:
    return f"hubbub:{{room:{name}}}:hist"


async def test_the_cluster_variant_is_enough_for_a_cluster_client() -> None:
    async with local_cluster(3, 1) as cluster:
        await create_user(cluster)
        spread = await names_on_each_master(cluster, room_key)
        client = RedisCluster.from_url(
            f"redis://hubbub:{PASSWORD}@{cluster.masters[0].address}/0")
        try:
            for port, (name,) in spread.items():
                channel = f"hubbub:{{room:{name}}}:ch"
                listener = Redis(port=port, username="hubbub", password=PASSWORD)
                pubsub = listener.pubsub()
                try:
                    await pubsub.execute_command("SSUBSCRIBE", channel)
                    await client.xadd(room_key(name), {"e": "x"})
                    assert len(await client.xrange(room_key(name)) or []) == 1
                    assert await client.execute_command("SPUBLISH", channel, "hi") == 1
                    async with asyncio.timeout(5):
                        while True:  # the subscription confirmation, then the message
                            message = await pubsub.get_message(timeout=1.0)
                            if message and message["type"] == "smessage":
                                break
                    assert message["data"] == b"hi"
                finally:
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
                    await listener.aclose()
            moving = room_key(spread[cluster.masters[0].port][0])
            slot = await cluster.keyslot(moving)
            await migrate_slot(cluster, slot, cluster.masters[1].port)
            await client.xadd(moving, {"e": "after the move"})  # MOVED followed
            assert len(await client.xrange(moving) or []) == 2
        finally:
            await client.aclose()
        assert await refusals(cluster) == []


async def test_nodes_on_a_cluster_need_nothing_beyond_the_two_lines() -> None:
    """Two nodes on the cluster as the ``hubbub`` user of both lines: users chat across
    nodes in a room on every master, and on after one room's slot moved, and no node of
    the cluster refused the user anything (``ACL LOG``)."""
    async with local_cluster(3, 1) as cluster:
        await create_user(cluster)
        spread = await names_on_each_master(cluster, room_key)
        nodes = await start_cluster_nodes(cluster, ["a1", "a2"], *base_args(),
                                          user=("hubbub", PASSWORD))
        try:
            (_, port1), (_, port2) = nodes
            alice = await text_user(port1, "alice")
            bob = await text_user(port2, "bob")
            rooms = [names[0] for names in spread.values()]

            async def chat(room: str, text: str) -> None:
                # bob joins once alice is in: joined first, he would be no news to her
                await alice.send(f"/join {room}")
                await alice.expect(f"* alice joined {room}")
                await bob.send(f"/join {room}")
                await alice.expect(f"* bob joined {room}")
                await alice.send(text)
                assert await bob.expect(f"[{room}]") == f"[{room}] alice: {text}"

            for room in rooms:
                await chat(room, f"hello {room}")
            moving = rooms[0]
            slot = await cluster.keyslot(room_key(moving))
            source = await cluster.master_of_slot(slot)
            await migrate_slot(cluster, slot,
                               next(m.port for m in cluster.masters if m.port != source))
            await alice.send(f"/join {moving}")
            await alice.send("after the move")
            assert await bob.expect(f"[{moving}]") == f"[{moving}] alice: after the move"
        finally:
            await stop_all(p for p, _ in nodes)
        assert await refusals(cluster) == []
