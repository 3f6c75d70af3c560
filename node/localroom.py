"""One room as a node serves it: its local members, members still joining, its feed.

Theory of operation
-------------------
A member is *live* in a room once everything published in the room after its answer
(``welcome``, a join's acknowledgement, a resume) is sure to reach it, once, in order,
starting with its own join.  The node subscribes to the room's channel before the joiner's
membership is recorded, so every later event arrives; what is left is to cut the room's
one ordered sequence at the right place for the newcomer:

1. :meth:`LocalRoom.begin_join` — before anything is sent to Redis the joiner is
   *pending*: the room's events are kept for it, not delivered.
2. Redis records the membership and answers with the joiner's *floor*: the id of its own
   join notice (or, for a silent join, the newest id in the stream).
3. :meth:`LocalRoom.go_live` — the node answers the client, then hands it what was kept
   with an id above the floor; until an event at or past the floor has come through the
   feed, later events are still checked against the floor (the own join may still be on
   its way), after that the member is an ordinary member.

Pure: no I/O, no clock.  Events come in feed order (see :mod:`node.feeds`).
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Generic, TypeVar

from .envelope import RoomEvent
from .feeds import RoomFeed, id_key

__all__ = ["LocalRoom"]

M = TypeVar("M")


class _Joining:
    __slots__ = ("floor", "kept")

    def __init__(self) -> None:
        self.kept: list[RoomEvent] | None = []
        """Events kept while the join is pending (None once it went live)."""
        self.floor: tuple[int, int] | None = None


class LocalRoom(Generic[M]):
    """A room's local members (``M``: a session) and its delivery feed."""

    __slots__ = ("feed", "joining", "members")

    def __init__(self) -> None:
        self.members: set[M] = set()
        """Live members: every event of the room goes to them."""
        self.joining: dict[M, _Joining] = {}
        self.feed = RoomFeed()

    def __bool__(self) -> bool:
        return bool(self.members or self.joining)

    def everyone(self) -> set[M]:
        """Members live or joining."""
        return self.members | self.joining.keys()

    def begin_join(self, member: M) -> None:
        """``member`` joins: keep the room's events for it until :meth:`go_live`."""
        if member not in self.members:
            self.joining[member] = _Joining()

    def go_live(self, member: M, floor: str) -> list[RoomEvent]:
        """``member``'s membership is recorded and its answer sent: what it is owed of
        the events kept meanwhile (those above ``floor``), in order."""
        joining = self.joining.get(member)
        if joining is None or joining.kept is None:
            return []
        mark = id_key(floor)
        kept, joining.kept = joining.kept, None
        owed = [e for e in kept if id_key(e.id) > mark]
        if owed or any(id_key(e.id) == mark for e in kept):
            self._promote(member)  # the feed is past the floor: nothing more to check
        else:
            joining.floor = mark
        return owed

    def remove(self, member: M) -> None:
        self.members.discard(member)
        self.joining.pop(member, None)

    def recipients(self, event: RoomEvent) -> Collection[M]:
        """Who gets ``event`` (the next one of the feed); keeps it for pending joiners."""
        if not self.joining:
            return self.members
        mark = id_key(event.id)
        extra: list[M] = []
        passed: list[M] = []
        for member, joining in self.joining.items():
            if joining.kept is not None:
                joining.kept.append(event)
            elif joining.floor is not None and mark >= joining.floor:
                passed.append(member)
                if mark > joining.floor:
                    extra.append(member)
        if not passed:
            return self.members
        targets = self.members.union(extra)
        for member in passed:
            self._promote(member)
        return targets

    def _promote(self, member: M) -> None:
        del self.joining[member]
        self.members.add(member)
