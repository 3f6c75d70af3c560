"""The room scripts on a real redis-server, where fakeredis may differ: TIME inside a
script that writes, PEXPIRE/PERSIST of an emptied and revived room, the room cap, and
XTRIM MINID ~ (which removes whole stream nodes only)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from node import envelope as env
from node.config import NodeConfig
from node.errors import RelayUnavailable, RoomsFull
from node.keys import Keys
from node.leases import NameInfo
from node.publisher import Publisher
from node.rooms import RoomStore

from ..helpers import wait_until
from .procs import redis_server

pytestmark = pytest.mark.redis_server

K = Keys()


@pytest.fixture
async def real() -> AsyncIterator[aioredis.Redis]:
    async with redis_server() as (url, _):
        client = aioredis.Redis.from_url(url)
        try:
            yield client
        finally:
            await client.aclose()


def cfg(**settings: object) -> NodeConfig:
    return NodeConfig(node_id="n1", redis_timeout=1.0, **settings)  # type: ignore[arg-type]


def member(nick: str) -> NameInfo:
    return NameInfo(nick, f"n1/{nick.lower()}", "n1", ())


async def test_an_emptied_room_expires_a_revived_one_persists_and_the_cap_holds(
        real: aioredis.Redis) -> None:
    store = RoomStore(real, cfg(room_idle_ttl=0.5, max_rooms=2), K)
    ann = member("Ann")
    assert (await store.join("r1", "ann", ann)).created
    await real.set(K.topic("r1"), "plans")
    await store.part("r1", "ann", ann)
    assert 0 < await real.pttl(K.history("r1")) <= 500
    assert 0 < await real.pttl(K.topic("r1")) <= 500
    score = await real.zscore(K.rooms_idle, "r1")
    seconds, micros = await real.time()
    assert score is not None and 0 < score - (seconds * 1000 + micros // 1000) <= 500
    # revived before it expired: as it was, and for good
    assert not (await store.join("r1", "bo", member("Bo"))).created
    assert await real.pttl(K.history("r1")) == -1 and await real.pttl(K.topic("r1")) == -1
    assert await real.zscore(K.rooms_idle, "r1") is None
    assert await store.rooms() == ([("r1", 1)], False)
    # emptied again: r1 counts against the cap until its keys are gone
    await store.part("r1", "bo", member("Bo"))
    await store.join("r2", "ann", ann)
    with pytest.raises(RoomsFull):
        await store.join("r3", "ann", ann)
    assert not await real.exists(K.members("r3"), K.history("r3"))

    async def gone() -> bool:
        return not await real.exists(K.history("r1"), K.topic("r1"))
    await wait_until(gone, step=0.02)
    assert (await store.join("r3", "ann", ann)).created
    assert await store.counts() == (2, 0)


async def test_history_is_trimmed_by_age_in_whole_stream_nodes(
        real: aioredis.Redis) -> None:
    config = cfg(history_age=60, room_idle_ttl=30)
    store, publisher = RoomStore(real, config, K), Publisher(real, config, K)
    await publisher.sync_clock()
    await store.join("lobby", "ann", member("Ann"), announce=False, restore=True)
    key = K.history("lobby")
    for i in range(1, 251):  # long ago: 2.5 stream nodes (100 entries each, the default)
        await real.xadd(key, {"e": "x"}, id=f"{i}-0")
    first = await publisher.say(env.RoomMsg("lobby", "Ann", "n1/ann", "now"))
    # the full nodes of old entries went; the node the new entry shares stays whole
    assert 1 < await real.xlen(key) <= 51
    assert [m.id for m in await store.history("lobby", 10)] == [first]
    assert [e.id for e in await store.events("lobby", "0-0", 10)] == [first]
    # a message that lands after the last member left gets the idle TTL
    await store.part("lobby", "ann", member("Ann"), announce=False)
    await real.persist(key)  # as if the room had been emptied before the TTL existed
    await publisher.say(env.RoomMsg("lobby", "Ann", "n1/ann", "late"))
    assert 0 < await real.pttl(key) <= 30_000


async def test_a_publish_past_its_deadline_still_publishes_nothing(
        real: aioredis.Redis) -> None:
    """TIME read inside the publishing script, before its writes, on a real Redis."""
    publisher = Publisher(real, cfg(), K, clock=lambda: 1000.0)  # far in Redis's past
    with pytest.raises(RelayUnavailable, match="in time"):
        await publisher.say(env.RoomMsg("lobby", "Ann", "n1/ann", "late"))
    assert not await real.exists(K.history("lobby"))
    assert publisher.stats.publish_too_late == 1
