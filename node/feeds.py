"""Per-room delivery bookkeeping that lets a node repair gaps in its subscription.

Theory of operation
-------------------
Pub/sub is at-most-once: whatever a room's channel carried while this node's subscription
was down never arrives.  Every room event (message or notice) is also in the room's
stream under the same id, and ids increase per room, so a node remembers for each room it
serves the last id it delivered (``last``) and, from the moment it subscribed, the
stream's newest id then (``start``).  After the subscription comes back, the node
*repairs* each room: it fetches the stream after ``max(last, start)`` and delivers what is
newer than ``last``; live events arriving meanwhile are held and delivered after, in id
order, duplicates dropped.  The same holds live and for a batch: an id at or below
``last`` is never delivered again, so an event that arrives twice (the upgrade mode,
``--bus-format 1``, hears format-1 nodes' events both classic and sharded) is shown once.
Pure: no I/O, no clock.
"""

from __future__ import annotations

from collections.abc import Iterable

from .envelope import RoomEvent

__all__ = ["RoomFeed", "id_key"]


def id_key(stream_id: str) -> tuple[int, int]:
    ms, _, seq = stream_id.partition("-")
    try:
        return int(ms), int(seq)
    except ValueError:
        return (0, 0)


class RoomFeed:
    __slots__ = ("held", "last", "start")

    def __init__(self) -> None:
        self.last: str | None = None
        """Id of the newest event delivered."""
        self.start: str | None = None
        """Newest stream id when the node subscribed ("0-0": the stream was empty)."""
        self.held: list[RoomEvent] | None = None
        """Live events held back while a repair runs (None: no repair running)."""

    def live(self, msg: RoomEvent) -> list[RoomEvent]:
        """An event from the channel: what to deliver now."""
        if self.held is not None:
            self.held.append(msg)
            return []
        return self._newer([msg])

    def live_many(self, msgs: Iterable[RoomEvent]) -> list[RoomEvent]:
        """Several events from the channel at once (a batch), in order: what to deliver
        now (the same as :meth:`live` for each in turn)."""
        if self.held is not None:
            self.held.extend(msgs)
            return []
        return self._newer(msgs)

    def begin_repair(self) -> str | None:
        """Start holding live events; returns the id to fetch after (None: cannot)."""
        self.held = []
        marks = [m for m in (self.last, self.start) if m is not None]
        return max(marks, key=id_key) if marks else None

    def end_repair(self, fetched: Iterable[RoomEvent]) -> list[RoomEvent]:
        """The stream's messages after the mark: everything to deliver, in order, once."""
        held, self.held = self.held or [], None
        return self._newer([*fetched, *held])

    def _newer(self, msgs: Iterable[RoomEvent]) -> list[RoomEvent]:
        out = []
        for msg in sorted(msgs, key=lambda m: id_key(m.id)):
            if self.last is None or id_key(msg.id) > id_key(self.last):
                self.last = msg.id
                out.append(msg)
        return out
