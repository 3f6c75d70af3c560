"""What travels on the Redis bus: versioned JSON envelopes, never pickle.

Each envelope kind is a frozen dataclass with symmetric ``serialize()`` / ``parse()``.
Every room event (a message, a join, a part, a quit, a nick change) is stored in the room's
stream and published on its channel by one script; it is serialized *without* its id, and
the script adds the stream id it got from ``XADD`` as the first member (``{"id":"…",`` +
the rest), so the id every member sees is the one stored in the room's stream, and a node
that missed some of a room's events fetches them, in the same order, from the stream.

Versions
--------
* ``"v":1`` — one event per bus message: a join, a part, a quit, a rename, a private
  message, a canary, a sanction, and (from nodes publishing the previous format) a room
  message.  Stream entries are always single ``"v":1`` envelopes.
* ``"v":2`` — a :class:`RoomBatch`: the messages one node published in one room in one
  publishing round, in order, each the ``"v":1`` message envelope with its own stream id
  (``{"v":2,"t":"batch","e":[{"id":…,"v":1,"t":"msg",…}, …]}``).  A node parses and
  delivers a round at once.  Nodes of the previous release read only ``"v":1``, so a
  cluster that still runs one publishes format 1 (``--bus-format 1``, see OPERATIONS.md).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, ClassVar, Self

from .errors import HubbubError

__all__ = [
    "BATCH_VERSION",
    "VERSION",
    "BadEnvelope",
    "Canary",
    "DirectMsg",
    "Envelope",
    "RoomBatch",
    "RoomEvent",
    "RoomJoin",
    "RoomMsg",
    "RoomNick",
    "RoomPart",
    "RoomQuit",
    "RoomTopic",
    "Sanction",
    "parse",
    "ts_of_id",
]

VERSION = 1
"""The version of single-event envelopes."""

BATCH_VERSION = 2
"""The version of batch envelopes (:class:`RoomBatch`)."""


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



def _tags(d: dict[str, Any]) -> tuple[tuple[str, str], ...]:
    """Client-only tags of a message envelope (anything unreadable is left out)."""
    raw = d.get("tags")
    if not isinstance(raw, dict):
        return ()
    return tuple((k, v) for k, v in raw.items()
                 if isinstance(k, str) and k.startswith("+") and isinstance(v, str))

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
    notice: bool = False
    tags: tuple[tuple[str, str], ...] = ()
    """IRCv3 client-only tags (``+name``, value)."""

    @property
    def ts(self) -> float:
        return ts_of_id(self.id)

    def serialize(self) -> bytes:
        body: dict[str, Any] = {"v": VERSION, "t": self.kind, "room": self.room,
                                "from": self.sender, "sid": self.sid, "text": self.text}
        if self.action:
            body["act"] = True
        if self.notice:
            body["ntc"] = True
        if self.tags:
            body["tags"] = dict(self.tags)
        if self.id:
            body = {"id": self.id, **body}
        return _dumps(body)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RoomMsg:
        return cls(room=_s(d, "room"), sender=_s(d, "from"), sid=_s(d, "sid"),
                   text=_s(d, "text"), action=bool(d.get("act", False)), id=_s(d, "id"),
                   notice=d.get("ntc") is True, tags=_tags(d))


def _with_id(body: dict[str, Any], stream_id: str) -> dict[str, Any]:
    return {"id": stream_id, **body} if stream_id else body


@dataclass(frozen=True, slots=True)
class _Membership:
    """A join or a part: who, which room; ``id`` is its stream id (spliced in by the
    script that stored it, like a message's)."""

    kind: ClassVar[str]
    room: str
    nick: str
    id: str = ""

    def serialize(self) -> bytes:
        return _dumps(_with_id({"v": VERSION, "t": self.kind, "room": self.room,
                                "nick": self.nick}, self.id))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Self:
        return cls(room=_s(d, "room"), nick=_s(d, "nick"), id=_s(d, "id"))


@dataclass(frozen=True, slots=True)
class RoomJoin(_Membership):
    kind: ClassVar[str] = "join"


@dataclass(frozen=True, slots=True)
class RoomPart(_Membership):
    """A part; ``reason``: the one the leaving user gave (IRC ``PART #room :reason``)."""

    kind: ClassVar[str] = "part"
    reason: str | None = None

    def serialize(self) -> bytes:
        body: dict[str, Any] = {"v": VERSION, "t": self.kind, "room": self.room,
                                "nick": self.nick}
        if self.reason is not None:
            body["reason"] = self.reason
        return _dumps(_with_id(body, self.id))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Self:
        reason = d.get("reason")
        return cls(room=_s(d, "room"), nick=_s(d, "nick"), id=_s(d, "id"),
                   reason=reason if isinstance(reason, str) else None)


@dataclass(frozen=True, slots=True)
class RoomQuit:
    """A user left the cluster, as told to one of its rooms.  A user in several rooms
    quits once in each; ``eid`` is the same in all of them, so a member of several of
    those rooms is told once."""

    kind: ClassVar[str] = "rquit"
    room: str
    nick: str
    eid: str
    reason: str | None = None
    id: str = ""

    def serialize(self) -> bytes:
        body: dict[str, Any] = {"v": VERSION, "t": self.kind, "room": self.room,
                                "nick": self.nick, "eid": self.eid}
        if self.reason is not None:
            body["reason"] = self.reason
        return _dumps(_with_id(body, self.id))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RoomQuit:
        reason = d.get("reason")
        return cls(room=_s(d, "room"), nick=_s(d, "nick"), eid=_s(d, "eid"),
                   reason=reason if isinstance(reason, str) else None, id=_s(d, "id"))


@dataclass(frozen=True, slots=True)
class RoomNick:
    """A user renamed, as told to one of its rooms (``eid`` as for :class:`RoomQuit`);
    ``sid`` is the renaming session, which is told by its own node, not by the room."""

    kind: ClassVar[str] = "rnick"
    room: str
    old: str
    new: str
    sid: str
    eid: str
    id: str = ""

    def serialize(self) -> bytes:
        return _dumps(_with_id({"v": VERSION, "t": self.kind, "room": self.room,
                                "old": self.old, "new": self.new, "sid": self.sid,
                                "eid": self.eid}, self.id))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RoomNick:
        return cls(room=_s(d, "room"), old=_s(d, "old"), new=_s(d, "new"), sid=_s(d, "sid"),
                   eid=_s(d, "eid"), id=_s(d, "id"))


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
    notice: bool = False
    tags: tuple[tuple[str, str], ...] = ()

    def serialize(self) -> bytes:
        body: dict[str, Any] = {"v": VERSION, "t": self.kind, "from": self.sender,
                                "sid": self.sid, "to": self.to, "tof": self.to_folded,
                                "text": self.text, "id": self.id, "ts": self.ts}
        if self.notice:
            body["ntc"] = True
        if self.tags:
            body["tags"] = dict(self.tags)
        return _dumps(body)

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
                   to_folded=_s(d, "tof"), text=_s(d, "text"), id=_s(d, "id"), ts=seconds,
                   notice=d.get("ntc") is True, tags=_tags(d))


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


