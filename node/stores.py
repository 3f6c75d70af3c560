"""The Redis stores of the security side: accounts, failed-attempt throttles, sanctions.

Theory of operation
-------------------
* **Accounts** are one hash, ``{accounts}`` (folded name -> JSON: the name as registered,
  its argon2id hash, when it was created), plus the set of account names flagged
  operators.  Creating one is HSETNX (never overwrites); a password change is a
  compare-and-set (SET_IF_SAME), so a concurrent change or deletion is not overwritten.
* **Throttles** count failed attempts per name and per address in fixed windows, so the
  counts are cluster-wide.  An attempt is charged *before* it is checked (ATTEMPT refuses
  it unchecked once a count is at its cap) and refunded when it succeeds (REFUND), so
  concurrent guesses cannot slip past the cap.
* **Room creation** is counted per address in a fixed window of a minute
  (``{quota}:create:<address>``, a counter whose TTL is the window), cluster-wide, with
  the throttles' own scripts: a join is charged before it may create a room and refunded
  when the room turned out to exist (:class:`CreateQuota`).
* **Sanctions** (bans and mutes) are one key each whose TTL is their duration, plus an
  index hash for listing; an index entry whose key expired is pruned when listed.
* What the counts, bans and accounts mean for a session is decided by
  :mod:`node.security`; these classes only keep them.  Their Lua is in :mod:`node.scripts`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from . import scripts
from .config import NodeConfig
from .durations import format_duration
from .errors import AuthThrottled
from .keys import Keys
from .model import BanEntry
from .redis_errors import translated
from .topology import RoutedScript, Topology, as_topology

__all__ = ["CREATE_WINDOW", "Account", "AccountStore", "CreateQuota", "Sanctions", "Throttle"]

CREATE_WINDOW = 60.0
"""Seconds over which the rooms an address creates are counted."""


# --------------------------------------------------------------------------- accounts


@dataclass(frozen=True, slots=True)
class Account:
    """A registered name: ``name`` as registered, ``hash`` the argon2id encoding."""

    name: str
    hash: str
    created: float

    def serialize(self) -> str:
        return json.dumps({"name": self.name, "hash": self.hash, "created": self.created},
                          separators=(",", ":"), ensure_ascii=False)

    @classmethod
    def parse(cls, raw: bytes | str) -> Account:
        d = json.loads(raw)
        return cls(name=str(d["name"]), hash=str(d["hash"]), created=float(d["created"]))


class AccountStore:
    """Accounts in Redis: ``{accounts}`` (folded -> JSON) and ``{accounts}:opers``."""

    def __init__(self, redis: Redis | Topology, keys: Keys) -> None:
        """``redis``: the shards (a plain client: one standalone shard)."""
        self._topology = topology = as_topology(redis)
        self.keys = keys
        self._set_if_same = RoutedScript(topology, scripts.SET_IF_SAME)

    @property
    def _redis(self) -> Redis:
        """The client of the ``{accounts}`` shard."""
        return self._topology.client_of(self.keys.accounts)

    async def get(self, folded: str) -> Account | None:
        async with translated("account"):
            raw = await self._redis.hget(self.keys.accounts, folded)
        return Account.parse(raw) if raw else None

    async def create(self, folded: str, account: Account) -> bool:
        """Store a new account; False when the name has one already."""
        async with translated("account"):
            return bool(await self._redis.hsetnx(self.keys.accounts, folded,
                                                 account.serialize()))

    async def set_hash(self, folded: str, encoded: str) -> bool:
        """Give an existing account a new password hash; False if it has no account."""
        while True:
            async with translated("account"):
                raw = await self._redis.hget(self.keys.accounts, folded)
                if not raw:
                    return False
                old = Account.parse(raw)
                new = Account(old.name, encoded, old.created).serialize()
                # compare-and-set: a concurrent change or delete is not overwritten
                if await self._set_if_same(keys=[self.keys.accounts],
                                           args=[folded, raw, new]):
                    return True

    async def is_oper(self, folded: str) -> bool:
        async with translated("account"):
            return bool(await self._redis.sismember(self.keys.opers, folded))

    async def set_oper(self, folded: str, flag: bool) -> None:
        async with translated("account"):
            if flag:
                await self._redis.sadd(self.keys.opers, folded)
            else:
                await self._redis.srem(self.keys.opers, folded)

    async def delete(self, folded: str) -> bool:
        async with translated("account"):
            pipe = self._redis.pipeline(transaction=False)
            pipe.hdel(self.keys.accounts, folded)
            pipe.srem(self.keys.opers, folded)
            deleted, _ = await pipe.execute()
        return bool(deleted)

    async def all(self) -> list[tuple[str, Account, bool]]:
        """Every account as (folded, account, operator flag), sorted by folded name."""
        async with translated("account"):
            raw = await self._redis.hgetall(self.keys.accounts)
            opers = {_text(o) for o in await self._redis.smembers(self.keys.opers)}
        out = []
        for folded, data in raw.items():
            name = _text(folded)
            out.append((name, Account.parse(data), name in opers))
        return sorted(out, key=lambda item: item[0])


# --------------------------------------------------------------------------- throttle


class Throttle:
    """Failed-attempt caps per name and per address, cluster-wide (see module docstring)."""

    def __init__(self, redis: Redis | Topology, keys: Keys, config: NodeConfig) -> None:
        topology = as_topology(redis)
        self.keys = keys
        self._cfg = config
        self._attempt = RoutedScript(topology, scripts.ATTEMPT)
        self._refund = RoutedScript(topology, scripts.REFUND)
        self.refused = 0
        self.failed = 0

    def _keys_args(self, folded: str | None, address: str) -> tuple[list[str], list[int]]:
        cfg = self._cfg
        name_cap = cfg.login_fails_per_name if folded is not None else 0
        return ([self.keys.fail_name(folded or ""), self.keys.fail_ip(address)],
                [name_cap, cfg.login_fails_per_ip])

    async def charge(self, folded: str | None, address: str) -> None:
        """Charge one attempt; raises AuthThrottled when a cap is reached."""
        keys, caps = self._keys_args(folded, address)
        window_ms = int(self._cfg.login_fail_window * 1000)
        async with translated("throttle"):
            left = int(await self._attempt(keys=keys, args=[*caps, window_ms]))
        if left:
            self.refused += 1
            what = "this name" if folded is not None and caps[0] else "your address"
            raise AuthThrottled(f"too many failed attempts for {what}; try again in "
                                f"{format_duration(left / 1000)}")

    async def refund(self, folded: str | None, address: str) -> None:
        keys, caps = self._keys_args(folded, address)
        async with translated("throttle"):
            await self._refund(keys=keys, args=caps)


# --------------------------------------------------------------------------- room creation


class CreateQuota:
    """New rooms per address per minute, cluster-wide (``room_create_rate``; 0: no cap).

    The counter is charged *before* the join that may create a room (ATTEMPT refuses the
    charge at the cap), so concurrent joins from one address on several nodes cannot slip
    past it, and refunded (REFUND) when the room existed after all."""

    def __init__(self, redis: Redis | Topology, keys: Keys, config: NodeConfig) -> None:
        topology = as_topology(redis)
        self.keys = keys
        self.cap = config.room_create_rate
        self._attempt = RoutedScript(topology, scripts.ATTEMPT)
        self._refund = RoutedScript(topology, scripts.REFUND)
        self.refused = 0
        """Joins refused because their room would have been new (counted by the caller)."""

    async def charge(self, address: str) -> float:
        """Count one creation for ``address``: 0 when it may create a room now (charged),
        else the seconds until it may (nothing charged)."""
        if not self.cap:
            return 0.0
        window_ms = int(CREATE_WINDOW * 1000)
        async with translated("quota"):
            # ATTEMPT with one key: its cap is ARGV[1], ARGV[2] (a second key's) unused
            left = int(await self._attempt(keys=[self.keys.room_creates(address)],
                                           args=[self.cap, 0, window_ms]))
        return left / 1000

    async def refund(self, address: str) -> None:
        """Give back a charge whose join created nothing."""
        if not self.cap:
            return
        async with translated("quota"):
            await self._refund(keys=[self.keys.room_creates(address)], args=[self.cap])


# --------------------------------------------------------------------------- sanctions


class Sanctions:
    """Bans and mutes in Redis: one key per sanction (TTL = duration) + a listing index."""

    def __init__(self, redis: Redis | Topology, keys: Keys) -> None:
        """``redis``: the shards (a plain client: one standalone shard)."""
        self._topology = as_topology(redis)
        self.keys = keys

    @property
    def _redis(self) -> Redis:
        """The client of the ``{mod}`` shard."""
        return self._topology.client_of(self.keys.sanctions)

    def key(self, kind: str, target: str) -> str:
        if kind == "nick-ban":
            return self.keys.ban_nick(target)
        if kind == "ip-ban":
            return self.keys.ban_ip(target)
        return self.keys.mute(target)

    async def put(self, kind: str, target: str, shown: str, by: str, reason: str | None,
                  seconds: float) -> None:
        body = json.dumps({"kind": kind, "target": shown, "by": by, "reason": reason},
                          separators=(",", ":"), ensure_ascii=False)
        async with translated("sanction"):
            # no MULTI (the ACL rule set has none): the index entry first, so a ban never
            # goes unlisted; an index entry whose key never came is pruned by listing()
            pipe = self._redis.pipeline(transaction=False)
            pipe.hset(self.keys.sanctions, f"{kind}:{target}", body)
            pipe.set(self.key(kind, target), body, px=max(1, int(seconds * 1000)))
            await pipe.execute()

    async def remove(self, kind: str, target: str) -> bool:
        async with translated("sanction"):
            pipe = self._redis.pipeline(transaction=False)
            pipe.delete(self.key(kind, target))
            pipe.hdel(self.keys.sanctions, f"{kind}:{target}")
            deleted, _ = await pipe.execute()
        return bool(deleted)

    async def lookup(self, pairs: list[tuple[str, str]]) -> list[tuple[float, dict[str, Any]]]:
        """For each (kind, target): (seconds left, details); (0, {}) when none."""
        async with translated("sanction"):
            pipe = self._redis.pipeline(transaction=False)
            for kind, target in pairs:
                key = self.key(kind, target)
                pipe.get(key)
                pipe.pttl(key)
            raw = await pipe.execute()
        out: list[tuple[float, dict[str, Any]]] = []
        for body, left in zip(raw[::2], raw[1::2], strict=True):
            if body is None or left is None or int(left) <= 0:
                out.append((0.0, {}))
                continue
            try:
                details = json.loads(body)
            except ValueError:
                details = {}
            out.append((int(left) / 1000, details if isinstance(details, dict) else {}))
        return out

    async def listing(self) -> list[BanEntry]:
        """Everything in force, soonest to expire last; expired index entries pruned."""
        async with translated("sanction"):
            index = {_text(f): v for f, v in
                     (await self._redis.hgetall(self.keys.sanctions)).items()}
            fields = list(index)
            pipe = self._redis.pipeline(transaction=False)
            for field in fields:
                kind, _, target = field.partition(":")
                pipe.pttl(self.key(kind, target))
            lefts = await pipe.execute()
            gone = [f for f, left in zip(fields, lefts, strict=True) if int(left) < 0]
            if gone:
                await self._redis.hdel(self.keys.sanctions, *gone)
        out = []
        for field, left in zip(fields, lefts, strict=True):
            if int(left) < 0:
                continue
            try:
                d = json.loads(index[field])
            except ValueError:
                continue
            if not isinstance(d, dict):
                continue
            reason = d.get("reason")
            out.append(BanEntry(kind=str(d.get("kind", field.partition(":")[0])),
                                target=str(d.get("target", field.partition(":")[2])),
                                by=str(d.get("by", "")),
                                reason=reason if isinstance(reason, str) else None,
                                expires_in=int(left) / 1000))
        return sorted(out, key=lambda e: (-e.expires_in, e.kind, e.target))


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
