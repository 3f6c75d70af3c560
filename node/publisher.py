"""Publishing for one node: room messages (rounds, the outbox, deadlines), direct messages.

Theory of operation
-------------------
* :meth:`Publisher.submit` queues a message and never waits; one task (:meth:`_pump`)
  publishes the queue oldest first, every queued message (up to ``publish_batch``) in one
  round: one PUBLISH_ROUND script per room carrying that room's messages in order (each
  stored with its own stream id; with ``bus_format`` 2 published as one batch envelope),
  the rooms' scripts in one pipeline.  Under load many messages share one round trip
  and one bus message, and the order of submission is the order of publication.
* Each message carries a **once-key** (a retry of an attempt that did run returns its
  first id instead of publishing twice) and a **deadline** on Redis's clock (when its
  sender is told it failed; the script publishes nothing after it).  The offset between
  this node's clock and Redis's is measured with ``TIME`` (:meth:`sync_clock`).
* A round that fails because Redis is unreachable or slow moves its messages, and every
  one queued behind them, into the **outbox** (``outbox_seconds``, ``outbox_max``),
  retried in order with backoff; past either bound the sender gets RelayUnavailable.
  Nothing is dropped without its sender knowing.
* **Admission** (:meth:`Publisher.admitted`): the queue of the next round is bounded by
  what Redis can take before a message's deadline — the publishing rate measured over the
  recent rounds times half the deadline window, never less than one round
  (``publish_batch``).  A session waits for room before it submits (and so stops reading
  its client), so a message is never refused for load, only when Redis is away or slow.
* **Per shard.**  Each Redis shard (one on a standalone Redis) has its own *lane*: its
  queue, outbox, publishing task, measured rate and admission, so a shard that does not
  answer (or is frozen, or failing over) holds only its own rooms' messages while the
  others' keep flowing.  ``NOSCRIPT`` is handled per command on the shard that said it;
  ``MOVED``/``ASK``/``TRYAGAIN``/``CLUSTERDOWN`` are transient (the slot map is read
  again on ``MOVED``/``ASK``, and after a shard failed as a whole).  Order is kept per
  room: a room's messages stay in one lane while any is on its way, even when its slot
  moved to another shard meanwhile (each round goes where the slot is served then).
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
from redis.exceptions import AskError, NoScriptError, RedisClusterException, RedisError

from . import envelope as env
from . import scripts
from .backoff import backoff
from .config import NodeConfig
from .errors import NoSuchNick, RelayRefused, RelayUnavailable
from .keys import Keys
from .pause import pause
from .redis_errors import moving, transient, translated, unavailable
from .topology import Shard, SlotUnserved, Topology, as_topology

__all__ = ["CLOCK_WARN", "PublishStats", "Published", "Publisher"]

log = structlog.get_logger("hubbub.relay")

CLOCK_WARN = 1.0
"""Seconds of difference between this node's clock and Redis's that are logged."""
QUEUE_SHARE = 0.5
"""Share of a message's deadline window its wait in the publishing queue may take, at the
measured publishing rate (see :meth:`Publisher.admitted`)."""
RATE_WEIGHT = 0.2
"""Weight of the latest full round in the measured publishing rate (a moving average)."""


Published = Callable[["str | RelayUnavailable"], None]
"""Told a submitted room message's id, or why it was not relayed."""


class _Pending:
    """A room message on its way to Redis."""

    __slots__ = ("deadline_ms", "done", "msg", "once", "settled", "since")

    def __init__(self, msg: env.RoomMsg, once: str, done: Published,
                 deadline_ms: int, settled: Callable[[], None] | None = None) -> None:
        self.msg = msg
        self.settled = settled
        """Called once it was answered, after ``done``."""
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
        if self.settled is not None:
            self.settled()

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
    admission_waits: int = 0
    """Submissions that waited for room in the publishing queue (backpressure)."""


class _Lane:
    """One shard's publishing: its queue, its outbox, its task and its measured rate.
    Rooms are put in the lane of their slot's shard, so a shard that does not answer
    holds only its own rooms' messages."""

    __slots__ = ("admitting", "batch", "flusher", "name", "outbox", "rate")

    def __init__(self, name: str) -> None:
        self.name = name
        self.outbox: deque[_Pending] = deque()
        """Messages held while the shard is away, oldest first."""
        self.batch: deque[_Pending] = deque()
        """Messages queued for the next publishing round (the shard answering)."""
        self.flusher: asyncio.Task[None] | None = None
        self.admitting: deque[asyncio.Future[None]] = deque()
        """Submitters waiting for room in this queue, first come first served."""
        self.rate = 0.0
        """Messages per second the shard took in recent full rounds (0: not measured)."""


