"""The sans-I/O wire protocol: bytes in, commands out; events in, bytes out.

Theory of operation
-------------------
One :class:`ServerConnection` exists per TCP connection.  The session hands it whatever it
read (``receive_data``) and, at end of stream, calls ``receive_eof``; both return the
commands and protocol errors those bytes contained, in input order.  Nothing here raises on
bad input, sleeps or touches a socket, so all of it is tested without an event loop.

Layers, bottom up:

1. :class:`LineFramer` cuts the byte stream at ``\\n`` (only there), drops one trailing
   ``\\r`` and decodes UTF-8.  It enforces the line limit itself: an over-long line is
   reported once and discarded up to its newline (no tail of it is ever delivered), and a
   stream that goes on for ``max_buffer`` bytes without any newline is fatal.  It remembers
   how far it has searched, so trickled input is not rescanned.
2. A :class:`Codec` turns one line into a :class:`~node.model.Command` (or raises a
   :class:`~node.errors.ProtocolError`) and one :class:`~node.model.Event` into bytes.
   :class:`TextCodec` serves people with ``nc``/``telnet``; :class:`JsonCodec` serves
   programs.  ``render`` is pure: the node encodes an event once per mode and sends the
   same bytes to every recipient.
3. :class:`ServerConnection` ties them together.  Its ``mode`` is ``"pending"`` until the
   first non-blank line, which picks the codec for the rest of the connection: a line that
   starts with ``{`` (after whitespace) selects JSON, anything else text.  While pending,
   events are rendered as text (the greeting), and a blank line is a ``BlankLine`` (as in
   text mode before registration: the session asks for the name again).  Its caller
   either uses the lists that ``receive_data``/``receive_eof`` return or pulls the same
   items with ``next_command``.

State: ``mode`` (pending -> text | json, once), ``registered`` (set by the session after a
successful ``Hello``; in text mode it decides whether a line is a nickname or a command),
the framer's buffer and the queue behind ``next_command``.  Lines are parsed as soon as
they arrive, so lines that follow a ``Hello`` in the same batch are parsed as if it will
succeed.  After a fatal error the connection returns nothing more; the session is expected
to close it.
"""

from __future__ import annotations

import json
import re
import time
from collections import deque
from collections.abc import Callable
from typing import Literal, Protocol

from node.durations import DurationError, format_duration, parse_duration
from node.errors import (
    BadArguments,
    BadEncoding,
    BadJson,
    BufferOverflow,
    FatalProtocolError,
    LineTooLong,
    ProtocolError,
    UnknownCommand,
)
from node.model import (
    Ack,
    AskNick,
    Auth,
    Ban,
    BanEntry,
    Bans,
    BansReply,
    BlankLine,
    Bye,
    Command,
    Error,
    Event,
    Hello,
    Help,
    History,
    HistoryReply,
    Join,
    Joined,
    Kick,
    Login,
    Me,
    Message,
    Msg,
    Mute,
    Nick,
    NickChanged,
    Notice,
    Oper,
    Part,
    Parted,
    Password,
    Ping,
    Pong,
    Private,
    Quit,
    Quitted,
    Register,
    Rooms,
    RoomsReply,
    Say,
    Unban,
    Unmute,
    Welcome,
    Who,
    WhoReply,
)

__all__ = [
    "CODECS",
    "JSON",
    "TEXT",
    "USAGE",
    "Codec",
    "JsonCodec",
    "LineFramer",
    "Mode",
    "ServerConnection",
    "TextCodec",
]

Mode = Literal["pending", "text", "json"]
Ref = str | int | None

_CR = 0x0D


# --------------------------------------------------------------------------- framing


