"""The bus: a node's pub/sub subscriptions to Redis, one link per shard, and the proof
that each is alive.

Theory of operation
-------------------
* **Sharded pub/sub, everywhere.**  Room channels are published with ``SPUBLISH`` and
  subscribed with ``SSUBSCRIBE``, on a standalone Redis 7 as on a Redis Cluster (one code
  path): on a cluster a sharded channel lives on the master of its slot, so room traffic
  spreads over the shards instead of being broadcast to all of them.  The node's own
  channel (private messages, sanctions for its users) and the events channel stay
  **classic** (``PUBLISH``/``SUBSCRIBE``): a classic ``PUBLISH`` reaches every node of a
  cluster, so one classic subscription on any one link receives it.  They are kept on the
  link of the shard serving their slot (the *home link*); while that shard is down, until
  its replica serves, what is published on them is not heard (private messages and
  sanction notices are at-most-once, as during any Redis outage).
* **One link per shard** (never one per client, never one per room): :class:`Link` is one
  pub/sub connection made from its shard's client, read by its own task.  :class:`Bus`
  keeps one link per shard of the :class:`~node.topology.Topology` (one for a standalone
  Redis) and subscribes each channel on the link of its slot's shard.  A subscribe
  returns once Redis confirmed it, so nothing published right after it is missed.
* **(Re)connecting a link.**  Each connection first loads every script on its shard (a
  restarted Redis or a promoted replica has none), hands the publisher a clock measurement
  (the link of the shard holding the epoch key only), checks ``maxmemory-policy`` (once
  per link), then subscribes every channel of the link again.  Every connection after
  the first is reported to the sink (``on_resubscribed``: repair the gap) for *that
  link's* channels only (``None``, all of them, while the bus has one link), and so is a
  reconnect redis-py makes by itself behind our back.  A failure is retried with capped,
  jittered backoff; a dead link would leave its rooms deaf, so it never gives up.
* **Following the topology.**  :meth:`Topology.refresh` is called after a link error or
  a failed canary, after a ``sunsubscribe`` Redis pushed by itself (Redis 7 tells a
  subscriber that a channel's slot moved away) and every ``topology_refresh`` seconds.
  Then channels whose shard changed move: subscribed on the new link first (confirmed),
  then reported for repair (their messages during the move are in their streams), then
  dropped from the old link; links start for new shards and stop for shards that serve
  nothing (a failed master after its replica took over).  A standalone topology never
  changes, so none of this happens there.
* **Liveness, per link.**  Every ``canary_interval`` each link publishes a canary
  (``SPUBLISH``) on a sharded channel of its own whose slot its shard serves; it must come
  back through that link.  A link is ready when subscribed, its shard answered and a
  canary came back within ``ready_window``; a shard answering while the canaries stop
  coming back for twice that window is a **deaf** link: it is rebuilt.
* **Readiness of the node** (:meth:`Bus.is_ready`).  With one link it is that link's.
  With several, the node is not ready when a link is unhealthy while its shard answers
  (a fault of this node: subscription down or deaf; it is being rebuilt), or when no
  shard answers at all.  A shard that does not answer (down, frozen, failing over) is the
  same for every node: it is named in the reasons and the per-shard metrics but does not
  take the node out of the load balancer; once its replica serves, its link follows.
* **Data reset, per shard.**  Each link's canary round also reads an epoch key that its
  shard serves (set once by whichever node comes first); gone or new means that shard lost
  its data, reported to the sink (``on_redis_reset``).  The node then re-asserts every
  name and room, not only the shard's: more than needed, never less.
* **The upgrade mode** (``--bus-format 1``).  Nodes of the previous release publish and
  subscribe room channels with classic pub/sub.  With bus format 1, every sharded channel
  but the canary is also subscribed with classic ``SUBSCRIBE``, on the *same* link (so
  its classic and sharded messages arrive in the one order Redis ran them in; on a
  cluster the room's scripts run on that link's shard, where a classic ``PUBLISH`` is
  delivered at once), and a subscription counts as confirmed once both are.  Events
  published both ways (by format-1 nodes) then arrive twice: the room feed drops what it
  already delivered, by id (:mod:`node.feeds`).
* The bus knows channel names only, nothing of nicknames or rooms.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from contextlib import suppress
from typing import Any

import structlog
from prometheus_client import Histogram
from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.commands.core import AsyncScript
from redis.exceptions import RedisError

from .buslink import BusSink, BusStats, Link, LinkState
from .config import NodeConfig
from .errors import RelayUnavailable
from .pause import cancel_pending, pause
from .redis_errors import describe
from .topology import Shard, Topology, as_topology

__all__ = ["Bus", "BusSink", "BusStats", "Link", "LinkState"]

log = structlog.get_logger("hubbub.relay")

_SEARCH = 1 << 18
"""How many numbered names are tried for a shard's own canary channel or epoch key."""

