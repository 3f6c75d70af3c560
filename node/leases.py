"""Names: who holds which nickname, cluster-wide, and for how long.

Theory of operation
-------------------
* A nickname is claimed atomically by the CLAIM script: its lease key (value: the
  session's token ``<node>/<hex>``, TTL ``lease_ttl``) decides who holds it, and the
  ``{nicks}:info`` entry says what the cluster knows of its holder (:class:`NameInfo`).
  Every script here compares tokens exactly: a holder that lost its lease never touches
  its successor's name (see :mod:`node.scripts`).
* :meth:`Leases.renew_loop` renews every lease this node holds, and the node's heartbeat,
  every ``lease_ttl / 3``; a lease found not ours any more is reported to the sink
  (``on_lease_lost``).  Every ``lease_ttl / 2`` each node looks for nodes whose heartbeat
  expired and releases their names (REAP, :meth:`Leases.reap_loop`); exactly one reaper
  gets each name, takes it out of its rooms and announces the quit.  A dead node's names
  are therefore free within ~1.5 x ``lease_ttl``.  After this node's own renewals failed
  (the names' shard was away: every heartbeat may have expired meanwhile, not only dead
  nodes'), it reaps nobody until they succeed again and for a whole ``lease_ttl`` after,
  so live nodes renew first.
* **Departures.**  A user who leaves leaves its rooms, has its quit announced once and
  its name released.  What Redis could not take then is retried in the background until
  it can; a claim that failed after it may have run is released the same way.
* Rooms are the room store's business: this side is handed the one thing it needs of
  them, a way to take a name out of its rooms and announce its quit (``leave_rooms``).
"""

from __future__ import annotations

import asyncio
import json
import random
import secrets
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import structlog
from redis.asyncio import Redis
from redis.commands.core import AsyncScript

from . import scripts
from .backoff import backoff
from .config import NodeConfig
from .errors import RelayUnavailable
from .keys import Keys
from .pause import pause
from .redis_errors import describe, transient, translated
from .topology import RoutedScript, Topology, as_topology

__all__ = ["ClaimResult", "LeaseSink", "LeaseStats", "Leases", "LeaveRooms", "NameInfo"]

log = structlog.get_logger("hubbub.relay")

_RENEW_CHUNK = 500
_REAP_CHUNK = 200

LeaveRooms = Callable[[str, str, str, Iterable[str], str | None], Awaitable[None]]
"""Takes a departing session out of its rooms and announces its quit there:
``(folded, token, nick, rooms, reason)``; a room whose entry for the name is another
session's by now is left as it is."""


class LeaseSink(Protocol):
    """What the lease side reports to its node."""

    def on_lease_lost(self, folded: str) -> None: ...


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
    ident: str | None = None
    """An IRC user's user name (``USER``), shown by WHO and WHOIS on every node."""
    real: str | None = None
    """An IRC user's real name (``USER``)."""
    away: str | None = None
    """An IRC user's away message (``AWAY``), while it is away."""

    def serialize(self) -> str:
        body: dict[str, Any] = {"nick": self.nick, "token": self.token, "node": self.node,
                                "rooms": list(self.rooms)}
        if self.prev:
            body["prev"] = self.prev
        if self.oper:
            body["oper"] = True
        if self.account:
            body["account"] = self.account
        if self.ident:
            body["ident"] = self.ident
        if self.real:
            body["real"] = self.real
        if self.away:
            body["away"] = self.away
        return json.dumps(body, separators=(",", ":"), ensure_ascii=False)

    @classmethod
    def parse(cls, data: bytes | str) -> NameInfo:
        d = json.loads(data)
        prev = d.get("prev")
        account = d.get("account")
        ident, real, away = d.get("ident"), d.get("real"), d.get("away")
        return cls(nick=str(d["nick"]), token=str(d["token"]), node=str(d["node"]),
                   rooms=tuple(str(r) for r in d.get("rooms", ())),
                   prev=str(prev) if prev else None, oper=d.get("oper") is True,
                   account=account if isinstance(account, str) and account else None,
                   ident=ident if isinstance(ident, str) and ident else None,
                   real=real if isinstance(real, str) and real else None,
                   away=away if isinstance(away, str) and away else None)


@dataclass(frozen=True, slots=True)
class ClaimResult:
    ok: bool
    stale: NameInfo | None = None
    """A previous holder whose lease had run out (its quit is still to be announced)."""
    wrong_token: bool = False
    """A refused resume: the name is someone's and the token given is not its holder's
    (not set when the name is merely free)."""


@dataclass(slots=True)
class LeaseStats:
    renewals: int = 0
    renewal_failures: int = 0
    leases_lost: int = 0
    reaped: int = 0
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


