"""Rooms in Redis: who is in which room, and each room's stream of what happened there.

Theory of operation
-------------------
* A room is a members hash (folded name -> nickname as shown), a stream (its messages and
  notices, in the room's one order; their ids are message ids) and a pub/sub channel.
  ``{rooms}`` indexes the rooms that have (had) members; an emptied room is dropped from
  it when the rooms are listed.
* Every join, part, quit and nick change is one ROOM_EVENT script per room: the membership
  change, and its notice stored in the stream and published with its id, in one atomic
  step (see :data:`node.scripts.ROOM_EVENT`).  A join or part also rewrites the name's info
  entry (its rooms), only while the lease is the session's (UPDATE_INFO), in the same
  round trip.
* Reading: members (:meth:`RoomStore.who`), the listing, the newest id, everything after
  an id (gap repair) and messages only (history).  Room *messages* are published by the
  :class:`~node.publisher.Publisher`.
"""

from __future__ import annotations

import dataclasses
import secrets
from collections.abc import Iterable, Sequence
from typing import Any

from redis.asyncio import Redis
from redis.commands.core import AsyncScript

from . import envelope as env
from . import scripts
from .config import NodeConfig
from .keys import Keys
from .leases import NameInfo
from .names import ID_PART_MAX
from .redis_errors import translated

__all__ = ["RoomStore"]

_LAST_ID = f"{ID_PART_MAX}-{ID_PART_MAX}"
"""The largest stream id there can be."""


class RoomStore:
    """Membership, notices and history of every room, cluster-wide."""

    def __init__(self, redis: Redis, config: NodeConfig, keys: Keys) -> None:
        self._redis = redis
        self._cfg = config
        self.keys = keys
        self._room_script = redis.register_script(scripts.ROOM_EVENT)
        self._update_info = redis.register_script(scripts.UPDATE_INFO)

    @property
    def scripts(self) -> tuple[AsyncScript, ...]:
        """The scripts to load into Redis up front."""
        return (self._room_script, self._update_info)

    # ------------------------------------------------------------------ membership

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

    # ------------------------------------------------------------------ reading

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