_MOVE_RETRIES = 5
"""Refreshes of the slot map after a channel was pushed away, before it is subscribed
again where the map still says it lives."""


class Bus:
    """One pub/sub link per shard and their liveness.  See the module docstring."""

    def __init__(self, redis: Redis | Topology, config: NodeConfig, sink: BusSink, *,
                 home: str, channels: Iterable[str] = (), epoch_key: str,
                 scripts: Iterable[AsyncScript] = (),
                 sync_clock: Callable[[], Awaitable[None]] | None = None,
                 canary_channel: Callable[[int], str] | None = None,
                 shard_epoch_key: Callable[[int], str] | None = None) -> None:
        """``redis``: a standalone client or the shards; ``home``: the node's own channel
        and ``channels`` the others always subscribed (classic pub/sub); ``scripts``:
        loaded on each shard at every connection; ``sync_clock``: measures Redis's clock
        for the publisher; ``canary_channel(k)`` and ``shard_epoch_key(k)``: numbered
        names, of which each link takes the first whose slot its shard serves (the epoch
        key itself where its shard serves ``epoch_key``)."""
        self.topology = as_topology(redis)
        self.config = config
        self.sink = sink
        self.node_id = config.node_id
        self.home = home
        self.epoch_key = epoch_key
        self._canary_name = canary_channel or (lambda k: f"{{{home}:c{k}}}")
        self._shard_epoch = shard_epoch_key or (lambda k: f"{{{epoch_key}:{k}}}")
        self.scripts = {script.sha: script for script in scripts}
        self.sync_clock = sync_clock
        self.stats = BusStats()
        self.classic: frozenset[str] = frozenset({home, *channels})
        """Channels subscribed with classic SUBSCRIBE (every other one is sharded)."""
        self.also_classic = config.bus_format == 1
        """The upgrade mode: sharded channels (not canaries) are subscribed classic too."""
        self._links: dict[str, Link] = {}
        self._where: dict[str, str] = {}
        """Every channel wanted -> the name of the link it is (to be) subscribed on."""
        self._homeless: dict[str, tuple[str, int]] = {}
        """Channels Redis pushed away -> (the link they were on, refreshes tried)."""
        self._names: dict[tuple[str, str], tuple[int, str]] = {}
        """(kind, shard) -> (slot map version, the shard's canary channel or epoch key)."""
        self._links_changed = asyncio.Event()
        self._suspect = asyncio.Event()
        self.topology.on_change(self.suspect)  # a map read elsewhere: follow it now
        self.canary_seconds = Histogram(
            "hubbub_canary_rtt_seconds", "Round trip of the node's bus canary.",
            registry=None, buckets=(.0005, .001, .002, .005, .01, .025, .05, .1, .25, 1, 5))
        for shard in self.topology.shards:
            self._links[shard.name] = Link(self, shard)
        for channel in self.classic:
            self._place(channel)

    # ------------------------------------------------------------------ naming

    def canary_channel_of(self, shard: Shard) -> str:
        """The first numbered canary channel whose slot ``shard`` serves."""
        return self._first_on(shard, "canary", self._canary_name)

    def epoch_key_of(self, shard: Shard) -> str:
        """The epoch key ``shard`` serves: the cluster's own, or a numbered one."""
        if self.topology.shard_of(self.epoch_key) is shard:
            return self.epoch_key
        return self._first_on(shard, "epoch", self._shard_epoch)

    def _first_on(self, shard: Shard, kind: str, name: Callable[[int], str]) -> str:
        """Found once per version of the slot map (a shard serving few slots may take
        thousands of tries); a shard serving nothing has none."""
        version = self.topology.version
        cached = self._names.get((kind, shard.name))
        if cached is not None and cached[0] == version:
            return cached[1]
        if shard not in self.topology.shards:
            raise LookupError(f"shard {shard.name} serves no slot")
        for k in range(_SEARCH):
            candidate = name(k)
            if self.topology.shard_of(candidate) is shard:
                self._names[(kind, shard.name)] = (version, candidate)
                return candidate
        raise LookupError(f"no name found on shard {shard.name}")

    def _place(self, channel: str) -> Link:
        link = self._links[self.topology.shard_of(channel).name]
        self._where[channel] = link.name
        link.channels.add(channel)
        return link

    # ------------------------------------------------------------------ state

    @property
    def links(self) -> tuple[Link, ...]:
        """One per shard; the first is the home link."""
        home = self._where.get(self.home)
        return tuple(sorted(self._links.values(), key=lambda link: link.name != home))

    @property
    def ready(self) -> bool:
        """True while every link's subscription is up."""
        return all(link.ready for link in self._links.values())

    async def wait_ready(self) -> None:
        """Until every link is subscribed."""
        while not self.ready:
            waiters = [asyncio.ensure_future(self._links_changed.wait()),
                       *(asyncio.ensure_future(link.wait_ready())
                         for link in self._links.values() if not link.ready)]
            try:
                await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for waiter in waiters:
                    waiter.cancel()

    @property
    def pubsub(self) -> PubSub | None:
        """The home link's live subscription (None while it is down)."""
        return self.links[0].pubsub

    @property
    def channels(self) -> frozenset[str]:
        """Every channel subscribed (or to be subscribed again once reconnected)."""
        return frozenset(self._where)

    @property
    def rebuilding(self) -> bool:
        """A rebuild of a link was asked for and has not happened yet."""
        return any(link.rebuilding for link in self._links.values())

    def rebuild(self) -> None:
        """Drop every link's subscription and build it again (as after a deaf one)."""
        for link in self._links.values():
            link.rebuild()

    @property
    def redis_answered_at(self) -> float | None:
        """Loop time at which every shard had last answered a canary publish."""
        return _oldest(link.redis_answered_at for link in self._links.values())

    @property
    def canary_at(self) -> float | None:
        """Loop time at which every link had last seen a canary come back."""
        return _oldest(link.canary_at for link in self._links.values())

    @property
    def canary_rtt(self) -> float | None:
        """The slowest link's latest canary round trip."""
        rtts = [link.canary_rtt for link in self._links.values() if link.canary_rtt is not None]
        return max(rtts) if rtts else None

    def link_states(self, now: float | None = None) -> list[LinkState]:
        now = asyncio.get_running_loop().time() if now is None else now
        return [link.state(now) for link in self.links]

    # ------------------------------------------------------------------ subscriptions

    async def subscribe(self, channel: str) -> None:
        """Subscribe to a sharded channel on its shard's link; returns once Redis
        confirmed it."""
        link = self._links.get(self.topology.shard_of(channel).name)
        if link is None:  # the map changed and the links did not follow yet
            self.suspect()
            raise RelayUnavailable()
        self._where[channel] = link.name
        try:
            await link.subscribe(channel)
        except BaseException:
            if self._where.get(channel) == link.name and channel not in link.channels:
                del self._where[channel]
            raise

    async def unsubscribe(self, channel: str) -> None:
        name = self._where.pop(channel, None)
        self._homeless.pop(channel, None)
        link = self._links.get(name) if name is not None else None
        if link is not None:
            await link.unsubscribe(channel)

    # ------------------------------------------------------------------ the loops

    async def listen(self) -> None:
        """Run every link's listener and follow the topology until cancelled."""
        follow = asyncio.create_task(self._follow(), name="bus-topology")
        try:
            await self._each_link(Link.listen)
        finally:
            follow.cancel()
            with suppress(asyncio.CancelledError):
                await follow

    async def canary_loop(self) -> None:
        """Run every link's canary rounds until cancelled."""
        await self._each_link(Link.canary_loop)

    async def load_scripts(self) -> None:
        """Load every script on every shard."""
        for link in list(self._links.values()):
            await link.load_scripts()

    async def _each_link(self, work: Callable[[Link], Coroutine[Any, Any, None]]) -> None:
        """``work(link)`` in a task for each link, started and stopped as links come and
        go.  A task that fails ends this (the relay's supervisor starts it again)."""
        tasks: dict[Link, asyncio.Task[None]] = {}
        try:
            while True:
                changed = self._links_changed
                current = set(self._links.values())
                for link in [link for link in tasks if link not in current]:
                    task = tasks.pop(link)
                    task.cancel()
                    with suppress(asyncio.CancelledError):
                        await task
                for link, task in list(tasks.items()):
                    if task.done():
                        task.result()  # raises what ended it; returning is a failure too
                        raise RuntimeError(f"bus link {link.name} stopped")
                for link in current - tasks.keys():
                    tasks[link] = asyncio.create_task(work(link), name=f"bus-{link.name}")
                waiter = asyncio.ensure_future(changed.wait())
                try:
                    await asyncio.wait([waiter, *tasks.values()],
                                       return_when=asyncio.FIRST_COMPLETED)
                finally:
                    waiter.cancel()
        finally:
            for task in tasks.values():
                task.cancel()
            for task in tasks.values():
                with suppress(asyncio.CancelledError, Exception):
                    await task

    def suspect(self) -> None:
        """Something suggests the slot map changed: read it again soon."""
        self._suspect.set()

    async def _follow(self) -> None:
        """Refresh the topology when suspected and every ``topology_refresh`` seconds,
        and move what it changed."""
        while True:
            if cancel_pending():
                raise asyncio.CancelledError
            with suppress(TimeoutError):
                async with asyncio.timeout(self.config.topology_refresh):
                    await self._suspect.wait()
            self._suspect.clear()
            try:
                async with asyncio.timeout(self.config.redis_timeout * 2):
                    await self.topology.refresh()
                await self.reconcile()
            except (RedisError, OSError, TimeoutError) as exc:
                log.debug("slot map refresh failed", error=describe(exc))
            except Exception:  # never let the links stop following the cluster
                log.exception("bus topology follow-up failed")
            if self._homeless:  # pushed away but the map has not caught up: again soon
                await pause(self.config.reconnect_min)
                self.suspect()

    async def reconcile(self) -> None:
        """Make the links and the channels' places match the topology as last read."""
        shards = {shard.name: shard for shard in self.topology.shards}
        added = [name for name in shards if name not in self._links]
        for name in added:
            self._links[name] = Link(self, shards[name])
        if added:
            self._changed()
        moves: list[tuple[str, str | None, str]] = []
        left: list[tuple[str, str]] = []  # the upgrade mode: classic halves left behind
        for channel, name in list(self._where.items()):
            target = self.topology.shard_of(channel).name
            pushed = self._homeless.get(channel)
            if pushed is not None:
                old, tries = pushed
                if target == old and tries < _MOVE_RETRIES:
                    self._homeless[channel] = (old, tries + 1)
                    continue
                moves.append((channel, None, target))
                if self.also_classic:
                    left.append((channel, old))
            elif target != name:
                moves.append((channel, name, target))
        for channel, source, target in moves:
            if channel not in self._where:
                continue  # unsubscribed meanwhile
            self._homeless.pop(channel, None)
            self._where[channel] = target
            self.stats.moves += 1
            log.info("bus channel moved", channel=channel, to=target)
            await self._links[target].adopt(channel)
            if self._where.get(channel) != target:  # unsubscribed while it moved
                await self._links[target].unsubscribe(channel)
            if source is not None and source != target and \
                    (link := self._links.get(source)) is not None:
                await link.drop(channel)
        for channel, source in left:
            if (link := self._links.get(source)) is not None and channel not in link.channels:
                await link.drop_classic(channel)
        stale = [name for name, link in self._links.items()
                 if name not in shards and not link.channels]
        for name in stale:
            log.info("bus link stopped: its shard serves nothing", shard=name)
            del self._links[name]
        if stale:
            self._changed()

    def _changed(self) -> None:
        self._links_changed.set()
        self._links_changed = asyncio.Event()

    def pushed_away(self, link: Link, channel: str) -> None:
        """Redis unsubscribed ``channel`` by itself: its slot moved to another shard."""
        link.channels.discard(channel)
        if self._where.get(channel) == link.name:
            self._homeless[channel] = (link.name, 0)
            log.info("bus channel pushed away by redis", channel=channel, shard=link.name)
            self.suspect()

    def report(self, link: Link, channels: Iterable[str] | None) -> None:
        """A link subscribed again after a gap: tell the sink which channels."""
        if channels is None:
            self.sink.on_resubscribed(None if len(self._links) == 1
                                       else frozenset(link.channels))
        else:
            self.sink.on_resubscribed(frozenset(channels))

    # ------------------------------------------------------------------ liveness

    def is_ready(self, now: float | None = None) -> tuple[bool, list[str]]:
        """One link: ready = subscribed, its shard answered and a canary came back
        within the window.  Several: see the module docstring."""
        now = asyncio.get_running_loop().time() if now is None else now
        links = self.links
        if len(links) == 1:
            return links[0].is_ready(now)
        reasons: list[str] = []
        healthy, fault = 0, False
        for link in links:
            ok, why = link.is_ready(now)
            if ok:
                healthy += 1
                continue
            reasons.extend(f"shard {link.name}: {reason}" for reason in why)
            fault = fault or link.answering(now)
        if not healthy:
            reasons.append("no shard answering")
        return healthy > 0 and not fault, reasons


def _oldest(times: Iterable[float | None]) -> float | None:
    found = list(times)
    return None if not found or None in found else min(t for t in found if t is not None)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