class LineFramer:
    """Split a byte stream into UTF-8 lines, enforcing the line and buffer limits.

    ``feed`` returns decoded lines (without ``\\n`` and one trailing ``\\r``) and errors,
    in order: :class:`LineTooLong` once per line longer than ``max_line`` bytes (the whole
    line is discarded), :class:`BadEncoding` for a line that is not UTF-8, and
    :class:`BufferOverflow` when more than ``max_buffer`` bytes arrive without a newline
    (after which all input is ignored).  The output does not depend on how the input is
    chunked.
    """

    def __init__(self, max_line: int = 4096, max_buffer: int = 16384) -> None:
        if max_line < 1 or max_buffer < 1:
            raise ValueError("max_line and max_buffer must be positive")
        self.max_line = max_line
        self.max_buffer = max_buffer
        self._buf = bytearray()
        self._searched = 0  # no newline in self._buf[:self._searched]
        self._discarding = False  # inside an over-long line (already reported)
        self._discarded = 0  # bytes of the current line already thrown away
        self._closed = False  # after BufferOverflow or EOF

    @property
    def closed(self) -> bool:
        """True once the framer ignores input (after a buffer overflow or EOF)."""
        return self._closed

    def feed(self, data: bytes) -> list[str | ProtocolError]:
        """Add received bytes; return the complete lines and errors they finish."""
        out: list[str | ProtocolError] = []
        if self._closed or not data:
            return out
        buf = self._buf
        buf += data
        while True:
            newline = buf.find(b"\n", self._searched)
            if newline == -1:
                self._searched = len(buf)
                self._check_partial(out)
                return out
            if self._discarded + newline > self.max_buffer:
                # The stream went on too long without a newline, even though this chunk
                # brought one: report exactly what trickled input would have reported.
                if not self._discarding and self._too_long_prefix(self.max_buffer + 1):
                    out.append(LineTooLong())
                self._overflow(out)
                return out
            if not self._discarding:
                self._emit_line(bytes(buf[:newline]), out)
            del buf[: newline + 1]
            self._searched = 0
            self._discarding = False
            self._discarded = 0

    def feed_eof(self) -> list[str | ProtocolError]:
        """End of stream: deliver an unterminated last line as if it had a newline."""
        if self._closed:
            return []
        out = self.feed(b"\n") if self._buf or self._discarding else []
        self._closed = True
        self._buf.clear()
        return out

    # -- internals

    def _emit_line(self, line: bytes, out: list[str | ProtocolError]) -> None:
        if line.endswith(b"\r"):
            line = line[:-1]
        if len(line) > self.max_line:
            out.append(LineTooLong())
            return
        try:
            out.append(line.decode("utf-8"))
        except UnicodeDecodeError:
            out.append(BadEncoding())

    def _too_long_prefix(self, length: int) -> bool:
        """Is a line whose first ``length`` buffered bytes are known too long already?

        One byte past ``max_line`` may still be the ``\\r`` of a CRLF, so it only counts
        when it is not ``\\r``.
        """
        if length > self.max_line + 1:
            return True
        return length == self.max_line + 1 and self._buf[length - 1] != _CR

    def _check_partial(self, out: list[str | ProtocolError]) -> None:
        """Limits on the unterminated line at the end of the buffer."""
        buf = self._buf
        if not self._discarding and self._too_long_prefix(min(len(buf), self.max_buffer + 1)):
            out.append(LineTooLong())
            self._discarding = True
        if self._discarding:
            self._discarded += len(buf)
            buf.clear()
            self._searched = 0
        if self._discarded + len(buf) > self.max_buffer:
            self._overflow(out)

    def _overflow(self, out: list[str | ProtocolError]) -> None:
        out.append(BufferOverflow())
        self._closed = True
        self._buf.clear()
        self._searched = 0


# --------------------------------------------------------------------------- codecs


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


def _oneline(value: str) -> str:
    """A value as it may appear inside one output line."""
    return value.replace("\r", " ").replace("\n", " ")


def _hms(ts: float) -> str:
    return time.strftime("%H:%M:%S", time.gmtime(ts))


def _plural(count: int, word: str) -> str:
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


def _sorted_nicks(nicks: tuple[str, ...]) -> list[str]:
    return sorted(nicks, key=lambda nick: (nick.casefold(), nick))


def _printable(word: str, limit: int = 32) -> str:
    """A piece of client input safe to quote back in an error message."""
    return "".join(ch for ch in word if ch.isprintable())[:limit]


# --------------------------------------------------------------------------- text mode

