"""The Redis relay: names, rooms and the bus, for one node.

Theory of operation
-------------------
* The relay is handed a ``redis.asyncio.Redis`` client (production: ``Redis.from_url``;
  tests: ``fakeredis.FakeAsyncRedis``) and never creates one.
* **Names.**  A nickname is claimed atomically by the CLAIM script: its lease key (value:
  the session's token ``<node>/<hex>``, TTL ``lease_ttl``) decides who holds it.  The relay
  renews every lease it holds, and its node's heartbeat, every ``lease_ttl / 3``; a lease
  found not ours any more is reported to the sink (``on_lease_lost``).  Every
  ``lease_ttl / 2`` each node looks for nodes whose heartbeat expired and releases their
  names (REAP); exactly one reaper gets each name, removes it from its rooms and announces
  the quit.  A dead node's names are therefore free within ~1.5 x ``lease_ttl``.
* **Bus.**  One pub/sub connection per node (never one per client), read by one task.  It
  is always subscribed to the node's own channel (private messages) and the events channel
  (quits, nick changes); room channels are added while the node has local members in the
  room.  If the subscription fails it is rebuilt with capped, jittered backoff and every
  channel is subscribed again.
* **Publishing** room messages (rounds of pipelined scripts, the outbox, once-keys and
  deadlines) is the job of its :class:`~node.publisher.Publisher` (``relay.publisher``).
* **Errors.**  Every Redis failure is translated into :class:`RelayUnavailable` here
  (:mod:`node.redis_errors`); nothing above the relay sees a redis-py exception.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import random
import secrets
import time
import types
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from contextlib import suppress
from dataclasses import dataclass
from typing import Any, Protocol

import structlog
from prometheus_client import Histogram
from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.exceptions import RedisError, ResponseError

from . import envelope as env
from . import scripts
from .backoff import backoff
from .config import NodeConfig
from .errors import NoSuchNick, RedisMisconfigured, RelayUnavailable
from .keys import Keys
from .names import ID_PART_MAX
from .pause import cancel_pending, pause
from .publisher import Published, Publisher
from .redis_errors import describe, transient, translated

__all__ = ["BusSink", "ClaimResult", "NameInfo", "Published", "Relay", "RelayStats",
           "describe"]

log = structlog.get_logger("hubbub.relay")

_RENEW_CHUNK = 500
_LAST_ID = f"{ID_PART_MAX}-{ID_PART_MAX}"
"""The largest stream id there can be."""
_REAP_CHUNK = 200


class BusSink(Protocol):
    """What the relay reports to its node."""

    def on_envelope(self, envelope: env.Envelope) -> None: ...

    def on_lease_lost(self, folded: str) -> None: ...

    def on_resubscribed(self) -> None: ...

    def on_redis_reset(self) -> None: ...


@dataclass(frozen=True, slots=True)
class NameInfo:
    """What the cluster knows of an online name (the ``{nicks}:info`` entry)."""

    nick: str
    token: str
    node: str
    rooms: tuple[str, ...]
    prev: str | None = None
    """The token this session resumed from (its previous session's)."""
    oper: bool = False
    """The session is an operator (a resume with its token carries that over)."""
    account: str | None = None
    """The folded name of the account the session is logged in to (a resume with its
    token carries that over; nothing else logs a resumed session in)."""

    def serialize(self) -> str:
        body: dict[str, Any] = {"nick": self.nick, "token": self.token, "node": self.node,
                                "rooms": list(self.rooms)}
        if self.prev:
            body["prev"] = self.prev
        if self.oper:
            body["oper"] = True
        if self.account:
            body["account"] = self.account
        return json.dumps(body, separators=(",", ":"), ensure_ascii=False)

    @classmethod
    def parse(cls, data: bytes | str) -> NameInfo:
        d = json.loads(data)
        prev = d.get("prev")
        account = d.get("account")
        return cls(nick=str(d["nick"]), token=str(d["token"]), node=str(d["node"]),
                   rooms=tuple(str(r) for r in d.get("rooms", ())),
                   prev=str(prev) if prev else None, oper=d.get("oper") is True,
                   account=account if isinstance(account, str) and account else None)


@dataclass(frozen=True, slots=True)
class ClaimResult:
    ok: bool
    stale: NameInfo | None = None
    """A previous holder whose lease had run out (its quit is still to be announced)."""
    wrong_token: bool = False
    """A refused resume: the name is someone's and the token given is not its holder's
    (not set when the name is merely free)."""


@dataclass(slots=True)
class RelayStats:
    received: int = 0
    bad_envelopes: int = 0
    reconnects: int = 0
    renewals: int = 0
    renewal_failures: int = 0
    leases_lost: int = 0
    reaped: int = 0
    deaf_rebuilds: int = 0
    data_resets: int = 0
    loop_restarts: int = 0
    claim_retries: int = 0
    departures_deferred: int = 0


@dataclass
class _Departure:
    """What is left to do for a user who left while Redis was away."""

    folded: str
    token: str
    nick: str
    rooms: tuple[str, ...]
    reason: str | None
    announced: bool = False


class Relay:
    """Everything a node does with Redis.  See the module docstring."""

    def __init__(self, redis: Redis, config: NodeConfig, sink: BusSink,
                 clock: Callable[[], float] = time.time) -> None:
        """``clock``: this node's wall clock, for the publisher's deadlines."""
        self._redis = redis
        self._cfg = config
        self._sink = sink
        self.keys = Keys(config.prefix)
        self.node_id = config.node_id
        self.stats = RelayStats()
        self._ttl_ms = int(config.lease_ttl * 1000)
        self._leases: dict[str, str] = {}  # folded -> token, for renewal
        self._channels: set[str] = {self.keys.node_channel(self.node_id), self.keys.events}
        self._pubsub: PubSub | None = None
        self._ready = asyncio.Event()
        self._waiters: dict[str, list[asyncio.Future[None]]] = {}
        self._rebuild = False
        self._departures: dict[str, _Departure] = {}
        self._departing: asyncio.Task[None] | None = None
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
        s = redis.register_script
        self._claim = s(scripts.CLAIM)
        self._release = s(scripts.RELEASE)
        self._rename = s(scripts.RENAME)
        self._update_info = s(scripts.UPDATE_INFO)
        self._renew = s(scripts.RENEW)
        self._reap = s(scripts.REAP)
        self._resume = s(scripts.RESUME)
        self._room_script = s(scripts.ROOM_EVENT)
        self.publisher = Publisher(redis, config, self.keys, clock)
        self._scripts = (self._claim, self._release, self._rename, self._update_info,
                         self._renew, self._reap, self.publisher.script, self._resume,
                         self._room_script)

    # ------------------------------------------------------------------ lifecycle

    @property
    def ready(self) -> bool:
        """True while the bus subscription is up."""
        return self._ready.is_set()

    async def wait_ready(self) -> None:
        await self._ready.wait()

    async def run(self) -> None:
        """Listen, renew, reap and send canaries until cancelled.  Only a misconfigured
        Redis ends this: any other failure of one of the loops is logged and that loop
        starts again, because a node whose relay stopped would be deaf while it looks up."""
        try:
            async with asyncio.TaskGroup() as tg:
                for name, loop in (("listen", self._listen), ("renew", self._renew_loop),
                                   ("reap", self._reap_loop), ("canary", self._canary_loop)):
                    tg.create_task(self._supervised(name, loop), name=f"relay-{name}")
        finally:
            if self._departing is not None:  # what is left is reaped once we are gone
                self._departing.cancel()

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

    async def close(self) -> None:
        """Forget this node's heartbeat so peers need not wait for it to expire."""
        async with translated("close"):
            pipe = self._redis.pipeline(transaction=False)
            pipe.delete(self.keys.alive(self.node_id))
            pipe.srem(self.keys.nodes, self.node_id)
            await pipe.execute()

    def new_token(self) -> str:
        return f"{self.node_id}/{secrets.token_hex(16)}"

    # ------------------------------------------------------------------ names

    async def claim(self, folded: str, info: NameInfo) -> ClaimResult:
        """Claim a free name.  While Redis is unreachable or its connections are all busy
        (a reconnect storm) the claim is tried again for up to ``outbox_seconds``: CLAIM is
        idempotent for its token, so a try whose reply was lost is harmless.  If it still
        fails, a claim that may have run is released in the background."""
        k = self.keys
        loop = asyncio.get_running_loop()
        give_up = loop.time() + self._cfg.outbox_seconds
        delays = backoff(initial=0.05, maximum=0.5)
        while True:
            try:
                async with translated("claim"):
                    ok, old = await self._claim(
                        keys=[k.nicks, k.lease(folded), k.info, k.owned(self.node_id),
                              k.nodes, k.alive(self.node_id)],
                        args=[folded, info.token, self._ttl_ms, info.serialize(),
                              self.node_id])
                break
            except RelayUnavailable as exc:
                delay = next(delays)
                if not transient(exc) or loop.time() + delay > give_up:
                    self._depart_later(_Departure(folded, info.token, info.nick, (), None,
                                                  announced=True))
                    raise
                self.stats.claim_retries += 1
                await pause(delay)
        if not ok:
            return ClaimResult(False)
        self._leases[folded] = info.token
        return ClaimResult(True, self._stale(old, info.token))

    async def resume(self, folded: str, old_token: str, info: NameInfo) -> ClaimResult:
        """Take a name over with the resume credential of its previous session (exactly
        its token); the result's ``stale`` is what the previous session had recorded (None
        if nothing), ``wrong_token`` says the name is someone else's credential's."""
        k = self.keys
        async with translated("resume"):
            ok, old = await self._resume(
                keys=[k.nicks, k.lease(folded), k.info, k.owned(self.node_id), k.nodes,
                      k.alive(self.node_id)],
                args=[folded, old_token, info.token, self._ttl_ms, info.serialize(),
                      self.node_id])
        if int(ok) != 1:
            return ClaimResult(False, wrong_token=int(ok) < 0)
        self._leases[folded] = info.token
        return ClaimResult(True, self._stale(old, info.token))

    async def update_info(self, folded: str, info: NameInfo) -> None:
        """Rewrite a held name's info entry (only while its lease is ``info.token``)."""
        k = self.keys
        async with translated("info"):
            await self._update_info(keys=[k.info, k.lease(folded)],
                                    args=[folded, info.token, info.serialize()])

    async def rename(self, old_folded: str, new_folded: str, info: NameInfo) -> ClaimResult:
        k = self.keys
        async with translated("rename"):
            ok, old = await self._rename(
                keys=[k.nicks, k.lease(new_folded), k.info, k.owned(self.node_id), k.nodes,
                      k.lease(old_folded), k.alive(self.node_id)],
                args=[new_folded, info.token, self._ttl_ms, info.serialize(), self.node_id,
                      old_folded])
        if not ok:
            return ClaimResult(False)
        self._leases.pop(old_folded, None)
        self._leases[new_folded] = info.token
        return ClaimResult(True, self._stale(old, info.token))

    async def release(self, folded: str, token: str) -> None:
        if self._leases.get(folded) == token:
            del self._leases[folded]
        k = self.keys
        async with translated("release"):
            await self._release(keys=[k.nicks, k.lease(folded), k.info, k.owned(self.node_id)],
                                args=[folded, token])

    async def depart(self, folded: str, token: str, nick: str, rooms: Iterable[str],
                     reason: str | None) -> None:
        """A user leaves: its rooms, its quit announced once, its name released.  What
        Redis could not take now is retried in the background until it can (the name
        would otherwise stay taken and the user listed in its rooms); RelayUnavailable
        then says the departure was deferred."""
        departure = _Departure(folded, token, nick, tuple(rooms), reason)
        try:
            await self._depart(departure)
        except RelayUnavailable:
            self._depart_later(departure)
            raise

    async def _depart(self, d: _Departure, *, retry: bool = False) -> None:
        if not d.announced:
            if retry:
                holder = await self.lookup(d.folded)
                if holder is not None and holder.token != d.token:
                    # the lease ran out meanwhile and someone else holds the name now:
                    # its room entries are theirs, and a quit would be about them
                    d.announced = True
            if not d.announced:
                await self.leave_all(d.folded, d.nick, d.rooms, d.reason)
                d.announced = True
        await self.release(d.folded, d.token)

    def _depart_later(self, departure: _Departure) -> None:
        self.stats.departures_deferred += 1
        self._departures[departure.token] = departure
        if self._departing is None or self._departing.done():
            self._departing = asyncio.create_task(self._retry_departures(),
                                                  name="relay-departures")

    async def _retry_departures(self) -> None:
        delays = backoff(initial=0.1, maximum=self._cfg.reconnect_max)
        while self._departures:
            await pause(next(delays))
            for token, departure in list(self._departures.items()):
                try:
                    await self._depart(departure, retry=True)
                except RelayUnavailable:
                    break  # still away: try them all again after the next delay
                except Exception:
                    log.exception("deferred departure failed", nick=departure.nick)
                    break
                del self._departures[token]
                log.info("deferred departure done", nick=departure.nick)

    def forget(self, folded: str) -> None:
        """Stop renewing a name (it was lost)."""
        self._leases.pop(folded, None)

    async def lookup(self, folded: str) -> NameInfo | None:
        async with translated("lookup"):
            raw = await self._redis.hget(self.keys.info, folded)
        return NameInfo.parse(raw) if raw else None

    def _stale(self, raw: bytes | str, token: str) -> NameInfo | None:
        if not raw:
            return None
        try:
            info = NameInfo.parse(raw)
        except (ValueError, KeyError):
            return None
        return None if info.token == token else info

    # ------------------------------------------------------------------ rooms

    async def _room_event(self, pipe: Any, room: str, event: env.RoomEvent | None,
                          *changes: str) -> None:
        """Queue ROOM_EVENT on ``pipe``: ``changes`` to the room's members and ``event``
        stored in its stream and published (see :data:`node.scripts.ROOM_EVENT`)."""
        k = self.keys
        await self._room_script(
            keys=[k.members(room), k.history(room), k.room_channel(room)],
            args=[event.serialize() if event is not None else "", self._cfg.history_max,
                  *changes], client=pipe)

    async def join(self, room: str, folded: str, info: NameInfo, *,
                   announce: bool = True) -> str:
        """Record membership cluster-wide and (unless resuming) announce it.  Returns the
        id the joiner is owed what comes after: its join's, or (silent) the stream's
        newest."""
        k = self.keys
        async with translated("join"):
            pipe = self._redis.pipeline(transaction=False)
            await self._room_event(pipe, room, env.RoomJoin(room, info.nick) if announce
                                   else None, "set", folded, info.nick)
            pipe.sadd(k.rooms, room)
            await self._update_info(keys=[k.info, k.lease(folded)],
                                    args=[folded, info.token, info.serialize()], client=pipe)
            floor, *_ = await pipe.execute()
        return _text(floor)

    async def part(self, room: str, folded: str, info: NameInfo, *, announce: bool = True) -> None:
        k = self.keys
        async with translated("part"):
            pipe = self._redis.pipeline(transaction=False)
            await self._room_event(pipe, room, env.RoomPart(room, info.nick) if announce
                                   else None, "del", folded)
            await self._update_info(keys=[k.info, k.lease(folded)],
                                    args=[folded, info.token, info.serialize()], client=pipe)
            await pipe.execute()

    async def leave_all(self, folded: str, nick: str, rooms: Iterable[str],
                        reason: str | None) -> None:
        """Remove a departing user from its rooms and tell each of them it quit (members
        of several of them are told once: the notices share an ``eid``)."""
        eid = secrets.token_hex(8)
        async with translated("quit"):
            pipe = self._redis.pipeline(transaction=False)
            for room in rooms:
                await self._room_event(pipe, room, env.RoomQuit(room, nick, eid, reason),
                                       "del", folded)
            await pipe.execute()

    async def rename_in_rooms(self, old_folded: str, new_folded: str, old: str, new: str,
                              rooms: Sequence[str], sid: str, *,
                              move_members: bool = True) -> None:
        """Announce a nick change to ``rooms`` (and move the membership entries, unless
        the old name now belongs to someone else)."""
        eid = secrets.token_hex(8)
        changes: list[str] = []
        if move_members:
            if old_folded != new_folded:
                changes += ["del", old_folded]
            changes += ["set", new_folded, new]
        async with translated("nick"):
            pipe = self._redis.pipeline(transaction=False)
            for room in rooms:
                await self._room_event(pipe, room, env.RoomNick(room, old, new, sid, eid),
                                       *changes)
            await pipe.execute()

    async def who(self, room: str) -> list[str]:
        async with translated("who"):
            nicks = await self._redis.hvals(self.keys.members(room))
        return sorted((_text(n) for n in nicks), key=str.casefold)

    async def rooms(self) -> list[tuple[str, int]]:
        """Rooms with members, cluster-wide; empty rooms are dropped from the index."""
        k = self.keys
        async with translated("rooms"):
            names = sorted(_text(r) for r in await self._redis.smembers(k.rooms))
            pipe = self._redis.pipeline(transaction=False)
            for name in names:
                pipe.hlen(k.members(name))
            counts = await pipe.execute()
            empty = [n for n, c in zip(names, counts, strict=True) if not c]
            if empty:
                await self._redis.srem(k.rooms, *empty)
        return [(n, int(c)) for n, c in zip(names, counts, strict=True) if c]

    async def latest_id(self, room: str) -> str:
        """The newest id in a room's stream ("0-0" when it is empty)."""
        async with translated("history"):
            entries = await self._redis.xrevrange(self.keys.history(room), count=1)
        return _text(entries[0][0] or "0-0") if entries else "0-0"

    async def events(self, room: str, after: str, limit: int) -> list[env.RoomEvent]:
        """The first ``limit`` entries of a room's stream with an id above ``after``:
        messages and notices, as they were published (gap repair)."""
        async with translated("history"):
            entries = await self._redis.xrange(self.keys.history(room), min=f"({after}",
                                               count=limit) or []
        return _room_events(entries)

    async def history(self, room: str, limit: int, after: str | None = None
                      ) -> list[env.RoomMsg]:
        """The last ``limit`` messages, or the first ``limit`` with an id above ``after``
        (a valid stream id, see :func:`~node.names.check_message_id`).  Notices (joins,
        parts, quits, renames) share the stream and are skipped: the stream is read a page
        at a time until ``limit`` messages are found or it ends."""
        if after == _LAST_ID:
            return []  # nothing can come after it, and Redis refuses the range "(" + it
        key = self.keys.history(room)
        out: list[env.RoomMsg] = []
        page = max(limit, 50)
        async with translated("history"):
            if after is None:
                top = "+"
                while len(out) < limit:
                    entries = await self._redis.xrevrange(key, max=top, count=page) or []
                    out += [e for e in _room_events(entries) if isinstance(e, env.RoomMsg)]
                    if len(entries) < page:
                        break
                    top = f"({_text(entries[-1][0] or b'0-0')}"
                return list(reversed(out[:limit]))
            low = after
            while len(out) < limit:
                entries = await self._redis.xrange(key, min=f"({low}", count=page) or []
                out += [e for e in _room_events(entries) if isinstance(e, env.RoomMsg)]
                if len(entries) < page:
                    break
                low = _text(entries[-1][0] or b"0-0")
        return out[:limit]

    # ------------------------------------------------------------------ publishing

    async def say(self, msg: env.RoomMsg) -> str:
        """Store and publish a room message (see :class:`~node.publisher.Publisher`)."""
        return await self.publisher.say(msg)

    def submit(self, msg: env.RoomMsg, done: Published) -> None:
        """Queue a room message for publishing (see :meth:`Publisher.submit`)."""
        self.publisher.submit(msg, done)

    async def private(self, msg: env.DirectMsg, node: str) -> None:
        """Publish a private message to the node holding its recipient."""
        async with translated("pm"):
            receivers = await self._redis.publish(self.keys.node_channel(node), msg.serialize())
        if not receivers:
            raise NoSuchNick(f"{msg.to} is not online")
        self.publisher.stats.published += 1

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

    # ------------------------------------------------------------------ subscriptions

    async def subscribe_room(self, room: str) -> None:
        """Subscribe to a room's channel; returns once Redis confirmed it."""
        channel = self.keys.room_channel(room)
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

    async def unsubscribe_room(self, room: str) -> None:
        channel = self.keys.room_channel(room)
        self._channels.discard(channel)
        pubsub = self._pubsub
        if pubsub is not None:
            with suppress(RedisError, OSError):
                await pubsub.unsubscribe(channel)

    def subscribed_rooms(self) -> set[str]:
        return {r for c in self._channels if (r := self.keys.room_of_channel(c)) is not None}

    async def _listen(self) -> None:
        delays: Iterable[float] | None = None
        while True:
            pubsub = self._watch_reconnects(self._redis.pubsub())
            try:
                await self._load_scripts()
                async with asyncio.timeout(self._cfg.redis_timeout):
                    await self.publisher.sync_clock()
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
                await pause(next(iter(delays)))
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
            self._sink.on_resubscribed()

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

    async def _load_scripts(self) -> None:
        """Load every script up front (after each reconnect: a restarted Redis forgot them),
        so the hot path's EVALSHA rarely meets NOSCRIPT."""
        async with asyncio.timeout(self._cfg.redis_timeout * 2):
            for script in self._scripts:
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
            for waiter in self._waiters.pop(_text(message["channel"]), []):
                if not waiter.done():
                    waiter.set_result(None)

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

    async def _canary_loop(self) -> None:
        """Publish a canary to our own channel every interval; it must come back."""
        loop = asyncio.get_running_loop()
        channel = self.keys.node_channel(self.node_id)
        while True:
            self._canary_seq += 1
            seq = self._canary_seq
            self._canary_sent[seq] = loop.time()
            for old in [s for s in self._canary_sent if s < seq - 16]:
                del self._canary_sent[old]  # lost ones: keep the table small
            try:
                async with asyncio.timeout(self._cfg.redis_timeout):
                    await self._redis.publish(channel, env.Canary(self.node_id, seq).serialize())
                self.redis_answered_at = loop.time()
            except (RedisError, OSError, RuntimeError) as exc:  # RuntimeError: see _translated
                log.debug("canary publish failed", error=describe(exc))
            self._check_deaf(loop.time())
            try:
                async with asyncio.timeout(self._cfg.redis_timeout):
                    await self._check_epoch()
                    await self.publisher.sync_clock()
            except (RedisError, OSError, RuntimeError) as exc:
                log.debug("epoch check failed", error=describe(exc))
            await pause(self._cfg.canary_interval)

    async def _check_epoch(self) -> None:
        """Notice a Redis that lost its data (restarted without persistence, flushed):
        the cluster's epoch key, set once by whichever node comes first, is gone or new."""
        key = self.keys.epoch
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

    # ------------------------------------------------------------------ leases

    async def _renew_loop(self) -> None:
        interval = self._cfg.lease_ttl / 3
        while True:
            try:
                await self.renew()
            except RelayUnavailable as exc:
                self.stats.renewal_failures += 1
                log.warning("lease renewal failed", error=describe(exc.__cause__ or exc))
            await pause(interval)

    async def renew(self) -> None:
        """Renew the heartbeat and every lease; report the ones that are not ours any more."""
        k = self.keys
        held = list(self._leases.items())
        chunks = [held[i:i + _RENEW_CHUNK] for i in range(0, len(held), _RENEW_CHUNK)] or [[]]
        lost: list[str] = []
        async with translated("renew"):
            for chunk in chunks:
                positions = await self._renew(
                    keys=[k.alive(self.node_id), k.nodes, *(k.lease(f) for f, _ in chunk)],
                    args=[self.node_id, self._ttl_ms, *(t for _, t in chunk)])
                lost.extend(chunk[int(p) - 1][0] for p in positions)
        self.stats.renewals += 1
        for folded in lost:
            if folded in self._leases:
                self.stats.leases_lost += 1
                self._sink.on_lease_lost(folded)

    async def _reap_loop(self) -> None:
        interval = self._cfg.lease_ttl / 2
        while True:
            await pause(interval * random.uniform(0.8, 1.0))
            try:
                await self.reap()
            except RelayUnavailable as exc:
                log.warning("reaping failed", error=describe(exc.__cause__ or exc))

    async def reap(self) -> int:
        """Release the names of nodes whose heartbeat expired; returns how many."""
        k = self.keys
        released = 0
        async with translated("reap"):
            nodes = [_text(n) for n in await self._redis.smembers(k.nodes)]
            nodes = [n for n in nodes if n != self.node_id]
            if not nodes:
                return 0
            pipe = self._redis.pipeline(transaction=False)
            for node in nodes:
                pipe.exists(k.alive(node))
            alive = await pipe.execute()
            for node, is_alive in zip(nodes, alive, strict=True):
                if is_alive:
                    continue
                names = [_text(n) for n in await self._redis.smembers(k.owned(node))]
                chunks = [names[i:i + _REAP_CHUNK] for i in range(0, len(names), _REAP_CHUNK)]
                for chunk in chunks or [[]]:
                    infos = await self._reap(
                        keys=[k.alive(node), k.nodes, k.nicks, k.info, k.owned(node),
                              *(k.lease(f) for f in chunk)],
                        args=[node, *chunk])
                    for folded, info in _pairs(infos):
                        await self.leave_all(folded, info.nick, info.rooms, "connection lost")
                        released += 1
                if names:
                    log.info("released names of a dead node", dead=node, names=len(names))
        self.stats.reaped += released
        return released


def _pairs(flat: Sequence[bytes | str]) -> list[tuple[str, NameInfo]]:
    """``[folded, info, folded, info, ...]`` from REAP as parsed pairs (unreadable skipped)."""
    out = []
    for folded, raw in zip(flat[::2], flat[1::2], strict=True):
        try:
            out.append((_text(folded), NameInfo.parse(raw)))
        except (ValueError, KeyError):
            continue
    return out


def _room_events(entries: Iterable[Any]) -> list[env.RoomEvent]:
    """Stream entries (``(id, {b"e": envelope})``) as room events carrying their ids
    (unreadable entries skipped)."""
    out: list[env.RoomEvent] = []
    for entry_id, fields in entries:
        try:
            parsed = env.parse((fields or {})[b"e"])
        except (env.BadEnvelope, KeyError):
            continue
        if isinstance(parsed, env.RoomEvent) and entry_id is not None:
            out.append(dataclasses.replace(parsed, id=_text(entry_id)))
    return out


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
