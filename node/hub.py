"""Local rooms and the bus: who on this node gets which room event, once and in order.

Theory of operation
-------------------
* ``rooms`` holds the local members of each room (:class:`~node.localroom.LocalRoom`).
  Only the node's own event loop touches it.
* A room's channel is subscribed when its first local member joins (the join waits for
  Redis to confirm the subscription, so the joiner sees its own join) and unsubscribed when
  the last one leaves.
* Every room event reaches local members through the bus, so all members on all nodes see
  one order.  Fan-out is synchronous: each event is rendered once per wire mode and the
  same bytes are queued to every recipient (``Member.send_bytes`` never waits).
* The hub is the relay's :class:`~node.relay.BusSink`: room events and private messages it
  delivers itself; sanctions, lost leases and the names after a Redis data loss it hands
  to the :class:`BusHooks` the server wires in (security and identity).
* When a subscription comes back, its rooms are repaired from their streams (gap repair):
  every room after a standalone Redis's, the rooms of one shard on a cluster.
  When the stream no longer holds everything after the room's mark (trimmed by count or
  age, or lost with Redis), the room's members are told so once (:class:`~node.model.Gap`)
  before what is still held.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Collection, Coroutine, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, assert_never

import structlog

from . import envelope as env
from .backoff import backoff
from .config import NodeConfig
from .errors import RelayUnavailable
from .localroom import LocalRoom
from .model import (
    Event,
    Gap,
    Joined,
    Message,
    NickChanged,
    Notice,
    Parted,
    Private,
    Quitted,
    TopicChanged,
)
from .pause import pause
from .relay import BusSink, Relay
from .relay import Joined as RoomJoined
from .stats import NodeStats
from .user import Member, Roster

__all__ = ["BusHooks", "Hub"]

log = structlog.get_logger("hubbub.node")

_TOLD_KEPT = 4096
"""User events (quits, renames) remembered for telling each member once."""


@dataclass(frozen=True, slots=True)
class BusHooks:
    """What the hub hands on from the bus (wired by the server)."""

    on_sanction: Callable[[env.Sanction], None]
    on_lease_lost: Callable[[str], None]
    reassert_all: Callable[[], Awaitable[None]]
    """After a Redis data loss: every local name and membership recorded again."""


class Hub(BusSink):
    """Local rooms, fan-out and the relay's sink (see the module docstring)."""

    def __init__(self, config: NodeConfig, stats: NodeStats, roster: Roster,
                 relay_for: Callable[[BusSink], Relay]) -> None:
        """``relay_for``: builds the relay that reports to this hub."""
        self.config = config
        self.stats = stats
        self.roster = roster
        self.relay = relay_for(self)
        self.hooks: BusHooks | None = None
        """Set by the server once security and identity exist."""
        self.rooms: dict[str, LocalRoom[Member]] = {}
        self._told: OrderedDict[str, set[str]] = OrderedDict()
        """The sids of the recipients of recent quits and renames by ``eid`` (one per
        room of the user), so a member of several of its rooms is told once.  Sids, not
        members: a member that left must not be kept alive by what it was told."""
        self._again: set[str] = set()
        """Rooms whose subscription broke again while their repair ran."""
        self._subs: dict[str, asyncio.Task[None]] = {}
        self._background: set[asyncio.Task[None]] = set()

    def background(self, work: Coroutine[Any, Any, None]) -> None:
        """Run ``work`` as a task the hub keeps a reference to until it ends."""
        task = asyncio.create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # ------------------------------------------------------------------ rooms

    async def join(self, m: Member, room: str, *, announce: bool = True,
                   may_create: bool = True) -> RoomJoined:
        """Join ``room``: subscribed (confirmed by Redis), then the membership recorded and
        (unless ``announce`` is false: a resume) the join announced.  The room's events are
        kept for ``m`` until :meth:`go_live`; returns the floor to hand to it (``.floor``)
        and whether the join created the room.  A join that would create the room is
        refused with nothing changed (RoomsFull, or RoomCreateThrottled when
        ``may_create`` is false)."""
        local = self.rooms.get(room)
        if local is None:
            local = self.rooms[room] = LocalRoom()
        local.begin_join(m)
        user = m.user
        user.rooms.append(room)
        try:
            await self._subscribed(room)
            return await self.relay.join(room, user.folded,
                                         user.info(self.config.node_id), announce=announce,
                                         may_create=may_create)
        except BaseException:
            user.rooms.remove(room)
            await self.leave_local(m, room)
            raise

    def go_live(self, m: Member, room: str, floor: str, *, announce: bool = True) -> None:
        """``m`` was answered (welcome, join acknowledgement, resume): from here on it gets
        the room's events — first its own join, then what came after ``floor``."""
        local = self.rooms.get(room)
        if local is None:
            return
        if announce:
            m.send(Joined(room, m.user.nick))
        for event in local.go_live(m, floor):
            self._deliver(event, (m,))

    async def part(self, m: Member, room: str, reason: str | None = None) -> None:
        user = m.user
        user.rooms.remove(room)
        await self.leave_local(m, room)
        await self.relay.part(room, user.folded, user.info(self.config.node_id),
                              reason=reason)

    async def leave_all_local(self, m: Member) -> list[str]:
        """Drop ``m`` from every local room (its membership in Redis is left alone);
        returns the rooms it was in."""
        rooms = list(m.user.rooms)
        for room in rooms:
            await self.leave_local(m, room)
        m.user.rooms.clear()
        return rooms

    async def _subscribed(self, room: str) -> None:
        task = self._subs.get(room)
        if task is None or (task.done() and task.exception() is not None):
            task = asyncio.create_task(self._subscribe(room))
            self._subs[room] = task
        try:
            await asyncio.shield(task)
        except BaseException:
            if self._subs.get(room) is task and task.done() and not self.rooms.get(room):
                del self._subs[room]
            raise

    async def _subscribe(self, room: str) -> None:
        """Subscribe, then note where the room's stream stood (the start of any repair)."""
        await self.relay.subscribe_room(room)
        start = await self.relay.latest_id(room)
        if (local := self.rooms.get(room)) is not None:
            local.feed.start = start

    async def leave_local(self, m: Member, room: str) -> None:
        local = self.rooms.get(room)
        if local is None:
            return
        local.remove(m)
        if not local:
            del self.rooms[room]
            self._again.discard(room)
            task = self._subs.pop(room, None)
            if task is not None and not task.done():
                task.cancel()  # nobody waits for it now: never subscribe after leaving
            await self.relay.unsubscribe_room(room)

    # ------------------------------------------------------------------ the bus

    def on_envelope(self, envelope: env.Envelope) -> None:
        e = envelope
        match e:
            case env.RoomMsg() | env.RoomJoin() | env.RoomPart() | env.RoomQuit() | \
                    env.RoomNick() | env.RoomTopic():
                if (local := self.rooms.get(e.room)) is not None:
                    for event in local.feed.live(e):
                        self._deliver(event, local.recipients(event))
            case env.RoomBatch():  # one room's messages of one publishing round
                if (local := self.rooms.get(e.room)) is not None:
                    fresh = local.feed.live_many(e.msgs)
                    if not local.joining:  # the common case: all of it to every member
                        self.fan_out_msgs(fresh, local.members)  # type: ignore[arg-type]
                    else:  # members joining: each event checked against their floors
                        for event in fresh:
                            self._deliver(event, local.recipients(event))
            case env.Sanction():
                if self.hooks is not None:
                    self.hooks.on_sanction(e)
            case env.DirectMsg():
                target = self.roster.named.get(e.to_folded)
                if target is not None:
                    target.send(Private(e.sender, e.to, e.text, e.id, e.ts, e.notice,
                                        e.tags))
                    self.stats.delivered += 1
            case env.Canary():
                pass  # the relay's own
            case _:
                assert_never(e)

    def on_lease_lost(self, folded: str) -> None:
        if self.hooks is not None:
            self.hooks.on_lease_lost(folded)

    def on_redis_reset(self) -> None:
        self.background(self._after_reset())

    async def _after_reset(self) -> None:
        """Redis lost its data: re-assert every name, rebuild room membership, restart
        the gap bookkeeping, and tell room members their history may have a hole."""
        try:
            if self.hooks is not None:
                await self.hooks.reassert_all()
            for room, local in self.rooms.items():
                local.feed.last = None
                local.feed.start = await self.relay.latest_id(room)
        except RelayUnavailable:
            log.warning("could not rebuild after the data loss yet")
        notice = Notice("the cluster's store restarted: history before this point may be "
                        "incomplete")
        for local in self.rooms.values():
            self.fan_out(notice, local.everyone())

    def _deliver(self, e: env.RoomEvent, targets: Collection[Member]) -> None:
        """One event of a room's feed to ``targets`` (its members, or one joiner)."""
        match e:
            case env.RoomMsg():
                self.fan_out(Message(e.room, e.sender, e.text, e.id, e.ts, e.action,
                                     e.notice, e.tags), targets, skip_sid=e.sid)
            case env.RoomJoin():
                self.fan_out(Joined(e.room, e.nick), targets)
            case env.RoomPart():
                self.fan_out(Parted(e.room, e.nick, e.reason), targets)
            case env.RoomQuit():
                self.fan_out(Quitted(e.nick, e.reason), self._untold(e.eid, targets))
            case env.RoomTopic():
                self.fan_out(TopicChanged(e.room, e.nick, e.text), targets)
            case env.RoomNick():  # the renaming member was told by its node
                self.fan_out(NickChanged(e.old, e.new),
                             [m for m in self._untold(e.eid, targets) if m.user.sid != e.sid])
            case _:
                assert_never(e)

    def _untold(self, eid: str, targets: Collection[Member]) -> list[Member]:
        """Those of ``targets`` not yet told of the user event ``eid`` (a quit or rename
        comes once through each of the user's rooms)."""
        told = self._told.get(eid)
        if told is None:
            told = self._told[eid] = set()
            while len(self._told) > _TOLD_KEPT:
                self._told.popitem(last=False)
        fresh = [m for m in targets if m.user.sid not in told]
        told.update(m.user.sid for m in fresh)
        return fresh

    def on_resubscribed(self, rooms: Collection[str] | None = None) -> None:
        """A bus subscription came back: repair ``rooms`` (those of one shard's link, or
        moved to another shard), or every room (``None``), from their streams.  Each room
        starts holding its live events *now*, before the listener hands over the next one:
        a live event delivered first would move the room's mark past the gap."""
        for room, local in list(self.rooms.items()):
            if rooms is not None and room not in rooms:
                continue
            if local.feed.held is not None:  # a repair is reading the stream already:
                self._again.add(room)        # it may have read before this gap
                continue
            self.background(self._repair(room, local, local.feed.begin_repair()))

    async def _repair(self, room: str, local: LocalRoom[Member], after: str | None) -> None:
        fetched: list[env.RoomEvent] = []
        mark = after
        gap: Gap | None = None
        # the fault that cut the subscription often breaks the next command too: try
        # again (live events wait meanwhile) for as long as the outbox holds messages
        give_up = asyncio.get_running_loop().time() + self.config.outbox_seconds
        delays = backoff(initial=0.05, maximum=0.5)
        try:
            page = self.config.history_limit
            while after is not None:
                try:
                    got = await self.relay.events(room, after, page)
                except RelayUnavailable:
                    delay = next(delays)
                    if asyncio.get_running_loop().time() + delay > give_up:
                        raise
                    await pause(delay)
                    continue
                fetched.extend(got)
                if len(got) < page:
                    break
                after = got[-1].id
            if mark is not None:  # asked after the read: a racing trim cannot hide a gap
                held = await self.relay.continuity(room, mark)
                if not held.complete:
                    gap = Gap(room, held.oldest)
                    log.warning("gap repair found events no longer in history", room=room,
                                after=mark, oldest=held.oldest)
        except RelayUnavailable:
            log.warning("gap repair failed; some events may be missing", room=room)
        finally:  # whatever happened, stop holding the room's live events
            self._end_repair(room, local, fetched, gap)

    def _end_repair(self, room: str, local: LocalRoom[Member],
                    fetched: list[env.RoomEvent], gap: Gap | None = None) -> None:
        if self.rooms.get(room) is local:
            if gap is not None:  # once per room, before what is still held; a member
                self.fan_out(gap, local.members)  # still joining starts past the gap
            events = local.feed.end_repair(fetched)
            from_stream = {e.id for e in fetched}
            repaired = sum(1 for e in events if e.id in from_stream)
            if repaired:
                self.stats.repaired += repaired
                log.info("gap repaired", room=room, events=repaired)
            for event in events:
                self._deliver(event, local.recipients(event))
            if room in self._again:  # another gap opened while this repair ran
                self._again.discard(room)
                self.background(self._repair(room, local, local.feed.begin_repair()))

    def fan_out_msgs(self, msgs: Sequence[env.RoomMsg], targets: Iterable[Member]) -> None:
        """Several messages of one room to the same ``targets``, in order: each rendered
        once per wire mode, and every recipient queued one chunk holding all of them
        (less its own, for a wire mode that does not echo them), not one per message."""
        if len(msgs) <= 1:
            for msg in msgs:
                self._deliver(msg, list(targets))
            return
        rendered: dict[str, tuple[bytes, int, list[tuple[bytes, str]]]] = {}
        senders = {msg.sid for msg in msgs}
        delivered = 0
        count = len(msgs)
        for m in list(targets):
            codec = m.codec
            out = rendered.get(codec.name)
            if out is None:
                parts = [(codec.render(Message(e.room, e.sender, e.text, e.id, e.ts,
                                               e.action)), e.sid) for e in msgs]
                data = b"".join(part for part, _ in parts)
                out = rendered[codec.name] = (data, data.count(b"\n"), parts)
            sid = m.user.sid
            if not codec.echo_own and sid in senders:
                data = b"".join(part for part, by in out[2] if by != sid)
                if data:
                    m.send_bytes(data, data.count(b"\n"))
                delivered += sum(1 for _, by in out[2] if by != sid)
                continue
            m.send_bytes(out[0], out[1])
            delivered += count
        self.stats.delivered += delivered

    def fan_out(self, event: Event, targets: Iterable[Member], skip_sid: str = "") -> None:
        """Render once per wire mode; queue the same bytes to every recipient."""
        rendered: dict[str, tuple[bytes, int]] = {}
        delivered = 0
        for m in list(targets):
            codec = m.codec
            if skip_sid and not codec.echo_own and m.user.sid == skip_sid:
                continue
            out = rendered.get(codec.name)
            if out is None:
                data = codec.render(event)
                out = rendered[codec.name] = (data, data.count(b"\n"))
            m.send_bytes(*out)
            delivered += 1
        self.stats.delivered += delivered
