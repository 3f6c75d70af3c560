"""What IRC clients are sent: the cluster's events as IRC lines, and each error code's numeric.

Pure: no I/O.  :class:`IrcCodec` renders the events every member of a room gets alike
(messages, joins, parts, quits, nick changes) for one set of negotiated capabilities, so
the hub's fan-out renders an event once per capability set, never once per recipient
(:func:`codec_for` hands out one codec per set).  Replies to a client's own commands
depend on that client (its nick, the command it sent) and are built by the IRC session
with the helpers here (:func:`numeric`, :func:`error_lines`).

Everyone is shown as ``nick!~nick@hubbub``; a user's own mask (001, WHOIS) names the node
it is connected to, ``nick!~ident@<node>.hubbub``.  Real addresses are never shown.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Final

import node.model as m

from .irccodec import MAX_BODY_BYTES, IrcMessage, fit_text, serialize

__all__ = [
    "CAPS",
    "ERROR_REPLIES",
    "IrcCodec",
    "Reply",
    "codec_for",
    "error_lines",
    "mask",
    "numeric",
    "server_time",
]

HOST_SUFFIX: Final = "hubbub"

CAPS: Final = ("echo-message", "message-tags", "multi-prefix", "server-time",
               "userhost-in-names", "sasl", "draft/account-registration")
"""Capabilities an IRC client may request (``sasl`` only with ``--auth accounts``)."""


def mask(nick: str, ident: str | None = None, node: str | None = None) -> str:
    """``nick!~ident@<node>.hubbub`` (without a node: ``@hubbub``)."""
    host = f"{node}.{HOST_SUFFIX}" if node else HOST_SUFFIX
    return f"{nick}!~{(ident or nick)[:16]}@{host}"


def server_time(ts: float) -> str:
    """An IRCv3 ``time`` tag value: UTC with milliseconds."""
    whole = int(ts)
    ms = round((ts - whole) * 1000)
    if ms >= 1000:
        whole, ms = whole + 1, ms - 1000
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)) + f".{ms:03d}Z"


def numeric(server: str, code: str, target: str, *params: str) -> IrcMessage:
    """A numeric reply from the server to ``target`` (the client's nick, ``*`` before)."""
    return IrcMessage(code, (target or "*", *params), server)


@dataclass(frozen=True, slots=True)
class Reply:
    """How an error code is answered: a numeric (``params`` name what goes before the
    text: ``target`` the nick/channel the command named, ``command`` its verb), a
    ``FAIL`` standard reply (``fail``: its code), or ``ERROR`` (the connection closes)."""

    kind: str
    """A three-digit numeric, ``FAIL`` or ``ERROR``."""
    params: tuple[str, ...] = ()
    fail: str = ""


ERROR_REPLIES: Final[dict[str, Reply]] = {
    # protocol errors: the line stays open
    "protocol-error": Reply("FAIL", fail="INVALID_MESSAGE"),
    "line-too-long": Reply("417"),
    "bad-encoding": Reply("FAIL", fail="INVALID_UTF8"),
    "bad-json": Reply("FAIL", fail="INVALID_MESSAGE"),
    "unknown-command": Reply("421", ("command",)),
    "bad-args": Reply("461", ("command",)),
    "bad-nick": Reply("432", ("target",)),
    "bad-room": Reply("403", ("target",)),
    "empty-text": Reply("412"),
    "buffer-overflow": Reply("ERROR"),
    "bad-proxy-header": Reply("ERROR"),
    # commands that cannot be carried out
    "command-error": Reply("FAIL", fail="FAILED"),
    "nick-taken": Reply("433", ("target",)),
    "no-such-nick": Reply("401", ("target",)),
    "not-in-room": Reply("442", ("target",)),
    "not-registered": Reply("451"),
    "auth-required": Reply("464"),
    "auth-failed": Reply("464"),
    "auth-throttled": Reply("FAIL", fail="RATE_LIMITED"),
    "auth-busy": Reply("FAIL", fail="TEMPORARILY_UNAVAILABLE"),
    "login-required": Reply("433", ("target",)),
    "account-exists": Reply("FAIL", fail="ACCOUNT_EXISTS"),
    "no-such-account": Reply("FAIL", fail="ACCOUNT_REQUIRED"),
    "not-enabled": Reply("FAIL", fail="DISABLED"),
    "not-operator": Reply("481"),
    "banned": Reply("465"),
    "muted": Reply("404", ("target",)),
    "too-many-rooms": Reply("405", ("target",)),
    "room-create-throttled": Reply("FAIL", fail="RATE_LIMITED"),
    "rooms-full": Reply("FAIL", fail="LIMIT_EXCEEDED"),
    # the relay
    "relay-unavailable": Reply("FAIL", fail="TEMPORARILY_UNAVAILABLE"),
    "internal": Reply("FAIL", fail="INTERNAL_ERROR"),
    # never sent to a client (a node that cannot start; bus envelopes)
    "startup": Reply("ERROR"),
    "redis-misconfigured": Reply("ERROR"),
    "bad-envelope": Reply("FAIL", fail="INTERNAL_ERROR"),
    # the session is over
    "closed": Reply("ERROR"),
    "send-queue-exceeded": Reply("ERROR"),
    "rate-limited": Reply("ERROR"),
    "kicked": Reply("ERROR"),
    "too-many-connections": Reply("ERROR"),
    "register-timeout": Reply("ERROR"),
}
"""Every error code of the exception tree (``node/errors.py``) and its IRC answer; the
table in docs/IRC.md says the same (both checked by tests)."""

_SEND_TO_CHANNEL: Final = frozenset({"not-in-room", "bad-room", "muted"})


def error_lines(server: str, me: str, code: str, text: str, command: str,
                target: str) -> list[IrcMessage]:
    """The answer to error ``code`` of ``command`` (naming ``target``) for client ``me``.
    A message to a channel one may not speak in is 404 whatever the cause."""
    reply = ERROR_REPLIES.get(code, Reply("FAIL", fail="FAILED"))
    if command in ("PRIVMSG", "NOTICE") and code in _SEND_TO_CHANNEL and \
            target.startswith("#"):
        reply = Reply("404", ("target",))
    if reply.kind == "ERROR":
        return [IrcMessage("ERROR", (f"Closing link: {text}",))]
    if reply.kind == "FAIL":
        return [IrcMessage("FAIL", (command or "*", reply.fail, text), server)]
    params = [target or "*" if p == "target" else command or "*" for p in reply.params]
    return [numeric(server, reply.kind, me, *params, text)]


class IrcCodec:
    """Room and user events as IRC lines for clients with one set of capabilities.

    Implements :class:`~node.codec.Codec` for the hub's fan-out; IRC commands are read by
    the IRC session, not by :meth:`parse`."""

    def __init__(self, server: str, caps: frozenset[str]) -> None:
        self.server = server
        self.caps = caps
        self.name = "irc:" + ",".join(sorted(caps))
        self.echo_own = "echo-message" in caps
        self._time = "server-time" in caps
        self._tags = "message-tags" in caps

    def parse(self, line: str, registered: bool) -> m.Command | None:
        raise NotImplementedError("IRC lines are read by the IRC session")

    def tags(self, ts: float | None, msgid: str | None,
             client: tuple[tuple[str, str], ...] = ()) -> tuple[tuple[str, str | None], ...]:
        """The tags of a message for these capabilities: ``time``, ``msgid`` and the
        sender's client-only tags (the last two with ``message-tags`` only)."""
        out: list[tuple[str, str | None]] = []
        if self._time and ts is not None:
            out.append(("time", server_time(ts)))
        if self._tags:
            if msgid:
                out.append(("msgid", msgid))
            out.extend((k, v or None) for k, v in client)
        return tuple(out)

    def message_lines(self, source: str, verb: str, target: str, text: str,
                      tags: tuple[tuple[str, str | None], ...], action: bool = False
                      ) -> list[IrcMessage]:
        """``text`` as one or more PRIVMSG/NOTICE lines, each within the body limit."""
        wrap = ("\x01ACTION ", "\x01") if action else ("", "")
        whole = IrcMessage(verb, (target, wrap[0] + text + wrap[1]), source, tags)
        if len(serialize(IrcMessage(verb, whole.params, source))) <= MAX_BODY_BYTES:
            return [whole]
        room = MAX_BODY_BYTES - 2 - len(f":{source} {verb} {target} :".encode()) \
            - len((wrap[0] + wrap[1]).encode())
        return [IrcMessage(verb, (target, wrap[0] + piece + wrap[1]), source, tags)
                for piece in fit_text(text, room)]

    def render(self, event: m.Event) -> bytes:
        return b"".join(serialize(line) for line in self.lines(event))

    def lines(self, event: m.Event) -> list[IrcMessage]:
        match event:
            case m.Message(room=room, sender=sender, text=text, id=id_, ts=ts,
                           action=action, notice=notice, tags=client):
                verb = "NOTICE" if notice and not action else "PRIVMSG"
                return self.message_lines(mask(sender), verb, "#" + room, text,
                                          self.tags(ts, id_, client), action)
            case m.Private(sender=sender, to=to, text=text, id=id_, ts=ts, notice=notice,
                           tags=client):
                return self.message_lines(mask(sender), "NOTICE" if notice else "PRIVMSG",
                                          to, text, self.tags(ts, id_, client))
            case m.Joined(room=room, nick=nick):
                return [IrcMessage("JOIN", ("#" + room,), mask(nick))]
            case m.Parted(room=room, nick=nick, reason=reason):
                params = ("#" + room, reason) if reason else ("#" + room,)
                return [IrcMessage("PART", params, mask(nick))]
            case m.Quitted(nick=nick, reason=reason):
                return [IrcMessage("QUIT", (f"Quit: {reason}" if reason else "Quit",),
                                   mask(nick))]
            case m.NickChanged(old=old, new=new):
                return [IrcMessage("NICK", (new,), mask(old))]
            case m.TopicChanged(room=room, nick=nick, text=text):
                return [IrcMessage("TOPIC", ("#" + room, text), mask(nick))]
            case m.Notice(text=text):
                return [IrcMessage("NOTICE", ("*", line), self.server)
                        for line in text.split("\n") if line]
            case m.Bye(reason=reason):
                return [IrcMessage("ERROR", (f"Closing link: {reason}",))]
            case m.Error(code=code, text=text):
                return error_lines(self.server, "*", code, text, "*", "*")
            case m.Pong():
                return [IrcMessage("PONG", (self.server, self.server), self.server)]
            case _:  # replies to commands: built by the IRC session, which knows them
                return []


_CODECS: dict[tuple[str, frozenset[str]], IrcCodec] = {}


def codec_for(server: str, caps: frozenset[str]) -> IrcCodec:
    """The one codec of a server name and capability set (fan-out renders once per
    codec name)."""
    key = (server, caps)
    codec = _CODECS.get(key)
    if codec is None:
        codec = _CODECS[key] = IrcCodec(server, caps)
    return codec
