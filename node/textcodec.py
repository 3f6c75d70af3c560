"""The text mode, for people with ``nc``/``telnet``: typed lines to commands, events to
text lines.

``/commands`` (``docs/PROTOCOL.md`` section 4); every other line is said in the current
room, and before registration every line that is not a quit is taken as the nickname.
Pure: no I/O.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import assert_never

import node.model as m
from node.codec import printable, sorted_nicks
from node.durations import DurationError, format_duration, parse_duration
from node.errors import BadArguments, UnknownCommand

__all__ = ["TEXT", "USAGE", "TextCodec", "command_word"]


def _oneline(value: str) -> str:
    """A value as it may appear inside one output line."""
    return value.replace("\r", " ").replace("\n", " ")


def _hms(ts: float) -> str:
    return time.strftime("%H:%M:%S", time.gmtime(ts))


def _plural(count: int, word: str) -> str:
    return f"{count} {word}" if count == 1 else f"{count} {word}s"



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
    "rooms": "usage: /rooms [AFTER]  (the rooms whose names come after AFTER)",
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


def command_word(line: str) -> str | None:
    """The name of the /command ``line`` starts with, lowercased and without its slash, as
    the parser reads it; None when the line does not start with a single ``/``."""
    if not line.startswith("/") or line.startswith("//"):
        return None
    match = _COMMAND_RE.fullmatch(line)
    assert match is not None  # the pattern matches every line starting with "/"
    return match.group(1).lower()


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


def _parse_text_command(word: str, rest: str) -> m.Command:
    name = word.lower()
    if name in _SECURITY_COMMANDS:
        return _SECURITY_COMMANDS[name](rest)
    if name == "join":
        room = _one_word(rest, name, required=True)
        assert room is not None
        return m.Join(room=room)
    if name == "part":
        return m.Part(room=_one_word(rest, name, required=False))
    if name == "msg":
        to, text = _word_and_text(rest, name)
        return m.Msg(to=to, text=text)
    if name == "me":
        if not rest.strip():
            raise BadArguments(USAGE[name])
        return m.Me(text=rest)
    if name == "nick":
        nick = _one_word(rest, name, required=True)
        assert nick is not None
        return m.Nick(nick=nick)
    if name == "who":
        return m.Who(room=_one_word(rest, name, required=False))
    if name == "rooms":
        return m.Rooms(after=_one_word(rest, name, required=False))
    if name == "history":
        count = _one_word(rest, name, required=False)
        if count is None:
            return m.History()
        if _DIGITS_RE.fullmatch(count) is None:
            raise BadArguments(USAGE[name])
        try:
            limit = int(count)
        except ValueError:  # more digits than int() accepts
            raise BadArguments(USAGE[name]) from None
        if limit < 1:
            raise BadArguments(USAGE[name])
        return m.History(limit=limit)
    if name == "help":
        return m.Help()
    if name == "ping":
        return m.Ping()
    raise UnknownCommand(f"unknown command /{printable(word)}; try /help")


def _parse_login(rest: str) -> m.Login:
    parts = _ARG_SPLIT_RE.split(rest.strip(), maxsplit=1)
    if len(parts) != 2 or not parts[0] or not parts[1].strip():
        raise BadArguments(USAGE["login"])
    return m.Login(nick=parts[0], password=parts[1].strip())


def _parse_kick(rest: str) -> m.Kick:
    parts = _ARG_SPLIT_RE.split(rest.strip(), maxsplit=1)
    if not parts[0]:
        raise BadArguments(USAGE["kick"])
    return m.Kick(nick=parts[0], reason=parts[1].strip() if len(parts) > 1 else None)


def _parse_ban(rest: str) -> m.Ban:
    target, duration, reason = _target_duration_reason(rest, "ban")
    return m.Ban(target=target, duration=duration, reason=reason)


def _parse_mute(rest: str) -> m.Mute:
    target, duration, reason = _target_duration_reason(rest, "mute")
    return m.Mute(nick=target, duration=duration, reason=reason)


def _parse_one(rest: str, command: str) -> str:
    word = _one_word(rest, command, required=True)
    assert word is not None
    return word


def _parse_bans(rest: str) -> m.Bans:
    if rest.strip():
        raise BadArguments(USAGE["bans"])
    return m.Bans()


_SECURITY_COMMANDS: dict[str, Callable[[str], m.Command]] = {
    "auth": lambda rest: m.Auth(secret=_secret(rest, "auth")),
    "login": _parse_login,
    "register": lambda rest: m.Register(password=_secret(rest, "register")),
    "password": lambda rest: m.Password(password=_secret(rest, "password")),
    "oper": lambda rest: m.Oper(secret=_secret(rest, "oper")),
    "kick": _parse_kick,
    "ban": _parse_ban,
    "unban": lambda rest: m.Unban(target=_parse_one(rest, "unban")),
    "mute": _parse_mute,
    "unmute": lambda rest: m.Unmute(nick=_parse_one(rest, "unmute")),
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

    def parse(self, line: str, registered: bool) -> m.Command | None:
        """Parse one text line (see ``docs/PROTOCOL.md``).  A blank line is nothing once
        registered, and :class:`BlankLine` (ask for the name again) before."""
        bare = line.strip()
        if not bare:
            return None if registered else m.BlankLine()
        if bare.lower() in _QUIT_WORDS:
            return m.Quit()
        if line.startswith("/") and not line.startswith("//"):
            match = _COMMAND_RE.fullmatch(line)
            assert match is not None  # the pattern matches every line starting with "/"
            word = match.group(1)
            rest = match.group(2) or ""
            if word.lower() in _QUIT_COMMANDS:
                return m.Quit(reason=rest.strip() or None)
            if registered:
                return _parse_text_command(word, rest)
            if word.lower() in _BEFORE_NAME:
                return _SECURITY_COMMANDS[word.lower()](rest)
        if not registered:
            return m.Hello(nick=bare)
        if line.startswith("//"):
            return m.Say(text=line[1:])
        return m.Say(text=line)

    def render(self, event: m.Event) -> bytes:
        """Render ``event`` as zero or more text lines, each ending in ``\\n``."""
        return "".join(line + "\n" for line in self._lines(event)).encode("utf-8", "replace")

    def _lines(self, event: m.Event) -> list[str]:
        match event:
            case m.Notice(text=text) | m.AskNick(text=text):
                return [f"* {line}" if line else "*" for line in _text_lines(text)]
            case m.Welcome(nick=nick, node=node, rooms=rooms):
                where = ", ".join(f"#{room}" for room in rooms) if rooms else "no room"
                return [
                    f"* welcome {_oneline(nick)} — you are in {_oneline(where)}"
                    f" on node {_oneline(node)}; /help lists commands"
                ]
            case m.Message():
                return [f"[{_oneline(event.room)}] {_text_message(event)}"]
            case m.Private(sender=sender, text=text):
                return [f"[pm] {_oneline(sender)}: {_oneline(text)}"]
            case m.Joined(room=room, nick=nick):
                return [f"* {_oneline(nick)} joined {_oneline(room)}"]
            case m.Parted(room=room, nick=nick):
                return [f"* {_oneline(nick)} left {_oneline(room)}"]
            case m.Quitted(nick=nick, reason=reason):
                if reason:
                    return [f"* {_oneline(nick)} quit ({_oneline(reason)})"]
                return [f"* {_oneline(nick)} quit"]
            case m.NickChanged(old=old, new=new):
                return [f"* {_oneline(old)} is now {_oneline(new)}"]
            case m.TopicChanged(room=room, nick=nick, text=text):
                if text:
                    return [f"* {_oneline(nick)} set the topic of {_oneline(room)}: "
                            f"{_oneline(text)}"]
                return [f"* {_oneline(nick)} cleared the topic of {_oneline(room)}"]
            case m.WhoReply(room=room, nicks=nicks):
                line = f"* {_oneline(room)}: {_plural(len(nicks), 'user')}"
                if nicks:
                    line += ": " + ", ".join(_oneline(n) for n in sorted_nicks(nicks))
                return [line]
            case m.RoomsReply(rooms=rooms, more=more):
                line = f"* {_plural(len(rooms), 'room')}"
                if rooms:
                    line += ": " + ", ".join(f"{_oneline(r)} ({n})" for r, n in rooms)
                if more and rooms:
                    last = _oneline(rooms[-1][0])
                    return [line, f"* more rooms follow: /rooms {last}"]
                return [line]
            case m.HistoryReply(room=room, messages=messages, complete=complete):
                top = [f"* history {_oneline(room)}: {_plural(len(messages), 'message')}"]
                if not complete:
                    top.append(_gap_line(room))
                body = [
                    f"* [{_oneline(m.room)}] {_hms(m.ts)} {_text_message(m)}" for m in messages
                ]
                return [*top, *body, "* end of history"]
            case m.Gap(room=room):
                return [_gap_line(room)]
            case m.BansReply(entries=entries):
                what = "ban or mute" if len(entries) == 1 else "bans or mutes"
                head = f"* {len(entries)} {what} in force"
                return [head, *(f"* {_ban_line(e)}" for e in entries), "* end of bans"]
            case m.Ack():
                return []
            case m.Pong():
                return ["* pong"]
            case m.Error(code=code, text=text):
                return [f"! {_oneline(code)}: {_oneline(text)}"]
            case m.Bye(reason=reason):
                return [f"* bye: {_oneline(reason)}"]
            case _:
                assert_never(event)


def _gap_line(room: str) -> str:
    return f"* some messages in #{_oneline(room)} are no longer in history"


def _ban_line(entry: m.BanEntry) -> str:
    line = (f"{_oneline(entry.kind)} {_oneline(entry.target)} — "
            f"{format_duration(entry.expires_in)} left, by {_oneline(entry.by)}")
    if entry.reason:
        line += f": {_oneline(entry.reason)}"
    return line


def _text_lines(text: str) -> list[str]:
    return [line.replace("\r", " ") for line in text.split("\n")]


def _text_message(message: m.Message) -> str:
    if message.action:
        return f"* {_oneline(message.sender)} {_oneline(message.text)}"
    return f"{_oneline(message.sender)}: {_oneline(message.text)}"



TEXT = TextCodec()
"""The text codec (stateless: one for every connection)."""