class Publisher:
    """Publishes one node's room and direct messages (see the module docstring)."""

    def __init__(self, redis: Redis | Topology, config: NodeConfig, keys: Keys,
                 clock: Callable[[], float] = time.time) -> None:
        """``redis``: the shards (a plain client: one standalone shard); ``clock``: this
        node's wall clock (Unix seconds); message deadlines are set on Redis's clock,
        through the measured offset between the two."""
        self._topology = topology = as_topology(redis)
        self._redis = topology.seed
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
        self._lanes: dict[str, _Lane] = {}
        """One per shard that had messages, by shard name."""
        self._map_read_at = float("-inf")
        self._rooms: dict[str, tuple[_Lane, int]] = {}
        """The lane of each room with messages on their way, and how many."""
        # a retry may come up to outbox_seconds (+ one command timeout) after the first try
        self._once_ttl_ms = int((config.outbox_seconds + 2 * config.redis_timeout + 5) * 1000)
        self.publish_seconds = Histogram(
            "hubbub_publish_seconds", "Time to store and publish one room message.",
            registry=None, buckets=(.0005, .001, .002, .005, .01, .025, .05, .1, .25, 1))
        self.script = self._redis.register_script(scripts.PUBLISH_ROUND)

    def _lane(self, room: str | None) -> _Lane:
        """The lane of ``room``'s shard (None: of the shard serving slot 0, the only one
        on a standalone Redis).  A room with messages still on their way stays in the
        lane they are in, whatever the slot map says now (a failover or a slot moved
        meanwhile): its order is one lane's order; that lane sends each round to the
        shard serving the room's slot when it is sent."""
        if room is not None and (held := self._rooms.get(room)) is not None:
            return held[0]
        try:
            shard = (self._topology.shard_of(self.keys.room_channel(room)) if room is not None
                     else self._topology.shards[0])
            name = shard.name
        except (RedisClusterException, IndexError):
            name = ""  # no shard serves the slot now: held in a lane of its own
        lane = self._lanes.get(name)
        if lane is None:
            lane = self._lanes[name] = _Lane(name)
        return lane

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

    @property
    def rate(self) -> float:
        """Messages per second the shards took in recent full rounds, all together."""
        return sum(lane.rate for lane in self._lanes.values())

    @property
    def queue_bound(self) -> int:
        """Messages the next rounds of one shard may hold (see :meth:`_bound`); on a
        standalone Redis, the node's."""
        return self._bound(self._lane(None))

    def _bound(self, lane: _Lane) -> int:
        """What the shard takes, at its measured rate, in :data:`QUEUE_SHARE` of a
        message's deadline window, and at least one round (the next, filling while one
        is in flight)."""
        return max(self._cfg.publish_batch, int(lane.rate * self._window() * QUEUE_SHARE))

    async def admitted(self, room: str | None = None) -> None:
        """Wait until the publishing queue of ``room``'s shard (None: the first shard's,
        the only one on a standalone Redis) has room for one more message (at once when
        it has and nobody waits before us); then :meth:`submit` it without awaiting
        anything in between.  Messages held while a shard is away are bounded by its
        outbox instead, so senders to other shards' rooms never wait on it."""
        lane = self._lane(room)
        if not lane.admitting and len(lane.batch) < self._bound(lane):
            return
        self.stats.admission_waits += 1
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        lane.admitting.append(turn)
        try:
            await turn
        except asyncio.CancelledError:
            if turn.done() and not turn.cancelled():
                self._admit(lane)  # woken, then cancelled: the room goes to the next one
            raise
        finally:
            if not turn.done():
                lane.admitting.remove(turn)

    def _admit(self, lane: _Lane) -> None:
        """Wake as many waiting submitters as the lane's queue has room for."""
        room = self._bound(lane) - len(lane.batch)
        while room > 0 and lane.admitting:
            turn = lane.admitting.popleft()
            if not turn.done():
                turn.set_result(None)
                room -= 1

    def _measured(self, lane: _Lane, count: int, seconds: float) -> None:
        """A round of ``count`` messages took ``seconds``: a full round tells the rate the
        shard takes them at (a partial one only that there was not more to send)."""
        if count >= self._cfg.publish_batch and seconds > 0:
            latest = count / seconds
            lane.rate = latest if not lane.rate else \
                lane.rate + RATE_WEIGHT * (latest - lane.rate)

    def submit(self, msg: env.RoomMsg, done: Published) -> None:
        """Queue a room message for publishing; ``done`` gets its id or the error.

        Never waits: messages are published in the order they are submitted, many to one
        round trip per shard (see :meth:`_pump`), and ``done`` is called in that order,
        from the publishing task of the room's shard as soon as it answered (or at once,
        if refused here).  While the shard cannot be reached messages wait in its outbox
        (at most ``outbox_seconds`` and ``outbox_max`` messages), behind any that wait
        already, and are published in order when it is back; past the bounds ``done``
        gets RelayUnavailable, so nothing is dropped without its sender knowing.
        """
        room = msg.room
        lane = self._lane(room)
        self._rooms[room] = (lane, self._rooms[room][1] + 1 if room in self._rooms else 1)
        entry = _Pending(msg, f"{self._once_prefix}:{next(self._msg_keys)}", done,
                         self._deadline(), lambda: self._settled(room))
        if lane.outbox:  # the shard is away: wait behind the messages held already
            if len(lane.outbox) >= self._cfg.outbox_max:
                self.stats.outbox_refused += 1
                entry.fail("the cluster relay is unavailable and this node's outbox is full; "
                           "your message was not sent")
                return
            entry.since = asyncio.get_running_loop().time()
            lane.outbox.append(entry)
            self.stats.outboxed += 1
        else:
            lane.batch.append(entry)
        if lane.flusher is None or lane.flusher.done():
            lane.flusher = asyncio.create_task(self._pump(lane),
                                               name=f"relay-publish-{lane.name}")

    def _settled(self, room: str) -> None:
        """One of ``room``'s messages was answered."""
        lane, count = self._rooms[room]
        if count > 1:
            self._rooms[room] = (lane, count - 1)
        else:
            del self._rooms[room]

    async def _pump(self, lane: _Lane) -> None:
        """The task that publishes one shard's room messages, oldest first, until none
        are left (each shard has its own, so the shards' rounds run side by side).

        Each round sends every queued message (up to ``publish_batch``) as one pipeline of
        EVALSHAs, one per room, so under load many messages share one round trip and one
        bus message; while a round is in flight the next one fills up.  Redis runs a
        pipeline's commands in order and each script its room's messages in order, so the
        order of submission is the order of publication in every room.  A round that
        fails because the shard is unreachable, slow or moving the slot moves its
        messages, and every message queued behind them, into the lane's outbox, which is
        retried in order with backoff (each message's once-key makes a retry of one that
        did run return its first id); messages that waited longer than
        ``outbox_seconds`` are refused.
        """
        loop = asyncio.get_running_loop()
        delays: Iterator[float] | None = None
        cause: BaseException | None = None
        while lane.outbox or lane.batch:
            if lane.admitting:  # e.g. after a round of the outbox: room again
                self._admit(lane)
            if lane.outbox:
                now = loop.time()
                while lane.outbox and now - lane.outbox[0].since > self._cfg.outbox_seconds:
                    self.stats.outbox_expired += 1
                    lane.outbox.popleft().fail("the cluster relay stayed unavailable; your "
                                               "message was not sent", cause)
                if not lane.outbox:
                    continue
                held = list(itertools.islice(lane.outbox, self._cfg.publish_batch))
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
                    lane.outbox.popleft()
                    entry.resolve(result)
                continue
            size = min(self._cfg.publish_batch, len(lane.batch))
            batch = [lane.batch.popleft() for _ in range(size)]
            if lane.admitting:
                self._admit(lane)
            started = loop.time()
            try:
                results = await self._publish_many(
                    [(e.msg, e.once, e.deadline_ms) for e in batch])
                self._measured(lane, size, loop.time() - started)
            except RelayUnavailable as exc:
                if not transient(exc) or self._cfg.outbox_seconds <= 0:
                    for entry in batch:
                        entry.fail(exc.text, exc.__cause__)
                    continue
                self._hold(lane, batch, loop.time())
                continue
            for entry, result in zip(batch, results, strict=True):
                entry.resolve(result)
        if lane.admitting:  # nothing queued: whoever still waits goes on
            self._admit(lane)

    def _hold(self, lane: _Lane, failed: list[_Pending], now: float) -> None:
        """The shard went away under a round: its messages and every one queued behind
        them wait in the lane's outbox, in order; past ``outbox_max`` the newest are
        refused."""
        for entry in itertools.chain(failed, lane.batch):
            if len(lane.outbox) >= self._cfg.outbox_max:
                self.stats.outbox_refused += 1
                entry.fail("the cluster relay is unavailable and this node's outbox is "
                           "full; your message was not sent")
                continue
            entry.since = now
            lane.outbox.append(entry)
            self.stats.outboxed += 1
        lane.batch.clear()
        self._admit(lane)  # the queue is empty: its waiters go on to the outbox's bounds

    @property
    def held(self) -> dict[str, int]:
        """Messages held in each shard's outbox now, by shard name (empty ones left
        out)."""
        return {lane.name: len(lane.outbox) for lane in self._lanes.values() if lane.outbox}

    def _deadline(self) -> int:
        """When a message said now is refused to its sender at the earliest (the outbox
        bound, or one command timeout without an outbox), as Unix time in ms: the
        publishing script does nothing after it, so a frozen Redis that thaws cannot
        deliver a line its sender was told had failed."""
        return int((self._clock() + self.clock_offset + self._window()) * 1000)

    def _window(self) -> float:
        """Seconds from a message's submission to its deadline."""
        return self._cfg.outbox_seconds if self._cfg.outbox_seconds > 0 else \
            self._cfg.redis_timeout

    async def sync_clock(self) -> None:
        """Measure how far Redis's clock is from this node's (TIME, halfway through the
        round trip).  Deadlines are checked by Redis against its own clock: a node whose
        clock lags Redis's by more than the outbox window would otherwise see every
        message refused as too late, and one ahead would let a thawed Redis publish lines
        their senders were told had failed."""
        # the shard serving the epoch key (the bus's link to it calls this), not the
        # seed: the node the URL named may be a master that died and was replaced
        redis = self._topology.client_of(self.keys.epoch)
        before = self._clock()
        seconds, micros = await redis.time()
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
            channel = self.keys.node_channel(node)
            receivers = await self._topology.client_of(channel).publish(channel,
                                                                        msg.serialize())
        if not receivers:
            raise NoSuchNick(f"{msg.to} is not online")
        self.stats.published += 1

    async def sanction(self, sanction: env.Sanction, node: str) -> bool:
        """Send an operator's kick/ban/mute to the node holding its target (the private
        message path); False when no node received it."""
        async with translated("sanction"):
            channel = self.keys.node_channel(node)
            receivers = await self._topology.client_of(channel).publish(
                channel, sanction.serialize())
        return bool(receivers)

    async def broadcast(self, sanction: env.Sanction) -> None:
        """Send an operator's action to every node (an address ban)."""
        async with translated("sanction"):
            await self._topology.client_of(self.keys.events).publish(self.keys.events,
                                                                     sanction.serialize())

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
        """Publish each ``(message, once-key, deadline)``, in order: one PUBLISH_ROUND
        script per room (its messages in order; with ``bus_format`` 2 one bus message
        carries them all), the rooms' scripts in one pipeline.

        The rooms' scripts go to their shards, one pipeline per shard, the shards
        concurrently (:meth:`_publish_shard`).  Raises RelayUnavailable when a shard's
        part failed as a whole (unreachable, slow, the connection broke, or the slot
        moving): any prefix of it may have run, and the other shards' parts did, which
        the once-keys make safe to retry.  Otherwise each message gets its id, or the
        RelayUnavailable that refuses it alone (Redis refused its room's script: the
        other rooms' did run, so it is not retried).  A shard that forgot the script
        (restarted, or a replica just promoted) is sent it again and the commands it
        refused for that re-run once.
        """
        k = self.keys
        started = time.perf_counter()
        cfg = self._cfg
        head = (cfg.bus_format, cfg.history_max, self._once_ttl_ms,
                round(cfg.history_age * 1000), max(1, round(cfg.room_idle_ttl * 1000)))
        sha = self.script.sha
        rooms: dict[str, list[int]] = {}
        for i, (msg, _, _) in enumerate(msgs):
            rooms.setdefault(msg.room, []).append(i)
        calls: list[tuple[list[int], tuple[Any, ...]]] = []
        for room, members in rooms.items():
            once_keys = [k.once(room, msgs[i][1]) for i in members]
            argv: list[Any] = list(head)
            for i in members:
                msg, _, deadline_ms = msgs[i]
                argv.append(msg.serialize())
                argv.append(deadline_ms)
            calls.append((members, (sha, 3 + len(members), k.history(room),
                                    k.room_channel(room), k.members(room), *once_keys,
                                    *argv)))
        by_shard: dict[int, tuple[Shard | None, list[int]]] = {}
        for n, (members, _) in enumerate(calls):
            room = msgs[members[0]][0].room
            try:
                shard: Shard | None = self._topology.shard_of(k.room_channel(room))
            except RedisClusterException:
                shard = None
            by_shard.setdefault(id(shard), (shard, []))[1].append(n)
        replies: list[Any] = [None] * len(calls)
        groups = list(by_shard.values())
        answers: list[list[Any] | BaseException]
        if len(groups) == 1:  # no task of its own: a standalone round as it always was
            ((shard, positions),) = groups
            try:
                answers = [await self._publish_shard(shard, [calls[n][1] for n in positions])]
            except Exception as exc:
                answers = [exc]
        else:
            answers = await asyncio.gather(
                *(self._publish_shard(shard, [calls[n][1] for n in positions])
                  for shard, positions in groups), return_exceptions=True)
        failure: BaseException | None = None
        for (_, positions), answer in zip(groups, answers, strict=True):
            if isinstance(answer, BaseException):
                failure = failure or answer
                continue
            for n, reply in zip(positions, answer, strict=True):
                replies[n] = reply
        if failure is not None:
            # a shard failed as a whole: the round is retried (the once-keys make the
            # other shards' part of it return the ids it already got)
            if isinstance(failure, RelayUnavailable):
                if not moving(failure.__cause__):  # a master down: a replica may take over
                    await self._reread_map()
                raise failure
            if not isinstance(failure, Exception):
                raise failure
            log.error("publishing round failed", exc_info=failure)
            replies = [r if r is not None else failure for r in replies]
        elapsed = time.perf_counter() - started
        out: list[str | RelayUnavailable | None] = [None] * len(msgs)
        for (members, _), reply in zip(calls, replies, strict=True):
            if isinstance(reply, Exception):
                for i in members:
                    out[i] = self._refused(reply)
                continue
            if not isinstance(reply, list) or len(reply) != len(members):
                error = RelayRefused("the node could not publish your message; the fault is "
                                     "logged on the node")
                log.error("unexpected reply to a publishing round", reply=repr(reply)[:200])
                for i in members:
                    out[i] = error
                continue
            for i, result in zip(members, reply, strict=True):
                if result is None:  # Redis got to it past its deadline: published nothing
                    self.stats.publish_too_late += 1
                    out[i] = RelayUnavailable("the cluster relay did not get to your message "
                                              "in time; it was not sent")
                else:
                    self.publish_seconds.observe(elapsed)
                    self.stats.published += 1
                    out[i] = result.decode() if isinstance(result, bytes) else str(result)
        return [r if r is not None else RelayRefused() for r in out]

    async def _reread_map(self) -> None:
        """Read the slot map again after a shard failed (at most once a second): a
        replica that took over from a dead master serves its rooms from then on."""
        now = time.monotonic()
        if now - self._map_read_at < 1.0:
            return
        self._map_read_at = now
        await self._topology.refresh()

    async def _publish_shard(self, shard: Shard | None, calls: Sequence[tuple[Any, ...]]
                             ) -> list[Any]:
        """Run one shard's part of a round (its EVALSHAs, one pipeline); the reply of
        each, in order (an exception for one Redis refused).  Raises RelayUnavailable
        when the shard failed as a whole: unreachable, slow, or moving a slot or failing
        over (``MOVED``, ``ASK``, ``TRYAGAIN``, ``CLUSTERDOWN``: the slot map is read
        again on ``MOVED``/``ASK``, and the round retried).  A script the shard does not
        have (``NOSCRIPT``: restarted, or a replica just promoted) is loaded there and
        those commands only are sent again, once."""
        async with translated("publish"):
            if shard is None:
                raise SlotUnserved("no shard serves the room's slot now")
            client = shard.client
            replies: list[Any] = [None] * len(calls)
            todo = list(range(len(calls)))
            for attempt in (1, 2):
                pipe = client.pipeline(transaction=False)
                for n in todo:
                    pipe.evalsha(*calls[n])
                got = await pipe.execute(raise_on_error=False)
                missing = []
                for n, reply in zip(todo, got, strict=True):
                    replies[n] = reply
                    if isinstance(reply, NoScriptError):
                        missing.append(n)
                moved = next((r for r in got if isinstance(r, Exception) and moving(r)),
                             None)
                if moved is not None:
                    if isinstance(moved, AskError):  # MOVED too
                        await self._topology.refresh()
                    raise moved
                if not missing or attempt == 2:
                    break
                await client.script_load(self.script.script)
                todo = missing
            return replies

    @staticmethod
    def _refused(reply: Exception) -> RelayUnavailable:
        """What the senders of a room's messages are told when its script failed."""
        if isinstance(reply, RedisError):  # Redis down for it, or refused it (logged)
            error = unavailable(reply, "publish")
        else:  # our bug, logged above
            error = RelayRefused("the node could not publish your message; the fault is "
                                 "logged on the node")
        error.__cause__ = reply
        return error