_QUIT_WORDS = frozenset({"q", "exit", "close", "disconnect"})
_QUIT_COMMANDS = frozenset({"quit", "exit", "q", "close", "disconnect"})
_COMMAND_RE = re.compile(r"/([^ \t]*)(?:[ \t]+(.*))?", re.DOTALL)
_ARG_SPLIT_RE = re.compile(r"[ \t]+")
_DIGITS_RE = re.compile(r"[0-9]+", re.ASCII)

USAGE: dict[str, str] = {
    # usage texts of the text commands, sent with bad-args
    "join": "usage: /join ROOM",
    "part": "usage: /part [ROOM]",
    "msg": "usage: /msg NICK TEXT",
    "me": "usage: /me TEXT",
    "nick": "usage: /nick NEW",
    "who": "usage: /who [ROOM]",
    "rooms": "usage: /rooms",
    "history": "usage: /history [N] (N a positive integer)",
    "help": "usage: /help",
    "ping": "usage: /ping",
    "quit": "usage: /quit [REASON]",
    "auth": "usage: /auth TOKEN",
    "login": "usage: /login NICK PASSWORD",
    "register": "usage: /register PASSWORD",
    "password": "usage: /password NEW-PASSWORD",
    "oper": "usage: /oper SECRET",
    "kick": "usage: /kick NICK [REASON]",
    "ban": "usage: /ban NICK|ADDRESS [DURATION] [REASON] (DURATION like 30s, 10m, 2h, 7d)",
    "unban": "usage: /unban NICK|ADDRESS",
    "mute": "usage: /mute NICK [DURATION] [REASON] (DURATION like 30s, 10m, 2h, 7d)",
    "unmute": "usage: /unmute NICK",
    "bans": "usage: /bans",
}

_BEFORE_NAME = frozenset({"auth", "login"})
"""Text commands understood before a nickname is chosen (the others are nick attempts)."""


def _one_word(rest: str, command: str, required: bool) -> str | None:
    """The single word argument of ``command``, or None when optional and absent."""
    words = rest.split()
    if len(words) == 1:
        return words[0]
    if not words and not required:
        return None
    raise BadArguments(USAGE[command])


def _word_and_text(rest: str, command: str) -> tuple[str, str]:
    """``NICK TEXT``: split on the first run of spaces; TEXT keeps its inner spacing."""
    parts = _ARG_SPLIT_RE.split(rest, maxsplit=1)
    if len(parts) != 2 or not parts[0] or not parts[1].strip():
        raise BadArguments(USAGE[command])
    return parts[0], parts[1]


def _secret(rest: str, command: str) -> str:
    """A secret argument: the rest of the line without surrounding spaces."""
    secret = rest.strip()
    if not secret:
        raise BadArguments(USAGE[command])
    return secret


def _target_duration_reason(rest: str, command: str) -> tuple[str, int | None, str | None]:
    """``TARGET [DURATION] [REASON]``: the second word is a duration when it reads as
    one, otherwise the reason starts there."""
    parts = _ARG_SPLIT_RE.split(rest.strip(), maxsplit=2)
    if not parts or not parts[0]:
        raise BadArguments(USAGE[command])
    target, duration, reason = parts[0], None, None
    if len(parts) > 1:
        try:
            duration = parse_duration(parts[1])
        except DurationError as exc:
            if parts[1][:1].isdigit():  # meant as a duration, but not one we accept
                raise BadArguments(f"{exc}; {USAGE[command]}") from None
            reason = " ".join(parts[1:])
        else:
            reason = parts[2] if len(parts) > 2 else None
    return target, duration, reason


def _parse_text_command(word: str, rest: str) -> Command:
    name = word.lower()
    if name in _SECURITY_COMMANDS:
        return _SECURITY_COMMANDS[name](rest)
    if name == "join":
        room = _one_word(rest, name, required=True)
        assert room is not None
        return Join(room=room)
    if name == "part":
        return Part(room=_one_word(rest, name, required=False))
    if name == "msg":
        to, text = _word_and_text(rest, name)
        return Msg(to=to, text=text)
    if name == "me":
        if not rest.strip():
            raise BadArguments(USAGE[name])
        return Me(text=rest)
    if name == "nick":
        nick = _one_word(rest, name, required=True)
        assert nick is not None
        return Nick(nick=nick)
    if name == "who":
        return Who(room=_one_word(rest, name, required=False))
    if name == "rooms":
        return Rooms()
    if name == "history":
        count = _one_word(rest, name, required=False)
        if count is None:
            return History()
        if _DIGITS_RE.fullmatch(count) is None:
            raise BadArguments(USAGE[name])
        try:
            limit = int(count)
        except ValueError:  # more digits than int() accepts
            raise BadArguments(USAGE[name]) from None
        if limit < 1:
            raise BadArguments(USAGE[name])
        return History(limit=limit)
    if name == "help":
        return Help()
    if name == "ping":
        return Ping()
    raise UnknownCommand(f"unknown command /{_printable(word)}; try /help")


