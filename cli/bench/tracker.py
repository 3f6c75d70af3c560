"""What one receiver saw of each sender in its room: in order, duplicated, late, missing.

Theory of operation: per sender (by its index among the room's members) the tracker keeps
the highest sequence number seen and, only after a gap, the set of numbers skipped.  A
number above the highest is new (numbers it skipped go into the set); one found in the
set is new but *late* (out of order); anything else is a duplicate.  Lost messages are not
decided here: the driver knows how many each sender sent and subtracts what arrived.
"""

from __future__ import annotations

__all__ = ["DUPLICATE", "LATE", "NEW", "SeqTracker"]

NEW = 0
LATE = 1
DUPLICATE = 2
_MAX_GAP = 1 << 20  # a bigger gap is not remembered: what fills it later counts as duplicate


class SeqTracker:
    __slots__ = ("highest", "skipped")

    def __init__(self, senders: int) -> None:
        self.highest = [-1] * senders
        self.skipped: dict[int, set[int]] = {}

    def see(self, sender: int, seq: int) -> int:
        """Record ``seq`` from ``sender``; returns :data:`NEW`, :data:`LATE` or
        :data:`DUPLICATE`."""
        top = self.highest[sender]
        if seq == top + 1:
            self.highest[sender] = seq
            return NEW
        if seq > top:
            if seq - top - 1 <= _MAX_GAP:
                self.skipped.setdefault(sender, set()).update(range(top + 1, seq))
            self.highest[sender] = seq
            return NEW
        gaps = self.skipped.get(sender)
        if gaps is not None and seq in gaps:
            gaps.discard(seq)
            if not gaps:
                del self.skipped[sender]
            return LATE
        return DUPLICATE

    def missing(self) -> int:
        """Numbers skipped and not (yet) seen, below each sender's highest."""
        return sum(len(s) for s in self.skipped.values())
