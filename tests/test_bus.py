"""The bus on its own (node.bus): one subscription and its liveness, on fakeredis.

The bus is given plain channel names here, not the cluster's key scheme: it knows no
nicknames and no rooms, only channels."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import fakeredis
import pytest
from redis.exceptions import ResponseError
from structlog.testing import capture_logs

from node import envelope as env
from node.bus import Bus
from node.errors import RedisMisconfigured

from . import relaykit
from .relaykit import TIMEOUT, Sink, config, running

fake_redis = relaykit.fake_redis  # the fixture

HOME = "n1:home"
EVERYONE = "everyone"
EPOCH = "epoch"


def make_bus(redis: fakeredis.FakeAsyncRedis, sink: Sink, *, scripts: tuple[Any, ...] = (),
             **overrides: Any) -> Bus:
    return Bus(redis, config("n1", **overrides), sink, home=HOME, channels=(EVERYONE,),
               epoch_key=EPOCH, scripts=scripts)


def listening(bus: Bus) -> contextlib.AbstractAsyncContextManager[None]:
    """The bus's listener and canary, from its first subscription until the exit."""
    return running(bus.listen, bus.canary_loop, ready=bus.wait_ready)


def canaries_back(bus: Bus, monkeypatch: pytest.MonkeyPatch) -> asyncio.Queue[int]:
    """The sequence number of each canary that comes back, as it comes back."""
    seqs: asyncio.Queue[int] = asyncio.Queue()
    (link,) = bus.links
    real = link._canary_back

    def back(canary: env.Canary) -> None:
        real(canary)
        seqs.put_nowait(canary.seq)

    monkeypatch.setattr(link, "_canary_back", back)
    return seqs


async def test_subscribe_returns_once_redis_confirmed_it(fake_redis: Any) -> None:
    sink = Sink()
    bus = make_bus(fake_redis, sink)
    async with listening(bus):
        assert bus.channels == {HOME, EVERYONE}
        await bus.subscribe("room-x")
        # published right after: a subscription not yet confirmed would miss it
        await fake_redis.spublish("room-x", env.RoomJoin("x", "ann").serialize())
        await sink.wait_for(lambda: len(sink.envelopes) == 1)
        await bus.unsubscribe("room-x")
        assert bus.channels == {HOME, EVERYONE}
        await fake_redis.spublish("room-x", env.RoomJoin("x", "bob").serialize())
        await fake_redis.publish(EVERYONE, env.RoomJoin("y", "cy").serialize())
        await sink.wait_for(lambda: len(sink.envelopes) == 2)
    assert sink.envelopes == [env.RoomJoin("x", "ann"), env.RoomJoin("y", "cy")]
    assert bus.stats.received == 2 and sink.resubscribed == 0


async def test_the_upgrade_mode_subscribes_sharded_channels_classic_too(
        fake_redis: Any) -> None:
    """--bus-format 1: a sharded channel is subscribed with SUBSCRIBE too (the previous
    release publishes it classic), confirmed only once both are, and unsubscribed both
    ways; the canary stays sharded only."""
    sink = Sink()
    bus = make_bus(fake_redis, sink, bus_format=1)
    async with listening(bus):
        (link,) = bus.links
        pubsub = bus.pubsub
        assert pubsub is not None
        classic = {c.decode() for c in pubsub.channels}
        assert classic == {HOME, EVERYONE}  # not the canary
        await bus.subscribe("room-x")
        assert link._half == {}  # both halves confirmed before subscribe returned
        await fake_redis.publish("room-x", env.RoomJoin("x", "old").serialize())
        await fake_redis.spublish("room-x", env.RoomJoin("x", "new").serialize())
        await sink.wait_for(lambda: len(sink.envelopes) == 2)
        await bus.unsubscribe("room-x")
        await fake_redis.publish("room-x", env.RoomJoin("x", "gone").serialize())
        await fake_redis.spublish("room-x", env.RoomJoin("x", "gone").serialize())
        await fake_redis.publish(EVERYONE, env.RoomJoin("y", "cy").serialize())
        await sink.wait_for(lambda: len(sink.envelopes) == 3)
    assert sink.envelopes == [env.RoomJoin("x", "old"), env.RoomJoin("x", "new"),
                              env.RoomJoin("y", "cy")]


