"""Publishing for one node: room messages (rounds, the outbox, deadlines), direct messages.

Theory of operation
-------------------
* :meth:`Publisher.submit` queues a message and never waits; one task (:meth:`_pump`)
  publishes the queue oldest first, every queued message (up to ``publish_batch``) in one
  pipeline of PUBLISH_MSG scripts, so under load many messages share one round trip and
  the order of submission is the order of publication.
* Each message carries a **once-key** (a retry of an attempt that did run returns its
  first id instead of publishing twice) and a **deadline** on Redis's clock (when its
  sender is told it failed; the script publishes nothing after it).  The offset between
  this node's clock and Redis's is measured with ``TIME`` (:meth:`sync_clock`).
* A round that fails because Redis is unreachable or slow moves its messages, and every
  one queued behind them, into the **outbox** (``outbox_seconds``, ``outbox_max``),
  retried in order with backoff; past either bound the sender gets RelayUnavailable.
  Nothing is dropped without its sender knowing.
* **Direct publishes** (a private message or an operator's sanction for the node holding
  its target, an address ban for every node) are one PUBLISH each, on the node's or the
  events channel: nothing is stored, and a channel nobody listens to is reported.
"""

from __future__ import annotations

import asyncio
import itertools
import secrets
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import structlog
from prometheus_client import Histogram
from redis.asyncio import Redis
from redis.exceptions import NoScriptError, RedisError

from . import envelope as env
from . import scripts
from .backoff import backoff
from .config import NodeConfig
from .errors import NoSuchNick, RelayRefused, RelayUnavailable
from .keys import Keys
from .pause import pause
from .redis_errors import transient, translated, unavailable

__all__ = ["CLOCK_WARN", "PublishStats", "Published", "Publisher"]

log = structlog.get_logger("hubbub.relay")

CLOCK_WARN = 1.0
"""Seconds of difference between this node's clock and Redis's that are logged."""


Published = Callable[["str | RelayUnavailable"], None]
"""Told a submitted room message's id, or why it was not relayed."""


class _Pending:
    """A room message on its way to Redis."""

    __slots__ = ("deadline_ms", "done", "msg", "once", "since")

    def __init__(self, msg: env.RoomMsg, once: str, done: Published,
                 deadline_ms: int) -> None:
        self.msg = msg
        self.once = once
        """The message's once-key: a retry of an attempt that did run returns its id."""
        self.done = done
        self.deadline_ms = deadline_ms
        """Unix time (ms) after which Redis must not publish it: by then its sender may
        have been told it was not relayed."""
        self.since = 0.0
        """Loop time at which it entered the outbox."""

    def resolve(self, result: str | RelayUnavailable) -> None:
        try:
            self.done(result)
        except Exception:  # a sender's bug must not stop the publishing of the others
            log.exception("publish callback failed")

    def fail(self, text: str, cause: BaseException | None = None) -> None:
        error = RelayUnavailable(text)
        error.__cause__ = cause
        self.resolve(error)


@dataclass(slots=True)
class PublishStats:
    published: int = 0
    outboxed: int = 0
    outbox_expired: int = 0
    outbox_refused: int = 0
    publish_too_late: int = 0