def _parse_login(rest: str) -> Login:
    parts = _ARG_SPLIT_RE.split(rest.strip(), maxsplit=1)
    if len(parts) != 2 or not parts[0] or not parts[1].strip():
        raise BadArguments(USAGE["login"])
    return Login(nick=parts[0], password=parts[1].strip())


def _parse_kick(rest: str) -> Kick:
    parts = _ARG_SPLIT_RE.split(rest.strip(), maxsplit=1)
    if not parts[0]:
        raise BadArguments(USAGE["kick"])
    return Kick(nick=parts[0], reason=parts[1].strip() if len(parts) > 1 else None)


def _parse_ban(rest: str) -> Ban:
    target, duration, reason = _target_duration_reason(rest, "ban")
    return Ban(target=target, duration=duration, reason=reason)


def _parse_mute(rest: str) -> Mute:
    target, duration, reason = _target_duration_reason(rest, "mute")
    return Mute(nick=target, duration=duration, reason=reason)


def _parse_one(rest: str, command: str) -> str:
    word = _one_word(rest, command, required=True)
    assert word is not None
    return word


def _parse_bans(rest: str) -> Bans:
    if rest.strip():
        raise BadArguments(USAGE["bans"])
    return Bans()


_SECURITY_COMMANDS: dict[str, Callable[[str], Command]] = {
    "auth": lambda rest: Auth(secret=_secret(rest, "auth")),
    "login": _parse_login,
    "register": lambda rest: Register(password=_secret(rest, "register")),
    "password": lambda rest: Password(password=_secret(rest, "password")),
    "oper": lambda rest: Oper(secret=_secret(rest, "oper")),
    "kick": _parse_kick,
    "ban": _parse_ban,
    "unban": lambda rest: Unban(target=_parse_one(rest, "unban")),
    "mute": _parse_mute,
    "unmute": lambda rest: Unmute(nick=_parse_one(rest, "unmute")),
    "bans": _parse_bans,
}
"""Text commands of authentication, accounts and operators (docs/SECURITY.md)."""


