"""What the client shows: one plain item per line, whatever renders it (UI or script)."""

from __future__ import annotations

import time
import unicodedata
from dataclasses import dataclass, field
from typing import Literal

__all__ = ["Kind", "Shown", "plain", "safe"]

Kind = Literal["msg", "action", "pm", "join", "part", "quit", "nick", "notice", "error",
               "history", "status"]


@dataclass(frozen=True, slots=True)
class Shown:
    """One line for the user.

    ``kind`` picks the format: ``msg``/``action`` (room messages, ``room``, ``nick``,
    ``text``, ``id``), ``pm`` (``nick`` is the sender, ``room`` None, ``to`` the receiver),
    ``join``/``part``/``quit``/``nick`` (``nick``; ``text`` holds the reason or new
    name), ``notice``, ``error`` (``code`` and ``text``), ``status`` (connection changes:
    connected, reconnecting, failed over).  ``history`` marks messages that arrived as
    catch-up or history rather than live.
    """

    kind: Kind
    text: str = ""
    room: str | None = None
    nick: str | None = None
    id: str | None = None
    ts: float = field(default_factory=time.time)
    own: bool = False
    code: str | None = None
    to: str | None = None
    history: bool = False


def safe(text: str) -> str:
    """Neutralise anything control-like again before it reaches a terminal (the node
    already strips it; a client trusts no wire): controls and format characters become
    U+FFFD except TAB and the zero-width joiner, which emoji need."""
    out = []
    for ch in text:
        if ch == "\t" or ch == "\u200d":
            out.append(ch)
        elif unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp", "Cs"):
            out.append("\ufffd")
        else:
            out.append(ch)
    return "".join(out)


def plain(item: Shown) -> str:
    """One line of plain text for ``item`` (scripts; the text-mode line formats).  Every
    field goes through :func:`safe` here, whatever its origin."""
    return safe(_plain(item))


def _plain(item: Shown) -> str:
    match item.kind:
        case "msg":
            return f"[{item.room}] {item.nick}: {item.text}"
        case "action":
            return f"[{item.room}] * {item.nick} {item.text}"
        case "pm":
            return f"[pm] {item.nick}: {item.text}" if not item.own else \
                f"[pm -> {item.to}] {item.text}"
        case "join":
            return f"* {item.nick} joined {item.room}"
        case "part":
            return f"* {item.nick} left {item.room}"
        case "quit":
            return f"* {item.nick} quit" + (f" ({item.text})" if item.text else "")
        case "nick":
            return f"* {item.nick} is now {item.text}"
        case "error":
            return f"! {item.code}: {item.text}"
        case _:
            return f"* {item.text}"
