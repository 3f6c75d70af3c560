"""What travels on the Redis bus: versioned JSON envelopes, never pickle.

Each envelope kind is a frozen dataclass with symmetric ``serialize()`` / ``parse()``.
A room message is serialized *without* its id: the publish script adds the stream id it
got from ``XADD`` as the first member (``{"id":"…",`` + the rest), so the id every member
sees is the one stored in the room's history.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, ClassVar, Self

from .errors import HubbubError

__all__ = [
    "VERSION",
    "BadEnvelope",
    "Canary",
    "DirectMsg",
    "Envelope",
    "NickChange",
    "RoomJoin",
    "RoomMsg",
    "RoomPart",
    "Sanction",
    "UserQuit",
    "parse",
    "ts_of_id",
]

VERSION = 1


class BadEnvelope(HubbubError):
    code = "bad-envelope"
    default_text = "unreadable bus envelope"


def ts_of_id(stream_id: str) -> float:
    """Seconds since the epoch of a Redis stream id (``<ms>-<seq>``)."""
    ms, _, _ = stream_id.partition("-")
    try:
        return int(ms) / 1000.0
    except ValueError:
        return 0.0


def _dumps(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


@dataclass(frozen=True, slots=True)
class RoomMsg:
    """A message said in a room; ``sid`` is the sending session, ``id`` the stream id."""

    kind: ClassVar[str] = "msg"
    room: str
    sender: str
    sid: str
    text: str
    action: bool = False
    id: str = ""

    @property
    def ts(self) -> float:
        return ts_of_id(self.id)

    def serialize(self) -> bytes:
        body: dict[str, Any] = {"v": VERSION, "t": self.kind, "room": self.room,
                                "from": self.sender, "sid": self.sid, "text": self.text}
        if self.action:
            body["act"] = True
        if self.id:
            body = {"id": self.id, **body}
        return _dumps(body)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RoomMsg:
        return cls(room=_s(d, "room"), sender=_s(d, "from"), sid=_s(d, "sid"),
                   text=_s(d, "text"), action=bool(d.get("act", False)), id=_s(d, "id"))


@dataclass(frozen=True, slots=True)
class _Membership:
    """A join or a part: who, which room."""

    kind: ClassVar[str]
    room: str
    nick: str

    def serialize(self) -> bytes:
        return _dumps({"v": VERSION, "t": self.kind, "room": self.room, "nick": self.nick})

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Self:
        return cls(room=_s(d, "room"), nick=_s(d, "nick"))


@dataclass(frozen=True, slots=True)
class RoomJoin(_Membership):
    kind: ClassVar[str] = "join"


@dataclass(frozen=True, slots=True)
class RoomPart(_Membership):
    kind: ClassVar[str] = "part"


@dataclass(frozen=True, slots=True)
class UserQuit:
    """A user left the cluster; delivered to local members of any of ``rooms``."""

    kind: ClassVar[str] = "quit"
    nick: str
    rooms: tuple[str, ...]
    reason: str | None = None

    def serialize(self) -> bytes:
        body: dict[str, Any] = {"v": VERSION, "t": self.kind, "nick": self.nick,
                                "rooms": list(self.rooms)}
        if self.reason is not None:
            body["reason"] = self.reason
        return _dumps(body)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> UserQuit:
        reason = d.get("reason")
        return cls(nick=_s(d, "nick"), rooms=_rooms(d),
                   reason=reason if isinstance(reason, str) else None)


@dataclass(frozen=True, slots=True)
class NickChange:
    """A user renamed; delivered to local members of ``rooms`` and to the session ``sid``."""

    kind: ClassVar[str] = "nick"
    old: str
    new: str
    rooms: tuple[str, ...]
    sid: str

    def serialize(self) -> bytes:
        return _dumps({"v": VERSION, "t": self.kind, "old": self.old, "new": self.new,
                       "rooms": list(self.rooms), "sid": self.sid})

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> NickChange:
        return cls(old=_s(d, "old"), new=_s(d, "new"), rooms=_rooms(d), sid=_s(d, "sid"))


@dataclass(frozen=True, slots=True)
class DirectMsg:
    """A private message, published to the channel of the node holding ``to``."""

    kind: ClassVar[str] = "pm"
    sender: str
    sid: str
    to: str
    to_folded: str
    text: str
    id: str
    ts: float

    def serialize(self) -> bytes:
        return _dumps({"v": VERSION, "t": self.kind, "from": self.sender, "sid": self.sid,
                       "to": self.to, "tof": self.to_folded, "text": self.text,
                       "id": self.id, "ts": self.ts})

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DirectMsg:
        ts = d.get("ts")
        if not isinstance(ts, int | float) or isinstance(ts, bool):
            raise BadEnvelope("pm without a numeric ts")
        try:
            seconds = float(ts)
        except OverflowError:  # an integer too large for a float
            raise BadEnvelope("pm with an out-of-range ts") from None
        if not math.isfinite(seconds):
            raise BadEnvelope("pm with an out-of-range ts")
        return cls(sender=_s(d, "from"), sid=_s(d, "sid"), to=_s(d, "to"),
                   to_folded=_s(d, "tof"), text=_s(d, "text"), id=_s(d, "id"), ts=seconds)


@dataclass(frozen=True, slots=True)
class Canary:
    """A node's probe of its own subscription: published to its own channel, it must
    come back; a node whose canaries stop coming back is deaf and not ready."""

    kind: ClassVar[str] = "canary"
    node: str
    seq: int

    def serialize(self) -> bytes:
        return _dumps({"v": VERSION, "t": self.kind, "node": self.node, "seq": self.seq})

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Canary:
        seq = d.get("seq")
        if not isinstance(seq, int) or isinstance(seq, bool):
            raise BadEnvelope("canary without an integer seq")
        return cls(node=_s(d, "node"), seq=seq)


@dataclass(frozen=True, slots=True)
class Sanction:
    """An operator's action for the node(s) holding its target: ``action`` is ``kick``,
    ``ban`` (disconnect), ``mute`` or ``unmute`` — or ``ghost``: the name's owner logged
    in elsewhere with its password (``by`` is the name); the target is a folded nickname
    (``folded``, sent to the node holding it) or an address (``ip``, sent to every node)."""

    kind: ClassVar[str] = "sanction"
    action: str
    folded: str
    ip: str
    by: str
    reason: str | None = None
    seconds: float = 0.0

    def serialize(self) -> bytes:
        body: dict[str, Any] = {"v": VERSION, "t": self.kind, "action": self.action,
                                "folded": self.folded, "ip": self.ip, "by": self.by,
                                "seconds": self.seconds}
        if self.reason is not None:
            body["reason"] = self.reason
        return _dumps(body)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Sanction:
        reason = d.get("reason")
        seconds = d.get("seconds", 0)
        if isinstance(seconds, bool) or not isinstance(seconds, int | float):
            raise BadEnvelope("sanction without numeric seconds")
        try:
            value = float(seconds)
        except OverflowError:
            raise BadEnvelope("sanction with out-of-range seconds") from None
        if not math.isfinite(value):
            raise BadEnvelope("sanction with out-of-range seconds")
        return cls(action=_s(d, "action"), folded=_s(d, "folded"), ip=_s(d, "ip"),
                   by=_s(d, "by"), reason=reason if isinstance(reason, str) else None,
                   seconds=value)


Envelope = (RoomMsg | RoomJoin | RoomPart | UserQuit | NickChange | DirectMsg | Canary |
            Sanction)

_KINDS: dict[str, Any] = {c.kind: c for c in (RoomMsg, RoomJoin, RoomPart, UserQuit,
                                               NickChange, DirectMsg, Canary, Sanction)}


def _s(d: dict[str, Any], key: str) -> str:
    value = d.get(key, "")
    if not isinstance(value, str):
        raise BadEnvelope(f"field {key!r} is not a string")
    return value


def _rooms(d: dict[str, Any]) -> tuple[str, ...]:
    rooms = d.get("rooms", [])
    if not isinstance(rooms, list) or not all(isinstance(r, str) for r in rooms):
        raise BadEnvelope("field 'rooms' is not a list of strings")
    return tuple(rooms)


def parse(data: bytes | str) -> Envelope:
    """Parse one envelope; raises :class:`BadEnvelope` for anything we cannot read."""
    try:
        d = json.loads(data)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:  # too deeply nested
        raise BadEnvelope("not JSON") from exc
    if not isinstance(d, dict):
        raise BadEnvelope("not a JSON object")
    version = d.get("v")
    if isinstance(version, bool) or version != VERSION:  # JSON true == 1 in Python
        raise BadEnvelope(f"unsupported envelope version {version!r}")
    kind = d.get("t")
    cls = _KINDS.get(kind) if isinstance(kind, str) else None  # a list/object is unhashable
    if cls is None:
        raise BadEnvelope(f"unknown envelope type {d.get('t')!r}")
    env: Envelope = cls.from_dict(d)
    return env