class TextCodec:
    """Plain text for people: ``/commands``, everything else is said in the current room.

    Before registration every line that is not a quit is taken as the nickname.  Own room
    messages are not echoed back (the sender's terminal already shows them).
    """

    name = "text"
    echo_own = False

    def parse(self, line: str, registered: bool) -> Command | None:
        """Parse one text line (see ``docs/PROTOCOL.md``).  A blank line is nothing once
        registered, and :class:`BlankLine` (ask for the name again) before."""
        bare = line.strip()
        if not bare:
            return None if registered else BlankLine()
        if bare.lower() in _QUIT_WORDS:
            return Quit()
        if line.startswith("/") and not line.startswith("//"):
            match = _COMMAND_RE.fullmatch(line)
            assert match is not None  # the pattern matches every line starting with "/"
            word = match.group(1)
            rest = match.group(2) or ""
            if word.lower() in _QUIT_COMMANDS:
                return Quit(reason=rest.strip() or None)
            if registered:
                return _parse_text_command(word, rest)
            if word.lower() in _BEFORE_NAME:
                return _SECURITY_COMMANDS[word.lower()](rest)
        if not registered:
            return Hello(nick=bare)
        if line.startswith("//"):
            return Say(text=line[1:])
        return Say(text=line)

    def render(self, event: Event) -> bytes:
        """Render ``event`` as zero or more text lines, each ending in ``\\n``."""
        return "".join(line + "\n" for line in self._lines(event)).encode("utf-8", "replace")

    def _lines(self, event: Event) -> list[str]:
        match event:
            case Notice(text=text) | AskNick(text=text):
                return [f"* {line}" if line else "*" for line in _text_lines(text)]
            case Welcome(nick=nick, node=node, rooms=rooms):
                where = ", ".join(f"#{room}" for room in rooms) if rooms else "no room"
                return [
                    f"* welcome {_oneline(nick)} — you are in {_oneline(where)}"
                    f" on node {_oneline(node)}; /help lists commands"
                ]
            case Message():
                return [f"[{_oneline(event.room)}] {_text_message(event)}"]
            case Private(sender=sender, text=text):
                return [f"[pm] {_oneline(sender)}: {_oneline(text)}"]
            case Joined(room=room, nick=nick):
                return [f"* {_oneline(nick)} joined {_oneline(room)}"]
            case Parted(room=room, nick=nick):
                return [f"* {_oneline(nick)} left {_oneline(room)}"]
            case Quitted(nick=nick, reason=reason):
                if reason:
                    return [f"* {_oneline(nick)} quit ({_oneline(reason)})"]
                return [f"* {_oneline(nick)} quit"]
            case NickChanged(old=old, new=new):
                return [f"* {_oneline(old)} is now {_oneline(new)}"]
            case WhoReply(room=room, nicks=nicks):
                line = f"* {_oneline(room)}: {_plural(len(nicks), 'user')}"
                if nicks:
                    line += ": " + ", ".join(_oneline(n) for n in _sorted_nicks(nicks))
                return [line]
            case RoomsReply(rooms=rooms):
                line = f"* {_plural(len(rooms), 'room')}"
                if rooms:
                    line += ": " + ", ".join(f"{_oneline(r)} ({n})" for r, n in rooms)
                return [line]
            case HistoryReply(room=room, messages=messages):
                head = f"* history {_oneline(room)}: {_plural(len(messages), 'message')}"
                body = [
                    f"* [{_oneline(m.room)}] {_hms(m.ts)} {_text_message(m)}" for m in messages
                ]
                return [head, *body, "* end of history"]
            case BansReply(entries=entries):
                what = "ban or mute" if len(entries) == 1 else "bans or mutes"
                head = f"* {len(entries)} {what} in force"
                return [head, *(f"* {_ban_line(e)}" for e in entries), "* end of bans"]
            case Ack():
                return []
            case Pong():
                return ["* pong"]
            case Error(code=code, text=text):
                return [f"! {_oneline(code)}: {_oneline(text)}"]
            case Bye(reason=reason):
                return [f"* bye: {_oneline(reason)}"]
        raise TypeError(f"cannot render {type(event).__name__} in text mode")


def _ban_line(entry: BanEntry) -> str:
    line = (f"{_oneline(entry.kind)} {_oneline(entry.target)} — "
            f"{format_duration(entry.expires_in)} left, by {_oneline(entry.by)}")
    if entry.reason:
        line += f": {_oneline(entry.reason)}"
    return line


def _text_lines(text: str) -> list[str]:
    return [line.replace("\r", " ") for line in text.split("\n")]


def _text_message(message: Message) -> str:
    if message.action:
        return f"* {_oneline(message.sender)} {_oneline(message.text)}"
    return f"{_oneline(message.sender)}: {_oneline(message.text)}"


# --------------------------------------------------------------------------- JSON mode

JsonObject = dict[str, object]


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


