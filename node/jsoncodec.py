"""The JSON mode, for programs: one JSON object per line each way.

A client sends ops (``{"op": "say", "text": "hi", "ref": 1}``), the node sends events
(``{"ev": "ack", "ref": 1, "id": "..."}``); ``docs/PROTOCOL.md`` lists both.  Parsing
dispatches on the op name, encoding on the command's class; each ``match`` ends in
``assert_never``, so mypy proves both cover every op and every command, and
``encode_command`` is the exact inverse of ``parse`` (a property test checks it).
Pure: no I/O.
"""

from __future__ import annotations

import json
from typing import Any, Literal, TypeGuard, assert_never, get_args

import node.model as m
from node.codec import Ref, printable, sorted_nicks
from node.durations import DurationError, parse_duration
from node.errors import BadArguments, BadJson, UnknownCommand

__all__ = ["JSON", "OPS", "JsonCodec", "JsonObject", "OpName"]

JsonObject = dict[str, object]

OpName = Literal[
    "hello", "say", "me", "join", "part", "msg", "nick", "who", "rooms", "history", "ping",
    "help", "quit", "auth", "login", "register", "password", "oper", "kick", "ban", "unban",
    "mute", "unmute", "bans",
]
"""The ``op`` of every JSON command."""

OPS: frozenset[str] = frozenset(get_args(OpName))


