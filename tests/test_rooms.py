"""The room store on its own (node.rooms): membership, notices and history, on fakeredis."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from node import envelope as env
from node.errors import RoomCreateThrottled, RoomsFull
from node.keys import Keys
from node.leases import NameInfo
from node.names import ID_PART_MAX
from node.publisher import Publisher
from node.rooms import Joined, RoomStore

from . import relaykit
from .helpers import wait_until
from .relaykit import config

fake_redis = relaykit.fake_redis  # the fixture

KEYS = Keys()


@pytest.fixture
def store(fake_redis: Any) -> RoomStore:
    return RoomStore(fake_redis, config("n1"), KEYS)


def member(nick: str) -> NameInfo:
    return NameInfo(nick, f"n1/{nick.lower()}", "n1", ())


async def members(redis: Any, room: str) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in (await redis.hgetall(KEYS.members(room))).items()}


async def test_a_join_is_owed_what_follows_its_notice_a_silent_one_the_newest(
        store: RoomStore) -> None:
    assert await store.latest_id("lobby") == "0-0"
    assert await store.join("lobby", "ann", member("Ann")) == Joined(
        (ann := await store.latest_id("lobby")), created=True)
    # a membership recorded again (a restore) is silent, and owed what follows the newest
    assert await store.join("lobby", "ann", member("Ann"), announce=False, restore=True) \
        == Joined(ann, created=False)
    # a resume whose member entry is still there is silent too
    assert await store.join("lobby", "ann", member("Ann"), announce=False) \
        == Joined(ann, created=False)
    # one whose entry is gone (its old session's quit came first) is announced again
    bo = (await store.join("lobby", "bo", member("Bo"), announce=False)).floor
    assert await store.latest_id("lobby") == bo != ann
    assert await store.events("lobby", "0-0", 10) == [env.RoomJoin("lobby", "Ann", id=ann),
                                                     env.RoomJoin("lobby", "Bo", id=bo)]
    assert await store.who("lobby") == ["Ann", "Bo"]
    assert await store.rooms() == ([("lobby", 2)], False)


async def test_a_departing_session_leaves_alone_the_entry_of_the_session_that_resumed_it(
        fake_redis: Any, store: RoomStore) -> None:
    """The user resumed on another node (a new session, a new token) while its old node
    was still announcing its quit: the old session's quit changes nothing and tells
    nothing, whichever comes first; its part does not remove the new one either."""
    old, new = member("Ann"), dataclasses.replace(member("Ann"), token="n2/ann")
    await store.join("lobby", "ann", old)
    await store.join("lobby", "ann", new, announce=False)  # the resume: silent
    before = await store.latest_id("lobby")
    await store.leave_all("ann", old.token, "Ann", ["lobby"], "node shutting down")
    await store.part("lobby", "ann", old)
    assert await store.who("lobby") == ["Ann"]
    assert await store.latest_id("lobby") == before  # no quit, no part told
    # the other order: the old session's quit first, then the resume announces the join
    await store.leave_all("ann", new.token, "Ann", ["lobby"], "gone")
    await store.join("lobby", "ann", old, announce=False)
    kinds = [type(e).__name__ for e in await store.events("lobby", before, 10)]
    assert kinds == ["RoomQuit", "RoomJoin"]
    assert await store.who("lobby") == ["Ann"]
    # a session's own departure removes it, and the room's sessions key goes with it
    await store.leave_all("ann", old.token, "Ann", ["lobby"], None)
    assert await store.who("lobby") == []
    assert not await fake_redis.exists(KEYS.sessions("lobby"))


async def test_history_reads_past_pages_of_notices_for_messages(fake_redis: Any,
                                                                store: RoomStore) -> None:
    async def said(text: str) -> env.RoomMsg:
        msg = env.RoomMsg("lobby", "ann", "n1/ann", text)
        entry_id = await fake_redis.xadd(KEYS.history("lobby"), {"e": msg.serialize()})
        return env.RoomMsg("lobby", "ann", "n1/ann", text, id=entry_id.decode())

    first = await said("first")
    for i in range(60):  # more notices than a page (50) holds
        await store.join("lobby", f"u{i}", member(f"U{i}"))
        await store.part("lobby", f"u{i}", member(f"U{i}"))
    second, third = await said("second"), await said("third")
    assert await store.history("lobby", 2) == [second, third]
    assert await store.history("lobby", 10) == [first, second, third]
    assert await store.history("lobby", 10, after=first.id) == [second, third]
    assert await store.history("lobby", 1, after=first.id) == [second]
    assert await store.history("lobby", 10, after=f"{ID_PART_MAX}-{ID_PART_MAX}") == []
    assert len(await store.events("lobby", "0-0", 1000)) == 123
    assert await store.who("lobby") == []


async def test_a_nick_change_is_one_notice_per_room_and_moves_the_member(
        fake_redis: Any, store: RoomStore) -> None:
    for room in ("lobby", "dev"):
        await store.join(room, "ann", member("Ann"), announce=False, restore=True)
    await store.rename_in_rooms("ann", "anna", "Ann", "Anna", ["lobby", "dev"], "n1/s", "n1/ann")
    for room in ("lobby", "dev"):
        assert await members(fake_redis, room) == {"anna": "Anna"}
    notices = [e for room in ("lobby", "dev") for e in await store.events(room, "0-0", 10)]
    assert [(n.room, n.old, n.new, n.sid) for n in notices if isinstance(n, env.RoomNick)] \
        == [("lobby", "Ann", "Anna", "n1/s"), ("dev", "Ann", "Anna", "n1/s")]
    assert len({n.eid for n in notices if isinstance(n, env.RoomNick)}) == 1  # told once
    # a case change keeps the entry; the old name someone else took keeps theirs
    await store.rename_in_rooms("anna", "anna", "Anna", "ANNA", ["lobby"], "n1/s", "n1/ann")
    assert await members(fake_redis, "lobby") == {"anna": "ANNA"}
    await store.rename_in_rooms("anna", "zed", "ANNA", "Zed", ["lobby"], "n1/s", "n1/ann",
                                move_members=False)
    assert await members(fake_redis, "lobby") == {"anna": "ANNA"}
    last = (await store.events("lobby", "0-0", 10))[-1]
    assert isinstance(last, env.RoomNick) and (last.old, last.new) == ("ANNA", "Zed")


async def test_leaving_every_room_is_one_quit_with_one_eid(fake_redis: Any,
                                                           store: RoomStore) -> None:
    for room in ("lobby", "dev", "ops"):
        await store.join(room, "ann", member("Ann"), announce=False, restore=True)
    await store.join("ops", "bo", member("Bo"), announce=False, restore=True)
    await store.leave_all("ann", "n1/ann", "Ann", ["lobby", "dev", "ops"], "gone")
    quits = [e for room in ("lobby", "dev", "ops") for e in await store.events(room, "0-0", 10)]
    assert [(q.room, q.nick, q.reason) for q in quits if isinstance(q, env.RoomQuit)] == [
        ("lobby", "Ann", "gone"), ("dev", "Ann", "gone"), ("ops", "Ann", "gone")]
    assert len({q.eid for q in quits if isinstance(q, env.RoomQuit)}) == 1
    assert await store.rooms() == ([("ops", 1)], False)
    assert not await fake_redis.zscore(KEYS.rooms_live, "lobby")


# --------------------------------------------------------------------------- room lifecycle


def store_with(fake_redis: Any, **settings: Any) -> RoomStore:
    return RoomStore(fake_redis, config("n1", **settings), KEYS)


async def wait_gone(redis: Any, key: str) -> None:
    """Until Redis removed ``key``: its TTL running out is the passing of time itself."""
    async def gone() -> bool:
        return not await redis.exists(key)
    await wait_until(gone, step=0.01)


async def test_an_emptied_room_expires_after_its_idle_ttl_and_is_never_listed(
        fake_redis: Any) -> None:
    store = store_with(fake_redis, room_idle_ttl=0.2)
    ann = member("Ann")
    assert (await store.join("lobby", "ann", ann)).created
    assert await fake_redis.ttl(KEYS.history("lobby")) == -1  # with members: no TTL
    await store.part("lobby", "ann", ann)
    assert await store.rooms() == ([], False)  # emptied: not listed, at once
    assert 0 < await fake_redis.pttl(KEYS.history("lobby")) <= 200
    assert await fake_redis.zscore(KEYS.rooms_idle, "lobby") is not None
    assert await store.counts() == (0, 1)
    await wait_gone(fake_redis, KEYS.history("lobby"))
    assert await store.counts() == (0, 0)
    # a join after that creates it anew
    assert (await store.join("lobby", "ann", ann)).created


async def test_a_join_before_expiry_revives_the_room_with_its_history(
        fake_redis: Any) -> None:
    store = store_with(fake_redis, room_idle_ttl=60)
    ann, bo = member("Ann"), member("Bo")
    await store.join("lobby", "ann", ann)
    await fake_redis.set(KEYS.topic("lobby"), "plans")
    await store.part("lobby", "ann", ann)
    assert await fake_redis.ttl(KEYS.topic("lobby")) > 0  # the topic expires with it
    joined = await store.join("lobby", "bo", bo)
    assert not joined.created
    assert await fake_redis.ttl(KEYS.history("lobby")) == -1
    assert await fake_redis.ttl(KEYS.topic("lobby")) == -1
    assert await fake_redis.zscore(KEYS.rooms_idle, "lobby") is None
    assert await store.rooms() == ([("lobby", 1)], False)
    kinds = [type(e).__name__ for e in await store.events("lobby", "0-0", 10)]
    assert kinds == ["RoomJoin", "RoomPart", "RoomJoin"]


async def test_the_room_cap_refuses_new_rooms_only_and_changes_nothing(
        fake_redis: Any) -> None:
    store = store_with(fake_redis, max_rooms=2, room_idle_ttl=60)
    ann = member("Ann")
    await store.join("r1", "ann", ann)
    await store.join("r2", "ann", ann)
    await store.part("r2", "ann", ann)  # idle, not expired: still counts
    before = sorted(await fake_redis.keys("*"))
    with pytest.raises(RoomsFull):
        await store.join("r3", "ann", dataclasses.replace(ann, rooms=("r1", "r3")))
    assert sorted(await fake_redis.keys("*")) == before
    # joining rooms that exist (live, or idle) is never refused
    assert not (await store.join("r1", "bo", member("Bo"))).created
    assert not (await store.join("r2", "bo", member("Bo"))).created
    # a restore (the member is in the room already) is never refused
    await store.join("r4", "ann", ann, restore=True)
    assert await store.rooms() == ([("r1", 2), ("r2", 1), ("r4", 1)], False)


async def test_the_room_cap_counts_idle_rooms_until_they_expire(fake_redis: Any) -> None:
    store = store_with(fake_redis, max_rooms=1, room_idle_ttl=0.2)
    ann = member("Ann")
    await store.join("r1", "ann", ann)
    await store.part("r1", "ann", ann)
    with pytest.raises(RoomsFull):
        await store.join("r2", "ann", ann)
    await wait_gone(fake_redis, KEYS.history("r1"))
    assert (await store.join("r2", "ann", ann)).created
    assert await fake_redis.zcard(KEYS.rooms_idle) == 0  # the expired entry was dropped


async def test_a_joiner_that_may_not_create_joins_existing_rooms_only(
        fake_redis: Any) -> None:
    store = store_with(fake_redis)
    await store.join("lobby", "ann", member("Ann"))
    bo = dataclasses.replace(member("Bo"), rooms=("lobby",))
    await fake_redis.set(KEYS.lease("bo"), bo.token)  # the name is Bo's: its info is kept
    assert not (await store.join("lobby", "bo", bo, may_create=False)).created
    info = dataclasses.replace(bo, rooms=("lobby", "new"))
    with pytest.raises(RoomCreateThrottled):
        await store.join("new", "bo", info, may_create=False)
    assert not await fake_redis.exists(KEYS.members("new"), KEYS.history("new"))
    # the name's info entry does not list the room it was refused
    assert NameInfo.parse(await fake_redis.hget(KEYS.info, "bo")).rooms == ("lobby",)


async def test_the_listing_pages_by_name(fake_redis: Any) -> None:
    store = store_with(fake_redis, rooms_page=2)
    for i, room in enumerate(["d", "b", "a", "c", "e"]):
        for j in range(i + 1):
            await store.join(room, f"u{j}", member(f"U{j}"), announce=False, restore=True)
    assert await store.rooms() == ([("a", 3), ("b", 2)], True)
    assert await store.rooms("b") == ([("c", 4), ("d", 1)], True)
    assert await store.rooms("d") == ([("e", 5)], False)
    assert await store.rooms("e") == ([], False)
    assert await store.rooms("bb", 10) == ([("c", 4), ("d", 1), ("e", 5)], False)


# --------------------------------------------------------------------------- history by age


async def test_reads_skip_what_is_older_than_the_history_age(fake_redis: Any) -> None:
    now = 1_800_000_000.0
    store = RoomStore(fake_redis, config("n1", history_age=60), KEYS, clock=lambda: now)
    key = KEYS.history("lobby")
    said = []
    for age, text in ((120, "old"), (90, "older than a minute"), (30, "recent"),
                      (1, "newest")):
        msg = env.RoomMsg("lobby", "ann", "n1/ann", text)
        entry_id = (await fake_redis.xadd(key, {"e": msg.serialize()},
                                          id=f"{int((now - age) * 1000)}-0")).decode()
        said.append(dataclasses.replace(msg, id=entry_id))
    old, _older, recent, newest = said
    assert store.age_floor() == f"{int((now - 60) * 1000)}-0"
    assert await store.history("lobby", 10) == [recent, newest]
    assert await store.history("lobby", 10, after="0-0") == [recent, newest]
    assert await store.history("lobby", 10, after=old.id) == [recent, newest]
    assert await store.history("lobby", 10, after=recent.id) == [newest]
    assert [e.id for e in await store.events("lobby", "0-0", 10)] == [recent.id, newest.id]
    assert [e.id for e in await store.events("lobby", recent.id, 10)] == [newest.id]
    # without an age limit everything held is shown
    unlimited = RoomStore(fake_redis, config("n1", history_age=0), KEYS, clock=lambda: now)
    assert unlimited.age_floor() is None
    assert await unlimited.history("lobby", 10) == said


async def test_publishing_trims_by_age_and_a_late_message_gets_the_idle_ttl(
        fake_redis: Any) -> None:
    cfg = config("n1", history_age=60, room_idle_ttl=30)
    publisher = Publisher(fake_redis, cfg, KEYS)
    store = RoomStore(fake_redis, cfg, KEYS)
    key = KEYS.history("lobby")
    await store.join("lobby", "ann", member("Ann"), announce=False, restore=True)
    for i in range(1, 300):  # three stream nodes' worth, all older than the age
        await fake_redis.xadd(key, {"e": "x"}, id=f"{i}-0")
    msg_id = await publisher.say(env.RoomMsg("lobby", "Ann", "n1/ann", "hi"))
    # approximate: whole nodes of old entries go, at most one node's worth may stay
    assert await fake_redis.xlen(key) <= 101
    assert [m.id for m in await store.history("lobby", 10)] == [msg_id]
    assert await fake_redis.ttl(key) == -1  # a room with members: no TTL
    # a message that lands after the last member left (from an outbox) is bounded too
    await fake_redis.delete(KEYS.members("gone"))
    await publisher.say(env.RoomMsg("gone", "Ann", "n1/ann", "late"))
    assert 0 < await fake_redis.ttl(KEYS.history("gone")) <= 30