_JSON_OPS: dict[str, Callable[[_Fields], Command]] = {
    "hello": lambda f: Hello(nick=f.req_str("nick"), token=f.opt_str("token"),
                             rooms=f.opt_str_list("rooms"), secret=f.opt_str("secret"),
                             password=f.opt_str("password"), ref=f.ref),
    "say": lambda f: Say(text=f.req_str("text"), room=f.opt_str("room"), ref=f.ref),
    "me": lambda f: Me(text=f.req_str("text"), room=f.opt_str("room"), ref=f.ref),
    "join": lambda f: Join(room=f.req_str("room"), ref=f.ref),
    "part": lambda f: Part(room=f.opt_str("room"), ref=f.ref),
    "msg": lambda f: Msg(to=f.req_str("to"), text=f.req_str("text"), ref=f.ref),
    "nick": lambda f: Nick(nick=f.req_str("nick"), ref=f.ref),
    "who": lambda f: Who(room=f.opt_str("room"), ref=f.ref),
    "rooms": lambda f: Rooms(ref=f.ref),
    "history": lambda f: History(
        room=f.opt_str("room"), limit=f.opt_positive_int("limit"), after=f.opt_str("after"),
        ref=f.ref,
    ),
    "ping": lambda f: Ping(ref=f.ref),
    "help": lambda f: Help(ref=f.ref),
    "quit": lambda f: Quit(reason=f.opt_str("reason"), ref=f.ref),
    "auth": lambda f: Auth(secret=f.req_str("secret"), ref=f.ref),
    "login": lambda f: Login(nick=f.req_str("nick"), password=f.req_str("password"), ref=f.ref),
    "register": lambda f: Register(password=f.req_str("password"), ref=f.ref),
    "password": lambda f: Password(password=f.req_str("password"), ref=f.ref),
    "oper": lambda f: Oper(secret=f.req_str("secret"), ref=f.ref),
    "kick": lambda f: Kick(nick=f.req_str("nick"), reason=f.opt_str("reason"), ref=f.ref),
    "ban": lambda f: Ban(target=f.req_str("target"), duration=f.opt_duration("duration"),
                         reason=f.opt_str("reason"), ref=f.ref),
    "unban": lambda f: Unban(target=f.req_str("target"), ref=f.ref),
    "mute": lambda f: Mute(nick=f.req_str("nick"), duration=f.opt_duration("duration"),
                           reason=f.opt_str("reason"), ref=f.ref),
    "unmute": lambda f: Unmute(nick=f.req_str("nick"), ref=f.ref),
    "bans": lambda f: Bans(ref=f.ref),
}


def _message_object(message: Message) -> JsonObject:
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


def _json_event(event: Event) -> JsonObject:
    match event:
        case Notice(text=text):
            return {"ev": "notice", "text": text}
        case AskNick(text=text):
            return {"ev": "ask_nick", "text": text}
        case Welcome(nick=nick, node=node, rooms=rooms, token=token, resumed=resumed):
            return {"ev": "welcome", "nick": nick, "node": node, "rooms": list(rooms),
                    "token": token, "resumed": resumed or None}
        case Message():
            return {"ev": "msg", **_message_object(event)}
        case Private(sender=sender, to=to, text=text, id=id_, ts=ts):
            return {"ev": "pm", "from": sender, "to": to, "text": text, "id": id_, "ts": ts}
        case Joined(room=room, nick=nick):
            return {"ev": "join", "room": room, "nick": nick}
        case Parted(room=room, nick=nick):
            return {"ev": "part", "room": room, "nick": nick}
        case Quitted(nick=nick, reason=reason):
            return {"ev": "quit", "nick": nick, "reason": reason}
        case NickChanged(old=old, new=new):
            return {"ev": "nick", "old": old, "new": new}
        case WhoReply(room=room, nicks=nicks, ref=ref):
            return {"ev": "who", "room": room, "nicks": _sorted_nicks(nicks), "ref": ref}
        case RoomsReply(rooms=rooms, ref=ref):
            listing = [{"room": room, "members": members} for room, members in rooms]
            return {"ev": "rooms", "rooms": listing, "ref": ref}
        case HistoryReply(room=room, messages=messages, ref=ref):
            listing = [_message_object(m) for m in messages]
            return {"ev": "history", "room": room, "messages": listing, "ref": ref}
        case BansReply(entries=entries, ref=ref):
            listing = [{"kind": e.kind, "target": e.target, "by": e.by, "reason": e.reason,
                        "expires_in": round(e.expires_in, 3)} for e in entries]
            for item in listing:
                if item["reason"] is None:
                    del item["reason"]
            return {"ev": "bans", "bans": listing, "ref": ref}
        case Ack(ref=ref, id=id_):
            # "ref" is always present in an ack, even when null.
            return {"ev": "ack", "ref": ref, **({"id": id_} if id_ is not None else {})}
        case Error(code=code, text=text, ref=ref):
            return {"ev": "error", "code": code, "text": text, "ref": ref}
        case Pong(ref=ref):
            return {"ev": "pong", "ref": ref}
        case Bye(reason=reason, reconnect=reconnect):
            return {"ev": "bye", "reason": reason, "reconnect": reconnect or None}
    raise TypeError(f"cannot render {type(event).__name__} in JSON mode")