async def test_the_upgrade_mode_reports_a_library_reconnect_once_both_halves_are_back(
        fake_redis: Any) -> None:
    sink = Sink()
    bus = make_bus(fake_redis, sink, bus_format=1)
    async with listening(bus):
        await bus.subscribe("room-x")
        pubsub = bus.pubsub
        assert pubsub is not None and pubsub.connection is not None
        await pubsub.connection.disconnect()
        await sink.wait_for(lambda: sink.resubscribed == 1)
        (link,) = bus.links
        assert link._half == {}
        await fake_redis.publish("room-x", env.RoomJoin("x", "old").serialize())
        await sink.wait_for(lambda: len(sink.envelopes) == 1)


async def test_canaries_come_back_and_make_the_bus_ready(
        fake_redis: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    sink = Sink()
    bus = make_bus(fake_redis, sink, canary_interval=0.05)
    back = canaries_back(bus, monkeypatch)
    now = asyncio.get_running_loop().time()
    assert bus.is_ready(now) == (False, ["bus subscription down", "redis not answering",
                                         "canary not coming back (deaf subscription)"])
    async with listening(bus):
        async with asyncio.timeout(TIMEOUT):
            await back.get()
        assert bus.is_ready() == (True, [])
        assert bus.canary_rtt is not None and 0 <= bus.canary_rtt < TIMEOUT
        assert bus.redis_answered_at is not None and bus.canary_at is not None
    assert sink.envelopes == []  # canaries are the bus's own business
    (count,) = [s.value for m in bus.canary_seconds.collect() for s in m.samples
                if s.name.endswith("_count")]
    assert count >= 1
    # a window without canaries is not ready, whatever the subscription says
    assert bus.is_ready(bus.canary_at + 10) == (
        False, ["bus subscription down", "redis not answering",
                "canary not coming back (deaf subscription)"])


async def test_a_canary_this_bus_did_not_send_is_ignored(fake_redis: Any) -> None:
    sink = Sink()
    bus = make_bus(fake_redis, sink)
    async with running(bus.listen, ready=bus.wait_ready):  # no canaries of its own
        canaries = bus.links[0].canary_channel
        await fake_redis.spublish(canaries, env.Canary("n2", 1).serialize())  # another node's
        await fake_redis.spublish(canaries, env.Canary("n1", 1).serialize())  # never sent
        await fake_redis.publish(EVERYONE, env.RoomJoin("x", "after").serialize())
        await sink.wait_for(lambda: bool(sink.envelopes))
    assert bus.canary_at is None and bus.canary_rtt is None
    assert sink.envelopes == [env.RoomJoin("x", "after")]


async def test_a_deaf_subscription_is_rebuilt_with_every_channel(
        fake_redis: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Redis answers but the subscription silently stopped delivering: rebuilt."""
    sink = Sink()
    bus = make_bus(fake_redis, sink, canary_interval=0.05, ready_window=0.2, reconnect_min=0.01,
                   reconnect_max=0.02)
    back = canaries_back(bus, monkeypatch)
    async with listening(bus):
        await bus.subscribe("room-x")
        async with asyncio.timeout(TIMEOUT):
            await back.get()
        deaf = bus.pubsub
        assert deaf is not None
        # behind its back: no error, canaries stop coming
        await deaf.sunsubscribe(bus.links[0].canary_channel)
        await sink.wait_for(lambda: sink.resubscribed == 1)
        assert bus.stats.deaf_rebuilds == 1 and bus.stats.reconnects == 1
        assert bus.pubsub is not deaf and not bus.rebuilding
        while not back.empty():
            back.get_nowait()
        async with asyncio.timeout(TIMEOUT):
            await back.get()  # canaries come back again
        await fake_redis.spublish("room-x", env.RoomJoin("x", "ann").serialize())
        await sink.wait_for(lambda: bool(sink.envelopes))
    assert sink.envelopes == [env.RoomJoin("x", "ann")]


async def test_a_rebuild_asked_for_resubscribes_and_is_reported(fake_redis: Any) -> None:
    sink = Sink()
    bus = make_bus(fake_redis, sink, reconnect_min=0.01, reconnect_max=0.02)
    async with listening(bus):
        await bus.subscribe("room-x")
        bus.rebuild()
        assert bus.rebuilding
        await sink.wait_for(lambda: sink.resubscribed == 1)
        async with asyncio.timeout(TIMEOUT):
            await bus.wait_ready()
        assert bus.channels == {HOME, EVERYONE, "room-x"}
        await fake_redis.spublish("room-x", env.RoomJoin("x", "ann").serialize())
        await sink.wait_for(lambda: bool(sink.envelopes))
    assert bus.stats.reconnects == 1 and bus.stats.deaf_rebuilds == 0


async def test_a_reconnect_the_client_library_makes_is_reported(fake_redis: Any) -> None:
    """redis-py reconnects a dropped subscription and resubscribes by itself: the gap it
    left must be repaired like any other."""
    sink = Sink()
    bus = make_bus(fake_redis, sink)
    async with listening(bus):
        pubsub = bus.pubsub
        assert pubsub is not None and pubsub.connection is not None
        await pubsub.connection.disconnect()
        await sink.wait_for(lambda: sink.resubscribed == 1)
        assert bus.pubsub is pubsub  # the same subscription, reconnected underneath
        await fake_redis.publish(EVERYONE, env.RoomJoin("x", "ann").serialize())
        await sink.wait_for(lambda: bool(sink.envelopes))
    assert bus.stats.reconnects == 1


async def test_a_redis_that_lost_its_data_is_reported_once(
        fake_redis: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    sink = Sink()
    bus = make_bus(fake_redis, sink, canary_interval=0.05)
    back = canaries_back(bus, monkeypatch)
    async with listening(bus):
        async with asyncio.timeout(TIMEOUT):
            while await back.get() < 2:  # the first round's epoch check is done
                pass
        first = await fake_redis.get(EPOCH)
        assert first is not None and sink.resets == 0
        await fake_redis.delete(EPOCH)  # as a restart without persistence leaves it
        await sink.wait_for(lambda: sink.resets == 1)
        seq = bus.links[0]._canary_seq
        async with asyncio.timeout(TIMEOUT):
            while await back.get() < seq + 2:  # two more rounds: nothing new to report
                pass
    assert sink.resets == 1 and bus.stats.data_resets == 1
    assert await fake_redis.get(EPOCH) not in (None, first)


async def test_every_script_is_loaded_at_every_connection(
        fake_redis: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    sink = Sink()
    script = fake_redis.register_script("return 1")
    same = fake_redis.register_script("return 1")
    other = fake_redis.register_script("return 2")
    loaded: list[str] = []
    real = fake_redis.script_load

    async def script_load(text: str) -> Any:
        loaded.append(text)
        return await real(text)

    monkeypatch.setattr(fake_redis, "script_load", script_load)
    bus = make_bus(fake_redis, sink, reconnect_min=0.01, reconnect_max=0.02,
                   scripts=(script, same, other))
    async with listening(bus):
        assert sorted(loaded) == ["return 1", "return 2"]  # each once
        await fake_redis.script_flush()  # a restarted Redis forgot them
        bus.rebuild()
        await sink.wait_for(lambda: sink.resubscribed == 1)
    assert await fake_redis.script_exists(script.sha, other.sha) == [True, True]
    assert len(loaded) == 4


async def test_an_evicting_redis_is_refused_unless_allowed(
        fake_redis: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    async def evicting(pattern: str) -> dict[str, str]:
        return {pattern: "allkeys-lru"}

    monkeypatch.setattr(fake_redis, "config_get", evicting)
    refused = make_bus(fake_redis, Sink())
    with pytest.raises(RedisMisconfigured, match="allkeys-lru"):
        async with asyncio.timeout(TIMEOUT):
            await refused.listen()
    assert not refused.ready
    allowed = make_bus(fake_redis, Sink(), allow_eviction=True)
    with capture_logs() as logs:
        async with listening(allowed):
            assert allowed.ready
    assert [e["policy"] for e in logs if e.get("policy")] == ["allkeys-lru"]


async def test_the_policy_is_read_from_info_memory_without_config(
        fake_redis: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The documented ACL grants ``INFO memory``, not ``CONFIG``: the policy it shows is
    checked, and ``CONFIG GET`` is not asked (it would land in the ACL log)."""
    async def info(section: str) -> dict[str, str]:
        assert section == "memory"
        return {"maxmemory_policy": "volatile-lru"}

    async def forbidden(pattern: str) -> dict[str, str]:
        raise AssertionError("CONFIG GET asked although INFO said the policy")

    monkeypatch.setattr(fake_redis, "info", info)
    monkeypatch.setattr(fake_redis, "config_get", forbidden)
    refused = make_bus(fake_redis, Sink())
    with pytest.raises(RedisMisconfigured, match="volatile-lru"):
        async with asyncio.timeout(TIMEOUT):
            await refused.listen()


async def test_a_redis_that_hides_its_config_is_used_with_a_warning(
        fake_redis: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    async def forbidden(pattern: str) -> dict[str, str]:
        raise ResponseError("NOPERM this user has no permissions to run 'config'")

    monkeypatch.setattr(fake_redis, "config_get", forbidden)
    bus = make_bus(fake_redis, Sink())
    with capture_logs() as logs:
        async with listening(bus):
            assert bus.ready
    assert "cannot check redis maxmemory-policy" in [e["event"] for e in logs]


async def test_a_library_reconnect_is_reported_once_redis_confirmed_the_channels(
        fake_redis: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """redis-py sends the SUBSCRIBEs of a reconnect without waiting for them: the repair
    (which reads the streams on another connection) must start only once Redis confirmed
    them, or what is published between its read and the SUBSCRIBE is lost."""
    sink = Sink()
    bus = make_bus(fake_redis, sink)
    order: list[str] = []
    (link,) = bus.links
    dispatch = link._dispatch

    def recording(message: dict[str, Any], *args: Any) -> bool:
        if message["type"] in ("subscribe", "ssubscribe"):
            order.append("confirmed")
        return dispatch(message, *args)

    monkeypatch.setattr(link, "_dispatch", recording)
    resubscribed = sink.on_resubscribed

    def noted(which: frozenset[str] | None = None) -> None:
        order.append("reported")
        resubscribed(which)

    monkeypatch.setattr(sink, "on_resubscribed", noted)
    async with listening(bus):
        pubsub = bus.pubsub
        assert pubsub is not None and pubsub.connection is not None
        channels = len(pubsub.channels) + len(pubsub.shard_channels)
        order.clear()
        await pubsub.connection.disconnect()
        await sink.wait_for(lambda: sink.resubscribed == 1)
    assert order == ["confirmed"] * channels + ["reported"]


@pytest.mark.parametrize("how", ["library reconnect", "rebuild"])
async def test_what_is_heard_between_a_resubscriptions_confirmations_waits_for_the_report(
        fake_redis: Any, monkeypatch: pytest.MonkeyPatch, how: str) -> None:
    """Redis may deliver a channel's messages before it confirmed the link's other
    channels.  Handed on at once, such a live event would move its room's mark past the
    gap the reconnect left, and the repair (begun only at the report) would read after
    it: the gap's events would be lost.  They are held until the report."""
    sink = Sink()
    bus = make_bus(fake_redis, sink, reconnect_min=0.01, reconnect_max=0.02)
    order: list[str] = []
    (link,) = bus.links
    dispatch = link._dispatch
    live = env.RoomJoin("x", "between")
    injected = False

    def recording(message: dict[str, Any], *args: Any) -> bool:
        nonlocal injected
        confirmed = dispatch(message, *args)
        if confirmed and order and not injected:  # the first confirmation of the reconnect
            injected = True
            dispatch({"type": "smessage", "channel": b"room-x", "pattern": None,
                      "data": live.serialize()}, *args)
        return confirmed

    monkeypatch.setattr(link, "_dispatch", recording)
    resubscribed, enveloped = sink.on_resubscribed, sink.on_envelope

    def reported(which: frozenset[str] | None = None) -> None:
        order.append("reported")
        resubscribed(which)

    def heard(envelope: env.Envelope) -> None:
        order.append(f"heard {envelope.nick}")  # type: ignore[union-attr]
        enveloped(envelope)

    monkeypatch.setattr(sink, "on_resubscribed", reported)
    monkeypatch.setattr(sink, "on_envelope", heard)
    async with listening(bus):
        await bus.subscribe("room-x")
        pubsub = bus.pubsub
        assert pubsub is not None and pubsub.connection is not None
        order.append("cut")
        if how == "rebuild":
            bus.rebuild()
        else:
            await pubsub.connection.disconnect()
        await sink.wait_for(lambda: live in sink.envelopes)
    assert injected
    assert order == ["cut", "reported", "heard between"]
