"""The Redis relay, driven directly against fakeredis (no TCP, no chat node)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import socket
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import fakeredis
import pytest
import redis.asyncio
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError
from structlog.testing import capture_logs

from node import envelope as env
from node.config import NodeConfig
from node.errors import NoSuchNick, RelayRefused, RelayUnavailable
from node.relay import ClaimResult, NameInfo, Relay

from .relaykit import TIMEOUT, Sink, config
from .relaykit import running as run_loops


@pytest.fixture
def server() -> fakeredis.FakeServer:
    return fakeredis.FakeServer()


@pytest.fixture
async def make_relay(server: fakeredis.FakeServer
                     ) -> AsyncIterator[Callable[..., tuple[Relay, Sink]]]:
    """Builds relays on one fake Redis; closes their clients afterwards."""
    clients: list[fakeredis.FakeAsyncRedis] = []

    def make(node_id: str, **overrides: Any) -> tuple[Relay, Sink]:
        client = fakeredis.FakeAsyncRedis(server=server)
        clients.append(client)
        sink = Sink()
        return Relay(client, config(node_id, **overrides), sink), sink

    yield make
    for client in clients:
        await client.aclose()


@pytest.fixture
async def raw(server: fakeredis.FakeServer) -> AsyncIterator[fakeredis.FakeAsyncRedis]:
    """A plain client on the same fake Redis, for looking at (and tampering with) keys."""
    client = fakeredis.FakeAsyncRedis(server=server)
    yield client
    await client.aclose()


def running(relay: Relay) -> contextlib.AbstractAsyncContextManager[None]:
    """The relay's listener, renewer and reaper, in a task cancelled on exit."""
    return run_loops(relay.run, ready=relay.wait_ready)


def info(relay: Relay, nick: str, rooms: tuple[str, ...] = ()) -> NameInfo:
    return NameInfo(nick, relay.new_token(), relay.node_id, rooms)


async def text(client: fakeredis.FakeAsyncRedis, key: str) -> str | None:
    value = await client.get(key)
    return value.decode() if isinstance(value, bytes) else value


def stream_key(stream_id: str) -> tuple[int, int]:
    ms, seq = stream_id.split("-")
    return int(ms), int(seq)


# --------------------------------------------------------------------------- claims


async def test_claim_wins_once_and_another_node_cannot_take_it(make_relay: Any,
                                                               raw: Any) -> None:
    a, _ = make_relay("node-a")
    b, _ = make_relay("node-b")
    mine = info(a, "Alice")
    assert await a.claim("alice", mine) == ClaimResult(True)
    assert await text(raw, a.keys.lease("alice")) == mine.token
    assert await b.claim("alice", info(b, "ALICE")) == ClaimResult(False)
    assert await a.claim("alice", info(a, "alice")) == ClaimResult(False)  # not even twice
    assert await text(raw, a.keys.lease("alice")) == mine.token
    assert await a.lookup("alice") == mine
    assert await b.lookup("nobody") is None


async def test_a_claim_whose_reply_was_lost_can_be_tried_again(make_relay: Any) -> None:
    a, _ = make_relay("node-a")
    mine = info(a, "alice")
    assert (await a.claim("alice", mine)).ok
    assert (await a.claim("alice", mine)).ok  # same token: the earlier try ran after all


def failing(times: int, real: Callable[..., Any]) -> Callable[..., Any]:
    """``real``, but the first ``times`` calls fail as a dropped Redis connection."""
    left = times

    async def call(*args: Any, **kwargs: Any) -> Any:
        nonlocal left
        if left > 0:
            left -= 1
            try:
                raise redis.exceptions.ConnectionError("Connection reset by peer")
            except redis.exceptions.ConnectionError as exc:
                raise RelayUnavailable("relay unavailable (test)") from exc
        return await real(*args, **kwargs)

    return call