class JsonCodec:
    """One JSON object per line, for programs.  Own room messages are echoed with their id."""

    name = "json"
    echo_own = True

    def parse(self, line: str, registered: bool) -> Command | None:
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
        build = _JSON_OPS.get(op)
        if build is None:
            raise UnknownCommand(f"unknown op {_printable(op)!r}", ref=ref)
        return build(_Fields(obj, ref))

    def render(self, event: Event) -> bytes:
        """Render ``event`` as one compact JSON object line; keys whose value is None are
        left out (except ``ref`` in ``ack``)."""
        obj = _json_event(event)
        if not isinstance(event, Ack):
            obj = {key: value for key, value in obj.items() if value is not None}
        text = json.dumps(obj, separators=(",", ":"), ensure_ascii=False)
        return (text + "\n").encode("utf-8", "replace")


TEXT = TextCodec()
JSON = JsonCodec()
CODECS: dict[str, Codec] = {"text": TEXT, "json": JSON}


# --------------------------------------------------------------------------- connection


class ServerConnection:
    """The protocol state of one client connection (see the module docstring).

    ``registered`` is set by the session after a successful ``Hello``.  Within one batch
    of input, lines that follow a ``Hello`` are parsed as if it will succeed (a client that
    sends its name and first message in one packet gets that message said); if it fails,
    the session refuses those commands as not registered.
    """

    def __init__(self, max_line: int = 4096, max_buffer: int = 16384) -> None:
        self._framer = LineFramer(max_line, max_buffer)
        self.mode: Mode = "pending"
        self.registered = False
        self._dead = False
        self._ready: deque[Command | ProtocolError] = deque()
        self._pulling = False  # next_command() has been used: keep every batch queued

    @property
    def codec(self) -> Codec:
        """The current codec (text while the mode is pending)."""
        return JSON if self.mode == "json" else TEXT

    def receive_data(self, data: bytes) -> list[Command | ProtocolError]:
        """Process received bytes; return commands and protocol errors in input order."""
        if self._dead:
            return self._batch([])
        return self._batch(self._process(self._framer.feed(data)))

    def receive_eof(self) -> list[Command | ProtocolError]:
        """The peer closed its side: process an unterminated last line, if any."""
        if self._dead:
            return self._batch([])
        out = self._process(self._framer.feed_eof())
        self._dead = True
        return self._batch(out)

    def next_command(self) -> Command | ProtocolError | None:
        """Pull-style access: the next command or error received, None when none is left.

        A caller may ignore the lists returned by ``receive_data``/``receive_eof`` and pull
        the same items one at a time instead (as h11's ``next_event``).  Until this method
        is first called, each batch replaces the previous one, so a caller that uses the
        lists never accumulates anything here.
        """
        self._pulling = True
        return self._ready.popleft() if self._ready else None

    def render(self, event: Event) -> bytes:
        """Encode ``event`` for this connection's current mode."""
        return self.codec.render(event)

    def _batch(self, items: list[Command | ProtocolError]) -> list[Command | ProtocolError]:
        if not self._pulling:
            self._ready.clear()
        self._ready.extend(items)
        return items

    def _process(self, items: list[str | ProtocolError]) -> list[Command | ProtocolError]:
        out: list[Command | ProtocolError] = []
        hello_seen = False
        for item in items:
            if isinstance(item, ProtocolError):
                out.append(item)
                if isinstance(item, FatalProtocolError):
                    self._dead = True
                    break
                continue
            if self.mode == "pending":
                start = item.lstrip()
                if not start:  # no mode yet: a person at a terminal pressed Enter
                    out.append(BlankLine())
                    continue
                self.mode = "json" if start.startswith("{") else "text"
            try:
                command = self.codec.parse(item, self.registered or hello_seen)
            except ProtocolError as exc:
                out.append(exc)
                continue
            if command is not None:
                out.append(command)
                hello_seen = hello_seen or isinstance(command, Hello | Login)
        return out
