"""One shard's pub/sub link: its connection, reader, canary, deafness check and epoch
check, and the subscriptions of the channels its shard serves.  The :class:`~node.bus.Bus`
keeps one per shard and moves channels between them; the theory of operation of both is
in :mod:`node.bus`.
"""

from __future__ import annotations

import asyncio
import secrets
import types
from collections.abc import Awaitable, Callable, Iterable, Iterator
from contextlib import suppress
from dataclasses import dataclass
from typing import Any, Protocol

import structlog
from prometheus_client import Histogram
from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.commands.core import AsyncScript
from redis.exceptions import RedisError, ResponseError

from . import envelope as env
from .backoff import backoff
from .config import NodeConfig
from .errors import RedisMisconfigured, RelayUnavailable
from .pause import cancel_pending, pause
from .redis_errors import describe, translated
from .topology import Shard, slot_of

__all__ = ["BusSink", "BusStats", "Link", "LinkOwner", "LinkState"]

log = structlog.get_logger("hubbub.relay")


class BusSink(Protocol):
    """What the bus reports to its node."""

    def on_envelope(self, envelope: env.Envelope) -> None: ...

    def on_resubscribed(self, channels: frozenset[str] | None = None) -> None:
        """Subscribed again after a gap: ``channels`` (their gap to repair), or every
        channel (``None``)."""

    def on_redis_reset(self) -> None: ...


@dataclass(slots=True)
class BusStats:
    received: int = 0
    bad_envelopes: int = 0
    reconnects: int = 0
    deaf_rebuilds: int = 0
    data_resets: int = 0
    moves: int = 0
    """Channels moved to another link because their slot moved."""


class LinkOwner(Protocol):
    """What a link needs of the bus that keeps it (:class:`node.bus.Bus`)."""

    config: NodeConfig
    sink: BusSink
    node_id: str
    epoch_key: str
    stats: BusStats
    scripts: dict[str, AsyncScript]
    sync_clock: Callable[[], Awaitable[None]] | None
    classic: frozenset[str]
    """Channels subscribed with classic SUBSCRIBE (every other one is sharded)."""
    also_classic: bool
    """The upgrade mode: sharded channels (not canaries) are subscribed classic too."""
    canary_seconds: Histogram

    def canary_channel_of(self, shard: Shard) -> str: ...

    def epoch_key_of(self, shard: Shard) -> str: ...

    def pushed_away(self, link: Link, channel: str) -> None: ...

    def report(self, link: Link, channels: Iterable[str] | None) -> None: ...

    def suspect(self) -> None: ...


@dataclass(frozen=True, slots=True)
class LinkState:
    """One link as /readyz and /metrics see it."""

    shard: str
    ready: bool
    answering: bool
    canary_rtt: float | None
    canary_age: float | None
    channels: int