def _encodable(value: str) -> bool:
    """False for strings holding lone surrogates (JSON ``"\\ud800"`` decodes to one)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


class _Fields:
    """Typed access to the fields of one JSON command; errors name the field."""

    def __init__(self, obj: JsonObject, ref: Ref) -> None:
        self.obj = obj
        self.ref = ref

    def _bad(self, text: str) -> BadArguments:
        return BadArguments(text, ref=self.ref)

    def opt_str(self, key: str) -> str | None:
        value = self.obj.get(key)
        if value is None:
            return None
        if not isinstance(value, str):
            raise self._bad(f"field {key!r} must be a string")
        if not _encodable(value):
            raise self._bad(f"field {key!r} is not valid Unicode")
        return value

    def req_str(self, key: str) -> str:
        value = self.opt_str(key)
        if value is None:
            raise self._bad(f"missing field {key!r} (a string)")
        return value

    def opt_str_list(self, key: str) -> tuple[str, ...]:
        value = self.obj.get(key)
        if value is None:
            return ()
        if not isinstance(value, list) or not all(
                isinstance(v, str) and _encodable(v) for v in value):
            raise self._bad(f"field {key!r} must be a list of strings")
        return tuple(value)

    def opt_duration(self, key: str) -> int | None:
        """Seconds, given as a positive integer or as a duration string (``"10m"``)."""
        value = self.obj.get(key)
        if value is None:
            return None
        if isinstance(value, str):
            try:
                return parse_duration(value)
            except DurationError as exc:
                raise self._bad(f"field {key!r}: {exc}") from None
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise self._bad(f"field {key!r} must be a positive integer of seconds or a "
                            "duration like \"10m\"")
        try:
            return parse_duration(str(value))
        except DurationError as exc:
            raise self._bad(f"field {key!r}: {exc}") from None

    def opt_positive_int(self, key: str) -> int | None:
        value = self.obj.get(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise self._bad(f"field {key!r} must be a positive integer")
        return value


def _json_ref(obj: JsonObject) -> Ref:
    ref = obj.get("ref")
    if ref is None:
        return None
    if isinstance(ref, bool) or not isinstance(ref, str | int):
        raise BadArguments("field 'ref' must be a string or an integer")
    if isinstance(ref, str) and not _encodable(ref):
        raise BadArguments("field 'ref' is not valid Unicode")
    return ref


def _is_op(op: str) -> TypeGuard[OpName]:
    return op in OPS


def _command(op: OpName, f: _Fields) -> m.Command:
    """The command an op stands for (:meth:`JsonCodec.encode_command` is the inverse)."""
    match op:
        case "hello":
            return m.Hello(nick=f.req_str("nick"), token=f.opt_str("token"),
                           rooms=f.opt_str_list("rooms"), secret=f.opt_str("secret"),
                           password=f.opt_str("password"), ref=f.ref)
        case "say":
            return m.Say(text=f.req_str("text"), room=f.opt_str("room"), ref=f.ref)
        case "me":
            return m.Me(text=f.req_str("text"), room=f.opt_str("room"), ref=f.ref)
        case "join":
            return m.Join(room=f.req_str("room"), ref=f.ref)
        case "part":
            return m.Part(room=f.opt_str("room"), reason=f.opt_str("reason"), ref=f.ref)
        case "msg":
            return m.Msg(to=f.req_str("to"), text=f.req_str("text"), ref=f.ref)
        case "nick":
            return m.Nick(nick=f.req_str("nick"), ref=f.ref)
        case "who":
            return m.Who(room=f.opt_str("room"), ref=f.ref)
        case "rooms":
            return m.Rooms(after=f.opt_str("after"), limit=f.opt_positive_int("limit"),
                           ref=f.ref)
        case "history":
            return m.History(room=f.opt_str("room"), limit=f.opt_positive_int("limit"),
                             after=f.opt_str("after"), ref=f.ref)
        case "ping":
            return m.Ping(ref=f.ref)
        case "help":
            return m.Help(ref=f.ref)
        case "quit":
            return m.Quit(reason=f.opt_str("reason"), ref=f.ref)
        case "auth":
            return m.Auth(secret=f.req_str("secret"), ref=f.ref)
        case "login":
            return m.Login(nick=f.req_str("nick"), password=f.req_str("password"), ref=f.ref)
        case "register":
            return m.Register(password=f.req_str("password"), ref=f.ref)
        case "password":
            return m.Password(password=f.req_str("password"), ref=f.ref)
        case "oper":
            return m.Oper(secret=f.req_str("secret"), ref=f.ref)
        case "kick":
            return m.Kick(nick=f.req_str("nick"), reason=f.opt_str("reason"), ref=f.ref)
        case "ban":
            return m.Ban(target=f.req_str("target"), duration=f.opt_duration("duration"),
                         reason=f.opt_str("reason"), ref=f.ref)
        case "unban":
            return m.Unban(target=f.req_str("target"), ref=f.ref)
        case "mute":
            return m.Mute(nick=f.req_str("nick"), duration=f.opt_duration("duration"),
                          reason=f.opt_str("reason"), ref=f.ref)
        case "unmute":
            return m.Unmute(nick=f.req_str("nick"), ref=f.ref)
        case "bans":
            return m.Bans(ref=f.ref)
        case _:
            assert_never(op)


def _op(op: OpName, ref: Ref, **fields: object) -> JsonObject:
    """An op object: the fields that are not None, then ``ref`` when there is one."""
    obj: JsonObject = {"op": op}
    obj.update((key, value) for key, value in fields.items() if value is not None)
    if ref is not None:
        obj["ref"] = ref
    return obj


def _message_object(message: m.Message) -> JsonObject:
    obj: JsonObject = {
        "room": message.room,
        "from": message.sender,
        "text": message.text,
        "id": message.id,
        "ts": message.ts,
    }
    if message.action:
        obj["action"] = True
    return obj


def _json_event(event: m.Event) -> JsonObject:
    match event:
        case m.Notice(text=text):
            return {"ev": "notice", "text": text}
        case m.AskNick(text=text):
            return {"ev": "ask_nick", "text": text}
        case m.Welcome(nick=nick, node=node, rooms=rooms, token=token, resumed=resumed):
            return {"ev": "welcome", "nick": nick, "node": node, "rooms": list(rooms),
                    "token": token, "resumed": resumed or None}
        case m.Message():
            return {"ev": "msg", **_message_object(event)}
        case m.Private(sender=sender, to=to, text=text, id=id_, ts=ts):
            return {"ev": "pm", "from": sender, "to": to, "text": text, "id": id_, "ts": ts}
        case m.Joined(room=room, nick=nick):
            return {"ev": "join", "room": room, "nick": nick}
        case m.Parted(room=room, nick=nick, reason=reason):
            out: dict[str, Any] = {"ev": "part", "room": room, "nick": nick}
            if reason is not None:
                out["reason"] = reason
            return out
        case m.TopicChanged(room=room, nick=nick, text=text):
            return {"ev": "topic", "room": room, "nick": nick, "text": text}
        case m.Quitted(nick=nick, reason=reason):
            return {"ev": "quit", "nick": nick, "reason": reason}
        case m.NickChanged(old=old, new=new):
            return {"ev": "nick", "old": old, "new": new}
        case m.WhoReply(room=room, nicks=nicks, ref=ref):
            return {"ev": "who", "room": room, "nicks": sorted_nicks(nicks), "ref": ref}
        case m.RoomsReply(rooms=rooms, ref=ref, more=more):
            listing = [{"room": room, "members": members} for room, members in rooms]
            if more:  # like "resumed": present only when true
                return {"ev": "rooms", "rooms": listing, "more": True, "ref": ref}
            return {"ev": "rooms", "rooms": listing, "ref": ref}
        case m.HistoryReply(room=room, messages=messages, ref=ref, complete=complete,
                            oldest=oldest):
            listing = [_message_object(m) for m in messages]
            obj: JsonObject = {"ev": "history", "room": room, "messages": listing, "ref": ref}
            if not complete:  # absent means complete
                obj.update(complete=False, oldest=oldest)
            return obj
        case m.Gap(room=room, oldest=oldest):
            return {"ev": "gap", "room": room, "oldest": oldest}
        case m.BansReply(entries=entries, ref=ref):
            listing = [{"kind": e.kind, "target": e.target, "by": e.by, "reason": e.reason,
                        "expires_in": round(e.expires_in, 3)} for e in entries]
            for item in listing:
                if item["reason"] is None:
                    del item["reason"]
            return {"ev": "bans", "bans": listing, "ref": ref}
        case m.Ack(ref=ref, id=id_):
            # "ref" is always present in an ack, even when null.
            return {"ev": "ack", "ref": ref, **({"id": id_} if id_ is not None else {})}
        case m.Error(code=code, text=text, ref=ref):
            return {"ev": "error", "code": code, "text": text, "ref": ref}
        case m.Pong(ref=ref):
            return {"ev": "pong", "ref": ref}
        case m.Bye(reason=reason, reconnect=reconnect):
            return {"ev": "bye", "reason": reason, "reconnect": reconnect or None}
        case _:
            assert_never(event)


class JsonCodec:
    """One JSON object per line, for programs.  Own room messages are echoed with their id."""

    name = "json"
    echo_own = True

    def parse(self, line: str, registered: bool) -> m.Command | None:
        """Parse one JSON line (see ``docs/PROTOCOL.md``); ``registered`` is not needed."""
        if not line.strip():
            return None
        try:
            obj = json.loads(line)
        except (ValueError, RecursionError):
            raise BadJson() from None
        if not isinstance(obj, dict):
            raise BadJson()
        ref = _json_ref(obj)
        op = obj.get("op")
        if not isinstance(op, str):
            raise UnknownCommand("missing field 'op' (a string)", ref=ref)
        if not _is_op(op):
            raise UnknownCommand(f"unknown op {printable(op)!r}", ref=ref)
        return _command(op, _Fields(obj, ref))

    def encode_command(self, cmd: m.Command) -> JsonObject:
        """The op a node parses back into ``cmd`` (fields that are None left out):
        ``parse(json.dumps(encode_command(cmd)), ...) == cmd``.

        Raises:
            ValueError: ``cmd`` is a :class:`~node.model.BlankLine`, which only the text
                mode produces and which has no op.
        """
        ref = cmd.ref
        match cmd:
            case m.Hello(nick=nick, token=token, rooms=rooms, secret=secret, password=password):
                return _op("hello", ref, nick=nick, token=token, rooms=list(rooms) or None,
                           secret=secret, password=password)
            case m.Say(text=text, room=room):
                return _op("say", ref, text=text, room=room)
            case m.Me(text=text, room=room):
                return _op("me", ref, text=text, room=room)
            case m.Join(room=room):
                return _op("join", ref, room=room)
            case m.Part(room=room, reason=reason):
                return _op("part", ref, room=room, reason=reason)
            case m.Msg(to=to, text=text):
                return _op("msg", ref, to=to, text=text)
            case m.Nick(nick=nick):
                return _op("nick", ref, nick=nick)
            case m.Who(room=room):
                return _op("who", ref, room=room)
            case m.Rooms(after=after, limit=limit):
                return _op("rooms", ref, after=after, limit=limit)
            case m.History(room=room, limit=limit, after=after):
                return _op("history", ref, room=room, limit=limit, after=after)
            case m.Ping():
                return _op("ping", ref)
            case m.Help():
                return _op("help", ref)
            case m.Quit(reason=reason):
                return _op("quit", ref, reason=reason)
            case m.Auth(secret=secret):
                return _op("auth", ref, secret=secret)
            case m.Login(nick=nick, password=password):
                return _op("login", ref, nick=nick, password=password)
            case m.Register(password=password):
                return _op("register", ref, password=password)
            case m.Password(password=password):
                return _op("password", ref, password=password)
            case m.Oper(secret=secret):
                return _op("oper", ref, secret=secret)
            case m.Kick(nick=nick, reason=reason):
                return _op("kick", ref, nick=nick, reason=reason)
            case m.Ban(target=target, duration=duration, reason=reason):
                return _op("ban", ref, target=target, duration=duration, reason=reason)
            case m.Unban(target=target):
                return _op("unban", ref, target=target)
            case m.Mute(nick=nick, duration=duration, reason=reason):
                return _op("mute", ref, nick=nick, duration=duration, reason=reason)
            case m.Unmute(nick=nick):
                return _op("unmute", ref, nick=nick)
            case m.Bans():
                return _op("bans", ref)
            case m.BlankLine():
                raise ValueError("a blank line has no JSON op")
            case _:
                assert_never(cmd)

    def render(self, event: m.Event) -> bytes:
        """Render ``event`` as one compact JSON object line; keys whose value is None are
        left out (except ``ref`` in ``ack``)."""
        obj = _json_event(event)
        if not isinstance(event, m.Ack):
            obj = {key: value for key, value in obj.items() if value is not None}
        text = json.dumps(obj, separators=(",", ":"), ensure_ascii=False)
        return (text + "\n").encode("utf-8", "replace")


JSON = JsonCodec()
"""The JSON codec (stateless: one for every connection)."""