@dataclass(frozen=True, slots=True)
class RoomTopic:
    """A room's topic set (``text`` "": cleared) by ``nick``."""

    kind: ClassVar[str] = "topic"
    room: str
    nick: str
    text: str
    id: str = ""

    def serialize(self) -> bytes:
        return _dumps(_with_id({"v": VERSION, "t": self.kind, "room": self.room,
                                "nick": self.nick, "text": self.text}, self.id))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RoomTopic:
        return cls(room=_s(d, "room"), nick=_s(d, "nick"), text=_s(d, "text"),
                   id=_s(d, "id"))


RoomEvent = RoomMsg | RoomJoin | RoomPart | RoomQuit | RoomNick | RoomTopic
"""What a room's stream holds and its channel carries, each with its stream id."""


@dataclass(frozen=True, slots=True)
class RoomBatch:
    """The messages of one room published in one round, in order, each with its stream
    id (format 2 of the bus; see the module docstring).  Never stored in a stream."""

    kind: ClassVar[str] = "batch"
    room: str
    msgs: tuple[RoomMsg, ...]

    def serialize(self) -> bytes:
        items = b",".join(m.serialize() for m in self.msgs)
        return b'{"v":2,"t":"batch","e":[' + items + b"]}"

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RoomBatch:
        items = d.get("e")
        if not isinstance(items, list) or not items:
            raise BadEnvelope("batch without messages")
        msgs = []
        for item in items:
            if not isinstance(item, dict) or item.get("t") != RoomMsg.kind:
                raise BadEnvelope("batch item is not a room message")
            version = item.get("v")
            if isinstance(version, bool) or version != VERSION:
                raise BadEnvelope(f"batch item of unsupported version {version!r}")
            msgs.append(RoomMsg.from_dict(item))
        room = msgs[0].room
        if any(m.room != room for m in msgs) or any(not m.id for m in msgs):
            raise BadEnvelope("batch items of several rooms or without ids")
        return cls(room=room, msgs=tuple(msgs))


Envelope = RoomEvent | RoomBatch | DirectMsg | Canary | Sanction

_KINDS: dict[str, Any] = {c.kind: c for c in (RoomMsg, RoomJoin, RoomPart, RoomQuit,
                                               RoomNick, RoomTopic, DirectMsg, Canary,
                                               Sanction)}


def _s(d: dict[str, Any], key: str) -> str:
    value = d.get(key, "")
    if not isinstance(value, str):
        raise BadEnvelope(f"field {key!r} is not a string")
    return value


def parse(data: bytes | str) -> Envelope:
    """Parse one envelope; raises :class:`BadEnvelope` for anything we cannot read."""
    try:
        d = json.loads(data)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:  # too deeply nested
        raise BadEnvelope("not JSON") from exc
    if not isinstance(d, dict):
        raise BadEnvelope("not a JSON object")
    version = d.get("v")
    kind = d.get("t")
    if isinstance(version, bool) or version not in (VERSION, BATCH_VERSION):  # true == 1
        raise BadEnvelope(f"unsupported envelope version {version!r}")
    if version == BATCH_VERSION:
        if kind != RoomBatch.kind:
            raise BadEnvelope(f"unknown envelope type {kind!r} for version 2")
        return RoomBatch.from_dict(d)
    if kind == RoomBatch.kind:
        raise BadEnvelope("a batch envelope must be version 2")
    cls = _KINDS.get(kind) if isinstance(kind, str) else None  # a list/object is unhashable
    if cls is None:
        raise BadEnvelope(f"unknown envelope type {d.get('t')!r}")
    env: Envelope = cls.from_dict(d)
    return env