class Link:
    """One shard's pub/sub connection, its reader, its canary and its epoch check."""

    def __init__(self, bus: LinkOwner, shard: Shard) -> None:
        self._bus = bus
        self._cfg = bus.config
        self.shard = shard
        self.name = shard.name
        self.node_id = bus.node_id
        self.stats = bus.stats
        self.channels: set[str] = set()
        """The channels this link subscribes (classic and sharded)."""
        self._unreported: set[str] = set()
        """Channels moved here whose subscription was not reported for repair yet."""
        self._pubsub: PubSub | None = None
        self._ready = asyncio.Event()
        self._waiters: dict[str, list[asyncio.Future[None]]] = {}
        self._rebuild = False
        self._confirming: set[str] | None = None
        """Channels a library reconnect resubscribed that Redis has not confirmed yet."""
        self._half: dict[str, str] = {}
        """The upgrade mode: channels subscribed both ways of which one confirmation
        came on this connection -> its kind."""
        self._held: list[tuple[str, env.Envelope]] = []
        """(channel, envelope) heard before the gap they follow was reported: while the
        link (re)subscribes, and on a channel moved here until its repair began.  Handed
        on right after the report, in the order heard; handed on first, a live event
        would move its room's mark past the gap and the repair would read after it."""
        self._policy_checked = False
        self._epoch: bytes | str | None = None
        self._subscribed_at = 0.0
        self._canary_seq = 0
        self._canary_sent: dict[int, float] = {}
        self.redis_answered_at: float | None = None
        """Loop time at which the shard last answered a canary publish."""
        self.canary_at: float | None = None
        """Loop time at which a canary last came back through this link."""
        self.canary_rtt: float | None = None

    def __repr__(self) -> str:
        return f"<Link {self.name}>"

    @property
    def redis(self) -> Redis:
        return self.shard.client

    @property
    def canary_channel(self) -> str:
        return self._bus.canary_channel_of(self.shard)

    def _canary_or_none(self) -> str | None:
        try:
            return self.canary_channel
        except LookupError:  # the shard serves nothing now: the link is on its way out
            return None

    # ------------------------------------------------------------------ state

    @property
    def ready(self) -> bool:
        return self._ready.is_set()

    async def wait_ready(self) -> None:
        await self._ready.wait()

    @property
    def pubsub(self) -> PubSub | None:
        return self._pubsub

    @property
    def rebuilding(self) -> bool:
        return self._rebuild

    def rebuild(self) -> None:
        self._rebuild = True

    def answering(self, now: float) -> bool:
        """The shard answered a canary publish within the window."""
        return self.redis_answered_at is not None and \
            now - self.redis_answered_at <= self._cfg.ready_window

    def is_ready(self, now: float) -> tuple[bool, list[str]]:
        window = self._cfg.ready_window
        reasons = []
        if not self.ready:
            reasons.append("bus subscription down")
        if not self.answering(now):
            reasons.append("redis not answering")
        if self.canary_at is None or now - self.canary_at > window:
            reasons.append("canary not coming back (deaf subscription)")
        return not reasons, reasons

    def state(self, now: float) -> LinkState:
        return LinkState(self.name, self.is_ready(now)[0], self.answering(now), self.canary_rtt,
                         None if self.canary_at is None else now - self.canary_at,
                         len(self.channels))

    # ------------------------------------------------------------------ subscriptions

    def _doubled(self, channel: str) -> bool:
        """The upgrade mode: ``channel`` is subscribed both sharded and classic."""
        return self._bus.also_classic and channel not in self._bus.classic and \
            channel != self._canary_or_none()

    def _subscribing(self, pubsub: PubSub, channels: Iterable[str]) -> Awaitable[Any]:
        """One command per kind: classic, and sharded grouped by slot (a cluster refuses
        an SSUBSCRIBE whose channels are in different slots); in the upgrade mode the
        sharded ones classic too."""
        classic = [c for c in channels if c in self._bus.classic]
        sharded = [c for c in channels if c not in self._bus.classic]
        by_slot: dict[int, list[str]] = {}
        for channel in sharded:
            by_slot.setdefault(slot_of(channel), []).append(channel)
        doubled = [c for c in sharded if self._doubled(c)]

        async def send() -> None:
            if classic:
                await pubsub.subscribe(*classic)
            for group in by_slot.values():
                await pubsub.ssubscribe(*group)
            if doubled:
                await pubsub.subscribe(*doubled)

        return send()

    async def subscribe(self, channel: str) -> None:
        """Subscribe to ``channel``; returns once Redis confirmed it."""
        try:  # the listener may be (re)connecting right now: give it a moment
            async with asyncio.timeout(self._cfg.redis_timeout):
                await self._ready.wait()
        except TimeoutError:
            raise RelayUnavailable() from None
        self.channels.add(channel)
        pubsub = self._pubsub
        if pubsub is None:
            self.channels.discard(channel)
            raise RelayUnavailable()
        try:
            await self._confirmed(pubsub, channel)
        except BaseException:
            self.channels.discard(channel)
            raise

    async def _confirmed(self, pubsub: PubSub, channel: str) -> None:
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(channel, []).append(waiter)
        try:
            async with translated("subscribe"), asyncio.timeout(self._cfg.redis_timeout):
                await self._subscribing(pubsub, [channel])
                await waiter
        except BaseException:
            waiters = self._waiters.get(channel, [])
            if waiter in waiters:
                waiters.remove(waiter)
            raise

    async def unsubscribe(self, channel: str) -> None:
        self._forget(channel)
        self._half.pop(channel, None)
        pubsub = self._pubsub
        if pubsub is not None:
            with suppress(RedisError, OSError):
                if channel in self._bus.classic:
                    await pubsub.unsubscribe(channel)
                else:
                    await pubsub.sunsubscribe(channel)
                    if self._doubled(channel):
                        await pubsub.unsubscribe(channel)

    def _forget(self, channel: str) -> None:
        """``channel`` is no longer this link's: nor is anything held for it."""
        self.channels.discard(channel)
        self._unreported.discard(channel)
        if self._held:
            self._held = [h for h in self._held if h[0] != channel]

    async def adopt(self, channel: str) -> None:
        """A channel moved here: subscribe it now if the link is up (it is reported for
        repair when Redis confirms it), else at the next connection."""
        self.channels.add(channel)
        self._unreported.add(channel)
        pubsub = self._pubsub
        if pubsub is None:
            return
        try:
            await self._confirmed(pubsub, channel)
        except (RelayUnavailable, TimeoutError) as exc:
            log.warning("bus could not subscribe a moved channel; rebuilding the link",
                        channel=channel, shard=self.name, error=describe(exc))
            self.rebuild()

    async def drop(self, channel: str) -> None:
        """A channel moved away from here."""
        self._forget(channel)
        pubsub = self._pubsub
        if pubsub is not None and channel not in self._bus.classic:
            with suppress(RedisError, OSError, TimeoutError):
                async with asyncio.timeout(self._cfg.redis_timeout):
                    await pubsub.sunsubscribe(channel)
            if self._doubled(channel):
                await self.drop_classic(channel)
        elif pubsub is not None:
            with suppress(RedisError, OSError, TimeoutError):
                async with asyncio.timeout(self._cfg.redis_timeout):
                    await pubsub.unsubscribe(channel)

    async def drop_classic(self, channel: str) -> None:
        """The upgrade mode: the classic half of a channel that left this link."""
        self._half.pop(channel, None)
        pubsub = self._pubsub
        if pubsub is not None:
            with suppress(RedisError, OSError, TimeoutError):
                async with asyncio.timeout(self._cfg.redis_timeout):
                    await pubsub.unsubscribe(channel)

    # ------------------------------------------------------------------ the listener

    async def listen(self) -> None:
        """Subscribe and read this link until cancelled; rebuild it on failure."""
        delays: Iterator[float] | None = None
        while True:
            pubsub = self._watch_reconnects(self.redis.pubsub())
            self._confirming = None
            self._half.clear()
            self._held.clear()  # dropped with the connection: the next repair reads them
            try:
                await self.load_scripts()
                if self._bus.sync_clock is not None and self._primary:
                    async with asyncio.timeout(self._cfg.redis_timeout):
                        await self._bus.sync_clock()
                if not self._policy_checked:
                    await self._check_policy()
                await self._subscribe_all(pubsub)
                # every channel moved here so far is subscribed now (no await since)
                moved_in, self._unreported = self._unreported, set()
                self._pubsub = pubsub
                self._ready.set()
                if self._subscribed_at:  # not the first subscription: repair the gap
                    self.stats.reconnects += 1
                    self._bus.report(self, None)
                elif moved_in:  # a new link: what moved to it
                    self._bus.report(self, moved_in)
                self._release(None)
                log.info("relay subscribed", channels=len(self.channels), shard=self.name)
                self._subscribed_at = asyncio.get_running_loop().time()
                self._rebuild = False
                delays = None
                while not self._rebuild:
                    if cancel_pending():
                        raise asyncio.CancelledError
                    message = await pubsub.get_message(timeout=0.5)
                    if message is not None:
                        self._dispatch(message)
                raise ConnectionError("subscription deaf: canaries stopped coming back")
            except (asyncio.CancelledError, RedisMisconfigured):
                raise
            except Exception as exc:  # a dead listener is a deaf node: never let it die
                self._ready.clear()
                self._pubsub = None
                log.warning("relay subscription lost", error=describe(exc), shard=self.name)
                self._bus.suspect()
                if delays is None:
                    delays = backoff(initial=self._cfg.reconnect_min,
                                     maximum=self._cfg.reconnect_max)
                await pause(next(delays))
            finally:
                self._ready.clear()
                self._pubsub = None
                with suppress(Exception):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]

    @property
    def _primary(self) -> bool:
        """This link's shard serves the cluster's epoch key (the one a standalone Redis
        has): it measures the clock for the publisher."""
        return self._bus.epoch_key_of(self.shard) == self._bus.epoch_key

    def _watch_reconnects(self, pubsub: PubSub) -> PubSub:
        """redis-py may reconnect a PubSub and resubscribe by itself (its retry policy),
        behind our back: treat every such connect as a resubscription, so the gap it left
        is repaired like any other. redis-py registers this callback only after the
        PubSub's first connection, so every call is a reconnect; and should a version call
        it for the first connection too, a repair with no gap merely finds nothing."""
        original = pubsub.on_connect

        async def on_connect(_: PubSub, connection: Any) -> None:
            await original(connection)
            self.stats.reconnects += 1
            log.info("relay subscribed", by="client library reconnect", shard=self.name)
            # the SUBSCRIBEs are sent, not yet in force: a repair reading the stream now
            # could read it before them, and miss what is published in between
            self._confirming = {_text(c) for c in pubsub.channels} | \
                {_text(c) for c in pubsub.shard_channels}
            self._half.clear()
            if not self._confirming:
                self._resubscribed()

        # a bound method: redis-py keeps connect callbacks as weak *methods*
        pubsub.on_connect = types.MethodType(on_connect, pubsub)  # type: ignore[method-assign]
        return pubsub

    async def _check_policy(self) -> None:
        """Refuse a Redis that may evict keys: an evicted lease would grant a name twice."""
        try:
            async with asyncio.timeout(self._cfg.redis_timeout):
                policy = await self._policy()
        except ResponseError as exc:  # neither allowed (managed Redis, ACL): say so
            log.warning("cannot check redis maxmemory-policy", error=describe(exc))
            self._policy_checked = True
            return
        self._policy_checked = True
        if policy != "noeviction":
            if not self._cfg.allow_eviction:
                raise RedisMisconfigured(
                    f"Redis maxmemory-policy is {policy!r}: it may evict a nickname's lease "
                    "and grant the name twice. Set maxmemory-policy noeviction, or start "
                    "with --allow-eviction to accept the risk.")
            log.warning("redis may evict keys; names could be granted twice", policy=policy)

    async def _policy(self) -> str:
        """The shard's ``maxmemory-policy``: from ``INFO memory`` (the section the
        documented ACL grants, so checking leaves nothing in the ACL log), else from
        ``CONFIG GET`` (a Redis whose INFO lacks it)."""
        try:
            info = await self.redis.info("memory")
        except ResponseError:
            info = {}
        found = info.get("maxmemory_policy")
        if found is None:
            config = await self.redis.config_get("maxmemory-policy")
            found = next(iter(config.values()), None)
        return _text(found or b"noeviction")

    async def load_scripts(self) -> None:
        """Load every script up front (after each reconnect: a restarted Redis or a
        promoted replica has none), so the hot path's EVALSHA rarely meets NOSCRIPT."""
        async with asyncio.timeout(self._cfg.redis_timeout * 2):
            for script in self._bus.scripts.values():
                await self.redis.script_load(script.script)

    async def _subscribe_all(self, pubsub: PubSub) -> None:
        """Every channel of the link, and any that moved here meanwhile, confirmed."""
        done: set[str] = set()
        async with asyncio.timeout(self._cfg.redis_timeout * 2):
            while todo := {*self.channels, self.canary_channel} - done:
                await self._subscribing(pubsub, todo)
                channels = set(todo)
                while channels:
                    message = await pubsub.get_message(timeout=self._cfg.redis_timeout)
                    if message is None:
                        continue
                    if self._dispatch(message, True):
                        channels.discard(_text(message["channel"]))
                done |= todo

    def _dispatch(self, message: dict[str, Any], connecting: bool = False) -> bool:
        """Hand on a message (or hold it until the gap before it is reported); True when
        it confirmed a channel's subscription (in the upgrade mode, the second of a doubled
        channel's two confirmations)."""
        kind = message["type"]
        if kind in ("smessage", "message"):
            self.stats.received += 1
            try:
                envelope = env.parse(message["data"])
            except env.BadEnvelope as exc:
                self.stats.bad_envelopes += 1
                log.warning("bad envelope dropped", error=exc.text,
                            channel=_text(message["channel"]))
                return False
            if isinstance(envelope, env.Canary):
                self._canary_back(envelope)
                return False
            channel = _text(message["channel"])
            if connecting or self._confirming is not None or channel in self._unreported:
                self._held.append((channel, envelope))
            else:
                self._bus.sink.on_envelope(envelope)
        elif kind in ("subscribe", "ssubscribe"):
            channel = _text(message["channel"])
            if self._doubled(channel) and self._half.pop(channel, kind) == kind:
                self._half[channel] = kind  # the first of two: not in force yet
                return False
            for waiter in self._waiters.pop(channel, []):
                if not waiter.done():
                    waiter.set_result(None)
            if self._confirming is not None:
                self._confirming.discard(channel)
                if not self._confirming:
                    self._resubscribed()
            elif not connecting and channel in self._unreported:  # moved here: repair it
                self._unreported.discard(channel)
                self._bus.report(self, (channel,))
                self._release(channel)
            return True
        elif kind == "sunsubscribe":
            raw = message["channel"]
            pubsub = self._pubsub
            channel = _text(raw)
            # one we asked for is gone from redis-py's table by now; one still there was
            # pushed by Redis: the channel's slot moved to another shard
            if pubsub is not None and (raw in pubsub.shard_channels
                                       or channel in pubsub.shard_channels):
                pubsub.shard_channels.pop(raw, None)
                pubsub.shard_channels.pop(channel, None)
                if channel == self._canary_or_none():
                    self._bus.suspect()
                    self.rebuild()
                else:
                    self._bus.pushed_away(self, channel)
        return False

    def _resubscribed(self) -> None:
        """Every channel of a library reconnect is subscribed again: repair the gap."""
        self._confirming = None
        self._unreported.clear()
        self._bus.report(self, None)
        self._release(None)

    def _release(self, channel: str | None) -> None:
        """Hand on what was held for ``channel`` (None: for every channel), now that the
        gap before it is reported."""
        if not self._held:
            return
        if channel is None:
            held, self._held = self._held, []
        else:
            held = [h for h in self._held if h[0] == channel]
            self._held = [h for h in self._held if h[0] != channel]
        for _, envelope in held:
            self._bus.sink.on_envelope(envelope)

    # ------------------------------------------------------------------ liveness

    async def canary_loop(self) -> None:
        """Publish a canary to this link's own channel every interval; it must come back."""
        loop = asyncio.get_running_loop()
        while True:
            self._canary_seq += 1
            seq = self._canary_seq
            self._canary_sent[seq] = loop.time()
            for old in [s for s in self._canary_sent if s < seq - 16]:
                del self._canary_sent[old]  # lost ones: keep the table small
            try:
                async with asyncio.timeout(self._cfg.redis_timeout):
                    await self.redis.spublish(self.canary_channel,
                                              env.Canary(self.node_id, seq).serialize())
                self.redis_answered_at = loop.time()
            except (RedisError, OSError, RuntimeError, LookupError) as exc:
                # RuntimeError: see redis_errors.translated
                log.debug("canary publish failed", error=describe(exc), shard=self.name)
                self._bus.suspect()
            self._check_deaf(loop.time())
            try:
                async with asyncio.timeout(self._cfg.redis_timeout):
                    await self._check_epoch()
                    if self._bus.sync_clock is not None and self._primary:
                        await self._bus.sync_clock()
            except (RedisError, OSError, RuntimeError, LookupError) as exc:
                log.debug("epoch check failed", error=describe(exc), shard=self.name)
            await pause(self._cfg.canary_interval)

    async def _check_epoch(self) -> None:
        """Notice a shard that lost its data (restarted without persistence, flushed):
        its epoch key, set once by whichever node comes first, is gone or new."""
        key = self._bus.epoch_key_of(self.shard)
        epoch = await self.redis.get(key)
        if epoch is None:
            await self.redis.set(key, secrets.token_hex(8), nx=True)
            epoch = await self.redis.get(key)
        if self._epoch is not None and epoch != self._epoch:
            self.stats.data_resets += 1
            log.warning("redis lost its data; re-asserting names and rooms", shard=self.name)
            self._bus.sink.on_redis_reset()
        self._epoch = epoch

    def _check_deaf(self, now: float) -> None:
        """The shard answers but our canaries stopped coming back for twice the readiness
        window: the subscription is dead without an error.  Rebuild it."""
        if not self.ready or self.redis_answered_at is None:
            return
        last = max(self.canary_at or 0.0, self._subscribed_at)
        if now - self.redis_answered_at < self._cfg.ready_window and \
                now - last > 2 * self._cfg.ready_window and not self._rebuild:
            log.warning("bus subscription deaf; rebuilding it", silent_for=round(now - last, 2),
                        shard=self.name)
            self.stats.deaf_rebuilds += 1
            self._rebuild = True

    def _canary_back(self, canary: env.Canary) -> None:
        if canary.node != self.node_id:
            return
        sent = self._canary_sent.pop(canary.seq, None)
        if sent is None:
            return
        now = asyncio.get_running_loop().time()
        self.canary_at = now
        self.canary_rtt = now - sent
        self._bus.canary_seconds.observe(self.canary_rtt)



def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
