"""A gap that cannot be repaired is said, never silent: the rule (RoomStore.continuity),
the history reply, and the node's own gap repair, on fakeredis.

fakeredis never trims a ``MAXLEN ~`` stream below a few entries the way Redis does (Redis
trims whole nodes only): these tests trim exactly with ``XTRIM MAXLEN`` to stand for
what retention did; tests/integration/test_gaps_real.py does it with a real Redis.
"""

from __future__ import annotations

import dataclasses
import json
import time
from typing import Any

import pytest

from node import envelope as env
from node.config import NodeConfig
from node.keys import Keys
from node.model import History, HistoryReply, Join
from node.rooms import RoomStore

from . import relaykit
from .fakes import FakeMember, World, world
from .helpers import wait_until
from .relaykit import config

fake_redis = relaykit.fake_redis  # the fixture

KEYS = Keys()


def aged(base: NodeConfig, age: float) -> NodeConfig:
    """``base`` with an age limit on history (0: none)."""
    return dataclasses.replace(base, history_age=age)


async def said(redis: Any, text: str, room: str = "lobby", entry_id: str = "*") -> str:
    msg = env.RoomMsg(room, "bob", "n2/1", text)
    raw = await redis.xadd(KEYS.history(room), {"e": msg.serialize()}, id=entry_id)
    return raw.decode() if isinstance(raw, bytes) else str(raw)


async def trim(redis: Any, keep: int, room: str = "lobby") -> None:
    await redis.xtrim(KEYS.history(room), maxlen=keep, approximate=False)


@pytest.fixture
def store(fake_redis: Any) -> RoomStore:
    # no age limit: these entries carry made-up ids from 1970
    return RoomStore(fake_redis, aged(config("n1"), 0), KEYS)


# --------------------------------------------------------------------------- the rule


async def test_an_id_still_held_is_complete_one_trimmed_away_is_not(
        fake_redis: Any, store: RoomStore) -> None:
    ids = [await said(fake_redis, f"m{i}") for i in range(6)]
    held = await store.continuity("lobby", ids[2])
    assert (held.complete, held.oldest) == (True, ids[0])
    await trim(fake_redis, 3)  # m0..m2 gone
    assert (await store.continuity("lobby", ids[3])).complete
    gone = await store.continuity("lobby", ids[2])
    assert (gone.complete, gone.oldest) == (False, ids[3])
    assert not (await store.continuity("lobby", ids[0])).complete


async def test_an_id_no_longer_held_is_incomplete_wherever_it_lies(
        fake_redis: Any, store: RoomStore) -> None:
    """The ids asked about are ids the node handed out: one missing above the oldest entry
    was lost with the newest entries (a failover to a replica that had not received them,
    a restart from an older snapshot), and newer messages may have come since."""
    for i in range(4):
        await said(fake_redis, f"m{i}", entry_id=f"{100 + i}-0")
    await trim(fake_redis, 2)  # 102-0 and 103-0 held
    assert (await store.continuity("lobby", "102-0")).complete
    lost_between = await store.continuity("lobby", "102-5")
    assert (lost_between.complete, lost_between.oldest) == (False, "102-0")
    assert not (await store.continuity("lobby", "99999-0")).complete  # past the newest
    assert not (await store.continuity("lobby", "101-5")).complete


async def test_from_the_start_is_complete_until_the_stream_loses_an_entry(
        fake_redis: Any, store: RoomStore) -> None:
    empty = await store.continuity("lobby", "0-0")
    assert (empty.complete, empty.oldest) == (True, None)
    first = await said(fake_redis, "a")
    await said(fake_redis, "b")
    assert await store.continuity("lobby", "0-0") == type(empty)(True, first)
    await trim(fake_redis, 1)
    assert not (await store.continuity("lobby", "0-0")).complete


async def test_a_stream_gone_altogether_is_incomplete_for_any_id_seen(
        fake_redis: Any, store: RoomStore) -> None:
    seen = await said(fake_redis, "a")
    await fake_redis.delete(KEYS.history("lobby"))  # lost with Redis, or expired
    gone = await store.continuity("lobby", seen)
    assert (gone.complete, gone.oldest) == (False, None)


async def test_entries_older_than_the_age_floor_count_as_gone(fake_redis: Any) -> None:
    store = RoomStore(fake_redis, aged(config("n1"), 60), KEYS)
    old = await said(fake_redis, "old", entry_id="1000-0")
    await said(fake_redis, "also old", entry_id="1001-0")
    now = f"{int(time.time() * 1000)}-0"
    fresh = await said(fake_redis, "fresh", entry_id=now)
    hidden = await store.continuity("lobby", old)  # held, but what follows is too old
    assert (hidden.complete, hidden.oldest) == (False, fresh)
    assert (await store.continuity("lobby", "1001-0")).complete  # nothing old after it
    assert (await store.continuity("lobby", fresh)).complete


# --------------------------------------------------------------------------- history


