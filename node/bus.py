"""The bus: a node's one pub/sub subscription to Redis, and the proof that it is alive.

Theory of operation
-------------------
* **One subscription per node** (never one per client), read by one task (:meth:`Bus.listen`).
  It is always subscribed to its fixed channels (the node's own, for private messages and
  canaries, and the events channel) and to the channels :meth:`Bus.subscribe` added (a
  room's while the node has local members in it); a subscribe returns once Redis confirmed
  it, so nothing published right after it is missed.
* **(Re)connecting.**  Each connection first loads every script (a restarted Redis forgot
  them), hands the publisher a clock measurement, checks ``maxmemory-policy`` (once), then
  subscribes every channel again.  Every connection after the first is reported to the
  sink (``on_resubscribed``: repair the gap), and so is a reconnect redis-py makes by
  itself behind our back.  A failure is retried with capped, jittered backoff; a dead
  listener would be a deaf node, so it never gives up.
* **Liveness.**  Every ``canary_interval`` a canary is published to the node's own channel
  and must come back through the subscription.  Ready (:meth:`Bus.is_ready`) means
  subscribed, Redis answered and a canary came back within ``ready_window``.  Redis
  answering while canaries stop coming back for twice that window is a **deaf**
  subscription (dead without an error): it is rebuilt.
* **Data reset.**  The canary round also reads the cluster's epoch key (set once by
  whichever node comes first); gone or new means Redis lost its data, reported to the sink
  (``on_redis_reset``) so names and rooms are asserted again.
* The bus knows channel names only, nothing of nicknames or rooms: it holds all its state
  in one object, so a Redis Cluster node can run one per shard.
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

__all__ = ["Bus", "BusSink", "BusStats"]

log = structlog.get_logger("hubbub.relay")


class BusSink(Protocol):
    """What the bus reports to its node."""

    def on_envelope(self, envelope: env.Envelope) -> None: ...

    def on_resubscribed(self) -> None: ...

    def on_redis_reset(self) -> None: ...


@dataclass(slots=True)
class BusStats:
    received: int = 0
    bad_envelopes: int = 0
    reconnects: int = 0
    deaf_rebuilds: int = 0
    data_resets: int = 0


class Bus:
    """One pub/sub subscription and its liveness.  See the module docstring."""

    def __init__(self, redis: Redis, config: NodeConfig, sink: BusSink, *, home: str,
                 channels: Iterable[str] = (), epoch_key: str,
                 scripts: Iterable[AsyncScript] = (),
                 sync_clock: Callable[[], Awaitable[None]] | None = None) -> None:
        """``home``: the node's own channel (canaries go round through it); ``channels``:
        the others always subscribed; ``scripts``: loaded at every connection;
        ``sync_clock``: measures Redis's clock for the publisher, at every connection and
        every canary round."""
        self._redis = redis
        self._cfg = config
        self._sink = sink
        self.node_id = config.node_id
        self.home = home
        self._epoch_key = epoch_key
        self._scripts = {script.sha: script for script in scripts}
        self._sync_clock = sync_clock
        self.stats = BusStats()
        self._channels: set[str] = {home, *channels}
        self._pubsub: PubSub | None = None
        self._ready = asyncio.Event()
        self._waiters: dict[str, list[asyncio.Future[None]]] = {}
        self._rebuild = False
        self._confirming: set[str] | None = None
        """Channels a library reconnect resubscribed that Redis has not confirmed yet."""
        self._policy_checked = False
        self._epoch: bytes | str | None = None
        self._subscribed_at = 0.0
        self._canary_seq = 0
        self._canary_sent: dict[int, float] = {}
        self.redis_answered_at: float | None = None
        """Loop time at which Redis last answered a canary publish."""
        self.canary_at: float | None = None
        """Loop time at which a canary last came back through the subscription."""
        self.canary_rtt: float | None = None
        self.canary_seconds = Histogram(
            "hubbub_canary_rtt_seconds", "Round trip of the node's bus canary.",
            registry=None, buckets=(.0005, .001, .002, .005, .01, .025, .05, .1, .25, 1, 5))

    # ------------------------------------------------------------------ state

    @property
    def ready(self) -> bool:
        """True while the subscription is up."""
        return self._ready.is_set()

    async def wait_ready(self) -> None:
        await self._ready.wait()

    @property
    def pubsub(self) -> PubSub | None:
        """The live subscription's connection (None while it is down)."""
        return self._pubsub

    @property
    def channels(self) -> frozenset[str]:
        """Every channel subscribed (or to be subscribed again once reconnected)."""
        return frozenset(self._channels)

    @property
    def rebuilding(self) -> bool:
        """A rebuild of the subscription was asked for and has not happened yet."""
        return self._rebuild

    def rebuild(self) -> None:
        """Drop the subscription and build it again (as after a deaf one)."""
        self._rebuild = True

    # ------------------------------------------------------------------ subscriptions

    async def subscribe(self, channel: str) -> None:
        """Subscribe to ``channel``; returns once Redis confirmed it."""
        try:  # the listener may be (re)connecting right now: give it a moment
            async with asyncio.timeout(self._cfg.redis_timeout):
                await self._ready.wait()
        except TimeoutError:
            raise RelayUnavailable() from None
        self._channels.add(channel)
        pubsub = self._pubsub
        if pubsub is None:
            self._channels.discard(channel)
            raise RelayUnavailable()
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(channel, []).append(waiter)
        try:
            async with translated("subscribe"), asyncio.timeout(self._cfg.redis_timeout):
                await pubsub.subscribe(channel)
                await waiter
        except BaseException:
            self._channels.discard(channel)
            waiters = self._waiters.get(channel, [])
            if waiter in waiters:
                waiters.remove(waiter)
            raise

    async def unsubscribe(self, channel: str) -> None:
        self._channels.discard(channel)
        pubsub = self._pubsub
        if pubsub is not None:
            with suppress(RedisError, OSError):
                await pubsub.unsubscribe(channel)

    # ------------------------------------------------------------------ the listener

    async def listen(self) -> None:
        """Subscribe and read the subscription until cancelled; rebuild it on failure."""
        delays: Iterator[float] | None = None
        while True:
            pubsub = self._watch_reconnects(self._redis.pubsub())
            self._confirming = None
            try:
                await self.load_scripts()
                if self._sync_clock is not None:
                    async with asyncio.timeout(self._cfg.redis_timeout):
                        await self._sync_clock()
                if not self._policy_checked:
                    await self._check_policy()
                await self._subscribe_all(pubsub)
                self._pubsub = pubsub
                self._ready.set()
                if self._subscribed_at:  # not the first subscription: repair the gap
                    self.stats.reconnects += 1
                    self._sink.on_resubscribed()
                log.info("relay subscribed", channels=len(self._channels))
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
                log.warning("relay subscription lost", error=describe(exc))
                if delays is None:
                    delays = backoff(initial=self._cfg.reconnect_min,
                                     maximum=self._cfg.reconnect_max)
                await pause(next(delays))
            finally:
                self._ready.clear()
                self._pubsub = None
                with suppress(Exception):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]

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
            log.info("relay subscribed", by="client library reconnect")
            # the SUBSCRIBEs are sent, not yet in force: a repair reading the stream now
            # could read it before them, and miss what is published in between
            self._confirming = {_text(c) for c in pubsub.channels}
            if not self._confirming:
                self._resubscribed()

        # a bound method: redis-py keeps connect callbacks as weak *methods*
        pubsub.on_connect = types.MethodType(on_connect, pubsub)  # type: ignore[method-assign]
        return pubsub

    async def _check_policy(self) -> None:
        """Refuse a Redis that may evict keys: an evicted lease would grant a name twice."""
        try:
            async with asyncio.timeout(self._cfg.redis_timeout):
                found = await self._redis.config_get("maxmemory-policy")
        except ResponseError as exc:  # CONFIG not allowed (managed Redis, ACL): say so
            log.warning("cannot check redis maxmemory-policy", error=describe(exc))
            self._policy_checked = True
            return
        policy = _text(next(iter(found.values()), b"noeviction") or b"noeviction")
        self._policy_checked = True
        if policy != "noeviction":
            if not self._cfg.allow_eviction:
                raise RedisMisconfigured(
                    f"Redis maxmemory-policy is {policy!r}: it may evict a nickname's lease "
                    "and grant the name twice. Set maxmemory-policy noeviction, or start "
                    "with --allow-eviction to accept the risk.")
            log.warning("redis may evict keys; names could be granted twice", policy=policy)

    async def load_scripts(self) -> None:
        """Load every script up front (after each reconnect: a restarted Redis forgot them),
        so the hot path's EVALSHA rarely meets NOSCRIPT."""
        async with asyncio.timeout(self._cfg.redis_timeout * 2):
            for script in self._scripts.values():
                await self._redis.script_load(script.script)

    async def _subscribe_all(self, pubsub: PubSub) -> None:
        async with asyncio.timeout(self._cfg.redis_timeout * 2):
            channels = set(self._channels)
            await pubsub.subscribe(*channels)
            while channels:
                message = await pubsub.get_message(timeout=self._cfg.redis_timeout)
                if message is None:
                    continue
                if message["type"] == "subscribe":
                    channels.discard(_text(message["channel"]))
                self._dispatch(message)

    def _dispatch(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        if kind == "message":
            self.stats.received += 1
            try:
                envelope = env.parse(message["data"])
            except env.BadEnvelope as exc:
                self.stats.bad_envelopes += 1
                log.warning("bad envelope dropped", error=exc.text,
                            channel=_text(message["channel"]))
                return
            if isinstance(envelope, env.Canary):
                self._canary_back(envelope)
                return
            self._sink.on_envelope(envelope)
        elif kind == "subscribe":
            channel = _text(message["channel"])
            for waiter in self._waiters.pop(channel, []):
                if not waiter.done():
                    waiter.set_result(None)
            if self._confirming is not None:
                self._confirming.discard(channel)
                if not self._confirming:
                    self._resubscribed()

    def _resubscribed(self) -> None:
        """Every channel of a library reconnect is subscribed again: repair the gap."""
        self._confirming = None
        self._sink.on_resubscribed()

    # ------------------------------------------------------------------ liveness

    def is_ready(self, now: float | None = None) -> tuple[bool, list[str]]:
        """Ready = subscribed, Redis answered and a canary came back within the window."""
        now = asyncio.get_running_loop().time() if now is None else now
        window = self._cfg.ready_window
        reasons = []
        if not self.ready:
            reasons.append("bus subscription down")
        if self.redis_answered_at is None or now - self.redis_answered_at > window:
            reasons.append("redis not answering")
        if self.canary_at is None or now - self.canary_at > window:
            reasons.append("canary not coming back (deaf subscription)")
        return not reasons, reasons

    async def canary_loop(self) -> None:
        """Publish a canary to our own channel every interval; it must come back."""
        loop = asyncio.get_running_loop()
        while True:
            self._canary_seq += 1
            seq = self._canary_seq
            self._canary_sent[seq] = loop.time()
            for old in [s for s in self._canary_sent if s < seq - 16]:
                del self._canary_sent[old]  # lost ones: keep the table small
            try:
                async with asyncio.timeout(self._cfg.redis_timeout):
                    await self._redis.publish(self.home,
                                              env.Canary(self.node_id, seq).serialize())
                self.redis_answered_at = loop.time()
            except (RedisError, OSError, RuntimeError) as exc:  # RuntimeError: see _translated
                log.debug("canary publish failed", error=describe(exc))
            self._check_deaf(loop.time())
            try:
                async with asyncio.timeout(self._cfg.redis_timeout):
                    await self._check_epoch()
                    if self._sync_clock is not None:
                        await self._sync_clock()
            except (RedisError, OSError, RuntimeError) as exc:
                log.debug("epoch check failed", error=describe(exc))
            await pause(self._cfg.canary_interval)

    async def _check_epoch(self) -> None:
        """Notice a Redis that lost its data (restarted without persistence, flushed):
        the cluster's epoch key, set once by whichever node comes first, is gone or new."""
        key = self._epoch_key
        epoch = await self._redis.get(key)
        if epoch is None:
            await self._redis.set(key, secrets.token_hex(8), nx=True)
            epoch = await self._redis.get(key)
        if self._epoch is not None and epoch != self._epoch:
            self.stats.data_resets += 1
            log.warning("redis lost its data; re-asserting names and rooms")
            self._sink.on_redis_reset()
        self._epoch = epoch

    def _check_deaf(self, now: float) -> None:
        """Redis answers but our canaries stopped coming back for twice the readiness
        window: the subscription is dead without an error.  Rebuild it."""
        if not self.ready or self.redis_answered_at is None:
            return
        last = max(self.canary_at or 0.0, self._subscribed_at)
        if now - self.redis_answered_at < self._cfg.ready_window and \
                now - last > 2 * self._cfg.ready_window and not self._rebuild:
            log.warning("bus subscription deaf; rebuilding it", silent_for=round(now - last, 2))
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
        self.canary_seconds.observe(self.canary_rtt)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