class Leases:
    """The names this node holds, and the reaping of dead nodes' names.  See the module
    docstring."""

    def __init__(self, redis: Redis | Topology, config: NodeConfig, keys: Keys,
                 sink: LeaseSink, leave_rooms: LeaveRooms) -> None:
        """``redis``: the shards (every key here is a ``{nicks}`` key: one shard; a plain
        client is one standalone shard)."""
        self._topology = topology = as_topology(redis)
        self._cfg = config
        self._sink = sink
        self._leave_rooms = leave_rooms
        self.keys = keys
        self.node_id = config.node_id
        self.stats = LeaseStats()
        self._ttl_ms = int(config.lease_ttl * 1000)
        self._leases: dict[str, str] = {}  # folded -> token, for renewal
        self._departures: dict[str, _Departure] = {}
        self._departing: asyncio.Task[None] | None = None
        self._renew_failed = False
        self._reap_after = float("-inf")
        """Loop time before which this node reaps nobody: a whole ``lease_ttl`` after its
        renewals came back from failing (see :meth:`reap_loop`)."""
        def s(source: str) -> RoutedScript:
            return RoutedScript(topology, source)

        self._claim = s(scripts.CLAIM)
        self._release = s(scripts.RELEASE)
        self._rename = s(scripts.RENAME)
        self._update_info = s(scripts.UPDATE_INFO)
        self._renew = s(scripts.RENEW)
        self._reap = s(scripts.REAP)
        self._resume = s(scripts.RESUME)

    @property
    def scripts(self) -> tuple[AsyncScript, ...]:
        """The scripts to load into Redis up front."""
        return tuple(r.script for r in (self._claim, self._release, self._rename,
                                        self._update_info, self._renew, self._reap,
                                        self._resume))

    @property
    def _redis(self) -> Redis:
        """The client of the ``{nicks}`` shard."""
        return self._topology.client_of(self.keys.nicks)

    def new_token(self) -> str:
        return f"{self.node_id}/{secrets.token_hex(16)}"

    async def close(self) -> None:
        """Forget this node's heartbeat so peers need not wait for it to expire."""
        async with translated("close"):
            pipe = self._redis.pipeline(transaction=False)
            pipe.delete(self.keys.alive(self.node_id))
            pipe.srem(self.keys.nodes, self.node_id)
            await pipe.execute()

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

    def forget(self, folded: str) -> None:
        """Stop renewing a name (it was lost)."""
        self._leases.pop(folded, None)

    async def online(self) -> int:
        """How many names are online, cluster-wide."""
        async with translated("online"):
            return int(await self._redis.scard(self.keys.nicks))

    async def lookup_many(self, folded: list[str]) -> list[NameInfo]:
        """The online names among ``folded``, in that order (absent ones left out)."""
        if not folded:
            return []
        async with translated("lookup"):
            raws = await self._redis.hmget(self.keys.info, folded)
        return [NameInfo.parse(raw) for raw in raws if raw]

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

    # ------------------------------------------------------------------ departures

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

    async def _depart(self, d: _Departure) -> None:
        if not d.announced:
            holder = await self.lookup(d.folded)
            if holder is not None and holder.token != d.token:
                # someone else holds the name now (the user resumed on another node while
                # this one was shutting down, or the lease ran out while the departure
                # waited): its room entries are theirs, and a quit would be about them
                d.announced = True
            if not d.announced:
                await self._leave_rooms(d.folded, d.token, d.nick, d.rooms, d.reason)
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
                    await self._depart(departure)
                except RelayUnavailable:
                    break  # still away: try them all again after the next delay
                except Exception:
                    log.exception("deferred departure failed", nick=departure.nick)
                    break
                del self._departures[token]
                log.info("deferred departure done", nick=departure.nick)

    def abandon_departures(self) -> None:
        """The node stops: what is left is reaped once it is gone."""
        if self._departing is not None:
            self._departing.cancel()

    # ------------------------------------------------------------------ renewing, reaping

    async def renew_loop(self) -> None:
        interval = self._cfg.lease_ttl / 3
        while True:
            try:
                await self.renew()
            except RelayUnavailable as exc:
                self.stats.renewal_failures += 1
                self._renew_failed = True
                log.warning("lease renewal failed", error=describe(exc.__cause__ or exc))
            else:
                if self._renew_failed:  # back after an outage: give the others time too
                    self._renew_failed = False
                    self._reap_after = asyncio.get_running_loop().time() + self._cfg.lease_ttl
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

    async def reap_loop(self) -> None:
        """Reap every ~``lease_ttl / 2``, except for a whole ``lease_ttl`` after this
        node's own renewals failed and came back: an outage of the names' shard longer
        than ``lease_ttl`` (a failover, a frozen or unreachable Redis) let every node's
        heartbeat expire, not only dead nodes'; the first node to renew afterwards would
        otherwise reap the others, announcing users who are still connected as gone.
        Given a whole ``lease_ttl``, every live node renews (every ``lease_ttl / 3``) and
        re-asserts its names first; a dead node's are reaped once the wait is over.  While
        its renewals fail it reaps nobody either (the shard may answer the reaper first)."""
        interval = self._cfg.lease_ttl / 2
        while True:
            await pause(interval * random.uniform(0.8, 1.0))
            if self._renew_failed or asyncio.get_running_loop().time() < self._reap_after:
                continue
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
                        released += 1
                        try:
                            await self._leave_rooms(folded, info.token, info.nick, info.rooms,
                                                    "connection lost")
                        except RelayUnavailable:
                            # the name is released; a room's shard did not answer: its
                            # rooms are left (and the quit told) later
                            self._depart_later(_Departure(folded, info.token, info.nick,
                                                          info.rooms, "connection lost"))
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


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