async def test_history_after_a_trimmed_id_says_so_and_gives_what_is_held() -> None:
    async with world() as w:
        m = await w.named("alice")
        ids = [await said(w.redis, f"m{i}") for i in range(6)]
        await w.do(m, History(after=ids[1], ref="h1"))
        (reply,) = m.of(HistoryReply)
        assert (reply.complete, reply.oldest) == (True, None)
        assert [x.id for x in reply.messages] == ids[2:]
        m.take()
        await trim(w.redis, 3)
        await w.do(m, History(after=ids[1], ref="h2"))
        (reply,) = m.of(HistoryReply)
        assert (reply.complete, reply.oldest) == (False, ids[3])
        assert [x.text for x in reply.messages] == ["m3", "m4", "m5"]
        rendered = json.loads(m.codec.render(reply))
        assert (rendered["complete"], rendered["oldest"]) == (False, ids[3])
        m.take()
        await w.do(m, History(limit=10, ref="h3"))  # no "after": nothing to vouch for
        (reply,) = m.of(HistoryReply)
        assert reply.complete and "complete" not in json.loads(m.codec.render(reply))


# --------------------------------------------------------------------------- gap repair


def lines(m: FakeMember) -> list[dict[str, Any]]:
    return [json.loads(line) for chunk in m.raw for line in chunk.splitlines()]


async def test_a_repair_that_finds_its_mark_gone_tells_each_member_once() -> None:
    async with world() as w:
        alice = await w.named("alice")
        bob = await w.named("bob", mode="text")
        local = w.hub.rooms["lobby"]
        await wait_until(lambda: local.feed.start is not None)
        mark = await said(w.redis, "seen")
        local.feed.last = mark  # delivered before the subscription broke
        for i in range(5):
            await said(w.redis, f"missed {i}")
        await trim(w.redis, 3)  # "seen" and "missed 0", "missed 1" gone
        alice.raw.clear()
        w.hub.on_resubscribed()
        await wait_until(lambda: sum(1 for o in lines(alice) if o["ev"] == "msg") >= 3)
        got = [(o["ev"], o.get("text")) for o in lines(alice)]
        assert got == [("gap", None), ("msg", "missed 2"), ("msg", "missed 3"),
                       ("msg", "missed 4")]
        text = b"".join(bob.raw).decode()
        assert text.count("some messages in #lobby are no longer in history") == 1
        assert text.index("no longer in history") < text.index("missed 2")


async def test_a_repair_with_nothing_lost_says_nothing() -> None:
    async with world() as w:
        alice = await w.named("alice")
        await stored_then_repaired(w, alice)
        assert not [o for o in lines(alice) if o["ev"] == "gap"]


async def stored_then_repaired(w: World, m: FakeMember) -> None:
    local = w.hub.rooms["lobby"]
    await wait_until(lambda: local.feed.start is not None)
    await said(w.redis, "missed")
    w.hub.on_resubscribed()
    await wait_until(lambda: any(o.get("text") == "missed" for o in lines(m)))



async def test_a_resubscription_of_some_rooms_repairs_those_only() -> None:
    """On a cluster one shard's link came back: its rooms are repaired, the others (on
    links that never stopped) are not held back for a repair they do not need."""
    async with world() as w:
        alice = await w.named("alice")
        await w.do(alice, Join(room="dev"))
        for room in ("lobby", "dev"):
            await said(w.redis, f"{room} missed", room)
        alice.raw.clear()
        w.hub.on_resubscribed(frozenset({"dev"}))
        # the repair starts holding the room's live events at once, the others' not at all
        assert w.hub.rooms["dev"].feed.held is not None
        assert w.hub.rooms["lobby"].feed.held is None
        await wait_until(lambda: any(o.get("text") == "dev missed" for o in lines(alice)))
        w.hub.on_resubscribed(None)  # None: every room, as after a standalone reconnect
        assert w.hub.rooms["lobby"].feed.held is not None
        await wait_until(lambda: any(o.get("text") == "lobby missed" for o in lines(alice)))


async def test_each_room_whose_mark_is_gone_is_told_once_and_only_those() -> None:
    async with world() as w:
        alice = await w.named("alice")
        await w.do(alice, Join(room="dev"))
        await w.do(alice, Join(room="ops"))
        for room in ("lobby", "dev", "ops"):
            local = w.hub.rooms[room]
            assert local.feed.start is not None  # a join waits for its subscription
            local.feed.last = await said(w.redis, "seen", room)
            for i in range(4):
                await said(w.redis, f"{room} {i}", room)
        await trim(w.redis, 2, "lobby")
        await trim(w.redis, 2, "dev")  # ops keeps everything
        alice.raw.clear()
        w.hub.on_resubscribed()
        await wait_until(lambda: sum(1 for o in lines(alice) if o["ev"] == "msg") >= 8)
        gaps = [o["room"] for o in lines(alice) if o["ev"] == "gap"]
        assert sorted(gaps) == ["dev", "lobby"]
