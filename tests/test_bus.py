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
    real = bus._canary_back

    def back(canary: env.Canary) -> None:
        real(canary)
        seqs.put_nowait(canary.seq)

    monkeypatch.setattr(bus, "_canary_back", back)
    return seqs


async def test_subscribe_returns_once_redis_confirmed_it(fake_redis: Any) -> None:
    sink = Sink()
    bus = make_bus(fake_redis, sink)
    async with listening(bus):
        assert bus.channels == {HOME, EVERYONE}
        await bus.subscribe("room-x")
        # published right after: a subscription not yet confirmed would miss it
        await fake_redis.publish("room-x", env.RoomJoin("x", "ann").serialize())
        await sink.wait_for(lambda: len(sink.envelopes) == 1)
        await bus.unsubscribe("room-x")
        assert bus.channels == {HOME, EVERYONE}
        await fake_redis.publish("room-x", env.RoomJoin("x", "bob").serialize())
        await fake_redis.publish(EVERYONE, env.RoomJoin("y", "cy").serialize())
        await sink.wait_for(lambda: len(sink.envelopes) == 2)
    assert sink.envelopes == [env.RoomJoin("x", "ann"), env.RoomJoin("y", "cy")]
    assert bus.stats.received == 2 and sink.resubscribed == 0


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
        await fake_redis.publish(HOME, env.Canary("n2", 1).serialize())  # another node's
        await fake_redis.publish(HOME, env.Canary("n1", 1).serialize())  # never sent
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
        await deaf.unsubscribe(HOME)  # behind its back: no error, canaries stop coming
        await sink.wait_for(lambda: sink.resubscribed == 1)
        assert bus.stats.deaf_rebuilds == 1 and bus.stats.reconnects == 1
        assert bus.pubsub is not deaf and not bus.rebuilding
        while not back.empty():
            back.get_nowait()
        async with asyncio.timeout(TIMEOUT):
            await back.get()  # canaries come back again
        await fake_redis.publish("room-x", env.RoomJoin("x", "ann").serialize())
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
        await fake_redis.publish("room-x", env.RoomJoin("x", "ann").serialize())
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
        seq = bus._canary_seq
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
    dispatch = bus._dispatch

    def recording(message: dict[str, Any]) -> None:
        if message["type"] == "subscribe":
            order.append("confirmed")
        dispatch(message)

    monkeypatch.setattr(bus, "_dispatch", recording)
    resubscribed = sink.on_resubscribed

    def noted() -> None:
        order.append("reported")
        resubscribed()

    monkeypatch.setattr(sink, "on_resubscribed", noted)
    async with listening(bus):
        pubsub = bus.pubsub
        assert pubsub is not None and pubsub.connection is not None
        channels = len(pubsub.channels)
        order.clear()
        await pubsub.connection.disconnect()
        await sink.wait_for(lambda: sink.resubscribed == 1)
    assert order == ["confirmed"] * channels + ["reported"]
