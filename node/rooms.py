"""Rooms in Redis: who is in which room, and each room's stream of what happened there.

Theory of operation
-------------------
* A room is a members hash (folded name -> nickname as shown), a stream (its messages and
  notices, in the room's one order; their ids are message ids), a topic when it has one
  and a pub/sub channel.
* Its life: a join to a room that does not exist creates it (unless the cluster holds
  ``max_rooms`` rooms, or the joiner may not create one: refused, nothing changed).  While
  it has members its keys persist and it is listed in ``{rooms}:live`` with its member
  count.  Once its last member left, its stream and topic expire after ``room_idle_ttl``
  and it sits in ``{rooms}:idle`` until then; a join meanwhile revives it with its
  history.
* Every join, part, quit and nick change is one ROOM_EVENT script per room, on the
  room's own slot: the membership change, its notice stored in the stream and published
  with its id, and its keys' TTLs, in one atomic step (see
  :data:`node.scripts.ROOM_EVENT`).  A join or part also rewrites the name's info entry
  (its rooms), only while the lease is the session's (UPDATE_INFO on ``{nicks}``), sent
  at the same time.  The room index (``{rooms}``, another slot: another shard on a Redis
  Cluster) follows as its own step: ROOM_RESERVE before a join that may create a room
  (the cap), ROOM_INDEX after the change.  A change whose index step failed stands; the
  index is repaired by :meth:`RoomStore.reconcile` (the order of the steps and what a
  failure between them leaves: docs/ARCHITECTURE.md, "On Redis Cluster").
* Each command goes to its keys' shard; a step over several shards (a quit over many
  rooms) is one pipeline per shard, the shards concurrently
  (:class:`~node.topology.ShardPipes`).
* History is kept by count (``history_max``) and by age (``history_age``): both trims
  are approximate, so reads skip entries older than the age floor themselves.
* Reading: members (:meth:`RoomStore.who`), the listing (a page at a time, by name), the
  newest id, everything after an id (gap repair) and messages only (history).  Room
  *messages* are published by the :class:`~node.publisher.Publisher`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import secrets
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any

import structlog
from redis.asyncio import Redis
from redis.commands.core import AsyncScript

from . import envelope as env
from . import scripts
from .config import NodeConfig
from .errors import RelayUnavailable, RoomCreateThrottled, RoomsFull
from .feeds import id_key
from .keys import Keys
from .leases import NameInfo
from .names import ID_PART_MAX
from .redis_errors import describe, translated
from .topology import ShardPipes, Topology, as_topology

__all__ = ["Joined", "RoomStore", "RoomTopic", "session_tag"]

log = structlog.get_logger("hubbub.relay")

_LAST_ID = f"{ID_PART_MAX}-{ID_PART_MAX}"
"""The largest stream id there can be."""

_CREATED, _FULL, _NO_CREATE, _UNKNOWN, _NEW = 1, -1, -2, -3, -4
"""ROOM_EVENT's statuses (0: the room existed; -3: a creating join refused because the
room index, and with it the cap, could not be read; -4: the room would be new, nothing
done: its place under the cap comes first)."""


def session_tag(token: str) -> str:
    """What a room's sessions hash records of the session holding a member entry: the
    end of its lease token (enough to tell two sessions of one name apart)."""
    return token[-16:]


@dataclasses.dataclass(frozen=True, slots=True)
class Joined:
    """What a join recorded: the id the joiner is owed what comes after, and whether the
    join created the room."""

    floor: str
    created: bool


@dataclasses.dataclass(frozen=True, slots=True)
class RoomTopic:
    """A room's topic, as stored: ``text``, who set it and when (seconds since the
    epoch); IRC clients get it when they join (332/333)."""

    text: str
    nick: str
    ts: float


class RoomStore:
    """Membership, notices and history of every room, cluster-wide."""

    def __init__(self, redis: Redis | Topology, config: NodeConfig, keys: Keys,
                 clock: Callable[[], float] = time.time) -> None:
        """``redis``: the shards (each command goes to its keys' shard; a plain client is
        one standalone shard); ``clock``: this node's wall clock (Unix seconds), for the
        age floor of reads."""
        self._topology = topology = as_topology(redis)
        seed = topology.seed
        self._cfg = config
        self.keys = keys
        self._clock = clock
        self._room_script = seed.register_script(scripts.ROOM_EVENT)
        self._update_info = seed.register_script(scripts.UPDATE_INFO)
        self._reserve = seed.register_script(scripts.ROOM_RESERVE)
        self._index = seed.register_script(scripts.ROOM_INDEX)
        self._state = seed.register_script(scripts.ROOM_STATE)
        self._unindexed: set[str] = set()
        """Rooms whose membership changed but whose index step failed: reconciled."""
        self._cursor: str | None = None  # where the next reconcile's sample starts
        self._idle_at = 0  # and its sample of the idle rooms (by rank)
        self._renamed: dict[str, tuple[str, str, str]] = {}
        """Rooms a rename could not reach: room -> (old folded, new folded, new nick)."""
        self.index_failures = 0

    @property
    def scripts(self) -> tuple[AsyncScript, ...]:
        """The scripts to load into Redis up front."""
        return (self._room_script, self._update_info, self._reserve, self._index,
                self._state)

    def _on(self, key: str) -> Redis:
        return self._topology.client_of(key)

    # ------------------------------------------------------------------ membership

    async def _room_event(self, pipes: ShardPipes, room: str, event: env.RoomEvent | None,
                          *changes: str, rule: str = "") -> None:
        """Queue ROOM_EVENT: ``changes`` to the room's members and ``event`` stored in its
        stream and published (see :data:`node.scripts.ROOM_EVENT`).  ``rule``: for a join
        that may be refused, what a join to a room that does not exist does ('0':
        creates it; '-1'/'-2'/'-3': refused with that status); '' never refused."""
        k, cfg = self.keys, self._cfg
        await self._room_script(
            keys=[k.members(room), k.history(room), k.room_channel(room), k.topic(room),
                  k.ops(room), k.sessions(room)],
            args=[event.serialize() if event is not None else "", cfg.history_max,
                  _ms(cfg.history_age), max(1, _ms(cfg.room_idle_ttl)), rule,
                  cfg.bus_format, *changes],
            client=pipes.on(k.members(room)))

    async def _reindex(self, outcomes: Iterable[tuple[str, Any]]) -> None:
        """The second step of a membership change: each room's place in the index, from
        what its ROOM_EVENT returned (``(room, reply)``; refused ones skipped).  It never
        fails the change, which is done: a room it could not file is reconciled later
        (see :meth:`reconcile`)."""
        k = self.keys
        todo = [(room, reply) for room, reply in outcomes
                if not isinstance(reply, Exception) and int(reply[0]) >= 0]
        if not todo:
            return
        pipes = ShardPipes(self._topology)
        try:
            async with translated("rooms"):
                for room, reply in todo:
                    await self._index(keys=[k.rooms_live, k.rooms_count, k.rooms_idle],
                                      args=[room, int(reply[2]), int(reply[3])],
                                      client=pipes.on(k.rooms_live))
                await pipes.execute()
        except RelayUnavailable as exc:
            self.index_failures += 1
            self._unindexed.update(room for room, _ in todo)
            log.warning("room index not updated; reconciled later",
                        rooms=len(todo), error=describe(exc.__cause__ or exc))
        else:
            self._unindexed.difference_update(room for room, _ in todo)

    async def join(self, room: str, folded: str, info: NameInfo, *,
                   announce: bool = True, may_create: bool = True,
                   restore: bool = False) -> Joined:
        """Record membership cluster-wide and (unless resuming) announce it.  Returns the
        id the joiner is owed what comes after (its join's, or, silent, the stream's
        newest) and whether the join created the room.

        A join that would create the room is refused, with nothing changed, when the
        cluster holds ``max_rooms`` rooms (:class:`RoomsFull`) or ``may_create`` is false
        (:class:`RoomCreateThrottled`).  ``restore``: the session is a member already and
        its membership is being recorded again (a lost lease, a Redis that lost its data):
        never refused.

        Single-slot steps (see "On Redis Cluster" in docs/ARCHITECTURE.md): the
        membership with its notice (ROOM_EVENT on ``{room:R}``) and the name's info entry
        (UPDATE_INFO on ``{nicks}``), sent together; then the room's place in the index
        (ROOM_INDEX on ``{rooms}``).  Under a room cap, a join to a room that turns out
        to be new is not done by that first step: the room's place under the cap is taken
        (ROOM_RESERVE) and the join sent again."""
        k, cap = self.keys, self._cfg.max_rooms
        rule = ""
        if not restore:
            # under a cap, a join first only joins a room that exists (one round trip, the
            # common case); told the room would be new, it takes the room's place under
            # the cap and tries again
            rule = str(_NO_CREATE) if not may_create else str(_NEW) if cap > 0 else "0"
        unreachable: RelayUnavailable | None = None
        async with translated("join"):
            while True:
                pipes = ShardPipes(self._topology)
                await self._update_info(keys=[k.info, k.lease(folded)],
                                        args=[folded, info.token, info.serialize()],
                                        client=pipes.on(k.info))
                # a resume ('add') announces the join only if its member entry is gone
                # (the old session's quit came first); a restore records it silently
                await self._room_event(pipes, room, None if restore else
                                       env.RoomJoin(room, info.nick),
                                       "set" if announce or restore else "add", folded,
                                       info.nick, session_tag(info.token), rule=rule)
                _, reply = await pipes.execute()
                status, floor = int(reply[0]), reply[1]
                if status != _NEW:
                    break
                rule, unreachable = await self._reserve_place(room, cap)
            if status < 0 and room in info.rooms:
                # the info entry was written with the room in it: put it back as it was
                kept = dataclasses.replace(info, rooms=tuple(r for r in info.rooms
                                                             if r != room))
                await self._update_info(keys=[k.info, k.lease(folded)],
                                        args=[folded, info.token, kept.serialize()],
                                        client=self._on(k.info))
        if status == _UNKNOWN and unreachable is not None:
            raise unreachable
        if status == _FULL:
            raise RoomsFull(f"the cluster holds as many rooms as it may "
                            f"({self._cfg.max_rooms}); {room} was not created; join an "
                            "existing room")
        if status == _NO_CREATE:
            raise RoomCreateThrottled(f"you may not create new rooms right now; {room} was "
                                      "not created")
        await self._reindex([(room, reply)])
        return Joined(_text(floor), status == _CREATED)

    async def _reserve_place(self, room: str, cap: int) -> tuple[str, RelayUnavailable | None]:
        """A new room's place under the cap (ROOM_RESERVE): the rule for the join's next
        try ('0': create it; '-1': the cap is reached; '-3': the index could not be
        asked, with why)."""
        k = self.keys
        try:
            async with translated("join"):
                reserved = await self._reserve(
                    keys=[k.rooms_live, k.rooms_count, k.rooms_idle],
                    args=[room, cap, _ms(self._reserve_hold())],
                    client=self._on(k.rooms_live))
        except RelayUnavailable as exc:
            # the index is away: the room may still be joined if it exists by now
            return str(_UNKNOWN), exc
        return (str(_FULL) if int(reserved) < 0 else "0"), None

    def _reserve_hold(self) -> float:
        """How long a room's reservation under the cap holds: the join's two other steps,
        each within a command timeout, with room to spare."""
        return 4 * self._cfg.redis_timeout + 5

    async def part(self, room: str, folded: str, info: NameInfo, *, announce: bool = True,
                   reason: str | None = None) -> None:
        k = self.keys
        async with translated("part"):
            pipes = ShardPipes(self._topology)
            await self._room_event(pipes, room, env.RoomPart(room, info.nick, reason=reason)
                                   if announce
                                   else None, "drop", folded, session_tag(info.token))
            await self._update_info(keys=[k.info, k.lease(folded)],
                                    args=[folded, info.token, info.serialize()],
                                    client=pipes.on(k.info))
            reply, _ = await pipes.execute()
        await self._reindex([(room, reply)])

    async def leave_all(self, folded: str, token: str, nick: str, rooms: Iterable[str],
                        reason: str | None) -> None:
        """Remove a departing session (``token``) from its rooms and tell each of them it
        quit (members of several of them are told once: the notices share an ``eid``).
        Only the session's own entries go: in a room where the name's entry is another
        session's by now (the user resumed on another node meanwhile) nothing changes and
        nothing is told.  Each room's shard is its own step: the rooms of a shard that
        did not answer are left for a retry (RelayUnavailable), the others are done (a
        retry finds them done and tells nothing)."""
        eid = secrets.token_hex(8)
        rooms = list(rooms)
        tag = session_tag(token)
        await self._each_room("quit", rooms, lambda pipes, room: self._room_event(
            pipes, room, env.RoomQuit(room, nick, eid, reason), "drop", folded, tag))

    async def _each_room(self, what: str, rooms: Sequence[str],
                         queue: Callable[[ShardPipes, str], Awaitable[None]]) -> list[str]:
        """Run one ROOM_EVENT per room, one pipeline per shard, the shards concurrently;
        then file the rooms that answered in the index.  A shard that failed raises
        RelayUnavailable once the others' rooms are filed; its rooms are in the error's
        ``rooms`` attribute.  Returns the rooms done."""
        if not rooms:
            return []
        by_shard: dict[int, list[str]] = {}
        for room in rooms:
            by_shard.setdefault(id(self._topology.shard_of(self.keys.members(room))),
                                []).append(room)

        async def shard_step(group: list[str]) -> list[tuple[str, Any]]:
            pipes = ShardPipes(self._topology)
            for room in group:
                await queue(pipes, room)
            async with translated(what):
                return list(zip(group, await pipes.execute(), strict=True))

        groups = list(by_shard.values())
        answers = await asyncio.gather(*(shard_step(g) for g in groups),
                                       return_exceptions=True)
        await self._reindex(pair for answer in answers if isinstance(answer, list)
                            for pair in answer)
        failed = [room for group, answer in zip(groups, answers, strict=True)
                  if isinstance(answer, BaseException) for room in group]
        for answer in answers:
            if isinstance(answer, BaseException):
                answer.rooms = failed  # type: ignore[attr-defined]
                raise answer
        return list(rooms)

    async def rename_in_rooms(self, old_folded: str, new_folded: str, old: str, new: str,
                              rooms: Sequence[str], sid: str, token: str, *,
                              move_members: bool = True) -> None:
        """Announce a nick change of session ``token`` to ``rooms`` (and move the
        membership entries, unless the old name now belongs to someone else)."""
        eid = secrets.token_hex(8)
        changes: list[str] = []
        if move_members:
            if old_folded != new_folded:
                changes += ["del", old_folded]
            changes += ["set", new_folded, new, session_tag(token)]
        try:
            await self._each_room("nick", list(rooms), lambda pipes, room: self._room_event(
                pipes, room, env.RoomNick(room, old, new, sid, eid), *changes))
        except RelayUnavailable as exc:
            if move_members and old_folded != new_folded:
                # the name is the new one already ({nicks} took it first): the rooms of a
                # shard that did not answer still list the old one; moved later
                for room in getattr(exc, "rooms", ()):
                    self._renamed[room] = (old_folded, new_folded, new)
            raise

    async def _move_renamed(self) -> None:
        """Move the entries a rename left under the old name in rooms whose shard did
        not answer: the old entry goes; the new one is written only while the name's
        info entry (``{nicks}``) still lists the room (a user who left the room
        meanwhile is not put back in it).  Silent: the notice went out, or was lost, with
        the first try."""
        if not self._renamed:
            return
        k = self.keys
        todo = dict(self._renamed)
        async with translated("nick"):
            raws = await self._on(k.info).hmget(k.info, [n for _, n, _ in todo.values()])
        for (room, (old_folded, new_folded, new)), raw in zip(todo.items(), raws,
                                                              strict=True):
            try:
                info = NameInfo.parse(raw) if raw is not None else None
            except (ValueError, KeyError):
                info = None
            changes = ["del", old_folded]
            if info is not None and room in info.rooms:
                changes += ["set", new_folded, new, session_tag(info.token)]
            pipes = ShardPipes(self._topology)
            await self._room_event(pipes, room, None, *changes)
            try:
                async with translated("nick"):
                    (reply,) = await pipes.execute()
            except RelayUnavailable:
                continue  # still away: next time
            if self._renamed.get(room) == (old_folded, new_folded, new):
                del self._renamed[room]
            await self._reindex([(room, reply)])

    # ------------------------------------------------------------------ the index

    async def reconcile(self, sample: int | None = None) -> int:
        """Finish what renames left in rooms whose shard did not answer (see
        :meth:`rename_in_rooms`), then make the room index agree with the rooms: the
        rooms whose index step failed,
        and a sample of ``sample`` (default ``rooms_page``) listed and idle rooms, the
        next ones each call, are read on their shards (ROOM_STATE) and filed again
        (ROOM_INDEX).  Returns how many were filed.  An index step that failed, a node
        that died between the two steps, or two nodes' steps that crossed thus leave a
        wrong entry for at most a few calls."""
        k = self.keys
        await self._move_renamed()
        sample = self._cfg.rooms_page if sample is None else sample
        index = self._on(k.rooms_live)
        async with translated("rooms"):
            low = "-" if self._cursor is None else f"({self._cursor}"
            names = [_text(n) for n in await index.zrangebylex(k.rooms_live, low, "+",
                                                                start=0, num=sample)]
            self._cursor = names[-1] if len(names) == sample else None
            idle = [_text(n) for n in await index.zrange(  # type: ignore[arg-type]
                k.rooms_idle, self._idle_at, self._idle_at + sample - 1)]
            self._idle_at = self._idle_at + sample if len(idle) == sample else 0
        # an idle entry may be a join's reservation under the cap (no keys yet): only one
        # whose room has members is filed again
        listed = {*self._unindexed, *names}
        rooms = sorted(listed | set(idle))
        if not rooms:
            return 0
        pipes = ShardPipes(self._topology)
        for room in rooms:
            await self._state(keys=[k.members(room), k.history(room), k.topic(room)],
                              client=pipes.on(k.members(room)))
        async with translated("rooms"):
            states = await pipes.execute()
        found = [(room, (0, "", int(members), int(until)))
                 for room, (members, until) in zip(rooms, states, strict=True)
                 if room in listed or int(members) > 0]
        await self._reindex(found)
        return len(found)

    async def set_topic(self, room: str, nick: str, text: str) -> None:
        """Keep ``text`` as the room's topic ("": none) and tell the room (its stream and
        channel, in order with its other events)."""
        k = self.keys
        async with translated("topic"):
            pipes = ShardPipes(self._topology)
            if text:
                pipes.on(k.topic(room)).set(k.topic(room), json.dumps(
                    {"text": text, "by": nick, "ts": time.time()}, ensure_ascii=False))
            else:
                pipes.on(k.topic(room)).delete(k.topic(room))
            await self._room_event(pipes, room, env.RoomTopic(room, nick, text))
            _, reply = await pipes.execute()
        await self._reindex([(room, reply)])

    async def found_ops(self, room: str, folded: str) -> None:
        """``folded`` opened ``room`` (its first member): its only operator."""
        key = self.keys.ops(room)
        async with translated("ops"):
            pipe = self._on(key).pipeline(transaction=True)
            pipe.delete(key)
            pipe.sadd(key, folded)
            await pipe.execute()

    async def drop_op(self, room: str, folded: str) -> None:
        async with translated("ops"):
            await self._on(self.keys.ops(room)).srem(self.keys.ops(room), folded)

    async def rename_op(self, rooms: Sequence[str], old: str, new: str) -> None:
        """A renamed user keeps its operator status in ``rooms``."""
        async with translated("ops"):
            pipes = ShardPipes(self._topology)
            for room in rooms:
                pipes.on(self.keys.ops(room)).srem(self.keys.ops(room), old)
            removed = await pipes.execute()
            pipes = ShardPipes(self._topology)
            for room, gone in zip(rooms, removed, strict=True):
                if gone:
                    pipes.on(self.keys.ops(room)).sadd(self.keys.ops(room), new)
            await pipes.execute()

    async def ops(self, room: str) -> set[str]:
        """The folded names of the room's operators."""
        async with translated("ops"):
            key = self.keys.ops(room)
            return {_text(v) for v in await self._on(key).smembers(key)}

    async def op_in(self, rooms: Sequence[str], folded: str) -> list[bool]:
        """Whether ``folded`` is an operator of each of ``rooms``."""
        if not rooms:
            return []
        async with translated("ops"):
            pipes = ShardPipes(self._topology)
            for room in rooms:
                pipes.on(self.keys.ops(room)).sismember(self.keys.ops(room), folded)
            return [bool(v) for v in await pipes.execute()]

    async def topic(self, room: str) -> RoomTopic | None:
        """The room's topic, if one is set."""
        async with translated("topic"):
            raw = await self._on(self.keys.topic(room)).get(self.keys.topic(room))
        if not raw:
            return None
        try:
            d = json.loads(raw)
            return RoomTopic(str(d["text"]), str(d["by"]), float(d["ts"]))
        except (ValueError, KeyError, TypeError):
            return None

    # ------------------------------------------------------------------ reading

    async def who(self, room: str) -> list[str]:
        async with translated("who"):
            nicks = await self._on(self.keys.members(room)).hvals(self.keys.members(room))
        return sorted((_text(n) for n in nicks), key=str.casefold)

    async def rooms(self, after: str | None = None, limit: int | None = None
                    ) -> tuple[list[tuple[str, int]], bool]:
        """A page of the rooms with members, cluster-wide, by name: up to ``limit``
        (default ``rooms_page``) ``(room, members)`` whose names sort after ``after``,
        and whether more follow.  Costs one ZRANGE and one HMGET, whatever the number of
        rooms."""
        k = self.keys
        limit = self._cfg.rooms_page if limit is None else limit
        low = "-" if after is None else f"({after}"
        async with translated("rooms"):
            index = self._on(k.rooms_live)
            names = [_text(n) for n in await index.zrangebylex(
                k.rooms_live, low, "+", start=0, num=limit + 1)]
            more = len(names) > limit
            names = names[:limit]
            counts = await index.hmget(k.rooms_count, names) if names else []
        # a room emptied between the two reads has no count any more: it is not shown
        return [(n, int(c)) for n, c in zip(names, counts, strict=True)
                if c is not None and int(c) > 0], more

    async def counts(self) -> tuple[int, int]:
        """How many rooms the cluster holds: ``(with members, emptied and not yet
        expired)``."""
        k = self.keys
        now_ms = int(self._clock() * 1000)
        async with translated("rooms"):
            pipe = self._on(k.rooms_live).pipeline(transaction=False)
            pipe.zcard(k.rooms_live)
            pipe.zcount(k.rooms_idle, f"({now_ms}", "+inf")
            live, idle = await pipe.execute()
        return int(live), int(idle)

    async def latest_id(self, room: str) -> str:
        """The newest id in a room's stream ("0-0" when it is empty)."""
        async with translated("history"):
            key = self.keys.history(room)
            entries = await self._on(key).xrevrange(key, count=1)
        return _text(entries[0][0] or "0-0") if entries else "0-0"

    async def events(self, room: str, after: str, limit: int) -> list[env.RoomEvent]:
        """The first ``limit`` entries of a room's stream with an id above ``after``:
        messages and notices, as they were published (gap repair); none older than
        ``history_age``."""
        async with translated("history"):
            key = self.keys.history(room)
            entries = await self._on(key).xrange(key, min=self._low(after),
                                                 count=limit) or []
        return _room_events(entries)

    def age_floor(self) -> str | None:
        """The oldest stream id still shown (``history_age`` ago, on this node's clock),
        or None without an age limit.  The trims by age are approximate (whole stream
        nodes), so every read starts here itself."""
        age = self._cfg.history_age
        if age <= 0:
            return None
        return f"{max(0, int((self._clock() - age) * 1000))}-0"

    def _low(self, after: str | None) -> str:
        """The XRANGE start for what follows ``after`` (None: from the start) and is not
        older than the age floor."""
        floor = self.age_floor()
        if after is None:
            return floor or "-"
        if floor is not None and id_key(after) < id_key(floor):
            return floor
        return f"({after}"

    async def history(self, room: str, limit: int, after: str | None = None
                      ) -> list[env.RoomMsg]:
        """The last ``limit`` messages, or the first ``limit`` with an id above ``after``
        (a valid stream id, see :func:`~node.names.check_message_id`); none older than
        ``history_age``.  Notices (joins, parts, quits, renames) share the stream and are
        skipped: the stream is read a page at a time until ``limit`` messages are found or
        it ends."""
        if after == _LAST_ID:
            return []  # nothing can come after it, and Redis refuses the range "(" + it
        key = self.keys.history(room)
        out: list[env.RoomMsg] = []
        page = max(limit, 50)
        async with translated("history"):
            if after is None:
                top, bottom = "+", self.age_floor() or "-"
                while len(out) < limit:
                    entries = await self._on(key).xrevrange(key, max=top, min=bottom,
                                                            count=page) or []
                    out += [e for e in _room_events(entries) if isinstance(e, env.RoomMsg)]
                    if len(entries) < page:
                        break
                    top = f"({_text(entries[-1][0] or b'0-0')}"
                return list(reversed(out[:limit]))
            low = self._low(after)
            while len(out) < limit:
                entries = await self._on(key).xrange(key, min=low, count=page) or []
                out += [e for e in _room_events(entries) if isinstance(e, env.RoomMsg)]
                if len(entries) < page:
                    break
                low = f"({_text(entries[-1][0] or b'0-0')}"
        return out[:limit]

    # ------------------------------------------------------------------ gaps

    async def continuity(self, room: str, after: str) -> Continuity:
        """Whether the room's stream still holds everything that came after ``after``
        (a valid stream id), and the oldest id it holds.  Ask *after* reading what came
        after ``after``: trimming only ever takes the oldest entries, so an answer of
        complete then vouches for the read (a trim racing the read can only make it say
        incomplete).  The rule, also in docs/PROTOCOL.md:

        * a held ``after``: complete, since trimming only removes the oldest entries;
        * ``"0-0"`` (from the very start): complete while the stream has never lost an
          entry (``entries-added`` equals its length) or does not exist;
        * any other id: incomplete — below the oldest entry it was trimmed by count or
          age; above it, it was lost with the newest entries (a failover to a replica that
          had not received them yet, a restart from a snapshot or an AOF a second old):
          ids asked about are ids the node handed out, so a missing one was lost;
        * and in every case, incomplete when entries above ``after`` are older than the
          age floor (``history_age``), since they are no longer shown.
        """
        key = self.keys.history(room)
        floor = self.age_floor() or "0-0"
        hidden = id_key(after) < id_key(floor)
        async with translated("history"):
            # no MULTI: each answer only vouches for a read already done, and the oldest
            # entry only moves up, so answers taken one after another stay sound
            pipe = self._on(key).pipeline(transaction=False)
            pipe.xrange(key, min=after, max=after, count=1)
            pipe.xrange(key, min=floor, max="+", count=1)
            pipe.xrange(key, min="-", max="+", count=1)
            pipe.xinfo_stream(key)
            if hidden:
                pipe.xrange(key, min=f"({after}", max=f"({floor}", count=1)
            held, shown, first, info, *below_floor = await pipe.execute(raise_on_error=False)
        for answer in (held, shown, first, *below_floor):
            if isinstance(answer, Exception):
                raise RelayUnavailable(f"history: {answer}")
        oldest = _text(shown[0][0]) if shown else None
        if held:
            kept = True  # trimming only ever removes the oldest entries
        elif after == "0-0":
            if isinstance(info, dict):
                added = info.get("entries-added", info.get(b"entries-added"))
                length = info.get("length", info.get(b"length"))
                kept = added is not None and int(added) == int(length or 0)
            else:  # no stream at all: nothing was ever lost from it that we can tell
                kept = not first
        else:
            kept = False
        return Continuity(kept and not (below_floor and below_floor[0]), oldest)


@dataclasses.dataclass(frozen=True, slots=True)
class Continuity:
    """What :meth:`RoomStore.continuity` found."""

    complete: bool
    """Everything after the id asked about is still held and shown."""
    oldest: str | None
    """The oldest id the room holds, not older than the age floor (None: none)."""


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


def _ms(seconds: float) -> int:
    return round(seconds * 1000)
