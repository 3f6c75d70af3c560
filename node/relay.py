"""The Redis relay: everything a node does with Redis, behind one object.

Theory of operation
-------------------
* The relay is handed a ``redis.asyncio.Redis`` client (production: ``Redis.from_url``;
  tests: ``fakeredis.FakeAsyncRedis``) and never creates one.  It is a thin facade: each
  job has its own module, and the relay composes them and runs their loops.

  ============================  ==========================================================
  :mod:`node.bus`               the one pub/sub subscription, its listener, the canary,
                                deafness, readiness, the epoch (data reset) check
  :mod:`node.leases`            names: claim, resume, rename, release, departures,
                                renewal of the leases and the heartbeat, reaping
  :mod:`node.rooms`             membership, room notices, the listing, history
  :mod:`node.publisher`         room messages (rounds, the outbox), direct messages
  ============================  ==========================================================

* :meth:`Relay.run` runs the listener, the renewer, the reaper and the canary, each
  supervised: any failure of one of them is logged and that loop starts again (a node
  whose relay stopped would be deaf while it looks up).  Only a misconfigured Redis ends
  it.
* **Errors.**  Every Redis failure is translated into :class:`RelayUnavailable` at this
  boundary (:mod:`node.redis_errors`); nothing above the relay sees a redis-py exception.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Protocol

import structlog
from prometheus_client import Histogram
from redis.asyncio import Redis
from redis.asyncio.client import PubSub

from . import bus
from .backoff import backoff
from .bus import Bus, BusStats
from .config import NodeConfig
from .errors import RedisMisconfigured
from .keys import Keys
from .leases import ClaimResult, Leases, LeaseSink, LeaseStats, NameInfo
from .pause import pause
from .publisher import Published, Publisher
from .redis_errors import describe
from .rooms import RoomStore

__all__ = ["BusSink", "ClaimResult", "NameInfo", "Published", "Relay", "RelayStats",
           "describe"]

log = structlog.get_logger("hubbub.relay")


class BusSink(bus.BusSink, LeaseSink, Protocol):
    """What the relay reports to its node: what the bus reports (envelopes,
    resubscriptions, a Redis that lost its data) and what the lease side reports (a lease
    found not ours any more)."""


class RelayStats:
    """The relay's counters under one set of names (what ``/metrics`` reads): the bus's,
    the lease side's and the relay's own loop restarts."""

    def __init__(self, bus_stats: BusStats, lease_stats: LeaseStats) -> None:
        self._bus = bus_stats
        self._leases = lease_stats
        self.loop_restarts = 0

    @property
    def received(self) -> int:
        return self._bus.received

    @property
    def bad_envelopes(self) -> int:
        return self._bus.bad_envelopes

    @property
    def reconnects(self) -> int:
        return self._bus.reconnects

    @property
    def deaf_rebuilds(self) -> int:
        return self._bus.deaf_rebuilds

    @property
    def data_resets(self) -> int:
        return self._bus.data_resets

    @property
    def renewals(self) -> int:
        return self._leases.renewals

    @property
    def renewal_failures(self) -> int:
        return self._leases.renewal_failures

    @property
    def leases_lost(self) -> int:
        return self._leases.leases_lost

    @property
    def reaped(self) -> int:
        return self._leases.reaped

    @property
    def claim_retries(self) -> int:
        return self._leases.claim_retries

    @property
    def departures_deferred(self) -> int:
        return self._leases.departures_deferred


class Relay:
    """Everything a node does with Redis.  See the module docstring."""

    def __init__(self, redis: Redis, config: NodeConfig, sink: BusSink,
                 clock: Callable[[], float] = time.time) -> None:
        """``clock``: this node's wall clock, for the publisher's deadlines."""
        self._redis = redis
        self._cfg = config
        self.keys = keys = Keys(config.prefix)
        self.node_id = config.node_id
        self.publisher = publisher = Publisher(redis, config, keys, clock)
        self.room_store = rooms = RoomStore(redis, config, keys)
        self.leases = leases = Leases(redis, config, keys, sink, rooms.leave_all)
        self.bus = Bus(redis, config, sink, home=keys.node_channel(self.node_id),
                       channels=(keys.events,), epoch_key=keys.epoch,
                       scripts=(*leases.scripts, *rooms.scripts, publisher.script),
                       sync_clock=publisher.sync_clock)
        self.stats = RelayStats(self.bus.stats, leases.stats)
        self.canary_seconds: Histogram = self.bus.canary_seconds
        self.wait_ready = self.bus.wait_ready
        self.is_ready = self.bus.is_ready
        # names: node.leases
        self.new_token = leases.new_token
        self.claim = leases.claim
        self.resume = leases.resume
        self.update_info = leases.update_info
        self.rename = leases.rename
        self.release = leases.release
        self.depart = leases.depart
        self.forget = leases.forget
        self.lookup = leases.lookup
        self.renew = leases.renew
        self.reap = leases.reap
        self.close = leases.close
        # rooms: node.rooms
        self.join = rooms.join
        self.part = rooms.part
        self.leave_all = rooms.leave_all
        self.rename_in_rooms = rooms.rename_in_rooms
        self.who = rooms.who
        self.rooms = rooms.rooms
        self.latest_id = rooms.latest_id
        self.events = rooms.events
        self.history = rooms.history
        # publishing: node.publisher
        self.say = publisher.say
        self.submit = publisher.submit
        self.private = publisher.private
        self.sanction = publisher.sanction
        self.broadcast = publisher.broadcast

    # ------------------------------------------------------------------ lifecycle

    async def run(self) -> None:
        """Listen, renew, reap and send canaries until cancelled.  Only a misconfigured
        Redis ends this: any other failure of one of the loops is logged and that loop
        starts again, because a node whose relay stopped would be deaf while it looks up."""
        try:
            async with asyncio.TaskGroup() as tg:
                for name, loop in (("listen", self.bus.listen),
                                   ("renew", self.leases.renew_loop),
                                   ("reap", self.leases.reap_loop),
                                   ("canary", self.bus.canary_loop)):
                    tg.create_task(self._supervised(name, loop), name=f"relay-{name}")
        finally:
            self.leases.abandon_departures()

    async def _supervised(self, name: str, loop: Callable[[], Awaitable[None]]) -> None:
        delays: Iterator[float] | None = None
        while True:
            try:
                await loop()
                raise RuntimeError("the loop returned")  # they never do: treat as a failure
            except (asyncio.CancelledError, RedisMisconfigured):
                raise
            except Exception:
                self.stats.loop_restarts += 1
                log.exception("relay loop failed; restarting it", loop=name)
                if delays is None:
                    delays = backoff(initial=self._cfg.reconnect_min,
                                     maximum=self._cfg.reconnect_max)
                await pause(next(delays))

    # ------------------------------------------------------------------ the bus

    @property
    def ready(self) -> bool:
        """True while the bus subscription is up."""
        return self.bus.ready

    @property
    def redis_answered_at(self) -> float | None:
        """Loop time at which Redis last answered a canary publish."""
        return self.bus.redis_answered_at

    @property
    def canary_at(self) -> float | None:
        """Loop time at which a canary last came back through the subscription."""
        return self.bus.canary_at

    @property
    def canary_rtt(self) -> float | None:
        return self.bus.canary_rtt

    async def subscribe_room(self, room: str) -> None:
        """Subscribe to a room's channel; returns once Redis confirmed it."""
        await self.bus.subscribe(self.keys.room_channel(room))

    async def unsubscribe_room(self, room: str) -> None:
        await self.bus.unsubscribe(self.keys.room_channel(room))

    def subscribed_rooms(self) -> set[str]:
        return {r for c in self.bus.channels if (r := self.keys.room_of_channel(c)) is not None}

    # tests drop the subscription by hand (as CLIENT KILL would) and look at it
    @property
    def _rebuild(self) -> bool:
        return self.bus.rebuilding

    @_rebuild.setter
    def _rebuild(self, value: bool) -> None:
        if value:
            self.bus.rebuild()

    @property
    def _pubsub(self) -> PubSub | None:
        return self.bus.pubsub
