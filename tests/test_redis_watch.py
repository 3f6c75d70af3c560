"""node.redis_watch: the node's readings of Redis, and the /metrics gauges made of them."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import fakeredis
import pytest
from redis.exceptions import OutOfMemoryError
from structlog.testing import capture_logs

from node.errors import RelayUnavailable
from node.keys import Keys
from node.redis_errors import OomEpisodes
from node.redis_watch import RedisReading, RedisWatch

from .helpers import running_node, text_user, wait_until


class IndexedKeys(Keys):
    """Keys of a node that keeps the live/idle room index (sorted sets)."""

    def __init__(self, prefix: str = "hubbub:") -> None:
        super().__init__(prefix)
        self.rooms_live = f"{prefix}{{rooms}}:live"
        self.rooms_idle = f"{prefix}{{rooms}}:idle"


async def add_live_rooms(redis: fakeredis.FakeAsyncRedis, keys: Keys, *rooms: str) -> None:
    """Rooms with members, where this version of the node indexes them."""
    live = getattr(keys, "rooms_live", None)
    if isinstance(live, str):
        await redis.zadd(live, dict.fromkeys(rooms, 0))
    else:
        await redis.sadd(getattr(keys, "rooms", ""), *rooms)


async def test_counts_names_and_rooms_and_says_once_when_info_is_refused() -> None:
    """fakeredis has no INFO: like a hosted Redis that renamed it, the counts still come
    and the memory is unknown (logged once, not at every reading)."""
    redis = fakeredis.FakeAsyncRedis()
    keys = Keys()
    await redis.sadd(keys.nicks, "alice", "bob", "carol")
    await add_live_rooms(redis, keys, "lobby", "dev")
    watch = RedisWatch(redis, keys, interval=5, timeout=1)
    with capture_logs() as logs:
        first = await watch.sample()
        second = await watch.sample()
    assert (first.names, first.rooms_live, first.rooms_idle) == (3, 2, 0)
    assert first.used_memory is None and first.maxmemory is None
    assert watch.last is second and second.at >= first.at
    assert [e["event"] for e in logs] == ["redis refuses INFO: no memory gauges"]


async def test_the_live_and_idle_room_index_is_read_when_the_keys_name_it() -> None:
    redis = fakeredis.FakeAsyncRedis()
    keys = IndexedKeys()
    now = 1_000_000.0
    await redis.zadd(keys.rooms_live, {"lobby": 0, "dev": 0, "ops": 0})
    # idle rooms scored by when their keys expire: one already past it, not counted
    await redis.zadd(keys.rooms_idle, {"old": (now - 1) * 1000, "quiet": (now + 60) * 1000})
    watch = RedisWatch(redis, keys, interval=5, timeout=1, clock=lambda: now)
    reading = await watch.sample()
    assert (reading.rooms_live, reading.rooms_idle, reading.names) == (3, 1, 0)


async def test_a_failed_reading_keeps_the_last_one_and_is_counted() -> None:
    server = fakeredis.FakeServer()
    redis = fakeredis.FakeAsyncRedis(server=server)
    watch = RedisWatch(redis, Keys(), interval=5, timeout=1)
    good = await watch.sample()
    server.connected = False
    with pytest.raises(RelayUnavailable):
        await watch.sample()
    assert watch.last is good


async def test_no_interval_no_readings() -> None:
    watch = RedisWatch(fakeredis.FakeAsyncRedis(), Keys(), interval=0, timeout=1)
    task = asyncio.create_task(watch.run())
    await asyncio.sleep(0)  # let it take its first turn (it would read at once)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert watch.last is None and watch.failures == 0


async def test_metrics_show_the_reading(fake_server: fakeredis.FakeServer) -> None:
    async with running_node(fake_server, redis_sample_interval=0.05) as node:
        assert node.port is not None
        await text_user(node.port, "alice")

        def named() -> RedisReading | None:
            last = node.redis_watch.last
            return last if last is not None and last.names == 1 else None

        await wait_until(named, timeout=5)
        text = node.http._metrics.render().decode()
        assert "hubbub_names_online 1.0" in text
        assert 'hubbub_rooms{state="live"} 1.0' in text
        assert 'hubbub_rooms{state="idle"} 0.0' in text
        assert "hubbub_redis_oom 0.0" in text
        assert "hubbub_redis_oom_episodes_total 0.0" in text
        assert "hubbub_redis_used_memory_bytes" not in text  # fakeredis has no INFO
        # a reading from a Redis with a limit shows it; one without shows none
        node.redis_watch.last = RedisReading(2_000_000, 4_000_000, 1, 0, 1, time.monotonic())
        text = node.http._metrics.render().decode()
        assert "hubbub_redis_used_memory_bytes 2e+06" in text
        assert "hubbub_redis_maxmemory_bytes 4e+06" in text
        node.redis_watch.last = RedisReading(2_000_000, 0, 1, 0, 1, time.monotonic())
        assert "hubbub_redis_maxmemory_bytes" not in node.http._metrics.render().decode()


class FullRedis(fakeredis.FakeAsyncRedis):
    """Refuses writes the way a Redis past its maxmemory does, until ``full`` is False."""

    full = True

    async def set(self, *args: Any, **kwargs: Any) -> Any:
        if self.full:
            raise OutOfMemoryError("command not allowed when used memory > 'maxmemory'.")
        return await super().set(*args, **kwargs)


async def test_an_episode_ends_when_the_heartbeat_write_goes_through() -> None:
    redis = FullRedis()
    keys = Keys()
    heartbeat = keys.alive("n1")
    oom = OomEpisodes()
    watch = RedisWatch(redis, keys, interval=5, timeout=1, oom=oom,
                       heartbeat=(heartbeat, 15000))
    assert await watch.probe()  # no episode: nothing to try
    with capture_logs() as logs:
        oom.refused("publish", OutOfMemoryError("OOM"))
        assert not await watch.probe() and oom.open
        redis.full = False
        assert await watch.probe() and not oom.open
    assert [e["event"] for e in logs] == ["redis out of memory", "redis accepts writes again"]
    assert await redis.exists(heartbeat) == 0  # XX: a heartbeat that is gone stays gone