async def test_a_claim_is_tried_again_while_redis_is_briefly_away(
        make_relay: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    a, _ = make_relay("node-a")
    monkeypatch.setattr(a.leases, "_claim", failing(2, a.leases._claim))
    assert (await a.claim("alice", info(a, "alice"))).ok
    assert a.stats.claim_retries == 2


async def test_a_departure_redis_cannot_take_is_finished_in_the_background(
        make_relay: Any, raw: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    a, _ = make_relay("node-a")
    alice = info(a, "alice", ("lobby",))
    assert (await a.claim("alice", alice)).ok
    await a.join("lobby", "alice", alice)
    quits: list[str] = []
    leave_all = a.leave_all

    async def counted(folded: str, token: str, nick: str, rooms: Any,
                      reason: str | None) -> None:
        await leave_all(folded, token, nick, rooms, reason)
        quits.append(nick)

    monkeypatch.setattr(a.leases, "_leave_rooms", failing(1, counted))
    with pytest.raises(RelayUnavailable):
        await a.depart("alice", alice.token, "alice", ["lobby"], "bye")
    assert a.leases._departing is not None
    await asyncio.wait_for(a.leases._departing, TIMEOUT)
    assert quits == ["alice"]  # announced once, by the retry
    assert await a.lookup("alice") is None
    assert not await raw.hexists(a.keys.members("lobby"), "alice")
    assert a.stats.departures_deferred == 1


async def test_a_deferred_departure_leaves_alone_a_name_someone_else_took(
        make_relay: Any, raw: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    a, _ = make_relay("node-a")
    b, _ = make_relay("node-b")
    old = info(a, "alice", ("lobby",))
    assert (await a.claim("alice", old)).ok
    await a.join("lobby", "alice", old)
    gate = asyncio.Event()
    leave_all = a.leave_all
    calls = 0

    async def blocked(*args: Any) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            await gate.wait()
            raise RelayUnavailable("away") from redis.exceptions.ConnectionError("reset")
        await leave_all(*args)

    monkeypatch.setattr(a.leases, "_leave_rooms", blocked)
    departing = asyncio.create_task(a.depart("alice", old.token, "alice", ["lobby"], None))
    # meanwhile a's lease ran out and b's user took the name and joined the same room
    await raw.delete(a.keys.lease("alice"))
    new = info(b, "Alice", ("lobby",))
    assert (await b.claim("alice", new)).ok
    await b.join("lobby", "alice", new)
    gate.set()
    with pytest.raises(RelayUnavailable):
        await departing
    assert a.leases._departing is not None
    await asyncio.wait_for(a.leases._departing, TIMEOUT)
    assert calls == 1  # no second leave, no quit about b's user
    assert await b.lookup("alice") == new
    assert await raw.hget(a.keys.members("lobby"), "alice") == b"Alice"


async def test_a_departure_that_crosses_a_resume_elsewhere_leaves_the_resumed_user_in(
        make_relay: Any, raw: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A node shutting down looked the name up (still its session's), and before it took
    the user out of its rooms the user resumed on another node: the late quit finds the
    room's entry to be the new session's, and changes and tells nothing."""
    a, _ = make_relay("node-a")
    b, _ = make_relay("node-b")
    old = info(a, "alice", ("lobby",))
    assert (await a.claim("alice", old)).ok
    await a.join("lobby", "alice", old)
    leave_all = a.leave_all
    new = info(b, "alice", ("lobby",))

    async def resumed_first(*args: Any) -> None:
        assert (await b.resume("alice", old.token, new)).ok
        await b.join("lobby", "alice", new, announce=False)
        await leave_all(*args)

    monkeypatch.setattr(a.leases, "_leave_rooms", resumed_first)
    before = await a.latest_id("lobby")
    await a.depart("alice", old.token, "alice", ["lobby"], "node shutting down")
    assert await b.who("lobby") == ["alice"]
    assert await b.events("lobby", before, 10) == []  # no quit told, no join either
    assert await b.lookup("alice") == new  # the release was compare-and-delete


async def test_a_name_claimed_right_after_redis_lost_its_data_is_not_reaped(
        make_relay: Any, raw: Any) -> None:
    """Redis restarted empty: the heartbeat is gone until the next renewal, but a claim
    (or resume, or rename) lists the node again and so must bring its heartbeat back, or
    another node's reaper takes the name away."""
    a, _ = make_relay("node-a")
    b, _ = make_relay("node-b")
    await raw.flushall()  # this test's own fake Redis
    mine = info(a, "alice")
    assert (await a.claim("alice", mine)).ok
    assert await raw.exists(a.keys.alive("node-a"))
    assert await b.reap() == 0
    assert await a.lookup("alice") == mine
    await raw.delete(a.keys.alive("node-a"))
    assert (await a.rename("alice", "alicia", NameInfo("alicia", mine.token, "node-a",
                                                       ()))).ok
    assert await raw.exists(a.keys.alive("node-a"))


async def test_one_of_100_concurrent_claims_wins(make_relay: Any) -> None:
    a, _ = make_relay("node-a")
    b, _ = make_relay("node-b")
    for trial in range(5):
        name = f"racer{trial}"
        claims = [(a if i % 2 else b).claim(name, info(a if i % 2 else b, name))
                  for i in range(100)]
        results = await asyncio.gather(*claims)
        assert sum(r.ok for r in results) == 1, trial


async def test_release_is_compare_and_delete(make_relay: Any, raw: Any) -> None:
    a, _ = make_relay("node-a")
    b, _ = make_relay("node-b")
    old = info(a, "carol")
    assert (await a.claim("carol", old)).ok
    # a's lease runs out (a was paused past its TTL) and b takes the name
    await raw.delete(a.keys.lease("carol"))
    new = info(b, "Carol")
    assert (await b.claim("carol", new)).ok
    await a.release("carol", old.token)  # a wakes up and releases "its" name
    assert await text(raw, a.keys.lease("carol")) == new.token
    assert await b.lookup("carol") == new
    assert await raw.sismember(a.keys.nicks, "carol")
    assert not await raw.sismember(a.keys.owned("node-a"), "carol")
    assert await raw.sismember(a.keys.owned("node-b"), "carol")
    # the real holder's release does delete it
    await b.release("carol", new.token)
    assert await raw.get(a.keys.lease("carol")) is None
    assert await b.lookup("carol") is None
    assert not await raw.sismember(a.keys.nicks, "carol")


async def test_stale_claim_returns_the_old_holder(make_relay: Any, raw: Any) -> None:
    a, _ = make_relay("node-a")
    b, _ = make_relay("node-b")
    old = info(a, "Dave", ("lobby", "dev"))
    assert await a.claim("dave", old) == ClaimResult(True)
    await raw.delete(a.keys.lease("dave"))  # expired; nobody reaped it yet
    new = info(b, "dave")
    assert await b.claim("dave", new) == ClaimResult(True, stale=old)
    assert await b.lookup("dave") == new


async def test_rename_moves_the_lease_atomically(make_relay: Any, raw: Any) -> None:
    a, _ = make_relay("node-a")
    b, _ = make_relay("node-b")
    alice = info(a, "alice")
    assert (await a.claim("alice", alice)).ok
    assert (await b.claim("bob", info(b, "bob"))).ok
    # a name someone holds is refused, and nothing moves
    taken = NameInfo("Bob", alice.token, "node-a", ())
    assert await a.rename("alice", "bob", taken) == ClaimResult(False)
    assert await text(raw, a.keys.lease("alice")) == alice.token
    assert (await a.lookup("bob")) != taken
    # a free name: the old lease and info go, the new ones appear, in one step
    alicia = NameInfo("Alicia", alice.token, "node-a", ())
    assert await a.rename("alice", "alicia", alicia) == ClaimResult(True)
    assert await raw.get(a.keys.lease("alice")) is None
    assert await text(raw, a.keys.lease("alicia")) == alice.token
    assert await a.lookup("alice") is None
    assert await a.lookup("alicia") == alicia
    assert {m.decode() for m in await raw.smembers(a.keys.owned("node-a"))} == {"alicia"}
    assert not await raw.sismember(a.keys.nicks, "alice")
    # the old name is free again, for anyone
    assert (await b.claim("alice", info(b, "alice"))).ok


async def test_rename_to_a_case_variant_of_the_same_name(make_relay: Any, raw: Any) -> None:
    a, _ = make_relay("node-a")
    alice = info(a, "alice")
    assert (await a.claim("alice", alice)).ok
    upper = NameInfo("ALICE", alice.token, "node-a", ())
    assert await a.rename("alice", "alice", upper) == ClaimResult(True)
    assert await text(raw, a.keys.lease("alice")) == alice.token
    assert await a.lookup("alice") == upper


async def test_renew_reports_a_vanished_lease_and_extends_the_others(make_relay: Any,
                                                                     raw: Any) -> None:
    a, sink = make_relay("node-a")
    for name in ("x", "y", "z"):
        assert (await a.claim(name, info(a, name))).ok
    await raw.delete(a.keys.lease("x"))
    await raw.pexpire(a.keys.lease("y"), 500)
    await a.renew()
    assert sink.lost == ["x"]
    assert await raw.pttl(a.keys.lease("y")) > 10_000
    assert await raw.pttl(a.keys.lease("z")) > 10_000
    assert await raw.pttl(a.keys.alive("node-a")) > 10_000
    assert await raw.sismember(a.keys.nodes, "node-a")
    assert a.stats.leases_lost == 1
    # a lease taken by someone else is lost too; a forgotten one is no longer renewed
    a.forget("x")
    await raw.set(a.keys.lease("y"), "node-b/other")
    await a.renew()
    assert sink.lost == ["x", "y"]


async def test_renew_with_nothing_held_still_beats(make_relay: Any, raw: Any) -> None:
    a, sink = make_relay("node-a")
    await a.renew()
    assert await raw.pttl(a.keys.alive("node-a")) > 10_000
    assert sink.lost == []


# --------------------------------------------------------------------------- reaping


async def subscribe_events(raw: Any, channel: str) -> Any:
    pubsub = raw.pubsub()
    await pubsub.subscribe(channel)
    async with asyncio.timeout(TIMEOUT):
        while (await pubsub.get_message(timeout=1.0)) is None:
            pass  # the subscribe confirmation
    return pubsub


async def events_until_sentinel(raw: Any, pubsub: Any, channel: str) -> list[env.Envelope]:
    """Every envelope published on ``channel`` before a sentinel we publish now."""
    sentinel = env.RoomJoin("sentinel", "sentinel").serialize()
    await raw.publish(channel, sentinel)
    out: list[env.Envelope] = []
    async with asyncio.timeout(TIMEOUT):
        while True:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
            if message is None:
                continue
            if message["data"] == sentinel:
                return out
            out.append(env.parse(message["data"]))


async def quits_in_rooms(relay: Relay, rooms: tuple[str, ...]
                         ) -> dict[str, list[env.RoomQuit]]:
    """The quits stored in ``rooms``' streams, by nick, in room order."""
    out: dict[str, list[env.RoomQuit]] = {}
    for room in rooms:
        for e in await relay.events(room, "0-0", 10_000):
            if isinstance(e, env.RoomQuit):
                out.setdefault(e.nick, []).append(e)
    return out


async def everything_stored(raw: Any) -> str:
    """Every key and its content, as one string to search."""
    parts = []
    async for key in raw.scan_iter():
        kind = (await raw.type(key)).decode()
        if kind == "string":
            value: Any = await raw.get(key)
        elif kind == "hash":
            value = await raw.hgetall(key)
        elif kind == "set":
            value = await raw.smembers(key)
        elif kind == "stream":
            value = await raw.xrange(key)
        else:
            value = kind
        parts.append(f"{key!r} = {value!r}")
    return "\n".join(parts)


async def dead_node_with_names(a: Relay, raw: Any, count: int) -> dict[str, NameInfo]:
    """Node a holds ``count`` names in rooms, then dies (its heartbeat key vanishes)."""
    await a.renew()
    held = {}
    for i in range(count):
        folded = f"user{i}"
        rooms = ("lobby", "dev") if i % 2 else ("lobby",)
        name = info(a, f"User{i}", rooms)
        assert (await a.claim(folded, name)).ok
        for room in rooms:
            await a.join(room, folded, name)
        held[folded] = name
    assert len(await raw.hkeys(a.keys.members("lobby"))) == count
    await raw.delete(a.keys.alive("node-a"))
    return held


async def test_reap_releases_every_name_of_a_dead_node_once(make_relay: Any,
                                                            raw: Any) -> None:
    a, _ = make_relay("node-a")
    b, _ = make_relay("node-b")
    await b.renew()
    held = await dead_node_with_names(a, raw, 7)
    assert await b.reap() == 7
    assert await b.reap() == 0  # nothing left to do
    quits = await quits_in_rooms(b, ("lobby", "dev"))
    # each name quit once in each of its rooms, the same quit (one eid) in all of them
    assert sorted(quits) == sorted(i.nick for i in held.values())
    for nick, rooms in quits.items():
        assert [q.room for q in rooms] == list(
            next(i.rooms for i in held.values() if i.nick == nick))
        assert {q.reason for q in rooms} == {"connection lost"}
        assert len({q.eid for q in rooms}) == 1
    for folded in held:
        assert await raw.get(a.keys.lease(folded)) is None
        assert await b.lookup(folded) is None
    assert await b.who("lobby") == []
    assert await b.who("dev") == []
    # every name is free again, and nothing mentions the dead node
    assert "node-a" not in await everything_stored(raw)
    assert (await b.claim("user0", info(b, "user0"))).ok


async def test_two_concurrent_reapers_release_each_name_exactly_once(make_relay: Any,
                                                                     raw: Any) -> None:
    a, _ = make_relay("node-a")
    b, _ = make_relay("node-b")
    c, _ = make_relay("node-c")
    held = await dead_node_with_names(a, raw, 20)
    released = await asyncio.gather(b.reap(), c.reap(), b.reap(), c.reap())
    assert sum(released) == len(held)
    quits = await quits_in_rooms(b, ("lobby", "dev"))
    assert sorted(quits) == sorted(i.nick for i in held.values())
    for nick, rooms in quits.items():
        assert len(rooms) == len(next(i.rooms for i in held.values() if i.nick == nick))
    assert "node-a" not in await everything_stored(raw)


async def test_reap_leaves_a_live_node_alone(make_relay: Any, raw: Any) -> None:
    a, _ = make_relay("node-a")
    b, _ = make_relay("node-b")
    await a.renew()
    name = info(a, "alive")
    assert (await a.claim("alive", name)).ok
    await a.join("lobby", "alive", NameInfo("alive", name.token, "node-a", ("lobby",)))
    assert await b.reap() == 0
    assert await text(raw, a.keys.lease("alive")) == name.token
    assert await b.who("lobby") == ["alive"]
    assert not (await b.claim("alive", info(b, "alive"))).ok


async def test_reap_does_not_release_a_name_someone_else_took_meanwhile(
        make_relay: Any, raw: Any) -> None:
    a, _ = make_relay("node-a")
    b, _ = make_relay("node-b")
    await a.renew()
    assert (await a.claim("eve", info(a, "eve"))).ok
    await raw.delete(a.keys.lease("eve"))
    eve = info(b, "Eve")
    assert (await b.claim("eve", eve)).ok  # stale claim: b holds it now
    await raw.delete(a.keys.alive("node-a"))
    assert await b.reap() == 0
    assert await b.lookup("eve") == eve
    assert await text(raw, a.keys.lease("eve")) == eve.token


async def test_close_removes_the_heartbeat(make_relay: Any, raw: Any) -> None:
    a, _ = make_relay("node-a")
    await a.renew()
    assert await raw.exists(a.keys.alive("node-a"))
    await a.close()
    assert not await raw.exists(a.keys.alive("node-a"))
    assert not await raw.sismember(a.keys.nodes, "node-a")


# --------------------------------------------------------------------------- rooms, history


async def test_say_returns_increasing_ids_and_history_the_last_n(make_relay: Any) -> None:
    a, _ = make_relay("node-a")
    ids = [await a.say(env.RoomMsg("lobby", "alice", "node-a/1", f"line {i}"))
           for i in range(12)]
    assert ids == sorted(ids, key=stream_key)
    assert len(set(ids)) == 12
    last = await a.history("lobby", 5)
    assert [m.text for m in last] == [f"line {i}" for i in range(7, 12)]
    assert [m.id for m in last] == ids[7:]
    assert all(m.room == "lobby" and m.sender == "alice" and m.sid == "node-a/1"
               for m in last)
    assert [m.id for m in await a.history("lobby", 100)] == ids
    assert await a.history("empty", 10) == []
    assert a.publisher.stats.published == 12


async def test_history_keeps_actions_and_skips_unreadable_entries(make_relay: Any,
                                                                  raw: Any) -> None:
    a, _ = make_relay("node-a")
    first = await a.say(env.RoomMsg("dev", "bob", "s", "waves", action=True))
    await raw.xadd(a.keys.history("dev"), {"e": b"garbage"})
    await raw.xadd(a.keys.history("dev"), {"other": b"field"})
    second = await a.say(env.RoomMsg("dev", "bob", "s", 'quote " and \\ ✓'))
    msgs = await a.history("dev", 10)
    assert msgs == [env.RoomMsg("dev", "bob", "s", "waves", True, first),
                    env.RoomMsg("dev", "bob", "s", 'quote " and \\ ✓', False, second)]


async def test_history_stream_is_capped(make_relay: Any, raw: Any) -> None:
    a, _ = make_relay("node-a", history_max=10)
    for i in range(300):
        await a.say(env.RoomMsg("busy", "alice", "s", f"m{i}"))
    # MAXLEN ~ trims approximately (whole macro nodes): bound it loosely
    assert await raw.xlen(a.keys.history("busy")) <= 10 + 100
    assert [m.text for m in await a.history("busy", 3)] == ["m297", "m298", "m299"]


async def test_private_to_a_node_without_a_subscriber_raises_no_such_nick(
        make_relay: Any) -> None:
    a, _ = make_relay("node-a")
    pm = env.DirectMsg("alice", "node-a/1", "bob", "bob", "psst", "pm-1", 1.0)
    with pytest.raises(NoSuchNick):
        await a.private(pm, "node-gone")
    assert a.publisher.stats.published == 0


async def test_who_and_rooms(make_relay: Any, raw: Any) -> None:
    a, _ = make_relay("node-a")
    b, _ = make_relay("node-b")
    names = {"alice": info(a, "alice"), "bob": info(b, "Bob"), "carol": info(a, "carol")}
    for folded, name in names.items():
        relay = a if name.node == "node-a" else b
        assert (await relay.claim(folded, name)).ok
        await relay.join("lobby", folded, name)
    await b.join("dev", "bob", names["bob"])
    assert await a.who("lobby") == ["alice", "Bob", "carol"]
    assert await b.who("dev") == ["Bob"]
    assert await a.who("nowhere") == []
    assert await a.rooms() == ([("dev", 1), ("lobby", 3)], False)
    # an emptied room disappears from the listing and from the index
    await b.part("dev", "bob", names["bob"])
    assert await b.rooms() == ([("lobby", 3)], False)
    assert await raw.zscore(a.keys.rooms_live, "dev") is None
    await a.leave_all("alice", names["alice"].token, "alice", ["lobby"], "bye")
    assert await b.who("lobby") == ["Bob", "carol"]


async def test_join_records_the_rooms_in_the_name_info(make_relay: Any) -> None:
    a, _ = make_relay("node-a")
    name = info(a, "alice")
    assert (await a.claim("alice", name)).ok
    joined = NameInfo("alice", name.token, "node-a", ("lobby", "dev"))
    await a.join("dev", "alice", joined)
    assert await a.lookup("alice") == joined
    # a holder whose lease is gone cannot overwrite the info any more
    await a.release("alice", name.token)
    await a.join("dev", "alice", joined)
    assert await a.lookup("alice") is None


# --------------------------------------------------------------------------- the bus


async def test_subscribe_room_returns_once_subscribed(make_relay: Any, raw: Any) -> None:
    a, sink = make_relay("node-a")
    b, _ = make_relay("node-b")
    async with running(a):
        assert a.ready
        await a.subscribe_room("dev")
        assert a.subscribed_rooms() == {"dev"}
        # published right after: a subscription not yet confirmed would miss it
        msg_id = await b.say(env.RoomMsg("dev", "bob", "node-b/1", "first!"))
        await sink.wait_for(lambda: bool(sink.of_type(env.RoomMsg)))
        assert sink.of_type(env.RoomMsg) == [
            env.RoomMsg("dev", "bob", "node-b/1", "first!", False, msg_id)]
        assert a.stats.received >= 1


async def test_many_rooms_subscribed_concurrently_all_confirmed(make_relay: Any) -> None:
    a, sink = make_relay("node-a")
    b, _ = make_relay("node-b")
    rooms = [f"room{i}" for i in range(20)]
    async with running(a):
        await asyncio.gather(*(a.subscribe_room(r) for r in rooms))
        assert a.subscribed_rooms() == set(rooms)
        for room in rooms:
            await b.say(env.RoomMsg(room, "bob", "s", f"in {room}"))
        await sink.wait_for(lambda: len(sink.of_type(env.RoomMsg)) == len(rooms))
        assert [m.room for m in sink.of_type(env.RoomMsg)] == rooms


async def test_events_and_private_messages_reach_the_sink(make_relay: Any) -> None:
    a, sink = make_relay("node-a")
    b, _ = make_relay("node-b")
    async with running(a):
        pm = env.DirectMsg("bob", "node-b/1", "alice", "alice", "psst", "pm-1", 12.5)
        await b.private(pm, "node-a")
        await sink.wait_for(lambda: len(sink.envelopes) == 1)
        # bob is in lobby (recorded silently): his quit is told there
        await b.join("lobby", "bob", NameInfo("Bob", "node-b/1", "node-b", ("lobby",)),
                     announce=False, restore=True)
        await a.subscribe_room("lobby")
        await b.leave_all("bob", "node-b/1", "Bob", ["lobby"], "gone")
        await b.rename_in_rooms("carol", "caroline", "Carol", "Caroline", ["lobby"], "node-b/2",
                                "node-b/2")
        await sink.wait_for(lambda: len(sink.envelopes) == 3)
    quit_, nick = sink.envelopes[1:]
    stored = await b.events("lobby", "0-0", 10)
    assert sink.envelopes[0] == pm
    assert isinstance(quit_, env.RoomQuit) and isinstance(nick, env.RoomNick)
    assert (quit_.room, quit_.nick, quit_.reason) == ("lobby", "Bob", "gone")
    assert (nick.room, nick.old, nick.new, nick.sid) == ("lobby", "Carol", "Caroline",
                                                         "node-b/2")
    assert stored == [quit_, nick]  # what the channel carried is what the stream holds


async def test_unsubscribed_room_is_not_delivered(make_relay: Any, raw: Any) -> None:
    a, sink = make_relay("node-a")
    b, _ = make_relay("node-b")
    async with running(a):
        await a.subscribe_room("dev")
        await a.subscribe_room("ops")
        await a.unsubscribe_room("dev")
        assert a.subscribed_rooms() == {"ops"}
        await b.say(env.RoomMsg("dev", "bob", "s", "unheard"))
        await b.say(env.RoomMsg("ops", "bob", "s", "heard"))
        await sink.wait_for(lambda: bool(sink.of_type(env.RoomMsg)))
        assert [m.text for m in sink.of_type(env.RoomMsg)] == ["heard"]


async def test_bad_envelopes_on_the_bus_are_dropped_and_counted(make_relay: Any,
                                                                raw: Any) -> None:
    a, sink = make_relay("node-a")
    async with running(a):
        await raw.publish(a.keys.events, b"\xff not json")
        await raw.publish(a.keys.events, b'{"v":1,"t":["list"]}')
        await raw.publish(a.keys.events, env.RoomJoin("lobby", "after").serialize())
        await sink.wait_for(lambda: bool(sink.envelopes))
        assert sink.envelopes == [env.RoomJoin("lobby", "after")]
        assert a.stats.bad_envelopes == 2


async def test_subscribe_room_without_a_listener_is_unavailable(make_relay: Any) -> None:
    a, _ = make_relay("node-a")
    with pytest.raises(RelayUnavailable):
        await a.subscribe_room("dev")
    assert a.subscribed_rooms() == set()


# --------------------------------------------------------------------------- errors


@pytest.fixture
async def unreachable() -> AsyncIterator[redis.asyncio.Redis]:
    """A client for a port where nothing listens (no retries, so it fails at once)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    client = redis.asyncio.Redis(host="127.0.0.1", port=port, socket_connect_timeout=0.2,
                                 retry=Retry(NoBackoff(), 0))
    yield client
    await client.aclose()


async def test_redis_failures_become_relay_unavailable(
        unreachable: redis.asyncio.Redis) -> None:
    relay = Relay(unreachable, config("node-a", outbox_seconds=0), Sink())
    name = info(relay, "alice")
    calls = [
        lambda: relay.claim("alice", name),
        lambda: relay.release("alice", name.token),
        lambda: relay.rename("alice", "bob", name),
        lambda: relay.lookup("alice"),
        lambda: relay.say(env.RoomMsg("lobby", "alice", "s", "hi")),
        lambda: relay.who("lobby"),
        lambda: relay.rooms(),
        lambda: relay.history("lobby", 5),
        lambda: relay.join("lobby", "alice", name),
        lambda: relay.part("lobby", "alice", name),
        lambda: relay.leave_all("alice", name.token, "alice", ["lobby"], None),
        lambda: relay.private(env.DirectMsg("a", "s", "b", "b", "t", "i", 1.0), "node-b"),
        relay.renew,
        relay.reap,
        relay.close,
    ]
    for call in calls:
        with pytest.raises(RelayUnavailable) as caught:
            await call()
        assert not isinstance(caught.value, RedisError)
        assert caught.value.code == "relay-unavailable"
        assert isinstance(caught.value.__cause__, RedisError | OSError)


async def test_rename_in_place_after_losing_the_lease_fails(make_relay: Any, raw: Any) -> None:
    a, _ = make_relay("node-a")
    b, _ = make_relay("node-b")
    old = info(a, "alice")
    assert (await a.claim("alice", old)).ok
    await raw.delete(a.keys.lease("alice"))  # a paused past its TTL...
    successor = info(b, "Alice")
    assert (await b.claim("alice", successor)).ok  # ...and b took the name
    # a's "/nick ALICE" must not overwrite b's entry (PMs would go to node-a)
    upper = NameInfo("ALICE", old.token, "node-a", ())
    assert await a.rename("alice", "alice", upper) == ClaimResult(False)
    assert await a.lookup("alice") == successor
    assert await text(raw, a.keys.lease("alice")) == successor.token


async def test_a_retried_publish_is_not_published_twice() -> None:
    server = fakeredis.FakeServer()
    redis = fakeredis.FakeAsyncRedis(server=server)
    relay = Relay(redis, NodeConfig(node_id="once"), Sink())
    msg = env.RoomMsg("lobby", "alice", "once/1", "hello")
    later = int((time.time() + 60) * 1000)
    first = await relay.publisher._publish_once(msg, "k1", later)
    # as if the first try had timed out:
    again = await relay.publisher._publish_once(msg, "k1", later)
    assert again == first
    assert await redis.xlen(relay.keys.history("lobby")) == 1
    other = await relay.publisher._publish_once(msg, "k2", later)
    assert other != first
    await redis.aclose()


async def test_redis_reaching_a_message_after_its_deadline_publishes_nothing() -> None:
    """A frozen Redis runs what it had read once it thaws; by then the sender may have
    been told the message was not relayed, and must not see it delivered after all."""
    server = fakeredis.FakeServer()
    redis = fakeredis.FakeAsyncRedis(server=server)
    relay = Relay(redis, NodeConfig(node_id="late"), Sink())
    msg = env.RoomMsg("lobby", "alice", "late/1", "hello")
    passed = int((time.time() - 1) * 1000)
    with pytest.raises(RelayUnavailable):
        await relay.publisher._publish_once(msg, "k1", passed)
    assert await redis.xlen(relay.keys.history("lobby")) == 0
    assert relay.publisher.stats.publish_too_late == 1
    # a try that did run before its deadline still answers with its id afterwards
    first = await relay.publisher._publish_once(msg, "k2", int((time.time() + 60) * 1000))
    assert await relay.publisher._publish_once(msg, "k2", passed) == first
    await redis.aclose()


async def test_a_relay_loop_that_fails_unexpectedly_is_logged_and_restarted(
        make_relay: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    relay, _ = make_relay("n1", reconnect_min=0.01, reconnect_max=0.02)
    calls = 0
    restarted = asyncio.Event()

    async def flaky_reap_loop() -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise KeyError("a bug in one round")
        restarted.set()
        await asyncio.Event().wait()

    monkeypatch.setattr(relay.leases, "reap_loop", flaky_reap_loop)
    async with running(relay):
        async with asyncio.timeout(TIMEOUT):
            await restarted.wait()
        assert relay.ready  # the listener never noticed
    assert relay.stats.loop_restarts == 1


def test_a_resubscription_reaches_the_node_as_rooms(make_relay: Any) -> None:
    """The bus reports channels; the node hears rooms (a channel that is no room's has no
    gap to repair), or every room (None)."""
    relay, sink = make_relay("n1")
    k = relay.keys
    report = relay.bus.sink.on_resubscribed
    report(frozenset({k.room_channel("lobby"), k.room_channel("dev"), k.node_channel("n1")}))
    report(frozenset({k.node_channel("n1"), k.events}))
    report(None)
    assert sink.resubscribed_which == [frozenset({"lobby", "dev"}), None]


async def test_a_transport_error_in_the_canary_round_is_not_fatal(
        make_relay: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """uvloop raises RuntimeError when redis-py writes to a transport reset under it."""
    relay, _ = make_relay("n1", canary_interval=0.01)
    real_publish = relay._redis.spublish
    failed = asyncio.Event()

    async def publish(*args: Any) -> Any:
        if not failed.is_set():
            failed.set()
            raise RuntimeError("unable to perform operation on <TCPTransport closed=True>")
        return await real_publish(*args)

    monkeypatch.setattr(relay._redis, "spublish", publish)
    back = asyncio.Event()
    (link,) = relay.bus.links
    canary_back = link._canary_back

    def seen(canary: env.Canary) -> None:
        canary_back(canary)
        back.set()

    monkeypatch.setattr(link, "_canary_back", seen)
    async with running(relay):
        async with asyncio.timeout(TIMEOUT):
            await failed.wait()
            await back.wait()  # a later round's canary comes back
    assert relay.stats.loop_restarts == 0


@pytest.mark.parametrize("after", [0.0, 0.013, 0.029, 0.041, 0.057, 0.071, 0.089, 0.1])
async def test_the_relay_stops_when_cancelled_mid_command(make_relay: Any,
                                                          after: float) -> None:
    """redis.asyncio swallows a cancellation that lands while a command is in flight; the
    relay's loops must still stop (a canary every 10 ms keeps a command in flight)."""
    relay, _ = make_relay("n1", canary_interval=0.01)
    task = asyncio.create_task(relay.run())
    async with asyncio.timeout(TIMEOUT):
        await relay.wait_ready()
    await asyncio.sleep(after)  # where the cancellation lands is the parameter
    task.cancel()
    done, _ = await asyncio.wait([task], timeout=TIMEOUT)
    assert done, "the relay went on after it was cancelled"


# --------------------------------------------------------------------------- batching


class Rounds:
    """Counts the relay's pipelines (Redis round trips) and can make some of them fail."""

    def __init__(self, relay: Relay, monkeypatch: pytest.MonkeyPatch) -> None:
        self.count = 0
        self.sizes: list[int] = []
        """Messages per round (each room's script carries its messages' once-keys)."""
        self.scripts: list[int] = []
        """Scripts per round (one per room)."""
        self.fail: list[str] = []
        """Per coming round: "before" (fails unsent), "after" (runs, then the reply is
        lost), or "" (normal)."""
        real = relay._redis.pipeline

        def pipeline(*args: Any, **kwargs: Any) -> Any:
            pipe = real(*args, **kwargs)
            execute = pipe.execute

            async def counted(*a: Any, **kw: Any) -> Any:
                self.count += 1
                self.scripts.append(len(pipe.command_stack))
                self.sizes.append(sum(int(args[2]) - 3 for args, _ in pipe.command_stack))
                how = self.fail.pop(0) if self.fail else ""
                if how == "before":
                    raise RedisConnectionError("Redis went away")
                result = await execute(*a, **kw)
                if how == "after":
                    raise RedisTimeoutError("the reply was lost")
                return result

            pipe.execute = counted  # type: ignore[method-assign]
            return pipe

        monkeypatch.setattr(relay._redis, "pipeline", pipeline)


def says(sender: str, n: int, room: str = "lobby") -> list[env.RoomMsg]:
    return [env.RoomMsg(room, sender, f"s/{sender}", f"{sender} {i}") for i in range(n)]


def interleaved(*senders: list[env.RoomMsg]) -> list[env.RoomMsg]:
    return [m for group in zip(*senders, strict=True) for m in group]


async def submit_all(relay: Relay, msgs: list[env.RoomMsg]
                     ) -> list[str | RelayUnavailable]:
    """Submit every message at once (as many sessions would in one loop iteration) and
    return what each was told, in submission order."""
    results: list[str | RelayUnavailable | None] = [None] * len(msgs)
    all_done = asyncio.get_running_loop().create_future()

    def done_for(i: int) -> Callable[[str | RelayUnavailable], None]:
        def done(result: str | RelayUnavailable) -> None:
            assert results[i] is None, "told twice"
            results[i] = result
            if all(r is not None for r in results) and not all_done.done():
                all_done.set_result(None)
        return done

    for i, msg in enumerate(msgs):
        relay.submit(msg, done_for(i))
    async with asyncio.timeout(TIMEOUT):
        await all_done
    return [r for r in results if r is not None]


async def stream_texts(raw: Any, relay: Relay, room: str = "lobby") -> list[str]:
    entries = await raw.xrange(relay.keys.history(room))
    return [env.parse(fields[b"e"]).text for _, fields in entries]  # type: ignore[union-attr]


async def test_messages_submitted_together_share_one_round_trip_in_order(
        make_relay: Any, raw: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    relay, _ = make_relay("n1")
    await relay.bus.load_scripts()
    rounds = Rounds(relay, monkeypatch)
    msgs = interleaved(says("ann", 20), says("bob", 20), says("cy", 20))
    results = await submit_all(relay, msgs)
    assert rounds.count == 1 and rounds.sizes == [60]
    assert all(isinstance(r, str) for r in results)
    ids = [tuple(map(int, str(r).split("-"))) for r in results]
    assert ids == sorted(ids) and len(set(ids)) == 60  # ids follow submission order
    assert await stream_texts(raw, relay) == [m.text for m in msgs]
    assert relay.publisher.stats.published == 60


async def test_messages_submitted_during_a_round_go_in_the_next(
        make_relay: Any, raw: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    relay, _ = make_relay("n1")
    await relay.bus.load_scripts()
    rounds = Rounds(relay, monkeypatch)
    first, later = says("ann", 3), says("bob", 5)
    told: list[str | RelayUnavailable] = []
    for m in first:
        relay.submit(m, told.append)
    await asyncio.sleep(0)  # a scheduling step: the first round is now in flight
    results = await submit_all(relay, later)
    assert all(isinstance(r, str) for r in results)
    assert rounds.sizes == [3, 5]
    assert await stream_texts(raw, relay) == [m.text for m in first + later]


@pytest.mark.parametrize("how", ["before", "after"])
async def test_a_failed_round_waits_in_the_outbox_and_is_published_once_in_order(
        make_relay: Any, raw: Any, monkeypatch: pytest.MonkeyPatch, how: str) -> None:
    """Redis unreachable before the round ran, or the round ran and its reply was lost:
    either way every message is published exactly once, in order, with its first id."""
    relay, _ = make_relay("n1")
    await relay.bus.load_scripts()
    rounds = Rounds(relay, monkeypatch)
    rounds.fail = [how, "before"]  # and the first retry fails too
    msgs = interleaved(says("ann", 10), says("bob", 10))
    results = await submit_all(relay, msgs)
    assert all(isinstance(r, str) for r in results)
    assert await stream_texts(raw, relay) == [m.text for m in msgs]
    assert relay.publisher.stats.outboxed == 20 and relay.publisher.stats.outbox_refused == 0
    assert rounds.count == 3
    assert relay.publisher.stats.published == 20


async def test_a_failed_round_without_an_outbox_refuses_each_message(
        make_relay: Any, raw: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    relay, _ = make_relay("n1", outbox_seconds=0)
    await relay.bus.load_scripts()
    rounds = Rounds(relay, monkeypatch)
    rounds.fail = ["before"]
    results = await submit_all(relay, says("ann", 4))
    assert all(isinstance(r, RelayUnavailable) for r in results)
    assert all(isinstance(r.__cause__, RedisError) for r in results
               if isinstance(r, RelayUnavailable))
    assert await stream_texts(raw, relay) == []
    assert relay.publisher.stats.outboxed == 0


async def test_a_full_outbox_refuses_the_newest_messages_of_a_failed_round(
        make_relay: Any, raw: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    relay, _ = make_relay("n1", outbox_max=3)
    await relay.bus.load_scripts()
    rounds = Rounds(relay, monkeypatch)
    rounds.fail = ["before"]
    msgs = says("ann", 5)
    results = await submit_all(relay, msgs)
    assert [isinstance(r, str) for r in results] == [True, True, True, False, False]
    assert await stream_texts(raw, relay) == [m.text for m in msgs[:3]]
    assert (relay.publisher.stats.outboxed, relay.publisher.stats.outbox_refused) == (3, 2)


async def test_messages_held_in_the_outbox_expire_with_relay_unavailable(
        make_relay: Any, raw: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    relay, _ = make_relay("n1", outbox_seconds=0.05)
    await relay.bus.load_scripts()
    rounds = Rounds(relay, monkeypatch)
    rounds.fail = ["before"] * 1000
    results = await submit_all(relay, says("ann", 3))
    assert all(isinstance(r, RelayUnavailable) for r in results)
    assert relay.publisher.stats.outbox_expired == 3
    assert await stream_texts(raw, relay) == []


async def test_a_message_redis_refuses_fails_alone(make_relay: Any, raw: Any,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    relay, _ = make_relay("n1")
    await relay.bus.load_scripts()
    rounds = Rounds(relay, monkeypatch)
    await raw.set(relay.keys.history("broken"), "not a stream")  # XADD: WRONGTYPE
    msgs = [*says("ann", 2), *says("ann", 1, room="broken"), *says("bob", 2)]
    with capture_logs() as logs:
        results = await submit_all(relay, msgs)
    assert [isinstance(r, str) for r in results] == [True, True, False, True, True]
    # Redis refused that command: not "relay-unavailable" (nothing is down), and logged
    assert isinstance(results[2], RelayRefused) and results[2].code == "internal"
    assert [(e["log_level"], e["command"]) for e in logs
            if e["event"] == "redis refused a command"] == [("warning", "publish")]
    assert rounds.count == 1
    assert await stream_texts(raw, relay) == ["ann 0", "ann 1", "bob 0", "bob 1"]


async def test_a_redis_that_forgot_the_script_is_sent_it_again(
        make_relay: Any, raw: Any) -> None:
    relay, _ = make_relay("n1")
    first = await relay.say(says("ann", 1)[0])
    await raw.script_flush()
    results = await submit_all(relay, says("bob", 3))
    assert all(isinstance(r, str) and r > first for r in results)
    assert await stream_texts(raw, relay) == ["ann 0", "bob 0", "bob 1", "bob 2"]


async def test_a_round_carries_at_most_publish_batch_messages(
        make_relay: Any, raw: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    relay, _ = make_relay("n1", publish_batch=4)
    await relay.bus.load_scripts()
    rounds = Rounds(relay, monkeypatch)
    msgs = says("ann", 10)
    results = await submit_all(relay, msgs)
    assert all(isinstance(r, str) for r in results)
    assert rounds.sizes == [4, 4, 2]
    assert await stream_texts(raw, relay) == [m.text for m in msgs]


async def test_a_round_that_fails_unexpectedly_answers_every_sender(
        make_relay: Any, raw: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A bug in a round (not a Redis failure) must not leave its senders waiting."""
    relay, _ = make_relay("n1")
    await relay.bus.load_scripts()
    real = relay._redis.pipeline
    calls = 0

    def pipeline(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise KeyError("a bug")
        return real(*args, **kwargs)

    monkeypatch.setattr(relay._redis, "pipeline", pipeline)
    results = await submit_all(relay, says("ann", 3))
    assert all(isinstance(r, RelayUnavailable) and isinstance(r.__cause__, KeyError)
               for r in results)
    assert relay.publisher.stats.outboxed == 0
    assert isinstance(await relay.say(says("bob", 1)[0]), str)  # the next round works
    assert await stream_texts(raw, relay) == ["bob 0"]


async def test_deadlines_follow_redis_clock_not_a_skewed_node_clock(make_relay: Any) -> None:
    """A node whose clock lags Redis's by a minute: its deadlines would all be past by
    Redis's clock (every message refused as too late) without the measured offset; one
    ahead by a minute would let a thawed Redis publish lines a minute too late."""
    relay, _ = make_relay("skewed")
    window = relay._cfg.outbox_seconds
    relay.publisher._clock = lambda: time.time() - 60.0
    async with running(relay):  # measured when it subscribes
        assert relay.publisher.clock_offset == pytest.approx(60.0, abs=1.0)
        assert relay.publisher._deadline() / 1000 == pytest.approx(time.time() + window, abs=1.0)
        stream_id = await relay.say(env.RoomMsg("lobby", "alice", "skewed/1", "on time"))
        assert stream_id and relay.publisher.stats.publish_too_late == 0
        relay.publisher._clock = lambda: time.time() + 60.0
        await relay.publisher.sync_clock()
        assert relay.publisher.clock_offset == pytest.approx(-60.0, abs=1.0)
        assert relay.publisher._deadline() / 1000 == pytest.approx(time.time() + window, abs=1.0)


@pytest.mark.parametrize("bus_format", [2, 1])
async def test_a_round_is_one_script_per_room_and_one_bus_message_per_room(
        make_relay: Any, raw: Any, monkeypatch: pytest.MonkeyPatch, bus_format: int) -> None:
    """Format 2: a round's messages of one room travel as one batch (each with its own
    id), sharded only; format 1 (the previous release's) publishes each alone, byte for
    byte as then, with classic PUBLISH (the previous release's nodes) and SPUBLISH."""
    a, sink = make_relay("node-a")
    b, _ = make_relay("node-b", bus_format=bus_format)
    await b.bus.load_scripts()
    rounds = Rounds(b, monkeypatch)
    msgs = interleaved(says("ann", 5, "lobby"), says("bob", 5, "den"))
    async with running(a):
        await a.subscribe_room("lobby")
        await a.subscribe_room("den")
        async with raw.pubsub() as watch, raw.pubsub() as classic:
            await watch.ssubscribe(b.keys.room_channel("lobby"))
            await classic.subscribe(b.keys.room_channel("lobby"))
            assert await classic.get_message(timeout=1) is not None  # confirmed
            results = await submit_all(b, msgs)
            assert rounds.scripts == [2] and rounds.sizes == [10]
            await sink.wait_for(lambda: len(sink.of_type(env.RoomMsg)) == 10)
            seen: list[bytes] = []
            while len(seen) < (1 if bus_format == 2 else 5):
                got = await watch.get_message(ignore_subscribe_messages=True, timeout=1)
                if got is not None:
                    seen.append(got["data"])
            await raw.publish(b.keys.room_channel("lobby"), b"end")
            heard: list[bytes] = []
            while not heard or heard[-1] != b"end":
                got = await classic.get_message(ignore_subscribe_messages=True, timeout=1)
                if got is not None:
                    heard.append(got["data"])
    assert sink.batches == (2 if bus_format == 2 else 0)
    assert heard == ([b"end"] if bus_format == 2 else [*seen, b"end"])
    sent = [dataclasses.replace(m, id=str(r)) for m, r in zip(msgs, results, strict=True)]
    for room in ("lobby", "den"):
        assert [e for e in sink.of_type(env.RoomMsg) if e.room == room] == \
            [m for m in sent if m.room == room]
    lobby = [m for m in sent if m.room == "lobby"]
    if bus_format == 2:
        assert seen == [env.RoomBatch("lobby", tuple(lobby)).serialize()]
    else:
        assert seen == [m.serialize() for m in lobby]
    assert await stream_texts(raw, b, "den") == [m.text for m in sent if m.room == "den"]


async def test_a_round_keeps_once_keys_and_deadlines_per_message(
        make_relay: Any, raw: Any) -> None:
    relay, _ = make_relay("n1")
    later = int((time.time() + 60) * 1000)
    passed = int((time.time() - 1) * 1000)
    m1, m2, m3 = says("ann", 3)
    first = await relay.publisher._publish_once(m1, "k1", later)
    # a retried round: k1 ran already, k2 comes too late, k3 is new
    results = await relay.publisher._publish_many(
        [(m1, "k1", later), (m2, "k2", passed), (m3, "k3", later)])
    assert results[0] == first
    assert isinstance(results[1], RelayUnavailable)
    assert isinstance(results[2], str) and results[2] != first
    assert await stream_texts(raw, relay) == [m1.text, m3.text]
    assert relay.publisher.stats.publish_too_late == 1
