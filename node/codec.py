"""What every wire mode shares: the :class:`Codec` interface and a few helpers.

A codec turns one line into a :data:`~node.model.Command` (or raises a
:class:`~node.errors.ProtocolError`) and one :data:`~node.model.Event` into bytes; the text
codec (``node.textcodec``) and the JSON codec (``node.jsoncodec``) implement it, and
:class:`~node.protocol.ServerConnection` picks one per connection.
"""

from __future__ import annotations

from typing import Protocol

from node.model import Command, Event

__all__ = ["Codec", "Ref", "printable", "sorted_nicks"]

Ref = str | int | None
"""A client's ``ref``: replies to a command echo it."""


class Codec(Protocol):
    """One wire mode: lines to commands, events to bytes."""

    name: str
    """The mode's name (``"text"``, ``"json"``)."""

    echo_own: bool
    """Whether a sender receives its own room messages back."""

    def parse(self, line: str, registered: bool) -> Command | None:
        """Parse one line; None when there is nothing to do (a blank line).

        Raises:
            ProtocolError: the line is not a valid command (``ref`` set where known).
        """
        ...

    def render(self, event: Event) -> bytes:
        """Encode ``event``; pure and deterministic (b"" when nothing is to be sent)."""
        ...


def sorted_nicks(nicks: tuple[str, ...]) -> list[str]:
    """Nicknames as both modes list them: case-insensitively sorted."""
    return sorted(nicks, key=lambda nick: (nick.casefold(), nick))


def printable(word: str, limit: int = 32) -> str:
    """A piece of client input safe to quote back in an error message."""
    return "".join(ch for ch in word if ch.isprintable())[:limit]
