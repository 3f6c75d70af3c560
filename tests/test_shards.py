"""Commands routed to their shard, on two fakeredis servers serving different slots: the
routing helper, the join/part steps split over ``{rooms}``, ``{room:R}`` and ``{nicks}``
with one part failing, the publisher's per-shard queues and outboxes, and NOSCRIPT
handled on the shard that said it.

Shard A serves slots 0-8191 (``{rooms}``, rooms ``dev`` and ``ops``), shard B 8192-16383
(``{nicks}``, rooms ``lobby`` and ``r1``).  A shard is made unreachable with fakeredis's
``FakeServer.connected = False`` (every command raises ConnectionError)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import fakeredis
import pytest
from redis.exceptions import ClusterDownError, MovedError, RedisClusterException, ResponseError

from node import envelope as env
from node.errors import RelayUnavailable, RoomsFull
from node.keys import Keys
from node.leases import Leases, NameInfo
from node.publisher import Publisher
from node.redis_errors import moving, transient, translated
from node.rooms import RoomStore
from node.topology import Shard, ShardPipes, SlotUnserved, Topology, slot_of

from .helpers import wait_until
from .relaykit import Sink, config

KEYS = Keys()
SPLIT = 8191


@dataclass
class TwoShards:
    topology: Topology
    a: fakeredis.FakeServer
    b: fakeredis.FakeServer
    ra: fakeredis.FakeAsyncRedis
    rb: fakeredis.FakeAsyncRedis


@pytest.fixture
async def shards() -> AsyncIterator[TwoShards]:
    a, b = fakeredis.FakeServer(), fakeredis.FakeServer()
    ra, rb = fakeredis.FakeAsyncRedis(server=a), fakeredis.FakeAsyncRedis(server=b)
    topology = Topology(ra)
    topology._set([(0, SPLIT, Shard("a", ra)), (SPLIT + 1, 16383, Shard("b", rb))])
    yield TwoShards(topology, a, b, ra, rb)
    await ra.aclose()
    await rb.aclose()


def test_the_keys_used_here_sit_where_the_docstring_says() -> None:
    assert slot_of(KEYS.rooms_live) <= SPLIT < slot_of(KEYS.nicks)
    assert slot_of(KEYS.members("dev")) <= SPLIT and slot_of(KEYS.members("ops")) <= SPLIT
    assert slot_of(KEYS.members("lobby")) > SPLIT and slot_of(KEYS.members("r1")) > SPLIT


def member(nick: str, *rooms: str) -> NameInfo:
    return NameInfo(nick, f"n1/{nick.lower()}", "n1", rooms)


async def claim(shards: TwoShards, info: NameInfo) -> None:
    leases = Leases(shards.topology, config("n1"), KEYS, Sink(), _no_rooms)
    assert (await leases.claim(info.nick.lower(), info)).ok


async def _no_rooms(*_: Any) -> None:
    return None


# --------------------------------------------------------------------------- routing


async def test_shard_pipes_send_one_pipeline_per_shard_and_answer_in_queued_order(
        shards: TwoShards, monkeypatch: pytest.MonkeyPatch) -> None:
    sent: list[int] = []
    for client in (shards.ra, shards.rb):
        real = client.pipeline

        def pipeline(*args: Any, _real: Any = real, **kwargs: Any) -> Any:
            sent.append(1)
            return _real(*args, **kwargs)

        monkeypatch.setattr(client, "pipeline", pipeline)
    pipes = ShardPipes(shards.topology)
    for room in ("dev", "lobby", "ops", "r1"):
        pipes.on(KEYS.topic(room)).set(KEYS.topic(room), room)
    for room in ("dev", "lobby", "ops", "r1"):
        pipes.on(KEYS.topic(room)).get(KEYS.topic(room))
    replies = await pipes.execute()
    assert replies[4:] == [b"dev", b"lobby", b"ops", b"r1"]
    assert len(sent) == 2  # one pipeline per shard, whatever the number of commands
    assert await shards.ra.get(KEYS.topic("dev")) == b"dev"
    assert await shards.rb.get(KEYS.topic("lobby")) == b"lobby"
    assert not await shards.ra.exists(KEYS.topic("lobby"))


async def test_a_shard_down_fails_the_step_after_the_other_shard_did_its_part(
        shards: TwoShards) -> None:
    shards.b.connected = False
    pipes = ShardPipes(shards.topology)
    pipes.on(KEYS.topic("dev")).set(KEYS.topic("dev"), "x")
    pipes.on(KEYS.topic("lobby")).set(KEYS.topic("lobby"), "x")
    with pytest.raises(RelayUnavailable) as info:
        async with translated("test"):
            await pipes.execute()
    assert transient(info.value)
    assert await shards.ra.get(KEYS.topic("dev")) == b"x"


# --------------------------------------------------------------------------- rooms


async def test_joins_and_parts_route_each_key_to_its_shard(shards: TwoShards) -> None:
    store = RoomStore(shards.topology, config("n1"), KEYS)
    ann = member("Ann", "dev", "lobby")
    await claim(shards, ann)
    assert (await store.join("dev", "ann", ann)).created
    assert (await store.join("lobby", "ann", ann)).created
    assert await shards.ra.hgetall(KEYS.members("dev")) == {b"ann": b"Ann"}
    assert await shards.rb.hgetall(KEYS.members("lobby")) == {b"ann": b"Ann"}
    assert await shards.rb.hget(KEYS.info, "ann")  # the name's entry on {nicks}'s shard
    assert not await shards.ra.exists(KEYS.info)
    assert await store.rooms() == ([("dev", 1), ("lobby", 1)], False)
    assert await store.who("lobby") == ["Ann"]
    await store.leave_all("ann", ann.token, "Ann", ["dev", "lobby"], "bye")
    assert await store.rooms() == ([], False)
    assert set(await shards.ra.zrange(KEYS.rooms_idle, 0, -1)) == {b"dev", b"lobby"}


async def test_a_membership_change_whose_index_step_failed_is_filed_by_the_reconcile(
        shards: TwoShards) -> None:
    store = RoomStore(shards.topology, config("n1"), KEYS)
    ann = member("Ann", "lobby")
    await claim(shards, ann)
    await store.join("lobby", "ann", ann)
    bob = member("Bob", "lobby")
    await claim(shards, bob)
    shards.a.connected = False  # the {rooms} shard is away; lobby and {nicks} are not
    await store.join("lobby", "bob", bob)  # the membership is done: the join succeeds
    assert sorted(await store.who("lobby")) == ["Ann", "Bob"]
    assert store.index_failures == 1 and store._unindexed == {"lobby"}
    shards.a.connected = True
    assert await store.rooms() == ([("lobby", 1)], False)  # the index is behind
    assert await store.reconcile() >= 1
    assert await store.rooms() == ([("lobby", 2)], False)
    assert not store._unindexed


async def test_the_reconcile_unlists_a_room_left_listed_without_members(
        shards: TwoShards) -> None:
    store = RoomStore(shards.topology, config("n1"), KEYS)
    ann = member("Ann", "dev")
    await claim(shards, ann)
    await store.join("dev", "ann", ann)
    # the room emptied but its index step never ran (the node died between the steps)
    await shards.ra.hdel(KEYS.members("dev"), "ann")
    assert await store.rooms() == ([("dev", 1)], False)
    await store.reconcile()
    assert await store.rooms() == ([], False)


async def test_the_reconcile_walks_every_idle_room_a_page_at_a_time(
        shards: TwoShards) -> None:
    store = RoomStore(shards.topology, config("n1"), KEYS)
    ann = member("Ann", "dev", "ops", "lobby")
    await claim(shards, ann)
    for room in ("dev", "ops", "lobby"):
        await store.join(room, "ann", ann)
    await store.leave_all("ann", ann.token, "Ann", ["dev", "ops"], None)  # idle, rightly
    # lobby filed as idle by a step that crossed a join (it has a member), scored last
    await shards.ra.hdel(KEYS.rooms_count, "lobby")
    await shards.ra.zrem(KEYS.rooms_live, "lobby")
    await shards.ra.zadd(KEYS.rooms_idle, {"lobby": 2**50})
    for _ in range(3):
        await store.reconcile(sample=1)
    assert await store.rooms() == ([("lobby", 1)], False)


async def test_a_join_while_the_room_index_is_away_joins_existing_rooms_only(
        shards: TwoShards) -> None:
    store = RoomStore(shards.topology, config("n1", max_rooms=10), KEYS)
    ann, bob = member("Ann", "lobby"), member("Bob", "lobby", "r1")
    await claim(shards, ann)
    await claim(shards, bob)
    await store.join("lobby", "ann", ann)
    shards.a.connected = False  # {rooms} (and the reservation under the cap) away
    await store.join("lobby", "bob", bob)  # exists: joined
    assert sorted(await store.who("lobby")) == ["Ann", "Bob"]
    with pytest.raises(RelayUnavailable):
        await store.join("r1", "bob", bob)  # would be new: the cap cannot be checked
    assert not await shards.rb.exists(KEYS.members("r1"), KEYS.history("r1"))
    shards.a.connected = True
    await store.reconcile()
    assert await store.rooms() == ([("lobby", 2)], False)


async def test_the_room_cap_is_kept_in_the_index_and_a_refused_join_changes_nothing(
        shards: TwoShards) -> None:
    store = RoomStore(shards.topology, config("n1", max_rooms=1), KEYS)
    ann = member("Ann", "dev", "lobby")
    await claim(shards, ann)
    await store.join("dev", "ann", ann)
    with pytest.raises(RoomsFull):
        await store.join("lobby", "ann", ann)
    assert not await shards.rb.exists(KEYS.members("lobby"), KEYS.history("lobby"))
    info = NameInfo.parse(await shards.rb.hget(KEYS.info, "ann") or "")
    assert info.rooms == ("dev",)  # put back as it was


async def test_a_rename_a_shard_missed_is_finished_by_the_reconcile(
        shards: TwoShards) -> None:
    store = RoomStore(shards.topology, config("n1"), KEYS)
    ann = member("Ann", "dev", "lobby", "r1")
    await claim(shards, ann)
    for room in ("dev", "lobby", "r1"):
        await store.join(room, "ann", ann)
    # the name moved on {nicks} first; the user left r1 before the rooms caught up
    await claim(shards, member("Anna", "dev", "lobby"))
    shards.b.connected = False  # lobby's and r1's shard
    with pytest.raises(RelayUnavailable):
        await store.rename_in_rooms("ann", "anna", "Ann", "Anna", ["dev", "lobby", "r1"],
                                    "s/ann", ann.token)
    assert await store.who("dev") == ["Anna"]
    shards.b.connected = True
    assert await store.who("lobby") == ["Ann"]  # the old entry, until the reconcile
    await store.reconcile()
    assert await store.who("lobby") == ["Anna"]
    assert await store.who("r1") == []  # not put back in a room it left
    assert not store._renamed


# --------------------------------------------------------------------------- publishing


def said(room: str, i: int) -> env.RoomMsg:
    return env.RoomMsg(room, "Ann", "s/ann", f"{room} {i}")


async def test_a_shard_away_holds_only_its_rooms_messages(shards: TwoShards) -> None:
    publisher = Publisher(shards.topology, config("n1", outbox_seconds=5.0), KEYS)
    told: dict[str, list[str | RelayUnavailable]] = {"dev": [], "lobby": []}
    shards.b.connected = False
    for i in range(3):
        for room in ("dev", "lobby"):
            publisher.submit(said(room, i), told[room].append)
    await wait_until(lambda: len(told["dev"]) == 3)
    assert all(isinstance(r, str) for r in told["dev"])
    assert await shards.ra.xlen(KEYS.history("dev")) == 3
    await wait_until(lambda: publisher.held.get("b") == 3)
    assert told["lobby"] == []
    for i in range(3, 5):  # the healthy shard keeps flowing meanwhile
        publisher.submit(said("dev", i), told["dev"].append)
    await wait_until(lambda: len(told["dev"]) == 5)
    shards.b.connected = True
    await wait_until(lambda: len(told["lobby"]) == 3)
    assert all(isinstance(r, str) for r in told["lobby"])
    stored = await shards.rb.xrange(KEYS.history("lobby"))
    assert [env.parse(fields[b"e"]).text for _, fields in stored] == [  # type: ignore[union-attr,index]
        "lobby 0", "lobby 1", "lobby 2"]
    assert publisher.held == {}


async def test_a_room_whose_slot_moved_keeps_its_order_behind_its_held_messages(
        shards: TwoShards) -> None:
    publisher = Publisher(shards.topology, config("n1", outbox_seconds=5.0), KEYS)
    told: list[str | RelayUnavailable] = []
    shards.b.connected = False
    for i in range(2):
        publisher.submit(said("lobby", i), told.append)
    await wait_until(lambda: publisher.held.get("b") == 2)
    # a replica on shard a's server took over lobby's slot (the map read again)
    shards.topology._set([(0, 16383, Shard("a", shards.ra))])
    publisher.submit(said("lobby", 2), told.append)  # behind the held ones, same lane
    await wait_until(lambda: len(told) == 3)
    assert all(isinstance(r, str) for r in told)
    stored = await shards.ra.xrange(KEYS.history("lobby"))
    assert [env.parse(fields[b"e"]).text for _, fields in stored] == [  # type: ignore[union-attr,index]
        "lobby 0", "lobby 1", "lobby 2"]
    assert not publisher._rooms  # nothing on its way: the room follows the map again


async def test_noscript_is_handled_on_the_shard_that_said_it(shards: TwoShards) -> None:
    publisher = Publisher(shards.topology, config("n1"), KEYS)
    assert isinstance(await publisher._publish_once(said("lobby", 0), "k0"), str)
    assert isinstance(await publisher._publish_once(said("dev", 0), "k1"), str)
    await shards.rb.script_flush()  # a replica promoted: no scripts
    loaded: list[Any] = []
    real = shards.rb.script_load

    async def script_load(*args: Any) -> Any:
        loaded.append(args)
        return await real(*args)

    shards.rb.script_load = script_load  # type: ignore[method-assign,assignment]
    results = await publisher._publish_many(
        [(said("dev", 1), "k2", 2**62), (said("lobby", 1), "k3", 2**62)])
    assert all(isinstance(r, str) for r in results)
    assert len(loaded) == 1  # loaded on shard b only, and the round not failed
    assert await shards.ra.xlen(KEYS.history("dev")) == 2
    assert await shards.rb.xlen(KEYS.history("lobby")) == 2


async def test_the_clock_is_measured_on_the_epoch_keys_shard_not_the_seed(
        shards: TwoShards) -> None:
    """The node the URL named (the seed, shard A here) may be a master that died and was
    replaced: the link of the shard serving the epoch key (B) measures the clock, and it
    must not fail because the seed is gone (it would keep that link from subscribing)."""
    publisher = Publisher(shards.topology, config("n1"), KEYS)
    shards.a.connected = False
    await publisher.sync_clock()
    assert abs(publisher.clock_offset) < 5


async def test_a_moved_reply_refreshes_the_slot_map_and_holds_the_round(
        shards: TwoShards, monkeypatch: pytest.MonkeyPatch) -> None:
    publisher = Publisher(shards.topology, config("n1", outbox_seconds=5.0), KEYS)
    refreshed = asyncio.Event()

    async def refresh() -> bool:
        refreshed.set()
        return False

    monkeypatch.setattr(shards.topology, "refresh", refresh)
    real = shards.rb.pipeline
    moved = {"left": 1}

    def pipeline(*args: Any, **kwargs: Any) -> Any:
        pipe = real(*args, **kwargs)
        execute = pipe.execute

        async def answered(*a: Any, **kw: Any) -> Any:
            got = await execute(*a, **kw)
            if moved["left"]:
                moved["left"] -= 1
                return [MovedError(f"{slot_of(KEYS.nicks)} 127.0.0.1:7001")] * len(got)
            return got

        pipe.execute = answered  # type: ignore[method-assign]
        return pipe

    monkeypatch.setattr(shards.rb, "pipeline", pipeline)
    told: list[str | RelayUnavailable] = []
    publisher.submit(said("lobby", 0), told.append)
    await wait_until(lambda: len(told) == 1)
    assert refreshed.is_set() and isinstance(told[0], str)
    assert publisher.stats.outboxed == 1
    assert await shards.rb.xlen(KEYS.history("lobby")) == 1  # the retry did not repeat it


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize("error", [
    MovedError("3999 127.0.0.1:6381"), ClusterDownError("CLUSTERDOWN The cluster is down"),
    ResponseError("TRYAGAIN Multiple keys request during rehashing of slot"),
    ResponseError("ASK 3999 127.0.0.1:6381"), RedisClusterException("no node for slot"),
    SlotUnserved("no shard serves slot 1"),
])
async def test_cluster_conditions_are_transient_and_never_internal(error: Exception) -> None:
    assert moving(error)
    with pytest.raises(RelayUnavailable) as info:
        async with translated("test"):
            raise error
    assert type(info.value) is RelayUnavailable and transient(info.value)
