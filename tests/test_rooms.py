"""The room store on its own (node.rooms): membership, notices and history, on fakeredis."""

from __future__ import annotations

from typing import Any

import pytest

from node import envelope as env
from node.keys import Keys
from node.leases import NameInfo
from node.names import ID_PART_MAX
from node.rooms import RoomStore

from . import relaykit
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
    assert await store.join("lobby", "ann", member("Ann"), announce=False) == "0-0"
    bo = await store.join("lobby", "bo", member("Bo"))
    assert await store.latest_id("lobby") == bo
    assert await store.join("lobby", "cy", member("Cy"), announce=False) == bo
    assert await store.events("lobby", "0-0", 10) == [env.RoomJoin("lobby", "Bo", id=bo)]
    assert await store.who("lobby") == ["Ann", "Bo", "Cy"]
    assert await store.rooms() == [("lobby", 3)]


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
        await store.join(room, "ann", member("Ann"), announce=False)
    await store.rename_in_rooms("ann", "anna", "Ann", "Anna", ["lobby", "dev"], "n1/s")
    for room in ("lobby", "dev"):
        assert await members(fake_redis, room) == {"anna": "Anna"}
    notices = [e for room in ("lobby", "dev") for e in await store.events(room, "0-0", 10)]
    assert [(n.room, n.old, n.new, n.sid) for n in notices if isinstance(n, env.RoomNick)] \
        == [("lobby", "Ann", "Anna", "n1/s"), ("dev", "Ann", "Anna", "n1/s")]
    assert len({n.eid for n in notices if isinstance(n, env.RoomNick)}) == 1  # told once
    # a case change keeps the entry; the old name someone else took keeps theirs
    await store.rename_in_rooms("anna", "anna", "Anna", "ANNA", ["lobby"], "n1/s")
    assert await members(fake_redis, "lobby") == {"anna": "ANNA"}
    await store.rename_in_rooms("anna", "zed", "ANNA", "Zed", ["lobby"], "n1/s",
                                move_members=False)
    assert await members(fake_redis, "lobby") == {"anna": "ANNA"}
    last = (await store.events("lobby", "0-0", 10))[-1]
    assert isinstance(last, env.RoomNick) and (last.old, last.new) == ("ANNA", "Zed")


async def test_leaving_every_room_is_one_quit_with_one_eid(fake_redis: Any,
                                                           store: RoomStore) -> None:
    for room in ("lobby", "dev", "ops"):
        await store.join(room, "ann", member("Ann"), announce=False)
    await store.join("ops", "bo", member("Bo"), announce=False)
    await store.leave_all("ann", "Ann", ["lobby", "dev", "ops"], "gone")
    quits = [e for room in ("lobby", "dev", "ops") for e in await store.events(room, "0-0", 10)]
    assert [(q.room, q.nick, q.reason) for q in quits if isinstance(q, env.RoomQuit)] == [
        ("lobby", "Ann", "gone"), ("dev", "Ann", "gone"), ("ops", "Ann", "gone")]
    assert len({q.eid for q in quits if isinstance(q, env.RoomQuit)}) == 1
    assert await store.rooms() == [("ops", 1)]
    assert not await fake_redis.sismember(KEYS.rooms, "lobby")
