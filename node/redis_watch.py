"""Readings of Redis for /metrics: its memory, and how many rooms and names it holds.

Theory of operation
-------------------
* :class:`RedisWatch` runs as one task of the node (:meth:`RedisWatch.run`): every
  ``redis_sample_interval`` seconds it sends one pipeline — ``INFO memory`` and a few
  counts (:func:`count_commands`) — and keeps the answer as :attr:`RedisWatch.last`, a
  frozen :class:`RedisReading`.  /metrics reads that reading; a scrape never waits on
  Redis, and a thousand scrapes cost Redis nothing more.
* On a Redis Cluster the pipeline is one per shard (``INFO memory`` on each, each count
  on its key's shard), and the memory shown is the fullest shard's (the first to refuse
  writes).
* A reading that fails (Redis away, slow or refusing) keeps the previous one; its age is
  exported, so a stale figure is visible.  Failures are counted, not logged: the relay
  already says when Redis is away.
* While the node's :class:`~node.redis_errors.OomEpisodes` says Redis is out of memory,
  the watch also tries one write every second: the node's own heartbeat, ``SET … PX
  lease_ttl XX`` (what the lease renewal writes; ``XX``: never creates it).  Redis refuses
  it until memory is freed; the first one it takes ends the episode.  That is the only
  write here.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import structlog
from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.exceptions import RedisError

from .errors import RelayUnavailable
from .keys import Keys
from .pause import pause
from .redis_errors import OomEpisodes, describe, translated
from .topology import ShardPipes, Topology, as_topology

__all__ = ["RedisReading", "RedisWatch", "count_commands", "read_counts"]

log = structlog.get_logger("hubbub.redis_watch")

PROBE_EVERY = 1.0
"""Seconds between tries of a write while Redis is out of memory."""


@dataclass(frozen=True, slots=True)
class RedisReading:
    """One reading of Redis."""

    used_memory: int | None
    """Bytes Redis has allocated (``INFO memory`` ``used_memory``); None when Redis
    refuses ``INFO`` (some hosted services rename it)."""
    maxmemory: int | None
    """Redis's ``maxmemory`` in bytes; 0 when it has none (no limit); None as above."""
    rooms_live: int
    """Rooms with members, cluster-wide."""
    rooms_idle: int
    """Rooms without members whose keys have not expired yet (0 where Redis keeps no
    index of them)."""
    names: int
    """Names online, cluster-wide (``SCARD {nicks}``)."""
    at: float
    """``time.monotonic()`` when it was taken."""


def count_commands(pipe: Pipeline | ShardPipes, keys: Keys, now_ms: int) -> None:
    """Queue the counts of a reading on ``pipe``, in :func:`read_counts`'s order: rooms
    with members, idle rooms not yet expired, names online.

    The room index is read where this version of the node keeps it: the live/idle index
    (``{rooms}:live`` sorted set, ``{rooms}:idle`` sorted set scored by expiry time) when
    :class:`~node.keys.Keys` names it, otherwise the ``{rooms}`` set of every room that
    ever had members (no idle count).  Changing where rooms are indexed changes this
    function only.  Given :class:`~node.topology.ShardPipes`, each count goes to its key's
    shard."""
    def on(key: str) -> Pipeline:
        return pipe.on(key) if isinstance(pipe, ShardPipes) else pipe

    live = getattr(keys, "rooms_live", None)
    idle = getattr(keys, "rooms_idle", None)
    if isinstance(live, str):
        on(live).zcard(live)
    else:
        rooms = getattr(keys, "rooms", "")
        on(rooms).scard(rooms)
    if isinstance(idle, str):
        on(idle).zcount(idle, now_ms, "+inf")
    on(keys.nicks).scard(keys.nicks)


def read_counts(replies: list[Any], keys: Keys) -> tuple[int, int, int]:
    """(live rooms, idle rooms, names) from the replies of :func:`count_commands`."""
    if isinstance(getattr(keys, "rooms_idle", None), str):
        live, idle, names = replies
    else:
        (live, names), idle = replies, 0
    return int(live), int(idle), int(names)


class RedisWatch:
    """Reads Redis every ``interval`` seconds (see the module docstring)."""

    def __init__(self, redis: Redis | Topology, keys: Keys, interval: float, timeout: float, *,
                 oom: OomEpisodes | None = None, heartbeat: tuple[str, int] | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        """``timeout``: seconds one reading may take; ``oom`` and ``heartbeat`` (the
        node's heartbeat key and its TTL in ms): what ends an out-of-memory episode (see
        the module docstring); ``clock``: wall time, for the idle rooms' expiry times."""
        self._topology = as_topology(redis)
        self._keys = keys
        self.interval = interval
        self._timeout = timeout
        self._oom = oom
        self._heartbeat = heartbeat
        self._clock = clock
        self.last: RedisReading | None = None
        """The latest reading that succeeded, None before the first."""
        self.failures = 0
        """Readings that failed (Redis away, slow, or refusing)."""
        self._no_info = False

    async def sample(self) -> RedisReading:
        """Take one reading now (and keep it as :attr:`last`).

        Raises:
            RelayUnavailable: Redis did not answer within the timeout, or refused.
        """
        shards = self._topology.shards
        pipes = ShardPipes(self._topology)
        for shard in shards:
            pipes.on_shard(shard).info("memory")
        count_commands(pipes, self._keys, int(self._clock() * 1000))
        try:
            async with translated("sample"), asyncio.timeout(self._timeout):
                replies = await pipes.execute(raise_on_error=False)
                infos, counts = replies[:len(shards)], replies[len(shards):]
                for reply in counts:
                    if isinstance(reply, Exception):
                        raise reply
        except TimeoutError:
            raise RelayUnavailable("the reading of Redis timed out") from None
        used = limit = None
        # on a cluster the fullest shard is shown: the first to refuse writes
        memory = [(int(i.get("used_memory", 0)), int(i.get("maxmemory", 0)))
                  for i in infos if isinstance(i, dict)]
        if memory:
            used, limit = max(memory, key=lambda m: (m[0] / m[1] if m[1] else 0, m[0]))
        elif not self._no_info:  # refused: the counts still come, the memory gauges not
            self._no_info = True
            log.info("redis refuses INFO: no memory gauges", error=describe(infos[0]))
        live, idle, names = read_counts(counts, self._keys)
        reading = RedisReading(used, limit, live, idle, names, time.monotonic())
        self.last = reading
        return reading

    async def probe(self) -> bool:
        """While an out-of-memory episode lasts, try the heartbeat write; end the
        episode when Redis takes it.  True when it did (or there is no episode)."""
        oom, heartbeat = self._oom, self._heartbeat
        if oom is None or not oom.open:
            return True
        if heartbeat is None:
            return False
        key, ttl_ms = heartbeat
        try:
            async with asyncio.timeout(self._timeout):
                await self._topology.client_of(key).set(key, "1", px=ttl_ms, xx=True)
        except (RedisError, OSError, RuntimeError, TimeoutError):
            return False  # still full (or away): the episode goes on
        oom.wrote("heartbeat")
        return True

    async def run(self) -> None:
        """Read Redis every :attr:`interval` seconds (0: never), and try a write every
        :data:`PROBE_EVERY` seconds while Redis is out of memory, until cancelled."""
        while True:
            if self.interval > 0:
                try:
                    await self.sample()
                except RelayUnavailable as exc:
                    self.failures += 1
                    log.debug("redis reading failed", error=describe(exc.__cause__ or exc))
            if not await self.probe():
                await pause(min(self.interval or PROBE_EVERY, PROBE_EVERY))
                continue
            await pause(self.interval or PROBE_EVERY)
