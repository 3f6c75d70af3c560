"""The lease side on its own (node.leases): names, renewal, reaping and departures, on
fakeredis, with a stand-in for the room side."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Iterable
from typing import Any

import pytest
from redis.exceptions import TimeoutError as RedisTimeoutError

from node import leases as leases_module
from node.errors import RelayUnavailable
from node.keys import Keys
from node.leases import ClaimResult, Leases, NameInfo

from . import relaykit
from .relaykit import TIMEOUT, Sink, config

fake_redis = relaykit.fake_redis  # the fixture

KEYS = Keys()


class Rooms:
    """Stands in for the room store: records every departure the lease side announces."""

    def __init__(self) -> None:
        self.left: list[tuple[str, str, tuple[str, ...], str | None]] = []

    async def leave_all(self, folded: str, token: str, nick: str, rooms: Iterable[str],
                        reason: str | None) -> None:
        self.left.append((folded, nick, tuple(rooms), reason))


def make_leases(redis: Any, node_id: str, **overrides: Any) -> tuple[Leases, Sink, Rooms]:
    sink, rooms = Sink(), Rooms()
    return Leases(redis, config(node_id, **overrides), KEYS, sink, rooms.leave_all), sink, rooms


def name(leases: Leases, nick: str, rooms: tuple[str, ...] = ()) -> NameInfo:
    return NameInfo(nick, leases.new_token(), leases.node_id, rooms)


def test_name_info_round_trips_and_reads_only_what_it_trusts() -> None:
    full = NameInfo("Ann", "n1/ab", "n1", ("lobby", "dev"), prev="n0/cd", oper=True,
                    account="ann")
    assert NameInfo.parse(full.serialize()) == full
    assert NameInfo.parse(full.serialize().encode()) == full
    assert NameInfo.parse('{"nick":"Bo","token":"t","node":"n2"}') == NameInfo("Bo", "t",
                                                                                "n2", ())
    # only a JSON true makes an operator; an empty account is none
    loose = NameInfo.parse('{"nick":"Cy","token":"t","node":"n2","oper":"yes","account":""}')
    assert (loose.oper, loose.account) == (False, None)
    assert set(NameInfo("Di", "t", "n", ()).serialize()[1:-1].split(",")) == {
        '"nick":"Di"', '"token":"t"', '"node":"n"', '"rooms":[]'}


async def test_reaping_asks_the_room_side_to_announce_each_quit_once(fake_redis: Any) -> None:
    a, _, _ = make_leases(fake_redis, "node-a")
    b, _, rooms = make_leases(fake_redis, "node-b")
    await a.renew()
    held = [name(a, "Ann", ("lobby",)), name(a, "Bo", ("lobby", "dev")), name(a, "Cy")]
    for info in held:
        assert (await a.claim(info.nick.lower(), info)).ok
    await fake_redis.delete(KEYS.alive("node-a"))  # node-a died
    assert await b.reap() == 3
    assert await b.reap() == 0
    assert sorted(rooms.left) == [("ann", "Ann", ("lobby",), "connection lost"),
                                  ("bo", "Bo", ("lobby", "dev"), "connection lost"),
                                  ("cy", "Cy", (), "connection lost")]
    assert b.stats.reaped == 3
    assert not await fake_redis.sismember(KEYS.nodes, "node-a")


async def test_reaping_a_node_with_many_names_goes_in_chunks(
        fake_redis: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(leases_module, "_REAP_CHUNK", 2)
    a, _, _ = make_leases(fake_redis, "node-a")
    b, _, rooms = make_leases(fake_redis, "node-b")
    for i in range(5):
        assert (await a.claim(f"u{i}", name(a, f"U{i}"))).ok
    await fake_redis.delete(KEYS.alive("node-a"))
    assert await b.reap() == 5
    assert sorted(folded for folded, *_ in rooms.left) == [f"u{i}" for i in range(5)]
    assert await fake_redis.scard(KEYS.owned("node-a")) == 0


async def test_renewal_reports_exactly_the_lost_leases_across_chunks(
        fake_redis: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(leases_module, "_RENEW_CHUNK", 2)
    leases, sink, _ = make_leases(fake_redis, "node-a")
    for i in range(5):
        assert (await leases.claim(f"u{i}", name(leases, f"u{i}"))).ok
    await fake_redis.delete(KEYS.lease("u1"))  # ran out
    await fake_redis.set(KEYS.lease("u2"), "node-b/theirs")  # taken
    await fake_redis.delete(KEYS.lease("u4"))
    for i in (0, 3):
        await fake_redis.pexpire(KEYS.lease(f"u{i}"), 500)
    await leases.renew()
    assert sink.lost == ["u1", "u2", "u4"]
    assert leases.stats.leases_lost == 3 and leases.stats.renewals == 1
    for i in (0, 3):
        assert await fake_redis.pttl(KEYS.lease(f"u{i}")) > 10_000


async def test_after_its_renewals_failed_a_node_reaps_nobody_for_a_lease_ttl(
        fake_redis: Any) -> None:
    """An outage of the names' shard longer than the lease TTL (a failover) lets every
    heartbeat expire: the node that renews first must give the others a whole TTL to
    renew before it reaps anyone, and then still reap a node that is really dead."""
    a, _, _ = make_leases(fake_redis, "node-a")
    await a.renew()
    assert (await a.claim("ann", name(a, "Ann"))).ok
    await fake_redis.delete(KEYS.alive("node-a"))  # expired while the shard was away
    sink, rooms = Sink(), Rooms()
    ttl = 1.0
    b = Leases(fake_redis, dataclasses.replace(config("node-b"), lease_ttl=ttl), KEYS,
               sink, rooms.leave_all)
    loop = asyncio.get_running_loop()
    real_renew, real_reap = b.renew, b.reap
    back: asyncio.Future[float] = loop.create_future()
    reaped: asyncio.Future[float] = loop.create_future()

    async def renew() -> None:
        if not back.done() and b.stats.renewal_failures < 4:
            # the shard is still away for this node's renewals, over more than one
            # reaping interval: the reaper may reach it first, and must wait too
            raise RelayUnavailable()
        await real_renew()
        if not back.done():
            back.set_result(loop.time())

    async def reap() -> int:
        at = loop.time()
        released = await real_reap()
        if released and not reaped.done():
            reaped.set_result(at)
        return released

    b.renew, b.reap = renew, reap  # type: ignore[method-assign]
    tasks = [asyncio.create_task(b.renew_loop()), asyncio.create_task(b.reap_loop())]
    try:
        async with asyncio.timeout(TIMEOUT):
            came_back, reaped_at = await back, await reaped
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    assert reaped_at >= came_back + ttl
    assert rooms.left == [("ann", "Ann", (), "connection lost")]


async def test_a_departure_leaves_its_rooms_then_releases_its_name(fake_redis: Any) -> None:
    leases, _, rooms = make_leases(fake_redis, "node-a")
    ann = name(leases, "Ann", ("lobby", "dev"))
    assert await leases.claim("ann", ann) == ClaimResult(True)
    await leases.depart("ann", ann.token, "Ann", ann.rooms, "bye")
    assert rooms.left == [("ann", "Ann", ("lobby", "dev"), "bye")]
    assert await leases.lookup("ann") is None
    assert await fake_redis.get(KEYS.lease("ann")) is None
    assert not await fake_redis.sismember(KEYS.owned("node-a"), "ann")


async def test_a_claim_that_ran_but_failed_is_released_in_the_background(
        fake_redis: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Its reply was lost and there is no time to try again: the name may be ours in
    Redis though the user was told it is not; it is released, with no quit announced."""
    leases, _, rooms = make_leases(fake_redis, "node-a", outbox_seconds=0)
    real = leases._claim

    async def ran_then_lost(*args: Any, **kwargs: Any) -> Any:
        await real(*args, **kwargs)
        raise RedisTimeoutError("the reply was lost")

    monkeypatch.setattr(leases, "_claim", ran_then_lost)
    ann = name(leases, "Ann")
    with pytest.raises(RelayUnavailable):
        await leases.claim("ann", ann)
    assert leases.stats.departures_deferred == 1 and leases._departing is not None
    await asyncio.wait_for(leases._departing, TIMEOUT)
    assert await leases.lookup("ann") is None
    assert await fake_redis.get(KEYS.lease("ann")) is None
    assert rooms.left == []
    leases.abandon_departures()  # nothing left to stop


async def test_a_departure_after_a_resume_elsewhere_leaves_the_rooms_alone(
        fake_redis: Any) -> None:
    """A node shutting down tells its users to move; one resumed on another node before
    this node got to its departure: the rooms are the resumed session's now, so no quit is
    announced and nothing is taken out of them (the name stays the resumer's)."""
    leases_a, _, rooms_a = make_leases(fake_redis, "node-a")
    leases_b, _, _ = make_leases(fake_redis, "node-b")
    ann = name(leases_a, "Ann", ("lobby",))
    assert await leases_a.claim("ann", ann) == ClaimResult(True)
    moved = name(leases_b, "Ann", ("lobby",))
    assert (await leases_b.resume("ann", ann.token, moved)).ok
    await leases_a.depart("ann", ann.token, "Ann", ann.rooms, "node shutting down")
    assert rooms_a.left == []
    holder = await leases_b.lookup("ann")
    assert holder is not None and holder.token == moved.token