class Publisher:
    """Publishes one node's room and direct messages (see the module docstring)."""

    def __init__(self, redis: Redis, config: NodeConfig, keys: Keys,
                 clock: Callable[[], float] = time.time) -> None:
        """``clock``: this node's wall clock (Unix seconds); message deadlines are set on
        Redis's clock, through the measured offset between the two."""
        self._redis = redis
        self._cfg = config
        self.keys = keys
        self.stats = PublishStats()
        self._clock = clock
        self.clock_offset = 0.0
        """Redis's clock minus this node's, in seconds (measured with TIME)."""
        self._clock_warned = False
        self._msg_keys = itertools.count(1)
        # unique per process: a restarted node must not reuse its predecessor's keys
        self._once_prefix = f"{config.node_id}:{secrets.token_hex(6)}"
        self._outbox: deque[_Pending] = deque()
        """Messages held while Redis is away, oldest first."""
        self._batch: deque[_Pending] = deque()
        """Messages queued for the next publishing round (Redis answering)."""
        self._flusher: asyncio.Task[None] | None = None
        # a retry may come up to outbox_seconds (+ one command timeout) after the first try
        self._once_ttl_ms = int((config.outbox_seconds + 2 * config.redis_timeout + 5) * 1000)
        self.publish_seconds = Histogram(
            "hubbub_publish_seconds", "Time to store and publish one room message.",
            registry=None, buckets=(.0005, .001, .002, .005, .01, .025, .05, .1, .25, 1))
        self.script = redis.register_script(scripts.PUBLISH_MSG)


    async def say(self, msg: env.RoomMsg) -> str:
        """Store and publish a room message in one atomic step; returns its id."""
        waiter: asyncio.Future[str] = asyncio.get_running_loop().create_future()

        def done(result: str | RelayUnavailable) -> None:
            if waiter.done():
                return
            if isinstance(result, RelayUnavailable):
                waiter.set_exception(result)
            else:
                waiter.set_result(result)

        self.submit(msg, done)
        return await waiter

    def submit(self, msg: env.RoomMsg, done: Published) -> None:
        """Queue a room message for publishing; ``done`` gets its id or the error.

        Never waits: messages are published in the order they are submitted, many to one
        Redis round trip (see :meth:`_pump`), and ``done`` is called in that order, from
        the publishing task as soon as Redis answered (or at once, if refused here).
        While Redis cannot be reached messages wait in the node's outbox (at most
        ``outbox_seconds`` and ``outbox_max`` messages), behind any that wait already,
        and are published in order when Redis is back; past the bounds ``done`` gets
        RelayUnavailable, so nothing is dropped without its sender knowing.
        """
        entry = _Pending(msg, f"{self._once_prefix}:{next(self._msg_keys)}", done,
                         self._deadline())
        if self._outbox:  # Redis is away: wait behind the messages held already
            if len(self._outbox) >= self._cfg.outbox_max:
                self.stats.outbox_refused += 1
                entry.fail("the cluster relay is unavailable and this node's outbox is full; "
                           "your message was not sent")
                return
            entry.since = asyncio.get_running_loop().time()
            self._outbox.append(entry)
            self.stats.outboxed += 1
        else:
            self._batch.append(entry)
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._pump(), name="relay-publish")

    async def _pump(self) -> None:
        """The one task that publishes room messages, oldest first, until none are left.

        Each round sends every queued message (up to ``publish_batch``) as one pipeline of
        EVALSHAs, so under load many messages share one round trip; while a round is in
        flight the next one fills up.  Redis runs a pipeline's commands in order, so the
        order of submission is the order of publication.  A round that fails because
        Redis is unreachable or slow moves its messages, and every message queued behind
        them, into the outbox, which is retried in order with backoff (each message's
        once-key makes a retry of one that did run return its first id); messages that
        waited longer than ``outbox_seconds`` are refused.
        """
        loop = asyncio.get_running_loop()
        delays: Iterator[float] | None = None
        cause: BaseException | None = None
        while self._outbox or self._batch:
            if self._outbox:
                now = loop.time()
                while self._outbox and now - self._outbox[0].since > self._cfg.outbox_seconds:
                    self.stats.outbox_expired += 1
                    self._outbox.popleft().fail("the cluster relay stayed unavailable; your "
                                                "message was not sent", cause)
                if not self._outbox:
                    continue
                held = list(itertools.islice(self._outbox, self._cfg.publish_batch))
                try:
                    results = await self._publish_many(
                        [(e.msg, e.once, e.deadline_ms) for e in held])
                except RelayUnavailable as exc:
                    cause = exc.__cause__
                    if delays is None:
                        delays = backoff(initial=0.05, maximum=0.5)
                    await pause(next(delays))
                    continue
                delays = None
                for entry, result in zip(held, results, strict=True):
                    self._outbox.popleft()
                    entry.resolve(result)
                continue
            size = min(self._cfg.publish_batch, len(self._batch))
            batch = [self._batch.popleft() for _ in range(size)]
            try:
                results = await self._publish_many(
                    [(e.msg, e.once, e.deadline_ms) for e in batch])
            except RelayUnavailable as exc:
                if not transient(exc) or self._cfg.outbox_seconds <= 0:
                    for entry in batch:
                        entry.fail(exc.text, exc.__cause__)
                    continue
                self._hold(batch, loop.time())
                continue
            for entry, result in zip(batch, results, strict=True):
                entry.resolve(result)

    def _hold(self, failed: list[_Pending], now: float) -> None:
        """Redis went away under a round: its messages and every one queued behind them
        wait in the outbox, in order; past ``outbox_max`` the newest are refused."""
        for entry in itertools.chain(failed, self._batch):
            if len(self._outbox) >= self._cfg.outbox_max:
                self.stats.outbox_refused += 1
                entry.fail("the cluster relay is unavailable and this node's outbox is "
                           "full; your message was not sent")
                continue
            entry.since = now
            self._outbox.append(entry)
            self.stats.outboxed += 1
        self._batch.clear()

    def _deadline(self) -> int:
        """When a message said now is refused to its sender at the earliest (the outbox
        bound, or one command timeout without an outbox), as Unix time in ms: the
        publishing script does nothing after it, so a frozen Redis that thaws cannot
        deliver a line its sender was told had failed."""
        window = self._cfg.outbox_seconds if self._cfg.outbox_seconds > 0 else \
            self._cfg.redis_timeout
        return int((self._clock() + self.clock_offset + window) * 1000)

    async def sync_clock(self) -> None:
        """Measure how far Redis's clock is from this node's (TIME, halfway through the
        round trip).  Deadlines are checked by Redis against its own clock: a node whose
        clock lags Redis's by more than the outbox window would otherwise see every
        message refused as too late, and one ahead would let a thawed Redis publish lines
        their senders were told had failed."""
        before = self._clock()
        seconds, micros = await self._redis.time()
        after = self._clock()
        if after - before > 0.5:  # too slow a round trip to say much; keep the last
            return
        self.clock_offset = seconds + micros / 1e6 - (before + after) / 2
        skewed = abs(self.clock_offset) > CLOCK_WARN
        if skewed and not self._clock_warned:
            log.warning("this node's clock differs from Redis's; message deadlines follow "
                        "Redis's clock", offset_seconds=round(self.clock_offset, 3))
        self._clock_warned = skewed

    async def private(self, msg: env.DirectMsg, node: str) -> None:
        """Publish a private message to the node holding its recipient."""
        async with translated("pm"):
            receivers = await self._redis.publish(self.keys.node_channel(node), msg.serialize())
        if not receivers:
            raise NoSuchNick(f"{msg.to} is not online")
        self.stats.published += 1

    async def sanction(self, sanction: env.Sanction, node: str) -> bool:
        """Send an operator's kick/ban/mute to the node holding its target (the private
        message path); False when no node received it."""
        async with translated("sanction"):
            receivers = await self._redis.publish(self.keys.node_channel(node),
                                                  sanction.serialize())
        return bool(receivers)

    async def broadcast(self, sanction: env.Sanction) -> None:
        """Send an operator's action to every node (an address ban)."""
        async with translated("sanction"):
            await self._redis.publish(self.keys.events, sanction.serialize())

    async def _publish_once(self, msg: env.RoomMsg, once: str,
                            deadline_ms: int | None = None) -> str:
        """Publish one message (with its once-key) in a round of its own."""
        (result,) = await self._publish_many(
            [(msg, once, self._deadline() if deadline_ms is None else deadline_ms)])
        if isinstance(result, RelayUnavailable):
            raise result
        return result

    async def _publish_many(self, msgs: Sequence[tuple[env.RoomMsg, str, int]]
                            ) -> list[str | RelayUnavailable]:
        """Run PUBLISH_MSG for each ``(message, once-key, deadline)`` in one pipeline, in
        order.

        Raises RelayUnavailable when the round as a whole failed (Redis unreachable,
        slow, or the connection broke): any prefix of it may have run, which the
        once-keys make safe to retry.  Otherwise each message gets its id, or the
        RelayUnavailable that refuses it alone (Redis refused that command: later ones
        in the round did run, so it is not retried).  A Redis that forgot the script
        (restarted) is sent it again and the round's tail re-run once.
        """
        k = self.keys
        started = time.perf_counter()
        args = (self._cfg.history_max, self._once_ttl_ms)
        sha = self.script.sha
        results: list[Any] = []
        try:
            async with translated("publish"):
                todo = list(msgs)
                for attempt in (1, 2):
                    pipe = self._redis.pipeline(transaction=False)
                    for msg, once, deadline_ms in todo:
                        pipe.evalsha(sha, 3, k.history(msg.room), k.room_channel(msg.room),
                                     k.once(msg.room, once), msg.serialize(), *args,
                                     deadline_ms)
                    got = await pipe.execute(raise_on_error=False)
                    first = next((i for i, r in enumerate(got) if isinstance(r, NoScriptError)),
                                 None)
                    if first is None or attempt == 2 or not all(
                            isinstance(r, NoScriptError) for r in got[first:]):
                        results.extend(got)
                        break
                    results.extend(got[:first])
                    todo = todo[first:]
                    await self._redis.script_load(self.script.script)
        except RelayUnavailable:
            raise
        except Exception as exc:  # a bug, not Redis: answer every sender rather than none
            log.exception("publishing round failed")
            results.extend([exc] * (len(msgs) - len(results)))
        elapsed = time.perf_counter() - started
        out: list[str | RelayUnavailable] = []
        for result in results:
            if isinstance(result, RedisError):  # Redis down for it, or refused it (logged)
                error = unavailable(result, "publish")
                error.__cause__ = result
                out.append(error)
            elif isinstance(result, Exception):  # our bug, logged above
                error = RelayRefused("the node could not publish your message; the fault is "
                                     "logged on the node")
                error.__cause__ = result
                out.append(error)
            elif result is None:  # Redis got to it past its deadline: published nothing
                self.stats.publish_too_late += 1
                out.append(RelayUnavailable("the cluster relay did not get to your message "
                                            "in time; it was not sent"))
            else:
                self.publish_seconds.observe(elapsed)
                self.stats.published += 1
                out.append(result.decode() if isinstance(result, bytes) else str(result))
        return out
