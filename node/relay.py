"""The Redis relay: everything a node does with Redis, behind one object.

Theory of operation
-------------------
* The relay is handed a ``redis.asyncio.Redis`` client (production: ``Redis.from_url``;
  tests: ``fakeredis.FakeAsyncRedis``), or the :class:`~node.topology.Topology` of a
  Redis Cluster's shards, and never creates one.  The lease side, the room store and the
  publisher are handed the topology and send each command to its keys' shard.  It is a
  thin facade: each job has its own module, and the relay composes them and runs their
  loops.

  ============================  ==========================================================
  :mod:`node.bus`               the pub/sub links (one per shard), their listeners, the
                                canaries, deafness, readiness, the epoch (data reset)
                                checks, following the cluster's slot map
  :mod:`node.leases`            names: claim, resume, rename, release, departures,
                                renewal of the leases and the heartbeat, reaping
  :mod:`node.rooms`             membership, room notices, the listing, history
  :mod:`node.publisher`         room messages (rounds, the outbox), direct messages
  ============================  ==========================================================

* :meth:`Relay.run` runs the listener, the renewer, the reaper, the canary and the room
  index's reconcile (every ``redis_sample_interval``), each
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
from . import envelope as env
from .backoff import backoff
from .bus import Bus, BusStats
from .config import NodeConfig
from .errors import RedisMisconfigured, RelayUnavailable
from .keys import Keys
from .leases import ClaimResult, Leases, LeaseSink, LeaseStats, NameInfo
from .pause import pause
from .publisher import Published, Publisher
from .redis_errors import describe
from .rooms import Joined, RoomStore
from .topology import Topology, as_topology

__all__ = ["BusSink", "ClaimResult", "Joined", "NameInfo", "Published", "Relay", "RelayStats",
           "describe"]

log = structlog.get_logger("hubbub.relay")


class BusSink(LeaseSink, Protocol):
    """What the relay reports to its node: what the bus reports (envelopes,
    resubscriptions, a Redis that lost its data) and what the lease side reports (a lease
    found not ours any more)."""

    def on_envelope(self, envelope: env.Envelope) -> None: ...

    def on_resubscribed(self, rooms: frozenset[str] | None = None) -> None:
        """Subscribed again after a gap: repair ``rooms``, or every room (``None``)."""

    def on_redis_reset(self) -> None: ...


class _RoomsSink(bus.BusSink):
    """The bus speaks of channels, the node of rooms: a resubscription's channels become
    its rooms (a channel that is no room's, the node's own say, has no gap to repair)."""

    def __init__(self, sink: BusSink, keys: Keys) -> None:
        self._sink = sink
        self._keys = keys

    def on_envelope(self, envelope: env.Envelope) -> None:
        self._sink.on_envelope(envelope)

    def on_resubscribed(self, channels: frozenset[str] | None = None) -> None:
        if channels is None:
            self._sink.on_resubscribed(None)
            return
        rooms = frozenset(r for c in channels if (r := self._keys.room_of_channel(c)) is not None)
        if rooms:
            self._sink.on_resubscribed(rooms)

    def on_redis_reset(self) -> None:
        self._sink.on_redis_reset()


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

    def __init__(self, redis: Redis | Topology, config: NodeConfig, sink: BusSink,
                 clock: Callable[[], float] = time.time) -> None:
        """``redis``: a client of a standalone Redis, or the shards of a Redis Cluster;
        ``clock``: this node's wall clock, for the publisher's deadlines."""
        self.topology = topology = as_topology(redis)
        redis = topology.seed
        self._redis = redis
        self._cfg = config
        self.keys = keys = Keys(config.prefix)
        self.node_id = config.node_id
        self.publisher = publisher = Publisher(topology, config, keys, clock)
        self.room_store = rooms = RoomStore(topology, config, keys, clock)
        self.leases = leases = Leases(topology, config, keys, sink, rooms.leave_all)
        self.bus = Bus(topology, config, _RoomsSink(sink, keys),
                       home=keys.node_channel(self.node_id),
                       channels=(keys.events,), epoch_key=keys.epoch,
                       scripts=(*leases.scripts, *rooms.scripts, publisher.script),
                       sync_clock=publisher.sync_clock,
                       canary_channel=lambda k: keys.canary_channel(self.node_id, k),
                       shard_epoch_key=keys.shard_epoch)
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
        self.lookup_many = leases.lookup_many
        self.online = leases.online
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
        self.room_counts = rooms.counts
        self.latest_id = rooms.latest_id
        self.events = rooms.events
        self.history = rooms.history
        self.continuity = rooms.continuity
        self.set_topic = rooms.set_topic
        self.topic = rooms.topic
        self.found_ops = rooms.found_ops
        self.drop_op = rooms.drop_op
        self.rename_op = rooms.rename_op
        self.ops = rooms.ops
        self.op_in = rooms.op_in
        # publishing: node.publisher
        self.say = publisher.say
        self.submit = publisher.submit
        self.admitted = publisher.admitted
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
                                   ("canary", self.bus.canary_loop),
                                   ("index", self._index_loop)):
                    tg.create_task(self._supervised(name, loop), name=f"relay-{name}")
        finally:
            self.leases.abandon_departures()

    async def _index_loop(self) -> None:
        """Every ``redis_sample_interval``: read a Redis Cluster's slot map again (a
        replica that took over, a slot that moved: nothing to do on a standalone Redis),
        and reconcile the room index with the rooms (see :meth:`RoomStore.reconcile`)."""
        interval = self._cfg.redis_sample_interval or 5.0
        while True:
            await pause(interval)
            await self.topology.refresh()
            try:
                await self.room_store.reconcile()
            except RelayUnavailable as exc:
                log.debug("room index reconcile failed", error=describe(exc.__cause__ or exc))

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
        """True while every bus link's subscription is up."""
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
